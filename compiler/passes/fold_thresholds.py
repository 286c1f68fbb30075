"""Threshold folding: one scale per population so its integers use the target's ranges.

A population's function is unchanged when its input weights, host currents,
bias and threshold are all multiplied by the same factor. This pass picks that
factor (``scale``, integer units per unit of model current) per population:
the largest power of two for which its state range (``state_range``) stays
inside the 24-bit state (``|v| << 6 < 2^23``), the threshold inside the vth mantissa,
the largest static bias inside ``bias_mant << bias_exp`` and the largest
synapse weight inside ``w_int << weight_exp``.
Lava's Conv ignores ``weight_exp``, and on every synapse the 8-bit mantissa
is relative to the synapse's largest weight, so the scale goes into vth and
bias (here) and each synapse only gets an exponent (``quantize``).

Calibration: peaks come from the float IR executor on sample inputs
(``ctx.calibration``: the source's calls, e.g. digits at diffusion steps
spread over t, each run with the graph's gates of its step). What wraps
gets a 2x margin over its calibrated peak: the input current (Lava's ``u``
is a 24-bit two's complement), a graded value (an int32 sum) and the
readout's input. The membrane potential saturates instead, so its
calibrated peak is taken as it is: it is mostly a negative excursion (a
positive v resets at the threshold, and stays below the threshold plus the
input with its margin), and one deeper than calibrated is clipped, which
only delays a later spike of a neuron already far below its threshold. That
margin would cost each such population one bit of resolution (measured on
the digits U-Net, ``snc verify -n 8`` at 16 weight bits: 98.85 % spike
agreement with the margin on v, 99.01 % without). Without calibration (or
for a population the calibration never reached) the peak is assumed to be
16x the threshold (or 16, if the threshold is below 1), with the margin.

A graded (sum) population's scale keeps its calibrated value inside an
int32 with the margin, its bias and its input weights inside their ranges; it
sends ``value >> payload_shift``, the shift the smallest for which the
payload's peak fits ``payload_bits`` and every reader's weights (relative to
the payload: reader scale / payload scale) reach the top of their mantissa
at an exponent no lower than ``weight_exp_min`` (full weight precision).

Requires: balanced delays. Guarantees: every Population and the Readout has a
power-of-two ``scale`` > 0, a graded population a ``payload_shift`` >= 0
(0 for the others); the log lists each population's scale, vth and state range.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence, Union

import numpy as np
import torch

from snc.errors import GraphError

from ..ir import Edge, Graph, Population, Readout
from ..ir_executor import run_ir
from ..pass_manager import CalibrationCall, CompileContext, Pass
from ..targets.fixed_point import FixedPoint

MARGIN = 2.0
UNCALIBRATED_PEAK = 16.0  # in thresholds


@dataclass(frozen=True)
class Peaks:
    """Calibrated peaks of one population (or the readout), model units."""

    v: float  # |v| before the spike test (a graded population: its value; the readout: 0)
    input: float  # |input current + bias| (a graded population: its value)


def calibrated_peaks(graph: Graph, calls: Sequence[CalibrationCall]) -> dict[str, Peaks]:
    """Peaks of |v| and |input| per population and the readout over the calibration calls (float32: only
    peaks are needed), each call with the graph's gates of its diffusion step."""
    v: dict[str, float] = {}
    current: dict[str, float] = {}
    for call in calls:
        gates = graph.gates_at(call.step) if graph.gates else None
        run = run_ir(graph, call.inputs(gates), dtype=torch.float32, gates=gates)
        for found, table in ((v, run.peak_v), (current, run.peak_input)):
            for name, value in table.items():
                found[name] = max(found.get(name, 0.0), value)
    return {name: Peaks(v.get(name, 0.0), current.get(name, 0.0)) for name in v.keys() | current.keys()}


def state_range(node: Union[Population, Readout], peaks: Optional[dict[str, Peaks]]) -> float:
    """The magnitude (model units) the node's integers must hold: the margin on what wraps (the input
    current, a graded value, the readout's input), none on a spiking neuron's v, which saturates."""
    thr = node.threshold if isinstance(node, Population) else 0.0
    if peaks is None or node.name not in peaks:
        return max(UNCALIBRATED_PEAK * max(thr, 1.0), 1e-12) * MARGIN
    peak = peaks[node.name]
    if isinstance(node, Readout) or node.graded:
        return max(peak.v, peak.input, 1e-12) * MARGIN
    return max(peak.v, thr + MARGIN * peak.input, 1e-12)


def run(graph: Graph, ctx: CompileContext) -> Graph:
    peaks = calibrated_peaks(graph, ctx.calibration) if ctx.calibration is not None else None
    return fold(graph, ctx.target.rules, peaks)


