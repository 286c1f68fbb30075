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
(``snc compile`` uses digits at diffusion steps spread over t). Without
calibration the peak is assumed to be 16x the threshold (or 16, if the threshold
is below 1).

Requires: balanced delays. Guarantees: every Population and the Readout has a
power-of-two ``scale`` > 0; the log lists each population's scale, vth, peak.
"""

from __future__ import annotations

import math

import numpy as np

from snc.errors import GraphError

from ..ir import Graph, Population

MARGIN = 2.0
UNCALIBRATED_PEAK = 16.0  # in thresholds


def run(graph: Graph, fixed: dict, peaks: dict[str, float] | None) -> Graph:
    limit = 2.0 ** (fixed["state_bits"] - 1 - fixed["activation_shift"])  # |v|/64 and |a_in| bound
    vth_limit = 2.0 ** fixed["vth_bits"] - 1
    bias_limit = (2.0 ** (fixed["bias_mant_bits"] - 1) - 1) * 2.0 ** fixed["bias_exp_max"]
    weight_limit = (2.0 ** (fixed["weight_bits"] - 1) - 1) * 2.0 ** fixed["weight_exp_max"]  # mixed signs: 7 bits
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
            bound = min(bound, bias_limit / (bias * 2 ** fixed["activation_shift"]))
        # the largest synapse weight (upsampled convs sum up to u*u taps) must fit 8 bits << weight_exp_max
        weight = max((float(np.abs(e.op.weight).max()) * e.op.upsample**2 if e.op.weight is not None else 1.0
                      for e in graph.into(node.name) if isinstance(graph.nodes[e.src], Population)), default=0.0)
        if weight > 0:
            bound = min(bound, weight_limit / weight)
        node.scale = 2.0 ** math.floor(math.log2(bound))
        rows.append({"node": node.name, "scale": node.scale, "peak": peak / MARGIN,
                     "vth": thr * node.scale if isinstance(node, Population) else None})
    graph.log.append({"pass": "fold_thresholds", "calibrated": peaks is not None, "populations": rows})
    return graph


def verify(graph: Graph) -> None:
    graph.check()
    bad = [n.name for n in list(graph.of_type(Population)) + [graph.readout] if not n.scale > 0]
    if bad:
        raise GraphError(f"fold_thresholds left populations without a scale: {', '.join(bad)}")
