"""Quantization to the target's fixed point (Lava ``fixed_pt`` / Loihi 2).

Per population p with scale s (from ``fold_thresholds``), in Lava's units:

- ``vth = round(threshold * s)`` (spike when ``v > vth << 6``);
- ``du = 4095 - round(4096 * current_decay)``: Lava keeps
  ``u * (4096 - du - 1) / 4096``, so 4095 (no synaptic memory: ``u = a_in << 6``)
  for IF/LIF, less for CubaLIF; ``dv = round(4096 * (1 - decay))`` (0 for
  integrate-and-fire; 4096 = 2^decay_bits);
- static bias ``b * s * 64 = bias_mant << bias_exp`` per neuron, the smallest
  exponent that fits the mantissa;
- a graded (sum) population: its bias ``b * s = bias_mant << bias_exp`` (a
  value's units: no shift by 6); no threshold, no decays;
- each synapse into p: ``W * s = w_int << weight_exp`` with an 8-bit ``w_int``
  (from a graded population ``W * s / payload scale``, the exponent down to
  ``weight_exp_min``: the sum of weights times payloads is shifted right)
  (``FixedPoint.weight_range``: with both signs Lava drops the low bit) and the
  smallest exponent that fits; for a conv after nearest upsampling the synapse
  weight is a sum of kernel taps, and that sum must fit;
- host currents into p are rounded to integers ``h * s`` per call (runtime);
- the readout's synapses use the readout's scale; the host divides it out;
- a per-step bias (TSM) is quantized step by step like a static one;
- a synapse's per-step gain (TSM) ``g[t] = gain[t] / 2^gain_shift`` with a
  signed ``gain_mant_bits`` mantissa and the largest shift that fits
  (``snc``'s StepGainSparse process multiplies the synapse's output by it).

Every number comes from the target's ``FixedPoint`` rules (its profile).
Every parameter outside the target's ranges is reported at once (Lava does
not check them). Requires: scales. Guarantees: ``fixed`` holds integers for
every population and chip edge; the log has each synapse's relative
quantization error and each population's threshold/bias error.
"""

from __future__ import annotations

import math

import numpy as np

from snc.errors import GraphError

from ..ir import Edge, Graph, HostInput, Population, Readout
from ..pass_manager import CompileContext, Pass
from ..targets.fixed_point import FixedPoint


def synapse_range(w_int: np.ndarray, upsample: int = 1) -> tuple[int, int]:
    """Smallest and largest weight a synapse gets from the (integer) weights of an op.

    A conv after nearest upsampling by u reads one input through up to u x u
    neighbouring kernel taps, and its synapse weight is their sum: bound it by
    the sums over every u x u window of the positive and of the negative taps.
    """
    if upsample == 1 or w_int.ndim != 4:
        return int(w_int.min()), int(w_int.max())
    u = upsample
    pad = ((0, 0), (0, 0), (u - 1, u - 1), (u - 1, u - 1))
    pos, neg = np.pad(np.maximum(w_int, 0), pad), np.pad(np.minimum(w_int, 0), pad)
    k = pos.shape[-1] - u + 1
    windows = [(dy, dx) for dy in range(u) for dx in range(u)]
    hi = sum(pos[:, :, dy:dy + k, dx:dx + k] for dy, dx in windows).max()
    lo = sum(neg[:, :, dy:dy + k, dx:dx + k] for dy, dx in windows).min()
    return int(lo), int(hi)


def quantize_weights(w: np.ndarray, scale: float, rules: FixedPoint, upsample: int = 1,
                     lowest_exp: int = 0) -> tuple[np.ndarray, int, float]:
    """(w_int, weight_exp, relative error) for real weights ``w`` at ``scale``.

    The synapse weights must lie in ``rules.weight_range`` (Loihi 2: [0, 255]
    or [-255, 0] for one sign, [-256, 254] in steps of 2 for mixed signs). The
    exponent is the smallest, not below ``lowest_exp``, for which every synapse
    weight fits (a negative exponent shifts the sum right: for graded payloads,
    whose units are finer than the target's).
    """
    x = np.asarray(w, dtype=np.float64) * scale
    mixed = x.min() < 0 < x.max()
    lowest, highest, step = rules.weight_range(mixed)

    def quantized(exp: int) -> np.ndarray:
        return (np.round(x / (step * 2.0**exp)) * step).astype(np.int64)

    def fits(exp: int) -> bool:
        lo, hi = synapse_range(quantized(exp), upsample)
        return lo >= lowest and hi <= highest

    peak = float(np.abs(x).max())
    exp = max(lowest_exp, math.ceil(math.log2(peak / highest)) - 1) if peak > 0 else 0  # one below the guess
    while not fits(exp) and exp <= rules.weight_exp_max:
        exp += 1
    w_int = quantized(exp)
    norm = np.linalg.norm(x)
    err = float(np.linalg.norm(w_int * 2.0**exp - x) / norm) if norm > 0 else 0.0
    return w_int, exp, err


