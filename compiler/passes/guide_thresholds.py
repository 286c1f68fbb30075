"""Threshold guidance (SDDPM 4.3, SDM IV-C): every spiking threshold times a factor S.

A factor a little below 1 (0.997) makes the neurons fire slightly more and
sharpens samples; above 1, less. Relays and spike ANDs are not guided:
they must copy their source's spikes or stay a logical AND (the torch
model's guidance scales its spiking neurons only).

On a fixed-point target a small factor can round away: ``vth`` is an integer
(``round(threshold * scale)``), so a population whose guided ``vth`` equals
its unguided one would silently ignore the guidance. The pass refuses that,
listing every such population, and logs each population's effective factor
(guided vth / unguided vth).

Requires: quantized populations (``quantize`` ran). Guarantees: every neuron
population's float threshold is scaled by S and its integer vth is
``round(threshold * S * scale)``, which differs from the unguided vth
whenever S != 1; relays and ANDs are unchanged.
"""

from __future__ import annotations

from snc.errors import GraphError

from ..ir import Graph, Population


def run(graph: Graph, factor: float, vth_bits: int) -> Graph:
    if not 0 < factor < float("inf"):
        raise GraphError(f"threshold scale must be a positive finite number, got {factor}")
    rows, problems = [], []
    guided = [p for p in graph.of_type(Population) if p.role == "neuron" and factor != 1.0]
    for p in guided:
        before = int(p.fixed["vth"])
        after = int(round(p.threshold * factor * p.scale))
        if after == before:
            problems.append(f"{p.name}: vth {before} stays {after} (resolution {1 / max(before, 1):.2%})")
        elif not 0 < after < 2 ** vth_bits:
            problems.append(f"{p.name}: guided vth {after} outside {vth_bits} bits")
        rows.append({"population": p.name, "vth": [before, after], "effective_scale": after / before if before else None})
    if problems:  # checked before anything changes: a refused guidance leaves the graph as it was
        raise GraphError(f"threshold scale {factor} rounds away in {len(problems)} population(s) on this target "
                         "(its vth mantissa cannot express it):\n  " + "\n  ".join(problems))
    for p, row in zip(guided, rows):
        p.threshold *= factor
        p.fixed["vth"] = row["vth"][1]
    graph.log.append({"pass": "guide_thresholds", "factor": factor, "populations": rows})
    return graph


def verify(graph: Graph, factor: float) -> None:
    graph.check()
    entry = next((e for e in reversed(graph.log) if e["pass"] == "guide_thresholds"), None)
    if entry is None or entry["factor"] != factor:
        raise GraphError("guide_thresholds left no record of the factor it applied")
    bad = [r["population"] for r in entry["populations"] if r["vth"][0] == r["vth"][1]]
    if bad:
        raise GraphError(f"guide_thresholds kept unguided vth in {', '.join(bad)}")
