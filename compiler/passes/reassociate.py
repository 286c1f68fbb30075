"""Re-associate real-valued edges so that every on-chip synapse carries spikes.

SDDPM's residual stream and skip concatenations are real-valued: a 1x1
shortcut conv acts on a sum of conv outputs, a block's neurons read a sum of
several blocks' outputs. Linear maps distribute over sums, so each real-valued
node is expanded into a sum of terms ``op(spikes of population q)`` plus a
constant bias, and ops are composed along the way (a 1x1 shortcut into the
conv feeding it, nearest upsampling into the following conv as a
fractionally-strided kernel, affine into affine). Terms from the same source
with the same geometry are added into one synapse.

Per-step gains (SDM's TSM) multiply along a path: a term's ``gain`` is the
product of the gains of the ops it went through, a bias that passes a gained
op becomes a bias per logical step, and terms merge only when their gains are
equal (a residual stream sums paths with different gains: they stay separate
synapses, tagged ``#k``).

A gated op (``snc.Gate``) tags every term through it with its key (a gain
of ones marks it as re-programmable); a path through two gates, or a bias
through a gate, has no lowering (the exporter feeds a gated op's bias as a
host input). Terms merge only when their gates are the same.

A lagged op (NIR Delay) adds its lag to every term through it: the edge
reads its source's spikes of earlier steps (a recurrent synapse). Its inputs
must be spikes: a delayed real value would need state on the chip.

With ``--residual graded`` (``CompileOptions.residual``) a real-valued node
on chip that is read more than once, and whose value depends on spikes,
becomes a *sum population* instead (``Population`` role ``graded``, the
node's name): its terms are its input synapses, and its readers get one
identity term on it, a graded synapse carrying its value every step. Each
op is then stored and computed once (a U-Net block's convs are not copied
into every later block that reads the residual stream), at the price of a
pipeline step per sum population and of a graded payload's rounding.

The composed weights are held until the pass ends: when their bytes pass the memory this machine had
available as the pass began, it stops with one error (a lateral transformer of CIFAR size would need a
copy of every expert's output conv per later block), instead of being killed by the kernel.

Requires: ``partition_host`` placements.
Guarantees: no Linear node is left. Every edge goes from a Population (an
on-chip synapse whose input is binary spikes, or a graded population's
value) or from a HostInput (a current
the host computes per call, charged as MACs) into a Population or the
Readout; each edge's ``origin`` lists the NIR ops composed into it and its
``gain`` the product of their per-step gains. Biases of the removed ops,
pushed through the ops after them (border-exact), are added to the bias of the
population or readout they reach (per step when a gain touched them); into a
CubaLIF population (current decay) the bias belongs to its synaptic current,
so it arrives through a synapse from an added neuron ``<population>.input_bias``
that spikes every step. The float
function of the graph is unchanged (tests compare with the NIR reference).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch

from snc.errors import GraphError
from snc.memory import available_mb

from ..ir import Edge, Graph, HostInput, Linear, Population, Readout
from ..linear import LinearOp, add_ops, compose
from ..pass_manager import RESIDUALS, CompileContext, Pass


@dataclass
class _Term:
    source: str
    op: LinearOp
    origin: tuple[str, ...]
    gain: Optional[np.ndarray] = None  # [T] per logical step
    lag: int = 0  # steps between the source's spikes and their effect
    gate: str = ""  # snc.Gate key the term passed


@dataclass
class _Form:
    """A real-valued tensor as sum(term.gain[t] * term.op(source)) + bias[t]; bias [1 or T, *shape]."""

    terms: list[_Term]
    bias: np.ndarray


def _times(a: Optional[np.ndarray], b: Optional[np.ndarray]) -> Optional[np.ndarray]:
    if a is None or b is None:
        return b if a is None else a
    return a * b


def _same_gain(a: Optional[np.ndarray], b: Optional[np.ndarray]) -> bool:
    return (a is None and b is None) or (a is not None and b is not None and np.array_equal(a, b))


def _apply_bias(op: LinearOp, bias: np.ndarray) -> np.ndarray:
    x = torch.as_tensor(bias, dtype=torch.float64).reshape(-1, *op.in_shape)
    return op.apply(x).reshape(-1, *op.out_shape).numpy()


def _through(form: _Form, op: LinearOp, name: str | None, gain: Optional[np.ndarray] = None, lag: int = 0,
             gate: str = "") -> _Form:
    if gate:
        twice = sorted({t.gate for t in form.terms if t.gate})
        if twice:
            raise GraphError(f"{name}: a path through two gates ({twice[0]}, {gate}) has no lowering")
        if np.any(form.bias != 0):
            raise GraphError(f"{name}: a bias through a gate has no lowering; feed it as a host input")
    terms = [_Term(t.source, compose(op, t.op), t.origin + ((name,) if name else ()), _times(t.gain, gain), t.lag + lag,
                   t.gate or gate) for t in form.terms]
    bias = _apply_bias(op, form.bias)
    if gain is not None:
        bias = bias * gain.reshape(-1, *([1] * len(op.out_shape)))
    return _Form(terms, bias)


def _sum(forms: list[_Form], shape: tuple) -> _Form:
    terms: list[_Term] = []
    bias = np.zeros((1, *shape))
    for form in forms:
        bias = bias + form.bias.reshape(-1, *shape)
        for term in form.terms:
            for i, kept in enumerate(terms):
                same = kept.source == term.source and kept.lag == term.lag and kept.gate == term.gate \
                    and _same_gain(kept.gain, term.gain)
                merged = add_ops(kept.op, term.op) if same else None
                if merged is not None:
                    origin = kept.origin + tuple(o for o in term.origin if o not in kept.origin)
                    terms[i] = _Term(kept.source, merged, origin, kept.gain, kept.lag, kept.gate)
                    break
            else:
                terms.append(term)
    return _Form(terms, bias)


def _bias_source(name: str, node: Population, bias: np.ndarray) -> Population:
    """A neuron that spikes every step, to carry a CubaLIF population's input bias into its synaptic current
    u (Lava adds a neuron's own bias to v, where it would skip the current's rise from 0)."""
    if bias.shape[0] != 1:
        raise GraphError(f"{name}: a bias per step into a CubaLIF population's current has no lowering")
    return Population(f"{name}.input_bias", (1,), threshold=0.5, decay=0.0, bias=np.ones(1))


def _read_twice_from_chip(node: Linear, form: _Form, readers: dict[str, int], nodes: dict) -> bool:
    """A chip node read by more than one edge whose value depends on the chip's populations (``nodes``: those
    made so far, sum populations included)."""
    return node.placement == "chip" and readers.get(node.name, 0) > 1 and \
        any(isinstance(nodes.get(t.source), Population) for t in form.terms)


def run(graph: Graph, ctx: CompileContext) -> Graph:
    return reassociate(graph, ctx.options.residual)


class _WeightBudget:
    """Bytes of the composed weights the pass holds, against half the memory available when it began: later
    passes hold a second copy of them (``split_signs``' parts, ``quantize``'s integers), so a build past half
    would end in the kernel's OOM killer rather than in this error."""

    def __init__(self, residual: str, available: Optional[float]) -> None:
        self.residual, self.held, self.seen = residual, 0, set()
        self.available, self.limit = available, available / 2 if available is not None else None

    def add(self, name: str, form: _Form) -> None:
        for term in form.terms:
            w = term.op.weight
            if w is not None and id(w) not in self.seen:
                self.seen.add(id(w))
                self.held += w.nbytes
        if self.limit is not None and self.held / 2**20 > self.limit:
            hint = "; --residual graded stores each op once" if self.residual == "reassociate" else ""
            raise GraphError(f"re-association holds {self.held / 2**30:.1f} GiB of composed weights at {name}, more "
                             f"than half the {max(self.available, 0) / 1024:.1f} GB this machine had available (later "
                             f"passes copy them){hint}")


