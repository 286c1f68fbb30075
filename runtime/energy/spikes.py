"""Spike counts and the SOPs they cost, from denoiser calls on any backend.

Calls run on calibration inputs (digits noised at diffusion steps spread
over t). Per call and image: each population's spikes per neuron (a model
run has no relays: each repeats its source's spikes, and a population the
selection switches off does not run on the chip; nor sum populations: each
sends its real value every step), the exact SOPs (spikes
times each neuron's fan-out in the netlist, gated synapses of a switched-off
expert not evaluated), the papers' ``fr x T x FLOPs`` per NIR layer and the
gates' multiplies.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Union

import numpy as np
import torch

from snc.compiler.frontends.base import HostProgram
from snc.compiler.nir_io import Gate
from snc.errors import SncError

from ..backends.base import Runner
from .counted import LoweredCount, NirLayer, NirLevelCount, NirModel

CALIBRATION_FRACTIONS = (0.1, 0.3, 0.5, 0.7, 0.9)
Counted = Union[LoweredCount, NirLevelCount]


@dataclass
class SpikeCounts:
    """Mean spikes per neuron per (image, denoiser call), summed over the T steps, and the SOPs they cost.

    SOPs are counted call by call: a gated synapse (or NIR layer) whose gate
    is 0 for a whole call is not evaluated in that call (the selection
    switched its expert off; on a chip its axons are not routed).
    """

    backend: str
    images: int
    timesteps: list[int]
    per_neuron: dict[str, np.ndarray]  # population -> [n_neurons] float64
    sops_exact: dict[str, float] = field(default_factory=dict)  # per source population
    layer_sops: dict[str, float] = field(default_factory=dict)  # the papers' fr x T x FLOPs per NIR layer
    specialised: bool = True
    layer_active: dict[str, float] = field(default_factory=dict)  # fraction of calls a gated layer ran
    gate_macs: dict[str, float] = field(default_factory=dict)  # "exact" / "papers": gate multiplies per call

    def total(self, population: str) -> float:
        return float(self.per_neuron[population].sum())


def calibration_pairs(host: HostProgram, n: int, seed: int,
                      fractions: tuple[float, ...] = CALIBRATION_FRACTIONS) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return host.call_pairs(n, fractions, seed)


def exact_sops(fan_out: dict[str, np.ndarray], per_neuron: dict[str, np.ndarray]) -> dict[str, float]:
    """SOPs per source population: each neuron's spikes times its fan-out."""
    return {name: float(per_neuron[name] @ f) for name, f in fan_out.items()}


def layer_sops(layer: NirLayer, per_neuron: dict[str, np.ndarray], timestep: int) -> float:
    """The papers' ``fr x T x FLOPs`` of a layer reading spikes (``per_neuron``: its source's counts)."""
    counts = per_neuron[layer.source]
    rate = counts.sum() / (counts.size * timestep)
    return float(rate * timestep * layer.flops)


def tally_calls(runner: Runner, counted: Counted, model: NirModel, pairs: list, specialised: bool) -> SpikeCounts:
    """Run every (x, t) call on ``runner`` (recording) and count spikes and SOPs per call."""
    if not pairs:
        raise SncError("no calls to count spikes on")
    T = counted.timestep
    layers = [layer for layer in model.layers if layer.reads == "spikes"]
    populations = [(name, shape, role) for name, shape, role, _ in counted.nodes() if role != "readout"]
    sums = {name: np.zeros(int(np.prod(shape))) for name, shape, _ in populations}
    sops = {name: 0.0 for name in sums}
    by_layer = {layer.name: 0.0 for layer in layers}
    active = {layer.name: 0.0 for layer in layers if layer.gate}
    gate_macs = {"exact": 0.0, "papers": 0.0}
    fans: dict[frozenset, dict[str, np.ndarray]] = {}  # fan-outs per set of gates off
    gated_outputs = [(g.key, int(np.prod(g.input_shape))) for g in model.nir_graph.nodes.values()
                     if isinstance(g, Gate)]
    for x, t in pairs:
        step = int(t[0])
        runner(x.double(), t)
        spikes = runner.last.spikes
        call = {name: s.reshape(s.shape[0], s.shape[1], -1).sum(axis=(0, 1)) for name, s in spikes.items()}
        if not runner.runs_netlist:  # the model: as the chip runs it
            for name in counted.switched_off(step) if specialised else ():
                call[name] = np.zeros_like(call[name])  # the chip does not run it
            for name, shape, role in populations:  # a relay repeats its source's spikes, delayed
                if role == "relay":
                    call[name] = call[counted.relay_source(name)]
                elif role == "graded":  # a sum population's real value: sent every step (0 only by chance)
                    call[name] = np.full(int(np.prod(shape)), float(T * len(x)))
        off = frozenset(counted.gates_off(step) if specialised else ())  # without: every expert runs, weighted
        if counted.lowered and off not in fans:
            fans[off] = counted.fan_outs(off)
        for name, value in call.items():
            sums[name] += value
        if counted.lowered:
            for name, value in exact_sops(fans[off], call).items():
                sops[name] += value
        for layer in layers:
            if layer.gate not in off:
                by_layer[layer.name] += layer_sops(layer, call, T)
                if layer.gate:
                    active[layer.name] += 1 / len(pairs)
        # a gated output is multiplied by its gate every step (per image), in the calls it runs
        gate_macs["exact"] += counted.gated_macs(off) / len(pairs)
        gate_macs["papers"] += sum(size * T for key, size in gated_outputs if key not in off) / len(pairs)
    calls = len(pairs) * len(pairs[0][0])
    return SpikeCounts(runner.backend, len(pairs[0][0]), [int(t[0]) for _, t in pairs],
                       {k: v / calls for k, v in sums.items()},
                       {k: v / calls for k, v in sops.items()} if counted.lowered else {},
                       {k: v / calls for k, v in by_layer.items()}, specialised, active, gate_macs)
