"""Bit-sliced weights: a coarse and a fine synapse per weight map (``--weight-bits 16``).

A synapse group of the target holds ``weight_bits`` mantissa bits (Loihi 2:
8) and one exponent for all its weights (``quantize``); on the digits models
that rounding, not the exponents, is what makes the fixed-point spikes differ
from the float ones. With ``CompileOptions.weight_bits`` above the target's
``weight_bits``, every weighted on-chip edge whose integers do not hold its
weights exactly also gets a *fine* edge: the same source, target, op
geometry, delay, lag, gain and gate, whose integers are the residual at
exponent ``f = e - b`` (``b = weight_bits - rules.weight_bits`` fine bits,
fewer where ``e - b`` would fall below ``weight_exp_min``, as on a graded
source's synapse whose exponent is negative already, or where an upsampled
conv's summed fine taps would not fit the mantissa; no bit left: no slice).

Each slice keeps the edge's one sign (``split_signs``: Lava's mixed-sign
groups lose a bit): the coarse magnitude is rounded down, so the residual has
the edge's sign, and up where the residual would round to a whole coarse
unit; coarse + fine is then the value nearest the weight on the grid of
``2^f``, and no coarse magnitude exceeds the one ``quantize`` checked. A
negative fine exponent makes Lava floor the fine synapse's sum (less than one
integer unit per step, the same in the emulator).

The fine edge is a real synapse: synapse memory and the synaptic ops of the
spikes through a sliced edge double (``map_cores`` and the energy model count
it as any other).

Float ops: the coarse edge's op holds what its integers encode
(``w_int * 2^e / ratio``, ratio = target scale / source payload scale) and
the fine edge's the rest of the weights, so the float function is unchanged.

Requires: fixed-point integers (``quantize``) of single-sign edges.
Guarantees: with ``weight_bits`` equal to the target's, the graph is
unchanged and has no fine edge; otherwise every fine edge (``part`` its
coarse edge's + ``:fine``) follows its coarse edge with the same geometry and
timing, both slices' integers have one sign (the same), the fine exponent is
below the coarse one and within ``weight_exp_min..weight_exp_max``, the fine
integers (upsampled sums too) fit the single-sign mantissa, the coarse op is
its integers' value and the fine op within half a fine unit of its
integers'. The log lists each sliced edge's fine exponent and the relative
error of coarse + fine (the compile table's ``weight_rel_error``).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Optional

import numpy as np

from snc.errors import GraphError

from ..ir import Edge, Graph, Population
from ..pass_manager import CompileContext, Pass
from ..targets.fixed_point import FixedPoint
from .quantize import synapse_range

FINE = ":fine"  # the part suffix of a fine edge


def fine_bits(weight_bits: int, rules: FixedPoint) -> int:
    """Mantissa bits of the fine slice for ``weight_bits`` per weight (0: no slicing)."""
    if weight_bits not in (rules.weight_bits, 2 * rules.weight_bits):
        raise GraphError(f"weight_bits {weight_bits}: the target stores {rules.weight_bits} bits per synapse; "
                         f"use {rules.weight_bits} or {2 * rules.weight_bits} (two synapses per weight)")
    return weight_bits - rules.weight_bits


def slice_integers(x: np.ndarray, exp: int, bits: int, rules: FixedPoint,
                   upsample: int = 1) -> Optional[tuple[np.ndarray, np.ndarray, int]]:
    """(coarse, fine, fine exponent) with ``coarse * 2^exp + fine * 2^f`` the value nearest the single-sign
    weights ``x`` (target units) on the grid of ``2^f``, ``f = exp - bits`` or higher (``weight_exp_min``;
    the largest fine bits whose upsampled sums fit); None when no fine bit is left or the residual is 0."""
    sign = -1 if x.min(initial=0) < 0 else 1
    magnitude = np.abs(np.asarray(x, dtype=np.float64)) / 2.0**exp  # in coarse units
    highest = rules.weight_range(mixed=False)[1]
    for b in range(min(bits, exp - rules.weight_exp_min), 0, -1):
        steps = float(1 << b)
        coarse = np.floor(magnitude)
        fine = np.round((magnitude - coarse) * steps)
        carry = fine == steps  # the residual rounds to a whole coarse unit
        coarse, fine = (coarse + carry).astype(np.int64), np.where(carry, 0.0, fine).astype(np.int64)
        if synapse_range(fine, upsample)[1] <= highest:
            return (sign * coarse, sign * fine, exp - b) if fine.any() else None
    return None


def run(graph: Graph, ctx: CompileContext) -> Graph:
    return slice_weights(graph, ctx.options.weight_bits, ctx.target.rules)


def slice_weights(graph: Graph, weight_bits: int, rules: FixedPoint) -> Graph:
    """The pass for ``weight_bits`` per weight."""
    bits = fine_bits(weight_bits, rules)
    edges: list[Edge] = []
    rows = []
    for e in graph.edges:
        edges.append(e)
        src = graph.nodes[e.src]
        if not bits or not isinstance(src, Population) or e.op.weight is None:
            continue
        ratio = graph.nodes[e.dst].scale / src.payload_scale
        exp = int(e.fixed["weight_exp"])
        x = e.op.weight * ratio
        sliced = slice_integers(x, exp, bits, rules, e.op.taps_per_synapse)
        if sliced is None:
            continue
        coarse, fine, fine_exp = sliced
        coarse_weight = coarse * 2.0**exp / ratio
        handed = f"int{rules.handed_weight_bits}"
        edges.append(replace(e, op=replace(e.op, weight=e.op.weight - coarse_weight), part=e.part + FINE,
                             fixed={**e.fixed, "weight": fine.astype(handed), "weight_exp": fine_exp}))
        e.op = replace(e.op, weight=coarse_weight)
        e.fixed["weight"] = coarse.astype(handed)
        error = np.linalg.norm(coarse * 2.0**exp + fine * 2.0**fine_exp - x) / np.linalg.norm(x)
        rows.append({"edge": e.name, "fine_exp": fine_exp, "relative_error": float(error)})
    graph.edges = edges
    graph.log.append({"pass": "slice_weights", "weight_bits": weight_bits, "synapses": rows})
    return graph


def _same_synapse_but_weights(a: Edge, b: Edge) -> bool:
    gains_equal = (a.gain is None and b.gain is None) or (
        a.gain is not None and b.gain is not None and np.array_equal(a.gain, b.gain))
    return (a.src, a.dst, a.delay, a.lag, a.gate, a.op) == (b.src, b.dst, b.delay, b.lag, b.gate, b.op) \
        and gains_equal and a.op.weight.shape == b.op.weight.shape  # LinearOp's equality: all but its weights


def _slice_problems(coarse: Edge, fine: Edge, graph: Graph, rules: FixedPoint) -> list[str]:
    if not _same_synapse_but_weights(coarse, fine):
        return [f"{fine.name}: not the same synapse as {coarse.name} (source, target, geometry, timing, gain)"]
    out = []
    hi, lo = coarse.fixed["weight"].astype(np.int64), fine.fixed["weight"].astype(np.int64)
    signs = {int(np.sign(w[w != 0][0])) for w in (hi, lo) if w.any()}
    if len(signs) > 1 or any(w.min() < 0 < w.max() for w in (hi, lo)):
        out.append(f"{fine.name}: the slices do not have one sign")
    exp, fine_exp = int(coarse.fixed["weight_exp"]), int(fine.fixed["weight_exp"])
    if not rules.weight_exp_min <= fine_exp < exp:
        out.append(f"{fine.name}: exponent {fine_exp} not in {rules.weight_exp_min}..{exp - 1}")
    lowest, highest, _ = rules.weight_range(mixed=False)
    low, high = synapse_range(lo, fine.op.taps_per_synapse)
    if low < lowest or high > highest:
        out.append(f"{fine.name}: weights {low}..{high} outside {lowest}..{highest}")
    ratio = graph.nodes[coarse.dst].scale / graph.nodes[coarse.src].payload_scale
    if not np.allclose(coarse.op.weight * ratio, hi * 2.0**exp, rtol=1e-12, atol=0):
        out.append(f"{coarse.name}: its op is not the value of its integers")
    if np.abs(fine.op.weight * ratio / 2.0**fine_exp - lo).max(initial=0) > 0.5 + 1e-6:
        out.append(f"{fine.name}: its integers are more than half a unit from its op")
    return out


def verify(graph: Graph, ctx: CompileContext) -> None:
    graph.check()
    rules = ctx.target.rules
    sliced = fine_bits(ctx.options.weight_bits, rules) > 0
    problems = []
    for i, e in enumerate(graph.edges):
        if not e.part.endswith(FINE):
            continue
        coarse = graph.edges[i - 1] if i else None
        if not sliced:
            problems.append(f"{e.name}: a fine slice at weight_bits {ctx.options.weight_bits}")
        elif coarse is None or coarse.part + FINE != e.part:
            problems.append(f"{e.name}: does not follow its coarse edge")
        else:
            problems += _slice_problems(coarse, e, graph, rules)
    if problems:
        raise GraphError("slice_weights verification failed:\n  " + "\n  ".join(problems))


PASS = Pass("slice_weights", run, verify, requires=("fixed-point", "single-sign"), provides=("sliced-weights",))
