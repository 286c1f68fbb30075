"""Threshold folding: one scale per population so its integers use the target's ranges.

A population's function is unchanged when its input weights, host currents,
bias and threshold are all multiplied by the same factor. This pass picks that
factor (``scale``, integer units per unit of model current) per population:
the largest power of two for which the calibrated peak of the membrane
potential and of the input current, with a 2x margin, stays inside the
24-bit state (``|v| << 6 < 2^23``), the threshold inside the vth mantissa,
the largest static bias inside ``bias_mant << bias_exp`` and the largest
synapse weight inside ``w_int << weight_exp``.
Lava's Conv ignores ``weight_exp``, and on every synapse the 8-bit mantissa
is relative to the synapse's largest weight, so the scale goes into vth and
bias (here) and each synapse only gets an exponent (``quantize``).

Calibration: peaks come from the float IR executor on sample inputs
(``ctx.calibration``: the source's calls, e.g. digits at diffusion steps
spread over t, each run with the graph's gates of its step). Without
calibration the peak is assumed to be 16x the threshold (or 16, if the threshold
is below 1).

Requires: balanced delays. Guarantees: every Population and the Readout has a
power-of-two ``scale`` > 0; the log lists each population's scale, vth, peak.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import numpy as np
import torch

from snc.errors import GraphError

from ..ir import Graph, Population
from ..ir_executor import run_ir
from ..pass_manager import CalibrationCall, CompileContext, Pass
from ..targets.fixed_point import FixedPoint

MARGIN = 2.0
UNCALIBRATED_PEAK = 16.0  # in thresholds


def calibrated_peaks(graph: Graph, calls: Sequence[CalibrationCall]) -> dict[str, float]:
    """Peaks of |v| and |input| per population and the readout over the calibration calls (float32: only
    peaks are needed), each call with the graph's gates of its diffusion step."""
    found: dict[str, float] = {}
    for call in calls:
        gates = graph.gates_at(call.step) if graph.gates else None
        run = run_ir(graph, call.inputs(gates), dtype=torch.float32, gates=gates)
        for table in (run.peak_v, run.peak_input):
            for name, value in table.items():
                found[name] = max(found.get(name, 0.0), value)
    return found


def run(graph: Graph, ctx: CompileContext) -> Graph:
    peaks = calibrated_peaks(graph, ctx.calibration) if ctx.calibration is not None else None
    return fold(graph, ctx.target.rules, peaks)


def fold(graph: Graph, rules: FixedPoint, peaks: Optional[dict[str, float]]) -> Graph:
    """The pass for given peaks (None: uncalibrated)."""
    limit = float(rules.current_limit)  # |v| >> activation_shift and |a_in| bound
    vth_limit = float(rules.vth_limit - 1)
    bias_limit = float(rules.bias_mant_limit - 1) * 2.0 ** rules.bias_exp_max
    weight_limit = rules.weight_limit  # the mixed-sign mantissa: a bound whatever the synapse's signs
    rows = []
    for node in list(graph.of_type(Population)) + [graph.readout]:
        thr = node.threshold if isinstance(node, Population) else 0.0
        if isinstance(node, Population) and node.role == "relay":
            # unit weight, threshold 0.5: scale 2 gives weight 2 and vth 1, exact and tiny
            node.scale = 2.0
            rows.append({"node": node.name, "scale": 2.0, "peak": 1.0, "vth": 1.0})
            continue
        if peaks is not None:
            peak = peaks.get(node.name, 0.0)
        else:
            peak = UNCALIBRATED_PEAK * max(thr, 1.0)
        peak = max(peak, thr, 1e-12) * MARGIN
        bound = min(limit, vth_limit) / peak
        bias = float(np.abs(node.bias).max(initial=0.0))
        if isinstance(node, Population) and bias > 0:  # bias_mant << bias_exp must hold bias * scale << 6
            bound = min(bound, bias_limit / (bias * 2 ** rules.activation_shift))
        # the largest synapse weight (upsampled convs sum up to u*u taps) must fit 8 bits << weight_exp_max
        weight = max((float(np.abs(e.op.weight).max()) * e.op.taps_per_synapse**2 if e.op.weight is not None else 1.0
                      for e in graph.into(node.name) if isinstance(graph.nodes[e.src], Population)), default=0.0)
        if weight > 0:
            bound = min(bound, weight_limit / weight)
        node.scale = 2.0 ** math.floor(math.log2(bound))
        rows.append({"node": node.name, "scale": node.scale, "peak": peak / MARGIN,
                     "vth": thr * node.scale if isinstance(node, Population) else None})
    graph.log.append({"pass": "fold_thresholds", "calibrated": peaks is not None, "populations": rows})
    return graph


def verify(graph: Graph, ctx: CompileContext) -> None:
    graph.check()
    bad = [n.name for n in list(graph.of_type(Population)) + [graph.readout] if not n.scale > 0]
    if bad:
        raise GraphError(f"fold_thresholds left populations without a scale: {', '.join(bad)}")
    odd = [n.name for n in list(graph.of_type(Population)) + [graph.readout] if math.frexp(n.scale)[0] != 0.5]
    if odd:
        raise GraphError(f"fold_thresholds gave populations a scale that is not a power of two: {', '.join(odd)}")


PASS = Pass("fold_thresholds", run, verify, requires=("schedule",), provides=("scales",))
