"""Threshold guidance (SDDPM 4.3, SDM IV-C): every spiking threshold times a factor S.

A factor a little below 1 (0.997) makes the neurons fire slightly more and
sharpens samples; above 1, less. Relays and spike ANDs are not guided:
they must copy their source's spikes or stay a logical AND (the torch
model's guidance scales its spiking neurons only).

On a fixed-point target a small factor can round away: ``vth`` is an integer
(``round(threshold * scale)``), so a population whose guided ``vth`` equals
its unguided one would silently ignore the guidance. The pass refuses that,
listing every such population, and logs each population's effective factor
(guided vth / unguided vth). ``guide_vth`` is the rule for one population;
a target applies the same rule to a compiled netlist (guidance at sample time).

Requires: quantized populations (``quantize`` ran). Guarantees: every neuron
population's float threshold is scaled by S and its integer vth is
``round(threshold * S * scale)``, which differs from the unguided vth
whenever S != 1; relays and ANDs are unchanged.
"""

from __future__ import annotations

from typing import Optional

from snc.errors import GraphError

from ..ir import Graph, Population
from ..pass_manager import CompileContext, Pass
from ..targets.fixed_point import FixedPoint


def check_factor(factor: float) -> None:
    if not 0 < factor < float("inf"):
        raise GraphError(f"threshold scale must be a positive finite number, got {factor}")


def guide_vth(name: str, threshold: float, scale: float, before: int, factor: float,
              rules: FixedPoint) -> tuple[int, Optional[str]]:
    """(guided vth, the reason it is refused or None) of a population with unguided ``before``."""
    after = int(round(threshold * factor * scale))
    if after == before:
        return after, f"{name}: vth {before} stays {after} (resolution {1 / max(before, 1):.2%})"
    if not 0 < after < rules.vth_limit:
        return after, f"{name}: guided vth {after} outside {rules.vth_bits} bits"
    return after, None


def refuse(factor: float, problems: list[str]) -> None:
    if problems:
        raise GraphError(f"threshold scale {factor} rounds away in {len(problems)} population(s) on this target "
                         "(its vth mantissa cannot express it):\n  " + "\n  ".join(problems))


def run(graph: Graph, ctx: CompileContext) -> Graph:
    factor = ctx.options.threshold_scale
    check_factor(factor)
    rows, problems = [], []
    guided = [p for p in graph.of_type(Population) if p.role == "neuron" and factor != 1.0]
    for p in guided:
        before = int(p.fixed["vth"])
        after, problem = guide_vth(p.name, p.threshold, p.scale, before, factor, ctx.target.rules)
        if problem:
            problems.append(problem)
        rows.append({"population": p.name, "vth": [before, after], "effective_scale": after / before if before else None})
    refuse(factor, problems)  # checked before anything changes: a refused guidance leaves the graph as it was
    for p, row in zip(guided, rows):
        p.threshold *= factor
        p.fixed["vth"] = row["vth"][1]
    graph.log.append({"pass": "guide_thresholds", "factor": factor, "populations": rows})
    return graph


def verify(graph: Graph, ctx: CompileContext) -> None:
    graph.check()
    stale = [p.name for p in graph.of_type(Population) if int(p.fixed["vth"]) != int(round(p.threshold * p.scale))]
    if stale:  # the float threshold (guided or not) and the integer vth must say the same
        raise GraphError(f"guide_thresholds left a vth that does not encode the threshold: {', '.join(stale)}")


PASS = Pass("guide_thresholds", run, verify, requires=("fixed-point",), provides=("guided",))
