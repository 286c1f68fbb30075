"""Lowering: the target's netlist of the compiled graph, in each arithmetic mode it runs.

The last compile step that changes what runs: ``ctx.target.lower(graph, mode)``
for every mode of the target (or those ``ctx.options.modes`` asks for; the
target's first, the chip's integers, always), each range-checked by the
target. From here on the netlist is the truth: the build stores it, and the
core mapping, energy reports, the compile table and every backend read it.

Requires: the guided, quantized, scheduled graph with its gate tables.
Guarantees: ``graph.netlists`` holds one netlist per mode, each with every
population as a group and every chip edge as a synapse, in the mode it names,
passing its target's check.
"""

from __future__ import annotations

from snc.errors import GraphError, SncError

from ..ir import Graph, HostInput, Population
from ..pass_manager import CompileContext, Pass


def modes(ctx: CompileContext) -> tuple[str, ...]:
    """The modes to lower, in the target's order."""
    asked = ctx.options.modes or ctx.target.modes
    unknown = sorted(set(asked) - set(ctx.target.modes))
    if unknown or ctx.target.modes[0] not in asked:  # the chip's mode: what the core mapping counts
        raise SncError(f"lowering modes {', '.join(asked)}: {ctx.target.name} has {', '.join(ctx.target.modes)} "
                       f"and needs {ctx.target.modes[0]}")
    return tuple(m for m in ctx.target.modes if m in asked)


def run(graph: Graph, ctx: CompileContext) -> Graph:
    graph.netlists = {mode: ctx.target.lower(graph, mode) for mode in modes(ctx)}
    return graph


def verify(graph: Graph, ctx: CompileContext) -> None:
    graph.check()
    if tuple(graph.netlists) != modes(ctx):
        raise GraphError(f"lowering made netlists for {sorted(graph.netlists)}, not {list(modes(ctx))}")
    populations = {p.name for p in graph.of_type(Population)}
    chip_edges = sum(not isinstance(graph.nodes[e.src], HostInput) for e in graph.edges)
    for mode, net in graph.netlists.items():
        ctx.target.check(net)
        if set(net.groups) != populations or len(net.synapses) != chip_edges or net.mode != mode:
            raise GraphError(f"the {mode} netlist does not hold every population and chip edge of the graph")


PASS = Pass("lower", run, verify, requires=("fixed-point", "guided", "schedule", "gate-tables"), provides=("netlist",))
