"""snc's graph IR: one graph type that every pass reads and writes.

Nodes (all carry a ``name`` that traces to the NIR node and torch module):

- ``HostInput``: a tensor the host computes per denoiser call and holds
  constant over the spiking steps (the analog image, time-embedding biases).
- ``Linear``: a real-valued op with a bias (conv, affine, scale, upsample,
  flatten) as imported from NIR; ``placement`` is set by ``partition_host``.
  A ``gain`` (SDM's TSM, NIR's ``snc.StepScale``) multiplies ``op(x)`` by
  gain[t] at logical step t; a ``lag`` (NIR's ``Delay`` of k steps) outputs at
  step t its input of step t - k (0 before). After ``reassociate`` no Linear
  node is left.
- ``Population``: spiking neurons (IF/LIF/CubaLIF: threshold, voltage decay,
  current decay, a bias) or a ``relay`` inserted by ``balance_delays``; with
  role ``graded`` a *sum population* (``reassociate`` with
  ``--residual graded``): each step its value is the sum of its inputs plus
  its bias, sent as a graded spike (a real value; in fixed point an integer
  payload), no threshold and no state from one step to the next.
- ``Readout``: the graph's output, read by the host every step; its
  ``filters`` (NIR's non-spiking LI / I / CubaLI output neurons) integrate
  what it reads on the host (``netlist.ReadoutFilter``).

Per-step values (TSM): an edge's ``gain`` [T] multiplies its current at
logical step t; a bias is either full-shape (the same every step) or
[T, *shape] (one per logical step, ``bias_at``).

Gates (NIR's ``snc.Gate``, paper 000's expert weights): a Linear or edge
with a ``gate`` key multiplies its current at logical step t by the host's
per-call value g[key][t] (on top of any ``gain``); ``Graph.gates`` holds
every key's values per diffusion step, [steps, T] (``specialise_selection``).

Recurrence: an edge with ``lag`` k > 0 carries the source's spikes of step
t - k into step t of the target (a lateral / recurrent synapse, or a
feed-forward delay). Cycles are
allowed only through lags: ``topological`` orders the graph without the
lagged edges and the edges into lagged Linear nodes.

Edges carry a ``LinearOp``. Before ``reassociate`` they are identities between
nodes (NIR's edges: inputs of a node are summed). After it, an edge from a
Population is an on-chip synapse (its op is the composed weight map, ``delay``
the extra steps ``balance_delays`` gave it), an edge from a HostInput is a
host-computed current (its op costs MACs on the host), and ``origin`` names
the NIR nodes the synapse was composed from.

Passes fill the ``fixed`` dicts (integer parameters); each pass records
what it did in ``graph.log`` and the pass manager its name in
``graph.passes``. The target's lowering (one of the last passes) puts the
netlist of each arithmetic mode into ``graph.netlists``: from there on the
netlist, not the IR, is what a build holds and every consumer reads.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Iterator, Optional, Union

import networkx as nx
import numpy as np

from snc.errors import GraphError

from .gates import gates_at
from .linear import LinearOp, Shape
from .readout import ReadoutFilter

if TYPE_CHECKING:
    from .netlist import Netlist


@dataclass
class HostInput:
    name: str
    shape: Shape


@dataclass
class Linear:
    name: str
    op: LinearOp
    bias: np.ndarray  # full output shape
    placement: str = ""  # "host" or "chip" after partition_host
    gain: Optional[np.ndarray] = None  # [T]: output gain[t] * op(x) + bias at logical step t
    lag: int = 0  # NIR Delay: the output at step t is the input of step t - lag
    gate: str = ""  # snc.Gate: the output is also multiplied by the host's per-call g[gate][t]


@dataclass
class Population:
    name: str
    shape: Shape
    threshold: float
    decay: float  # v <- decay * v + u + bias; 1.0 is integrate-and-fire
    bias: np.ndarray  # full shape, added every step, or [T, *shape] per logical step
    role: str = "neuron"  # neuron | relay | and (a spike AND: memoryless, threshold 1.5 on unit inputs) | graded
    depth: int = -1  # steps after the call's first step at which logical step 0 is integrated
    scale: float = 1.0  # fold_thresholds: integer units per unit of model current
    fixed: dict[str, Any] = field(default_factory=dict)  # quantize: vth, du, dv, bias_mant, bias_exp
    current_decay: float = 0.0  # u <- current_decay * u + input (CubaLIF's synaptic current); 0: u is the input
    subtractive_reset: bool = False  # a spike subtracts the threshold from v (else v = 0): ANN-to-SNN conversion
    payload_shift: int = 0  # graded: fold_thresholds' right shift from the value's scale to its payload's

    @property
    def graded(self) -> bool:
        return self.role == "graded"

    @property
    def payload_scale(self) -> float:
        """Integer units per model unit of what the population sends: 1 for spikes, its payload's for graded."""
        return self.scale / 2**self.payload_shift if self.graded else 1.0


