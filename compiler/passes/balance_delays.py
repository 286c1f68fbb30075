"""Delay balancing and reset staggering.

In the model every population at spiking step t reads step t of its inputs;
on Lava every synapse adds one step. ``depth(p)`` is the call step (from 0)
at which population p integrates logical step 0: host currents arrive with no
latency, so populations fed only by the host have depth 0, and
``depth(p) = max(depth(q) + 1)`` over its synapses. A synapse from a
shallower population must be delayed by ``depth(p) - depth(q) - 1`` steps.

The delay is put on the source side, shared by all consumers: a relay
population ``<q>.delay<d>`` (memoryless neurons that fire exactly when q
fired; for a graded population's value, a graded population of that one
input) fed by an identity synapse with ``d - 1`` extra steps (Lava
DelaySparse); a delay beyond one synapse's ``max_delay`` goes through a
chain of relays. The expensive weight map then stays a plain synapse; the
delayed synapse carries one connection per neuron.

A lagged edge (``lag`` k: a recurrent loop or a feed-forward NIR Delay)
reads the source's spikes of k steps before: the synapse's own step already
delays them, so it needs ``depth(dst) - depth(src) - 1 + k`` extra steps (0
for a population's synapse onto itself with k = 1: Lava's one-step
recurrence is the model's update order; a feed-forward delay of k lets its
target start k - 1 steps before its source, never before step 0). Depths
come from the other edges; a recurrent edge that would need a negative delay
cannot be scheduled and is reported. The relay of a lagged edge sits at
``depth(dst) + k - 1``, up to k - 1 steps past the readout: the last k - 1
steps of its window carry spikes the lagged synapse does not pass, so a call
does not run them.

Requires: the re-associated graph. Guarantees: for every edge from a
population, ``depth(dst) == depth(src) + 1 + delay - lag``; delays only on identity
edges into relays, each at most the target's ``max_delay``; the readout
sees logical step 0 at call step ``graph.depth``; the target's
``max_delay`` is checked by its verifier and by ``map_cores``. Each population's LIFReset
offset is ``depth + 1`` within a call of ``depth + T`` steps, so each
population starts every call from zero state wherever its pipeline stage is.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from snc.errors import GraphError

from ..ir import Edge, Graph, HostInput, Population
from ..linear import LinearOp
from ..pass_manager import CompileContext, Pass

RELAY_THRESHOLD = 0.5  # fires on an input of 1 (one spike through a unit weight)


def run(graph: Graph, ctx: CompileContext) -> Graph:
    depth: dict[str, int] = {}
    for name in graph.topological():
        node = graph.nodes[name]
        if isinstance(node, HostInput):
            continue
        chip = [e for e in graph.into(name) if isinstance(graph.nodes[e.src], Population)]
        # a lagged edge from a population already ordered (a delay in a feed-forward path) counts too;
        # one from later in the order closes a loop and is scheduled from the others
        # (a lag k > 1 lets the target start before its source; host currents arrive at step 0, so no earlier)
        depth[name] = max(0, max((depth[e.src] + 1 - e.lag for e in chip if not e.lag or e.src in depth),
                                 default=0))
        node.depth = depth[name]
    relays: dict[tuple[str, int], str] = {}
    edges: list[Edge] = []
    inserted = []
    late = [f"{e.name} (lag {e.lag}, depths {depth[e.src]} -> {depth[e.dst]})" for e in graph.edges
            if isinstance(graph.nodes[e.src], Population) and depth[e.dst] - depth[e.src] - 1 + e.lag < 0]
    if late:
        raise GraphError("recurrent edges from populations deeper in the pipeline than their lag allows: "
                         + "; ".join(late))
    hop = ctx.target.rules.max_delay + 1  # the most steps one relay's synapse can span

    def relay(name: str, d: int) -> str:
        """The relay repeating ``name`` ``d`` steps later; beyond one synapse's delay, a chain of relays."""
        key = (name, d)
        if key not in relays:
            src = graph.nodes[name]
            feed = relay(name, d - hop) if d > hop else name
            delayed = f"{name}.delay{d}"
            # a graded source's relay is a sum population of one input: it repeats the value
            graph.nodes[delayed] = Population(delayed, src.shape, threshold=0.0 if src.graded else RELAY_THRESHOLD,
                                              decay=0.0, bias=np.zeros(src.shape),
                                              role="graded" if src.graded else "relay", depth=depth[name] + d)
            edges.append(Edge(feed, delayed, LinearOp.identity(src.shape), delay=d - 1 if d <= hop else hop - 1,
                              origin=(name,)))
            relays[key] = delayed
            inserted.append({"relay": delayed, "delay": d, "neurons": int(np.prod(src.shape))})
        return relays[key]

    for e in graph.edges:
        src = graph.nodes[e.src]
        d = depth[e.dst] - depth[e.src] - 1 + e.lag if isinstance(src, Population) else 0
        # the weights, gain and part stay on the synapse
        edges.append(replace(e, src=relay(e.src, d)) if d else e)
    graph.edges = edges
    graph.log.append({"pass": "balance_delays", "depth": graph.readout.depth, "relays": inserted})
    return graph


def verify(graph: Graph, ctx: CompileContext) -> None:
    graph.check()
    max_delay = ctx.target.rules.max_delay
    problems = []
    for e in graph.edges:
        src, dst = graph.nodes[e.src], graph.nodes[e.dst]
        if not isinstance(src, Population):
            continue
        if dst.depth != src.depth + 1 + e.delay - e.lag:
            problems.append(f"{e.name}: depth {src.depth} -> {dst.depth} with delay {e.delay}, lag {e.lag}")
        if e.delay and (e.op.kind != "identity" or getattr(dst, "role", "") not in ("relay", "graded")):
            problems.append(f"{e.name}: a delay outside a relay edge")
        if e.delay > max_delay:
            problems.append(f"{e.name}: delay {e.delay} exceeds the target's maximum {max_delay}")
    for node in list(graph.of_type(Population)) + [graph.readout]:
        if node.depth < 0:
            problems.append(f"{node.name}: no depth")
    if problems:
        raise GraphError("delay balancing failed:\n  " + "\n  ".join(problems))


PASS = Pass("balance_delays", run, verify, requires=("spike-synapses",), provides=("schedule",))
