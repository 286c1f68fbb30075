"""What an energy report counts on: a build's netlist, or a model's imported NIR graph.

``LoweredCount`` reads the fixed-point netlist of a build (what the
backends run: re-associated, delayed and sign-split synapses with their
integer weights, relays, the pipeline). ``NirLevelCount`` reads a model's
NIR graph imported into the IR without compiling it (the papers' method for
models too large to compile here: no exact SOPs, relays or pipeline).
``NirModel`` is that import, made once per report: the papers' layers
(``nir_layers``), TSM's per-conv scales and, for the NIR-level count, the
populations.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import nir
import numpy as np

from snc.compiler.gates import gates_off, switched_off
from snc.compiler.ir import Graph, HostInput, Linear, Population
from snc.compiler.netlist import Netlist
from snc.compiler.nir_io import StepScale
from snc.compiler.passes import import_nir, map_cores, partition_host, specialise_selection


@dataclass
class NirLayer:
    name: str  # the NIR node (torch module, BatchNorm folded)
    kind: str  # e.g. "conv3x3/s1", "conv3x3/s1 after nearest x2", "dense"
    flops: int  # MACs of one evaluation, as an ANN counts them
    reads: str  # "spikes" | "host" (constant over a call) | "real" (real-valued, every step)
    source: str = ""  # the population whose spikes it reads (reads == "spikes")
    gate: str = ""  # the snc.Gate its output passes (an expert's), if any


class NirModel:
    """A NIR graph imported (and host-partitioned) once: its layers as the papers count them, TSM's scales
    (``tsm_macs``: every output of every scaled conv, every step, on chip and on the host) and, with
    ``keep_graph``, the imported graph itself (the NIR-level count; else it is let go: its float64 weights
    are as large as the model)."""

    def __init__(self, nir_graph: nir.NIRGraph, timestep: int, arch: str = "", keep_graph: bool = False,
                 imported: Optional[Graph] = None) -> None:
        """``imported``: the graph as ``partition_host`` left it, when a compile has just imported it (it is
        read here, not kept)."""
        self.nir_graph = nir_graph
        self.timestep = timestep
        graph = imported or partition_host.run(import_nir.import_graph(nir_graph, timestep, arch), None)
        self.layers = nir_layers(graph)
        self.step_scales = {n for n, node in nir_graph.nodes.items() if isinstance(node, StepScale)}
        self.tsm_macs = {place: sum(n.op.n_out * timestep for n in graph.of_type(Linear)
                                    if n.gain is not None and not n.gate and n.placement == place)
                         for place in ("chip", "host")}
        self.graph: Optional[Graph] = graph if keep_graph else None


def nir_layers(graph: Graph) -> list[NirLayer]:
    """The arithmetic layers of an imported (host-partitioned) NIR graph and the kind of values each reads.

    Values are followed through ops that only move data (reshapes, nearest
    upsampling): a conv after an upsampling of spikes reads spikes. A layer
    reading a sum of several streams reads real (graded) values.
    """
    gate_after = {e.src: node.gate for node in graph.of_type(Linear) if node.gate for e in graph.into(node.name)}
    value: dict[str, tuple[str, str, str]] = {}  # node -> (reads, source population, note on the way)
    layers = []
    for name in graph.topological():
        node = graph.nodes[name]
        # a delay (lag) is ordered before its sources, which are populations: it reads spikes
        inputs = [value.get(e.src, ("spikes", e.src, "")) for e in graph.into(name)]
        if isinstance(node, Population):
            value[name] = ("spikes", name, "")
        elif isinstance(node, HostInput):
            value[name] = ("host", "", "")
        elif isinstance(node, Linear):
            if len(inputs) == 1:
                reads, source, note = inputs[0]
            else:
                reads, source, note = ("host" if all(v[0] == "host" for v in inputs) else "real"), "", ""
            if node.op.moves_only:
                if node.op.kind == "conv" and node.op.upsample > 1:
                    note = f" after {'zero insertion' if node.op.zeros else 'nearest'} x{node.op.upsample}"
                value[name] = (reads, source, note)
                continue
            layers.append(NirLayer(name, node.op.describe() + note, node.op.dense_macs(), reads, source,
                                   gate_after.get(name, "")))
            value[name] = ("host" if reads == "host" else "real", "", "")
    return layers


class LoweredCount:
    """The netlist of a build, as the energy report counts it."""

    lowered = True

    def __init__(self, net: Netlist) -> None:
        self.net = net
        self.timestep, self.depth = net.timestep, net.depth
        self.gate_keys = net.gate_keys()
        self.has_gates = bool(net.gates)
        self.switched_off, self.gates_off, self.relay_source = net.switched_off, net.gates_off, net.relay_source

    def nodes(self) -> list[tuple[str, tuple[int, ...], str, int]]:
        """(name, shape, role, depth) of every population, then the readout (role "readout")."""
        r = self.net.readout
        return [(g.name, g.shape, g.role, g.depth) for g in self.net.groups.values()] + [(r.name, r.shape, "readout",
                                                                                          r.depth)]

    def fan_outs(self, gates_off: frozenset[str] | set[str] = frozenset()) -> dict[str, np.ndarray]:
        """Synapses leaving each neuron of every group over all its synapses (the target's integer
        weights), except those behind the gates in ``gates_off`` (not evaluated in a call where they are 0)."""
        out = {g.name: np.zeros(g.n, dtype=np.int64) for g in self.net.groups.values()}
        for s in self.net.synapses:
            if s.gate not in gates_off:
                out[s.src] += s.op.fan_out()
        return out

    def host_macs(self, step_scales: set[str]) -> dict[str, int]:
        """MACs per call of the host ops, by the NIR ops they were composed from (TSM scales aside)."""
        macs: dict[str, int] = {}
        for h in self.net.host_ops:
            if h.op.dense_macs():
                key = "+".join(o for o in h.origin if o not in step_scales) or h.src
                macs[key] = macs.get(key, 0) + h.op.dense_macs()
        return macs

    def gain_macs(self, place: str) -> int:
        """A multiply per output of every gained (ungated) synapse or host op, each of the T steps."""
        T = self.timestep
        if place == "chip":
            return sum(s.op.n_out * T for s in self.net.synapses if s.gain is not None and not s.gate)
        return sum(h.op.n_out * T for h in self.net.host_ops if h.gain is not None)

    def gated_macs(self, gates_off: set[str]) -> int:
        """A multiply per output of every gated synapse and step, in a call whose ``gates_off`` are 0."""
        return sum(s.op.n_out * self.timestep for s in self.net.synapses if s.gate and s.gate not in gates_off)

    def resources(self, profile: dict[str, Any]) -> dict[str, Any]:
        return map_cores.map_to_cores(self.net, profile)


class NirLevelCount:
    """A model's imported NIR graph with its gates specialised: populations, gates, no lowering."""

    lowered = False
    depth = 0  # no pipeline: a call is T steps

    def __init__(self, model: NirModel, gate_table: Optional[dict[str, np.ndarray]]) -> None:
        graph = model.graph
        specialise_selection.specialise(graph, gate_table if graph.gate_keys() else None)
        self.graph = graph
        self.timestep = graph.timestep
        self.gate_keys = graph.gate_keys()
        self.has_gates = bool(graph.gates)
        self._paths = graph.spike_paths()

    def nodes(self) -> list[tuple[str, tuple[int, ...], str, int]]:
        r = self.graph.readout
        return [(p.name, p.shape, p.role, p.depth) for p in self.graph.of_type(Population)] + [(r.name, r.shape,
                                                                                                "readout", r.depth)]

    def gates_off(self, step: int) -> set[str]:
        return gates_off(self.graph.gates, step)

    def switched_off(self, step: int) -> set[str]:
        """Populations every spike path into which (through the NIR ops) passes a gate 0 for the whole step."""
        return switched_off(((dst, gate) for _, dst, gate in self._paths), self.gates_off(step),
                            lambda name: isinstance(self.graph.nodes[name], Population))

    def host_macs(self, step_scales: set[str]) -> dict[str, int]:
        return {}  # the NIR graph's host ops are its layers (the papers' count)

    def gain_macs(self, place: str) -> int:
        return 0

    def gated_macs(self, gates_off: set[str]) -> int:
        return 0

    def resources(self, profile: dict[str, Any]) -> dict[str, Any]:
        return {"neurons": sum(int(np.prod(p.shape)) for p in self.graph.of_type(Population)),
                "synapses": sum(n.op.synapse_count() for n in self.graph.of_type(Linear)), "violations": []}
