"""Split mixed-sign synapses into an excitatory and an inhibitory synapse.

Lava (and Loihi) store a synapse group's weights as 8-bit values; when a
group has both signs the low bit is dropped, leaving 7 magnitude bits, and
one exponent serves the whole group. Splitting a group by sign gives each
part the full 8 bits and its own exponent (for a conv kernel, roughly halving
the quantization error). The parts have disjoint non-zero weights, so the
number of connections is unchanged, except after nearest upsampling, where a
synapse summing taps of both signs appears in both parts; the number of
synapse processes grows.

Requires: scales (runs just before ``quantize``). Guarantees: every on-chip
edge's weights have one sign; split parts are named with ``part`` "+" / "-";
the float function is unchanged (the parts sum to the original weights).
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from snc.errors import GraphError

from ..ir import Edge, Graph, Population
from ..pass_manager import CompileContext, Pass


def run(graph: Graph, ctx: CompileContext) -> Graph:
    edges: list[Edge] = []
    split = []
    for e in graph.edges:
        w = e.op.weight
        if not isinstance(graph.nodes[e.src], Population) or w is None or not (w.min() < 0 < w.max()):
            edges.append(e)
            continue
        for part, kept in (("+", np.where(w > 0, w, 0.0)), ("-", np.where(w < 0, w, 0.0))):
            edges.append(replace(e, op=replace(e.op, weight=kept), part=e.part + part, fixed={}))
        split.append(e.name)
    graph.edges = edges
    graph.log.append({"pass": "split_signs", "split": split})
    return graph


def verify(graph: Graph, ctx: CompileContext) -> None:
    graph.check()
    mixed = [e.name for e in graph.edges if isinstance(graph.nodes[e.src], Population)
             and e.op.weight is not None and e.op.weight.min() < 0 < e.op.weight.max()]
    names = [e.name for e in graph.edges]
    if mixed or len(set(names)) != len(names):
        raise GraphError(f"split_signs left mixed-sign or duplicate synapses: {', '.join(mixed) or 'duplicates'}")


PASS = Pass("split_signs", run, verify, requires=("scales",), provides=("single-sign",))