def quantize_gain(gain: np.ndarray, rules: FixedPoint) -> tuple[np.ndarray, int, float]:
    """(gain_mant, gain_shift, max absolute error) with the largest shift whose mantissas fit."""
    limit = rules.gain_mant_limit - 1
    peak = float(np.abs(gain).max(initial=0.0))
    shift = rules.gain_shift_max
    while shift > 0 and round(peak * 2**shift) > limit:
        shift -= 1
    mant = np.round(np.asarray(gain, dtype=np.float64) * 2**shift).astype(np.int64)
    return mant, shift, float(np.abs(mant / 2**shift - gain).max(initial=0.0))


def bias_mantissas(b: np.ndarray, rules: FixedPoint) -> tuple[np.ndarray, np.ndarray]:
    """``b ~ mant << exp`` per neuron with the smallest exponent whose mantissa fits."""
    mant_lim = rules.bias_mant_limit
    exp = np.zeros(b.shape, dtype=np.int64)
    mags = np.abs(b)
    need = mags > mant_lim - 1
    exp[need] = np.ceil(np.log2(mags[need] / (mant_lim - 0.5))).astype(np.int64)
    mant = np.round(b / 2.0**exp).astype(np.int64)
    exp = np.where(np.abs(mant) > mant_lim - 1, exp + 1, exp)
    return np.round(b / 2.0**exp).astype(np.int64), exp


def bias_fits(mant: np.ndarray, exp: np.ndarray, rules: FixedPoint) -> bool:
    """Every ``mant << exp`` inside the target's bias mantissa and exponent ranges."""
    return bool(np.abs(mant).max(initial=0) < rules.bias_mant_limit
                and 0 <= exp.min(initial=0) and exp.max(initial=0) <= rules.bias_exp_max)


def _edge_weights(e: Edge) -> np.ndarray:
    return np.ones(1) if e.op.kind == "identity" else e.op.weight


def run(graph: Graph, ctx: CompileContext) -> Graph:
    return quantize(graph, ctx.target.rules, ctx.target.name)