@dataclass
class Readout:
    name: str
    shape: Shape
    bias: np.ndarray  # added on the host; full shape or [T, *shape]
    depth: int = -1
    scale: float = 1.0
    filters: tuple[ReadoutFilter, ...] = ()  # host-side integration of what it reads, in order
    fixed: dict[str, Any] = field(default_factory=dict)  # center_shifts: offset (integer units the host adds)


Node = Union[HostInput, Linear, Population, Readout]


def bias_at(node: Union[Population, Readout], t: int) -> np.ndarray:
    """The node's bias at logical step t (full shape)."""
    b = np.asarray(node.bias)
    return b if b.shape == tuple(node.shape) else b[t]


@dataclass
class Edge:
    src: str
    dst: str
    op: LinearOp
    delay: int = 0  # extra steps beyond the one every Lava synapse adds
    origin: tuple[str, ...] = ()
    fixed: dict[str, Any] = field(default_factory=dict)  # quantize: weight (int), weight_exp, gain, gain_shift
    part: str = ""  # split_signs: "+" / "-" half; reassociate: "#k" for a k-th unmergeable term
    gain: Optional[np.ndarray] = None  # [T]: the current at logical step t is gain[t] * op(x)
    lag: int = 0  # the target's step t reads the source's spikes of step t - lag (1: recurrent)
    gate: str = ""  # the current is also multiplied by the host's per-call g[gate][t]

    @property
    def name(self) -> str:
        return f"{self.src}->{self.dst}{self.part}" + (f"@{self.delay}" if self.delay else "")