def fold(graph: Graph, rules: FixedPoint, peaks: Optional[dict[str, Peaks]]) -> Graph:
    """The pass for given peaks (None: uncalibrated)."""
    limit = float(rules.current_limit)  # |v| >> activation_shift and |a_in| bound
    vth_limit = float(rules.vth_limit - 1)
    bias_limit = float(rules.bias_mant_limit - 1) * 2.0 ** rules.bias_exp_max
    weight_limit = rules.weight_limit  # the mixed-sign mantissa: a bound whatever the synapse's signs
    mantissa = rules.weight_range(mixed=True)[1]
    rows = []
    graded = [name for name in graph.topological() if getattr(graph.nodes[name], "graded", False)]
    for node in [p for p in graph.of_type(Population) if not p.graded] + [graph.readout]:
        thr = node.threshold if isinstance(node, Population) else 0.0
        if isinstance(node, Population) and node.role == "relay":
            # unit weight, threshold 0.5: scale 2 gives weight 2 and vth 1, exact and tiny
            node.scale = 2.0
            rows.append({"node": node.name, "scale": 2.0, "range": 1.0, "vth": 1.0})
            continue
        peak = max(state_range(node, peaks), thr)  # vth = threshold * scale must fit its mantissa too
        bound = min(limit, vth_limit) / peak
        bias = float(np.abs(node.bias).max(initial=0.0))
        if isinstance(node, Population) and bias > 0:  # bias_mant << bias_exp must hold bias * scale << 6
            bound = min(bound, bias_limit / (bias * 2 ** rules.activation_shift))
        # the largest synapse weight (upsampled convs sum up to u*u taps) must fit 8 bits << weight_exp_max
        weight = _largest_spike_weight(graph, node.name)
        if weight > 0:
            bound = min(bound, weight_limit / weight)
        node.scale = 2.0 ** math.floor(math.log2(bound))
        rows.append({"node": node.name, "scale": node.scale, "range": peak,
                     "vth": thr * node.scale if isinstance(node, Population) else None})
    leaving = graph.edges_from()
    payloads: dict[str, float] = {}
    for name in reversed(graded):  # its readers' scales first: they bound its payload's
        node = graph.nodes[name]
        peak = state_range(node, peaks)
        bound = rules.accumulator_limit / peak  # the value: an int32 sum of int32 channels and the bias
        bias = float(np.abs(node.bias).max(initial=0.0))
        if bias > 0:  # bias_mant << bias_exp holds bias * scale (a value: no activation shift)
            bound = min(bound, bias_limit / bias)
        weight = _largest_spike_weight(graph, name)
        if weight > 0:
            bound = min(bound, weight_limit / weight)
        node.scale = 2.0 ** math.floor(math.log2(bound))
        # the payload: inside its bits, and fine enough that every reader's weights keep their mantissa above
        # the smallest exponent (reader scale / payload scale * w fills the mantissa at an exponent >= min)
        payload = min(node.scale, rules.payload_limit / peak)
        for e in leaving.get(name, []):
            payload = min(payload, _synapse_weight(e) * graph.nodes[e.dst].scale * 2.0 ** -rules.weight_exp_min
                          / mantissa)
        payloads[name] = payload
        rows.append({"node": name, "scale": node.scale, "range": peak, "vth": None})
    for name in graded:  # its graded sources' payloads are final: its weights from them must fit too
        node = graph.nodes[name]
        for e in graph.into(name):
            src = graph.nodes[e.src]
            if isinstance(src, Population) and src.graded:
                bound = weight_limit * src.payload_scale / _synapse_weight(e)
                node.scale = min(node.scale, 2.0 ** math.floor(math.log2(bound)))
        node.payload_shift = max(0, math.ceil(math.log2(node.scale / payloads[name])))
        row = next(r for r in rows if r["node"] == name)
        row.update(scale=node.scale, payload_shift=node.payload_shift)
    graph.log.append({"pass": "fold_thresholds", "calibrated": peaks is not None, "populations": rows})
    return graph


def _synapse_weight(e: Edge) -> float:
    """The largest weight one synapse of the edge can have (after nearest upsampling, a sum of up to u*u taps)."""
    return float(np.abs(e.op.weight).max()) * e.op.taps_per_synapse**2 if e.op.weight is not None else 1.0


def _largest_spike_weight(graph: Graph, name: str) -> float:
    """The largest synapse weight into ``name`` from spiking populations. A graded source's weights are
    relative to its payload, which ``fold`` fits to its readers instead."""
    return max((_synapse_weight(e) for e in graph.into(name) if isinstance(graph.nodes[e.src], Population)
                and not graph.nodes[e.src].graded), default=0.0)


def verify(graph: Graph, ctx: CompileContext) -> None:
    graph.check()
    bad = [n.name for n in list(graph.of_type(Population)) + [graph.readout] if not n.scale > 0]
    if bad:
        raise GraphError(f"fold_thresholds left populations without a scale: {', '.join(bad)}")
    odd = [n.name for n in list(graph.of_type(Population)) + [graph.readout] if math.frexp(n.scale)[0] != 0.5]
    if odd:
        raise GraphError(f"fold_thresholds gave populations a scale that is not a power of two: {', '.join(odd)}")
    shifts = [f"{p.name} ({p.payload_shift})" for p in graph.of_type(Population)
              if p.payload_shift < 0 or (p.payload_shift and not p.graded)]
    if shifts:
        raise GraphError(f"fold_thresholds gave payload shifts that are negative or not a graded population's: "
                         f"{', '.join(shifts)}")


PASS = Pass("fold_thresholds", run, verify, requires=("schedule",), provides=("scales",))
