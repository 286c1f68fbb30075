"""Map populations onto the target's cores and check the graph fits (the DRC).

Resource model (per image; a batch of images is that many copies):

- every population and the readout is a group of neurons, and a core holds
  neurons of one group only (a simple, conservative packing);
- a neuron's incoming synapses live on its core: a group needs
  ``max(neurons / neurons_per_core, synapse bits / synaptic memory)`` cores,
  rounded up, where a synapse costs ``synapse_bits`` (the profile's estimate)
  and the synapses are those of the lowered (quantized) weights, relays and
  split excitatory/inhibitory synapses included;
- cores fill chips of ``cores_per_chip``; the target has ``chips`` chips.

Checks, all reported at once: one neuron's synapses must fit one core; the
cores must fit the target's chips; weights must fit the target's weight bits
(``weight_format``: Loihi's sign-magnitude, the default, or two's complement)
and delays its maximum delay. Profiles without core limits (a von Neumann
accelerator) only get the weight check.

It reads the netlist of the target's chip mode (its first: the integer
weights the chip stores), so what is counted is exactly what the backends
run; ``map_to_cores`` maps any netlist onto any profile (the energy report
uses it for profiles that are not compile targets).

Requires: the netlist (the target's lowering ran). Guarantees: ``graph.log``
holds the mapping (per group: neurons, synapses, memory, cores; totals; every
violation) and, unless ``allow_oversize``, the netlist fits the target.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from snc.errors import GraphError

from ..ir import Graph
from ..netlist import Netlist
from ..pass_manager import CompileContext, Pass


def resource_limits(profile: dict[str, Any]) -> dict[str, Any]:
    """The profile's resource limits; weight bits and delay from [fixed_point] when it has them."""
    limits = dict(profile.get("resources", {}))
    fixed = profile.get("fixed_point", {})
    for key in ("weight_bits", "max_delay"):
        if key in fixed:
            limits.setdefault(key, fixed[key])
    return limits


def map_to_cores(net: Netlist, profile: dict[str, Any]) -> dict[str, Any]:
    """Per-group resources (the neuron groups, then the readout), totals and every violation of
    ``profile``'s limits (nothing raised). ``net`` holds the target's integer weights: a weight that
    rounded to 0 is no synapse."""
    limits = resource_limits(profile)
    cores_known = all(k in limits for k in ("neurons_per_core", "synaptic_memory_kib_per_core", "synapse_bits"))
    memory_bits = limits.get("synaptic_memory_kib_per_core", 0) * 1024 * 8
    groups, violations = [], []
    fan_in = {name: np.zeros(net.size(name), dtype=np.int64) for name in [*net.groups, net.readout.name]}
    for s in net.synapses:
        fan_in[s.dst] += s.op.fan_in()
    for node in [*net.groups.values(), net.readout]:
        neurons = node.n
        synapses = int(fan_in[node.name].sum())
        row = {"group": node.name, "role": getattr(node, "role", "readout"), "neurons": neurons,
               "synapses": synapses, "max_fan_in": int(fan_in[node.name].max(initial=0))}
        if cores_known:
            bits = synapses * limits["synapse_bits"]
            row["memory_kib"] = bits / 8 / 1024
            row["cores"] = max(1, math.ceil(neurons / limits["neurons_per_core"]), math.ceil(bits / memory_bits))
            if row["max_fan_in"] * limits["synapse_bits"] > memory_bits:
                violations.append(f"{node.name}: one neuron has {row['max_fan_in']:,} synapses, more than a core's "
                                  f"{int(memory_bits // limits['synapse_bits']):,}")
        groups.append(row)
    report: dict[str, Any] = {"groups": groups, "neurons": sum(g["neurons"] for g in groups),
                              "synapses": sum(g["synapses"] for g in groups)}
    if cores_known:
        report["cores"] = sum(g["cores"] for g in groups)
        report["memory_kib"] = sum(g["memory_kib"] for g in groups)
        if "cores_per_chip" in limits:
            report["chips"] = math.ceil(report["cores"] / limits["cores_per_chip"])
            if "chips" in limits and report["chips"] > limits["chips"]:
                violations.append(f"needs {report['cores']:,} cores = {report['chips']:,} chips of "
                                  f"{limits['cores_per_chip']} cores; the target has {limits['chips']}")
    if "weight_bits" in limits:
        bits = limits["weight_bits"]
        if limits.get("weight_format", "sign-magnitude") == "sign-magnitude":
            lo, hi, what = -2 ** bits, 2 ** bits - 1, f"{bits} magnitude bits and a sign"  # Loihi: [-256, 255]
        else:
            lo, hi, what = -2 ** (bits - 1), 2 ** (bits - 1) - 1, f"{bits}-bit two's complement"
        for s in net.synapses:
            w = s.op.weight
            if w.size and (np.min(w) < lo or np.max(w) > hi):
                violations.append(f"{s.name}: weights [{int(np.min(w))}, {int(np.max(w))}] exceed {what}")
    if "max_delay" in limits:
        violations += [f"{s.name}: delay {s.delay} > {limits['max_delay']}" for s in net.synapses
                       if s.delay > limits["max_delay"]]
    report["violations"] = violations
    return report


def run(graph: Graph, ctx: CompileContext) -> Graph:
    profile = ctx.target.profile
    report = map_to_cores(graph.netlists[ctx.target.modes[0]], profile)
    allow = ctx.options.allow_oversize
    graph.log.append({"pass": "map_cores", "target": profile.get("name", ""), "allow_oversize": allow, **report})
    if report["violations"] and not allow:
        raise GraphError(f"the graph does not fit {profile.get('name', 'the target')} "
                         f"({len(report['violations'])} violation(s); --allow-oversize compiles anyway):\n  "
                         + "\n  ".join(report["violations"]))
    return graph


def verify(graph: Graph, ctx: CompileContext) -> None:
    graph.check()
    report = map_to_cores(graph.netlists[ctx.target.modes[0]], ctx.target.profile)
    if report["violations"] and not ctx.options.allow_oversize:
        raise GraphError("map_cores accepted a netlist with violations")
    if "cores" in report and any(g["cores"] < 1 for g in report["groups"]):
        raise GraphError("map_cores gave a group no core")


PASS = Pass("map_cores", run, verify, requires=("netlist",), provides=("mapping",))
