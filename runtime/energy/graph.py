"""Energy, SOPs and resources of one run of any compiled graph (``snc energy BUILD --input x.npy``).

Counted from the spikes of a ``GraphRun`` (``runtime/graph_run.py``) on the
build's fixed-point netlist, per input sequence (one batch element) of
``steps`` logical steps:

- **exact SOPs**: every spike of a group times its neuron's fan-out over the
  netlist's synapses (the re-associated, delay-balanced, sign-split synapses
  with their integer weights; relays included);
- **neuron updates**: every neuron updates every step of the run, ``depth +
  steps``; the ``steps`` of its window are "active", the pipeline fill "idle";
- **spikes routed**: one per spike;
- **host work** (labelled so): the host ops that turn the graph input into
  currents every step (an input layer's MACs: a real-valued input is not a
  spike) and the host filters of a non-spiking output, in MACs.

Energy = operations x the profile's pJ per operation; Loihi 2's figures are
estimates (``hw_profiles/loihi2.toml``) and the report says so.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from snc.compiler.netlist import Netlist
from snc.compiler.readout import filter_macs

from .counted import LoweredCount
from .report import GRADED_KEY, chip_group_pj, energy_model, synaptic_ops


@dataclass
class GraphEnergyReport:
    profile: str
    estimate: bool
    basis: str
    backend: str
    mode: str
    steps: int
    batch: int
    call_steps: int  # depth + steps
    layers: list[dict[str, Any]] = field(default_factory=list)
    totals: dict[str, Any] = field(default_factory=dict)
    resources: dict[str, Any] = field(default_factory=dict)
    formulas: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def graph_energy(net: Netlist, spikes: dict[str, np.ndarray], backend: str, mode: str,
                 profile: dict[str, Any]) -> GraphEnergyReport:
    """The report for the spikes [steps, batch, *shape] per group of one run of ``net`` (fixed netlist,
    already set to the run's steps), per input sequence."""
    pj = energy_model(profile, graded=any(g.graded for g in net.groups.values()))
    steps = net.timestep
    batch = next(iter(spikes.values())).shape[1] if spikes else 1
    counted = LoweredCount(net)
    fan_out = counted.fan_outs()
    report = GraphEnergyReport(profile["name"], bool(profile["energy"].get("estimate", True)),
                               str(profile["energy"].get("basis", "")), backend, mode, steps, batch, net.call_steps)
    for g in net.groups.values():
        # a run of the NIR graph has no relays: a relay repeats its source's spikes
        s = spikes.get(g.name)
        if s is None and g.role == "relay" and net.into(g.name):
            s = spikes.get(net.relay_source(g.name))
        if s is None and g.graded:  # a run of the NIR graph has no sum populations: a payload every step
            s = np.ones((steps, batch, g.n))
        per_neuron = (s != 0).reshape(steps, batch, -1).sum(axis=(0, 1)) / batch if s is not None else np.zeros(g.n)
        total = float(per_neuron.sum())
        ops = float(per_neuron @ fan_out[g.name])
        sops, graded_ops = synaptic_ops(ops, g.graded)
        active, idle = g.n * steps, g.n * (net.call_steps - steps)
        report.layers.append({
            "layer": g.name, "role": g.role, "neurons": g.n, "spikes": total, "rate": total / (g.n * steps),
            "synapses_out": int(fan_out[g.name].sum()), "sops": sops, "graded_ops": graded_ops,
            "updates_active": active, "updates_idle": idle, "host_macs": 0,
            "energy_pj": chip_group_pj(pj, sops, graded_ops, active, idle, total)})
    for h in net.host_ops:
        macs = h.op.dense_macs() * steps
        report.layers.append({"layer": f"host: {'+'.join(h.origin) or h.src} -> {h.dst}",
                              "role": "host (the input layer, every step)", "neurons": 0, "spikes": 0.0, "rate": 0.0,
                              "synapses_out": 0, "sops": 0.0, "graded_ops": 0.0, "updates_active": 0,
                              "updates_idle": 0, "host_macs": macs, "energy_pj": macs * pj["host_mac_pj"]})
    r = net.readout
    if r.filters:
        macs = filter_macs(r.filters, r.n) * steps
        report.layers.append({"layer": f"host: {r.name} integration", "role": "host (non-spiking output neuron)",
                              "neurons": 0, "spikes": 0.0, "rate": 0.0, "synapses_out": 0, "sops": 0.0,
                              "graded_ops": 0.0, "updates_active": 0, "updates_idle": 0, "host_macs": macs,
                              "energy_pj": macs * pj["host_mac_pj"]})

    def total(key: str) -> float:
        return float(sum(row[key] for row in report.layers))

    chip = float(sum(row["energy_pj"] for row in report.layers if not row["role"].startswith("host")))
    report.totals = {"sops": total("sops"), "graded_ops": total("graded_ops"), "spikes": total("spikes"),
                     "neuron_updates": total("updates_active") + total("updates_idle"),
                     "host_macs": total("host_macs"), "energy_pj": total("energy_pj"), "chip_energy_pj": chip,
                     "host_energy_pj": total("energy_pj") - chip}
    report.resources = counted.resources(profile)
    report.formulas = [
        f"energy = SOPs x {pj['sop_pj']} pJ"
        + (f" + graded ops x {pj[GRADED_KEY]} pJ" if report.totals["graded_ops"] else "")
        + f" + active neuron updates x {pj['neuron_update_pj']} pJ + idle updates x "
        f"{pj['neuron_idle_pj']} pJ + spikes x {pj['spike_pj']} pJ + host MACs x {pj['host_mac_pj']} pJ",
        f"per input sequence of {steps} steps (a run is {net.call_steps} steps: pipeline depth {net.depth} + "
        f"{steps}); spikes from {backend} ({mode}), averaged over {batch} sequence(s)",
    ]
    return report
