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

Requires: a quantized graph (``quantize`` ran). Guarantees: ``graph.log``
holds the mapping (per group: neurons, synapses, memory, cores; totals; every
violation) and, unless ``allow_oversize``, the graph fits the target.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from snc.errors import GraphError

from ..ir import Graph, Population, Readout


def resource_limits(profile: dict[str, Any]) -> dict[str, Any]:
    """The profile's resource limits; weight bits and delay from [fixed_point] when it has them."""
    limits = dict(profile.get("resources", {}))
    fixed = profile.get("fixed_point", {})
    for key in ("weight_bits", "max_delay"):
        if key in fixed:
            limits.setdefault(key, fixed[key])
    return limits


def map_to_cores(graph: Graph, profile: dict[str, Any]) -> dict[str, Any]:
    """Per-group resources, totals and every violation of ``profile``'s limits (nothing raised)."""
    limits = resource_limits(profile)
    cores_known = all(k in limits for k in ("neurons_per_core", "synaptic_memory_kib_per_core", "synapse_bits"))
    memory_bits = limits.get("synaptic_memory_kib_per_core", 0) * 1024 * 8
    groups, violations = [], []
    for node in graph.nodes.values():
        if not isinstance(node, (Population, Readout)):
            continue
        chip = [e for e in graph.into(node.name) if isinstance(graph.nodes[e.src], Population)]
        neurons = int(np.prod(node.shape))
        fan_in = np.zeros(neurons, dtype=np.int64)
        for e in chip:
            fan_in += e.lowered_op().fan_in()
        synapses = int(fan_in.sum())
        row = {"group": node.name, "role": getattr(node, "role", "readout"), "neurons": neurons,
               "synapses": synapses, "max_fan_in": int(fan_in.max(initial=0))}
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
        for e in graph.edges:
            w = e.fixed.get("weight")
            if w is not None and np.asarray(w).size and (np.min(w) < lo or np.max(w) > hi):
                violations.append(f"{e.name}: weights [{int(np.min(w))}, {int(np.max(w))}] exceed {what}")
    if "max_delay" in limits:
        violations += [f"{e.name}: delay {e.delay} > {limits['max_delay']}" for e in graph.edges
                       if e.delay > limits["max_delay"]]
    report["violations"] = violations
    return report


def run(graph: Graph, profile: dict[str, Any], allow_oversize: bool = False) -> Graph:
    report = map_to_cores(graph, profile)
    graph.log.append({"pass": "map_cores", "target": profile.get("name", ""), "allow_oversize": allow_oversize,
                      **report})
    if report["violations"] and not allow_oversize:
        raise GraphError(f"the graph does not fit {profile.get('name', 'the target')} "
                         f"({len(report['violations'])} violation(s); --allow-oversize compiles anyway):\n  "
                         + "\n  ".join(report["violations"]))
    return graph


def verify(graph: Graph) -> None:
    graph.check()
    entry = next((e for e in reversed(graph.log) if e["pass"] == "map_cores"), None)
    if entry is None:
        raise GraphError("map_cores left no mapping in the log")
    if entry["violations"] and not entry["allow_oversize"]:
        raise GraphError("map_cores accepted a graph with violations")
    if "cores" in entry and any(g["cores"] < 1 for g in entry["groups"]):
        raise GraphError("map_cores gave a group no core")
