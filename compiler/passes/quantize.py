"""Quantization to the target's fixed point (Lava ``fixed_pt`` / Loihi 2).

Per population p with scale s (from ``fold_thresholds``), in Lava's units:

- ``vth = round(threshold * s)`` (spike when ``v > vth << 6``);
- ``du = 4095`` (the synaptic current lasts one step: ``u = a_in << 6``),
  ``dv = round(4096 * (1 - decay))`` (0 for integrate-and-fire);
- static bias ``b * s * 64 = bias_mant << bias_exp`` per neuron, the smallest
  exponent that fits the mantissa;
- each synapse into p: ``W * s = w_int << weight_exp`` with an 8-bit ``w_int``
  (even when the synapse has both signs: Lava drops the low bit then) and the
  smallest exponent that fits;
- host currents into p are rounded to integers ``h * s`` per call (runtime);
- the readout's synapses use the readout's scale; the host divides it out.

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


def quantize_weights(w: np.ndarray, scale: float, fixed: dict) -> tuple[np.ndarray, int, float]:
    """(w_int, weight_exp, relative error) for real weights ``w`` at ``scale``."""
    x = np.asarray(w, dtype=np.float64) * scale
    mixed = x.min() < 0 < x.max()
    step = 2 if mixed else 1
    mant_max = 2 ** (fixed["weight_bits"] - 1 if mixed else fixed["weight_bits"]) - 1
    lowest = -(mant_max + 1) if mixed else -mant_max  # Lava clips mixed-sign weights to [-256, 255]

    def fits(exp: int) -> bool:
        m = np.round(x / (step * 2.0**exp))
        return m.min() >= lowest and m.max() <= mant_max

    peak = float(np.abs(x).max())
    exp = max(0, math.ceil(math.log2(peak / (step * mant_max))) - 1) if peak > 0 else 0  # one below the guess
    while not fits(exp) and exp <= fixed["weight_exp_max"]:
        exp += 1
    w_int = (np.round(x / (step * 2.0**exp)) * step).astype(np.int64)
    norm = np.linalg.norm(x)
    err = float(np.linalg.norm(w_int * 2.0**exp - x) / norm) if norm > 0 else 0.0
    return w_int, exp, err


def _edge_weights(e: Edge) -> np.ndarray:
    return np.ones(1) if e.op.kind == "identity" else e.op.weight


def run(graph: Graph, fixed: dict) -> Graph:
    problems: list[str] = []
    shift = fixed["activation_shift"]
    mant_lim = 2 ** (fixed["bias_mant_bits"] - 1)
    rows = []
    for p in graph.of_type(Population):
        vth = int(round(p.threshold * p.scale))
        dv = int(round(4096 * (1.0 - p.decay)))
        if dv > 4095:  # a memoryless neuron: 4095 leaves v/4096 (< 1 unit for |v| < 4096) behind
            dv = 4095
        b = p.bias * p.scale * 2**shift
        exp = np.zeros(b.shape, dtype=np.int64)
        mags = np.abs(b)
        need = mags > mant_lim - 1
        exp[need] = np.ceil(np.log2(mags[need] / (mant_lim - 0.5))).astype(np.int64)
        mant = np.round(b / 2.0**exp).astype(np.int64)
        exp = np.where(np.abs(mant) > mant_lim - 1, exp + 1, exp)
        mant = np.round(b / 2.0**exp).astype(np.int64)
        if not 0 <= vth < 2 ** fixed["vth_bits"]:
            problems.append(f"{p.name}: vth {vth} outside {fixed['vth_bits']} bits")
        if exp.max(initial=0) > fixed["bias_exp_max"]:
            problems.append(f"{p.name}: bias needs exponent {int(exp.max())} > {fixed['bias_exp_max']}")
        p.fixed = {"vth": vth, "du": 4095, "dv": dv, "bias_mant": mant, "bias_exp": exp}
        bias_err = float(np.abs(mant * 2.0**exp - b).max() / (p.scale * 2**shift))
        rows.append({"population": p.name, "vth": vth, "threshold_error": abs(vth / p.scale - p.threshold),
                     "bias_max_abs_error": bias_err, "dv": dv})
    edge_rows = []
    for e in graph.edges:
        if isinstance(graph.nodes[e.src], HostInput):
            continue
        dst = graph.nodes[e.dst]
        w_int, exp, err = quantize_weights(_edge_weights(e), dst.scale, fixed)
        if exp > fixed["weight_exp_max"]:
            problems.append(f"{e.name}: weights need exponent {exp} > {fixed['weight_exp_max']}")
        e.fixed = {"weight": w_int, "weight_exp": exp}
        edge_rows.append({"edge": e.name, "weight_exp": exp, "relative_error": err})
    if problems:
        raise GraphError(f"{len(problems)} parameter(s) do not fit {fixed.get('target', 'the target')}:\n  "
                         + "\n  ".join(problems))
    graph.log.append({"pass": "quantize", "populations": rows, "synapses": edge_rows})
    return graph


def verify(graph: Graph, fixed: dict) -> None:
    graph.check()
    problems = []
    for p in graph.of_type(Population):
        if set(p.fixed) != {"vth", "du", "dv", "bias_mant", "bias_exp"}:
            problems.append(f"{p.name}: missing fixed-point parameters")
            continue
        if np.abs(p.fixed["bias_mant"]).max(initial=0) >= 2 ** (fixed["bias_mant_bits"] - 1):
            problems.append(f"{p.name}: bias mantissa out of range")
    for e in graph.edges:
        if isinstance(graph.nodes[e.src], Population):
            w = e.fixed.get("weight")
            if w is None or np.abs(w).max() > 2 ** fixed["weight_bits"]:
                problems.append(f"{e.name}: missing or out-of-range weights")
    if not isinstance(graph.readout, Readout) or graph.readout.scale <= 0:
        problems.append("readout has no scale")
    if problems:
        raise GraphError("quantize verification failed:\n  " + "\n  ".join(problems))