@dataclass
class Graph:
    nodes: dict[str, Node]
    edges: list[Edge]
    timestep: int  # spiking steps T per denoiser call
    arch: str = ""
    log: list[dict[str, Any]] = field(default_factory=list)
    gates: dict[str, np.ndarray] = field(default_factory=dict)  # key -> [diffusion steps, T], what runs
    model_gates: dict[str, np.ndarray] = field(default_factory=dict)  # the model's values, where specialised differs
    passes: list[str] = field(default_factory=list)  # the passes applied, in order (the pass manager's record)
    source: str = ""  # nir_io.digest of the NIR graph it was imported from
    netlists: dict[str, "Netlist"] = field(default_factory=dict)  # mode -> the target's lowering (the last passes)

    # --- queries -------------------------------------------------------------------------
    def of_type(self, kind: type) -> Iterator[Any]:
        return (n for n in self.nodes.values() if isinstance(n, kind))

    def into(self, name: str) -> list[Edge]:
        return [e for e in self.edges if e.dst == name]

    def topological(self) -> list[str]:
        """Nodes in an order where every node comes after the sources it reads at the same step."""
        g = nx.MultiDiGraph()
        g.add_nodes_from(self.nodes)
        g.add_edges_from((e.src, e.dst) for e in self.edges
                         if not e.lag and not getattr(self.nodes.get(e.dst), "lag", 0))
        if not nx.is_directed_acyclic_graph(g):
            cycle = " -> ".join(a for a, *_ in nx.find_cycle(g))
            raise GraphError(f"the graph has a cycle without a delay ({cycle}): a recurrent connection "
                             "needs a delay of at least one step (NIR Delay)")
        return list(nx.topological_sort(g))

    def spike_paths(self) -> list[tuple[str, str, str]]:
        """(source population, target population or readout, gate key or "") for every path of spikes
        through Linear nodes (none after ``reassociate``: then one per edge); a path passes at most one gate."""
        paths = []
        leaving = self.edges_from()

        def walk(start: str, node: str, gate: str, seen: frozenset) -> None:
            for e in leaving.get(node, []):
                dst = self.nodes[e.dst]
                passed = e.gate or getattr(dst, "gate", "") or gate
                if isinstance(dst, Linear):
                    if e.dst not in seen:
                        walk(start, e.dst, passed, seen | {e.dst})
                elif isinstance(dst, (Population, Readout)):
                    paths.append((start, e.dst, passed))

        for p in self.of_type(Population):
            walk(p.name, p.name, "", frozenset())
        return paths

    def edges_from(self) -> dict[str, list[Edge]]:
        """Edges grouped by their source."""
        out: dict[str, list[Edge]] = {}
        for e in self.edges:
            out.setdefault(e.src, []).append(e)
        return out

    def gate_keys(self) -> list[str]:
        """Every snc.Gate key on an edge or Linear node, sorted."""
        return sorted({getattr(x, "gate", "") for x in (*self.edges, *self.nodes.values())} - {""})

    def gates_at(self, step: int) -> dict[str, np.ndarray]:
        """Every (specialised) gate's values [T] for diffusion step ``step``."""
        return gates_at(self.gates, step)

    @property
    def readout(self) -> Readout:
        found = list(self.of_type(Readout))
        if len(found) != 1:
            raise GraphError(f"the graph needs exactly one output, it has {len(found)}")
        return found[0]

    @property
    def depth(self) -> int:
        """Steps from a call's first step until the readout sees logical step 0."""
        return self.readout.depth

    # --- structural check run after every pass --------------------------------------------
    def check(self) -> None:
        problems = []
        for e in self.edges:
            for end in (e.src, e.dst):
                if end not in self.nodes:
                    problems.append(f"edge {e.name}: no node {end!r}")
            if e.src in self.nodes and e.dst in self.nodes:
                src, dst = self.nodes[e.src], self.nodes[e.dst]
                if e.op.n_in != _size(src) or e.op.n_out != _size(dst, into=True):
                    problems.append(f"edge {e.name}: op {e.op.in_shape}->{e.op.out_shape} does not join the nodes")
                if isinstance(dst, HostInput):
                    problems.append(f"edge {e.name} enters host input {e.dst}")
            if e.delay < 0 or e.lag < 0:
                problems.append(f"edge {e.name}: negative delay or lag")
            problems += _gain_problems(e.name, e.gain, self.timestep)
        for n in self.nodes.values():
            bias = getattr(n, "bias", None)
            if bias is not None and not np.all(np.isfinite(bias)):
                problems.append(f"{n.name}: non-finite bias")
            if isinstance(n, (Population, Readout)) and np.shape(bias) not in (tuple(n.shape),
                                                                              (self.timestep, *n.shape)):
                problems.append(f"{n.name}: bias of shape {np.shape(bias)}, not {tuple(n.shape)} or per step")
            if isinstance(n, Linear):
                problems += _gain_problems(n.name, n.gain, self.timestep)
        if problems:
            raise GraphError("IR check failed:\n  " + "\n  ".join(problems))
        self.topological()


def _gain_problems(name: str, gain: Optional[np.ndarray], timestep: int) -> list[str]:
    if gain is None:
        return []
    if np.shape(gain) != (timestep,):
        return [f"{name}: per-step gain of shape {np.shape(gain)}, not ({timestep},)"]
    return [] if np.all(np.isfinite(gain)) else [f"{name}: non-finite per-step gain"]


def _size(node: Node, into: bool = False) -> int:
    if isinstance(node, Linear):
        return node.op.n_in if into else node.op.n_out
    return int(np.prod(node.shape))