def quantize(graph: Graph, rules: FixedPoint, target: str = "the target") -> Graph:
    problems: list[str] = []
    shift = rules.activation_shift
    rows = []
    for p in graph.of_type(Population):
        if p.graded:
            mant, exp = bias_mantissas(p.bias * p.scale, rules)  # a value's units: no activation shift
            if exp.max(initial=0) > rules.bias_exp_max:
                problems.append(f"{p.name}: bias needs exponent {int(exp.max())} > {rules.bias_exp_max}")
            p.fixed = {"vth": 0, "du": 0, "dv": 0, "bias_mant": mant, "bias_exp": exp}
            rows.append({"population": p.name, "payload_shift": p.payload_shift,
                         "bias_max_abs_error": float(np.abs(mant * 2.0**exp - p.bias * p.scale).max() / p.scale)})
            continue
        vth = int(round(p.threshold * p.scale))
        dv = int(round(rules.decay_unity * (1.0 - p.decay)))
        if dv > rules.decay_max:  # a memoryless neuron: 4095 leaves v/4096 (< 1 unit for |v| < 4096) behind
            dv = rules.decay_max
        b = p.bias * p.scale * 2**shift
        mant, exp = bias_mantissas(b, rules)
        if not 0 <= vth < rules.vth_limit:
            problems.append(f"{p.name}: vth {vth} outside {rules.vth_bits} bits")
        elif p.threshold > 0 and vth == 0:
            problems.append(f"{p.name}: threshold {p.threshold:g} rounds to vth 0 at the scale its largest "
                            f"weights allow ({p.scale:g}); weights are too large relative to the threshold")
        if exp.max(initial=0) > rules.bias_exp_max:
            problems.append(f"{p.name}: bias needs exponent {int(exp.max())} > {rules.bias_exp_max}")
        # Lava keeps u * (unity - du - 1) / unity: du = unity - 1 - round(unity * current_decay)
        du = rules.decay_max - int(round(rules.decay_unity * p.current_decay))
        if not 0 <= du <= rules.decay_max:
            problems.append(f"{p.name}: current decay {p.current_decay:g} gives du {du} outside 0..{rules.decay_max}")
        p.fixed = {"vth": vth, "du": du, "dv": dv, "bias_mant": mant, "bias_exp": exp}
        bias_err = float(np.abs(mant * 2.0**exp - b).max() / (p.scale * 2**shift))
        rows.append({"population": p.name, "vth": vth, "threshold_error": abs(vth / p.scale - p.threshold),
                     "bias_max_abs_error": bias_err, "dv": dv, "du": du})
    edge_rows = []
    for e in graph.edges:
        if isinstance(graph.nodes[e.src], HostInput):
            continue
        src, dst = graph.nodes[e.src], graph.nodes[e.dst]
        w_int, exp, err = quantize_weights(_edge_weights(e), dst.scale / src.payload_scale, rules,
                                           e.op.taps_per_synapse, rules.weight_exp_min if src.graded else 0)
        if exp > rules.weight_exp_max:
            problems.append(f"{e.name}: weights need exponent {exp} > {rules.weight_exp_max}")
        # stored at the width a backend is handed (int16 on Loihi 2), not int64: the weights of a CIFAR model
        e.fixed = {"weight": w_int.astype(f"int{rules.handed_weight_bits}"), "weight_exp": exp}
        edge_rows.append({"edge": e.name, "weight_exp": exp, "relative_error": err})
        if e.gain is not None:
            mant, shift, gain_err = quantize_gain(e.gain, rules)
            if np.abs(mant).max() > rules.gain_mant_limit - 1:
                problems.append(f"{e.name}: per-step gain up to {np.abs(e.gain).max():g} does not fit "
                                f"{rules.gain_mant_bits} signed bits")
            e.fixed.update(gain=mant, gain_shift=shift)
            edge_rows[-1].update(gain_shift=shift, gain_max_abs_error=gain_err)
    if problems:
        raise GraphError(f"{len(problems)} parameter(s) do not fit {target}:\n  "
                         + "\n  ".join(problems))
    graph.log.append({"pass": "quantize", "populations": rows, "synapses": edge_rows})
    return graph


def verify(graph: Graph, ctx: CompileContext) -> None:
    graph.check()
    rules = ctx.target.rules
    problems = []
    for p in graph.of_type(Population):
        if set(p.fixed) != {"vth", "du", "dv", "bias_mant", "bias_exp"}:
            problems.append(f"{p.name}: missing fixed-point parameters")
            continue
        if not bias_fits(p.fixed["bias_mant"], p.fixed["bias_exp"], rules):
            problems.append(f"{p.name}: bias mantissa or exponent out of range")
    for e in graph.edges:
        if isinstance(graph.nodes[e.src], Population):
            w = e.fixed.get("weight")
            if w is None:
                problems.append(f"{e.name}: no integer weights")
                continue
            if (e.gain is None) != ("gain" not in e.fixed):
                problems.append(f"{e.name}: per-step gain and its fixed-point form do not match")
            lo, hi = synapse_range(w, e.op.taps_per_synapse)
            lowest, highest = rules.weight_range(mixed=True)[0], rules.weight_range(mixed=False)[1]
            if lo < lowest or hi > highest:
                problems.append(f"{e.name}: synapse weights {lo}..{hi} outside {lowest}..{highest}")
    if not isinstance(graph.readout, Readout) or graph.readout.scale <= 0:
        problems.append("readout has no scale")
    if problems:
        raise GraphError("quantize verification failed:\n  " + "\n  ".join(problems))


PASS = Pass("quantize", run, verify, requires=("scales",), provides=("fixed-point",))