def reassociate(graph: Graph, residual: str) -> Graph:
    """The pass; ``residual`` graded keeps every real-valued node read twice as a sum population."""
    if residual not in RESIDUALS:
        raise GraphError(f"unknown residual lowering {residual!r}; use {' or '.join(RESIDUALS)}")
    budget = _WeightBudget(residual, available_mb())
    forms: dict[str, _Form] = {}
    new_edges: list[Edge] = []
    nodes = {}
    graded: list[str] = []
    readers: dict[str, int] = {}
    for e in graph.edges:
        readers[e.src] = readers.get(e.src, 0) + 1
    before = sum(n.op.synapse_count() for n in graph.of_type(Linear) if n.placement == "chip")

    def form_of(name: str) -> _Form:
        node = graph.nodes[name]
        if name not in forms and isinstance(node, (HostInput, Population)):  # its own value: nothing upstream
            forms[name] = _Form([_Term(name, LinearOp.identity(node.shape), ())], np.zeros((1, *node.shape)))
        return forms[name]

    def inputs_of(name: str, shape: tuple) -> _Form:
        return _sum([_through(form_of(e.src), e.op, None) for e in graph.into(name)], shape)

    def terms_into(name: str, node: Population | Readout, form: _Form) -> None:
        """The node's input edges, one per term of ``form``, and its bias plus the form's."""
        if isinstance(node, Population) and node.current_decay and np.any(form.bias != 0):
            source = _bias_source(name, node, form.bias)
            nodes[source.name] = source
            form = _Form(form.terms + [_Term(source.name, LinearOp.dense(form.bias.reshape(-1, 1), (1,),
                                                                         node.shape), ("bias",))],
                         np.zeros_like(form.bias))
        bias = np.asarray(node.bias, dtype=np.float64).reshape(-1, *node.shape) + form.bias
        node.bias = bias[0] if len(bias) == 1 else bias
        seen: dict[str, int] = {}
        for term in form.terms:  # same source twice only when geometries or gains differ
            seen[term.source] = seen.get(term.source, 0) + 1
            tag = f"#{seen[term.source]}" if seen[term.source] > 1 else ""
            new_edges.append(Edge(term.source, name, term.op, origin=term.origin, part=tag, gain=term.gain,
                                  lag=term.lag, gate=term.gate))
        nodes[name] = node

    for name in graph.topological():
        node = graph.nodes[name]
        if isinstance(node, Linear):
            if node.lag:  # ordered without its inputs: they must be spikes, whose form is their own
                real = [e.src for e in graph.into(name) if not isinstance(graph.nodes[e.src], Population)]
                if real:
                    raise GraphError(f"{name}: a delay of real values ({', '.join(real)}) has no lowering; "
                                     "delay spikes (put the Delay right after a neuron)")
            pre = inputs_of(name, node.op.in_shape)
            out = _through(pre, node.op, name, node.gain, node.lag, node.gate)
            forms[name] = _Form(out.terms, out.bias + node.bias.reshape(1, *node.op.out_shape))
            budget.add(name, forms[name])
            if residual == "graded" and _read_twice_from_chip(node, forms[name], readers, nodes):
                shape = node.op.out_shape
                terms_into(name, Population(name, shape, threshold=0.0, decay=0.0, bias=np.zeros(shape),
                                            role="graded"), forms[name])
                forms[name] = _Form([_Term(name, LinearOp.identity(shape), ())], np.zeros((1, *shape)))
                graded.append(name)
        elif isinstance(node, (Population, Readout)):
            terms_into(name, node, inputs_of(name, node.shape))
        else:
            nodes[name] = node
    graph.nodes = nodes
    graph.edges = new_edges
    after = sum(e.op.synapse_count() for e in new_edges if isinstance(nodes[e.src], Population))
    graph.log.append({
        "pass": "reassociate",
        "residual": residual,
        "graded": graded,
        "synapses_before": before,
        "synapses_after": after,
        "rewritten": [
            {"edge": e.name, "through": list(e.origin), "op": e.op.describe(), "synapses": e.op.synapse_count()}
            for e in new_edges if len(e.origin) > 1 and isinstance(nodes[e.src], Population)
        ],
    })
    return graph


def verify(graph: Graph, ctx: CompileContext) -> None:
    graph.check()
    problems = [f"{n.name}: Linear node left" for n in graph.of_type(Linear)]
    for e in graph.edges:
        if not isinstance(graph.nodes[e.src], (Population, HostInput)):
            problems.append(f"edge {e.name}: source is not a population (spikes, a graded value) or a host input")
        if e.gate and not isinstance(graph.nodes[e.src], Population):
            problems.append(f"edge {e.name}: a host current through gate {e.gate} (gate its source on the host)")
        if not isinstance(graph.nodes[e.dst], (Population, Readout)):
            problems.append(f"edge {e.name}: target is not a population or the readout")
    if problems:
        raise GraphError("reassociate left a real-valued edge on chip:\n  " + "\n  ".join(problems))


PASS = Pass("reassociate", run, verify, requires=("placement",), provides=("spike-synapses",))
