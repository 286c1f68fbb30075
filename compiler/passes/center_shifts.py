"""Center the floor of right-shifted synapse sums: half a dropped unit back into the reader's bias.

A synapse group with a negative ``weight_exp`` (a graded source's weights,
a fine weight slice) hands its reader ``floor(W . s * 2^exp)``: Lava shifts
the integer sum right, which drops the low bits toward minus infinity. Over
the data the dropped fraction is spread evenly over the multiples of
``2^j`` below ``2^k`` (``k = -exp``; ``2^j`` the largest power of two that
divides every non-zero weight into the neuron, at most ``2^k``), so each
such group lowers its reader's input by ``(1 - 2^(j - k)) / 2`` of a unit
on average, every step: a bias, where every other rounding of the fixed
point (weights, payloads, host currents, biases) is to the nearest value.
This pass adds that mean to the reader's bias. A neuron with no non-zero
weight in the group gets nothing (its sum is 0, exact), and a group whose
weights are all multiples of ``2^k`` (an identity read of a payload) none.

Measured on the digits U-Net at 16 weight bits (``snc verify -n 8``, emu vs
torch): 98.69 % spike agreement without it, 98.85 % with it (the state ranges
as before ``fold_thresholds`` dropped v's margin).

Units: a spiking population's bias is in v's units (the input shifted left
by ``activation_shift``), a graded population's in its value's, the
readout's in its integer units (``fixed["offset"]``: the fixed-point
lowering divides it by the readout's scale and adds it to the bias the
host adds; the float model, and so the float netlist, is unchanged).
Not centered: a synapse with a per-step gain (TSM), whose second floor
follows the gain of each step.

Requires: fixed-point parameters and the final weight slices. Guarantees:
every population's integer bias is the quantized sum of its model bias and
these offsets, and the readout's offset these offsets (both checked by
recomputing them), inside the target's bias range.
"""

from __future__ import annotations

from typing import Union

import numpy as np

from snc.errors import GraphError

from ..ir import Edge, Graph, Population, Readout
from ..pass_manager import CompileContext, Pass
from ..targets.fixed_point import FixedPoint
from .quantize import bias_fits, bias_mantissas


def floor_offsets(graph: Graph, node: Union[Population, Readout]) -> np.ndarray:
    """The mean a node's right-shifted synapse groups drop per step, in its input's integer units (its
    shape)."""
    total = np.zeros(node.shape)
    for e in graph.into(node.name):
        k = -int(e.fixed.get("weight_exp", 0))
        if k <= 0 or e.gain is not None or not isinstance(graph.nodes[e.src], Population):
            continue
        total += _group_offset(e, k).reshape(node.shape)
    return total


def _group_offset(e: Edge, k: int) -> np.ndarray:
    """``(1 - 2^(j - k)) / 2`` per output neuron of the edge (0 where it has no non-zero weight)."""
    w = np.abs(e.fixed["weight"].astype(np.int64))
    op = e.op
    rows = w.reshape(w.shape[0], -1) if op.kind in ("conv", "dense") else w.reshape(1, -1)
    lowest_bit = rows & -rows  # 0 for a zero weight
    trailing = np.where(lowest_bit > 0, np.log2(np.maximum(lowest_bit, 1)), np.inf)
    j = np.minimum(trailing.min(axis=1), k)  # per output channel (conv), neuron (dense) or the one weight; k: none
    offset = (1.0 - 2.0 ** (j - k)) / 2
    if op.kind == "conv":  # one kernel per output channel: every neuron of the channel (through any view)
        return np.broadcast_to(offset.reshape(-1, 1, 1), op.conv_shape)
    if op.kind == "dense":
        return offset
    return np.broadcast_to(offset, op.out_shape)


def _bias_units(p: Population, rules: FixedPoint) -> float:
    """Integer bias units per integer input unit: v's shift for a spiking population, 1 for a graded one."""
    return 1.0 if p.graded else float(2**rules.activation_shift)


def _centered_bias(p: Population, offsets: np.ndarray, rules: FixedPoint) -> tuple[np.ndarray, np.ndarray]:
    return bias_mantissas((p.bias * p.scale + offsets) * _bias_units(p, rules), rules)


def run(graph: Graph, ctx: CompileContext) -> Graph:
    return center_shifts(graph, ctx.target.rules, ctx.target.name)


def center_shifts(graph: Graph, rules: FixedPoint, target: str = "the target") -> Graph:
    """The pass for ``rules``."""
    rows, problems = [], []
    for p in graph.of_type(Population):
        offsets = floor_offsets(graph, p)
        if not offsets.any():
            continue
        mant, exp = _centered_bias(p, offsets, rules)
        if not bias_fits(mant, exp, rules):
            problems.append(f"{p.name}: bias with the shift offsets needs exponent {int(exp.max())} > "
                            f"{rules.bias_exp_max}")
        p.fixed.update(bias_mant=mant, bias_exp=exp)
        rows.append({"node": p.name, "offset_units": float(offsets.max())})
    offsets = floor_offsets(graph, graph.readout)
    if offsets.any():  # the host adds it to the fixed-point readout (its float model is unchanged)
        graph.readout.fixed["offset"] = offsets
        rows.append({"node": graph.readout.name, "offset_units": float(offsets.max())})
    if problems:
        raise GraphError(f"{len(problems)} bias(es) do not fit {target}:\n  " + "\n  ".join(problems))
    graph.log.append({"pass": "center_shifts", "populations": rows})
    return graph


def verify(graph: Graph, ctx: CompileContext) -> None:
    graph.check()
    rules = ctx.target.rules
    problems = []
    for p in graph.of_type(Population):
        mant, exp = _centered_bias(p, floor_offsets(graph, p), rules)
        if not (np.array_equal(mant, p.fixed["bias_mant"]) and np.array_equal(exp, p.fixed["bias_exp"])):
            problems.append(f"{p.name}: its integer bias is not its model bias plus its shift offsets")
        if not bias_fits(p.fixed["bias_mant"], p.fixed["bias_exp"], rules):
            problems.append(f"{p.name}: bias outside the target's mantissa and exponent ranges")
    offsets = floor_offsets(graph, graph.readout)
    if not np.array_equal(graph.readout.fixed.get("offset", np.zeros(graph.readout.shape)), offsets):
        problems.append(f"{graph.readout.name}: its offset is not its shift offsets")
    if problems:
        raise GraphError("center_shifts verification failed:\n  " + "\n  ".join(problems))


PASS = Pass("center_shifts", run, verify, requires=("fixed-point", "sliced-weights"), provides=("centered-shifts",))
