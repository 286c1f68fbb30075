"""How the emulator evaluates synapses exactly: Lava 0.10's fixed-point arithmetic, synapses as
evaluated terms, bundles of terms computed as one op, delay lines (see ``emulator`` for the whole).

Lava's arithmetic, replicated (``platform-facts.md``; ``lava/proc/{lif,sparse,dense,conv}/models.py``):
a synapse's output at step t is its weights applied to its source's spikes of step
``t - 1 - delay``; Sparse/Dense clip their weights to 8 bits ([-256, 255] mixed sign, [0, 255] /
[-255, 0] single sign) and drop ``8 - num_weight_bits + mixed`` low bits (arithmetic shifts), then
shift the sum by ``weight_exp`` (a negative exponent floors); Conv uses its raw weights, ignores
``weight_exp`` and wraps its sum to 24 bits; every output crosses an int32 channel. These are
Lava's semantics (what its process models do to what they are given), not snc's compile rules,
which come from the target's profile.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F

from snc.compiler.linear import zero_insert
from snc.compiler.netlist import Netlist, Synapse, gain_schedule, synapse_matrix
from snc.compiler.targets import get_target
from snc.errors import SncError

FLOAT32_EXACT = 1 << 24  # integers below this are exact in float32
FLOAT64_EXACT = 1 << 53
V_LIMIT = (1 << 23) - 1
DECAY_UNITY = 4096
PAYLOAD_LIMIT = get_target("loihi2").rules.payload_limit  # snc's GradedSum saturates its payload here (the profile's)


# --- Lava's fixed-point arithmetic (lava/proc/lif/models.py, conv/utils.py) ---------------------
def wrap_int32(x: np.ndarray) -> np.ndarray:
    """Two's complement wrap of int64 values to int32 (numpy's int32 overflow, Lava's int32 channels)."""
    return ((x + (1 << 31)) & 0xFFFFFFFF) - (1 << 31)


def wrap_current(x: np.ndarray) -> np.ndarray:
    """LIF's one-step wrap of u: minus 2^24 above 2^23, plus 2^24 at or below -2^23 (not modular)."""
    return np.where(x > 1 << 23, x - (1 << 24), np.where(x <= -(1 << 23), x + (1 << 24), x))


def decay(x: np.ndarray, keep: int) -> np.ndarray:
    """``trunc0(x * keep / 4096)``: Lava's decay, rounding toward zero."""
    if keep == DECAY_UNITY:
        return x
    p = x * keep
    return np.sign(p) * (np.abs(p) >> 12)


def sign_mode(w: np.ndarray) -> str:
    """Lava's ``determine_sign_mode``: excitatory if no weight is negative, inhibitory if none is positive."""
    if w.min(initial=0) >= 0:
        return "excitatory"
    if w.max(initial=0) <= 0:
        return "inhibitory"
    return "mixed"


def lava_weights(w: np.ndarray, num_weight_bits: int) -> np.ndarray:
    """The weights Lava's Dense/Sparse fixed_pt models use: ``clip_weights`` then ``truncate_weights``.

    ``w`` holds every non-zero weight of the synapse's matrix (its zeros do not change the sign mode).
    """
    mode = sign_mode(w)
    w = w.astype(np.int64)
    mixed = mode == "mixed"
    if mode == "inhibitory":
        w = -w
    w = np.clip(w, -256 if mixed else 0, 255)
    drop = 8 - num_weight_bits + mixed
    w = (w >> drop) << drop
    return -w if mode == "inhibitory" else w


def float_wrap(y: torch.Tensor, bits: int) -> torch.Tensor:
    """Signed modular wrap of integer-valued floats to ``bits`` bits (exact in float64)."""
    half = float(1 << (bits - 1))
    return y - 2 * half * torch.floor((y + half) / (2 * half))


# --- synapses as evaluated ops --------------------------------------------------------------------
@dataclass
class Term:
    """One evaluated synapse (or several summed): source spikes -> integer contributions to ``dst``."""
    src: str
    dst: str
    delay: int  # steps from the source's spike to the target's input (>= 1)
    kind: str  # conv | dense | identity | csr
    weight: object  # conv kernel / dense matrix (float32, or float64 past 2^24) / scalar / scipy csr, integers
    geometry: tuple  # what must match for two terms to share an evaluation
    bound: int  # max over outputs of sum |w|: every partial sum is below it
    exp: int = 0  # remaining right shift (negative weight_exp): floor(y * 2^exp)
    wrap_bits: int = 0  # per-synapse wrap (24: Lava Conv; 32: an int32 channel into the readout)
    gain: Optional["Gain"] = None
    sum_wraps: bool = False  # graded payloads: Lava's int32 mat-vec sum can wrap before the shift

    @property
    def mergeable(self) -> bool:
        return self.exp == 0 and self.wrap_bits == 0 and self.gain is None and not self.sum_wraps

    @property
    def out_bound(self) -> int:
        if self.wrap_bits:
            return 1 << (self.wrap_bits - 1)
        bound = 1 << 31 if self.sum_wraps else self.bound
        bound = -(-bound >> -self.exp) if self.exp < 0 else bound
        if self.gain is not None:
            bound = -(-bound * int(np.abs(self.gain.schedule).max()) >> self.gain.shift)
        return bound


@dataclass
class Gain:
    """A scheduled synapse (StepGainSparse): ``floor(y * schedule[cs] / 2^shift)`` for the spikes at step cs
    of a call of the synapse's source (``gain_schedule``); ``lag``: a delay line's delay between the term's
    source and the synapse's; ``recurrent``: a lag synapse (only spikes landing in the target's window pass);
    ``wrap``: Lava's int32 sum wraps before the gain (its bound reaches 2^31); ``gated``: the synapse of a
    gated schedule, re-programmed per call (the bound holds: a gate's mantissas never exceed its gain's)."""
    schedule: np.ndarray  # [call_steps] int64 mantissas
    shift: int
    lag: int
    recurrent: bool
    wrap: bool = False
    gated: Optional[Synapse] = None

    def rows(self, spike_steps: np.ndarray, call_steps: int) -> torch.Tensor:
        """Per Lava time step of the term's source spikes: the factor, float64 (exact: |mantissa| < 2^12)."""
        return torch.from_numpy(self.schedule[(np.asarray(spike_steps) + self.lag - 1) % call_steps]
                                / float(1 << self.shift))


def _candidate_synapse_weights(w: np.ndarray, upsample: int) -> np.ndarray:
    """Every value a synapse of this conv can have: a tap or, after nearest upsampling by u, the sum
    of a contiguous block of at most u x u taps (the taps that fall on one input element)."""
    if upsample == 1:
        return w
    k = w.shape[-1]
    sums = []
    for by in range(1, upsample + 1):
        for bx in range(1, upsample + 1):
            for y in range(k - by + 1):
                for x in range(k - bx + 1):
                    sums.append(w[:, :, y:y + by, x:x + bx].sum(axis=(2, 3)))
    return np.stack(sums)


def _lava_leaves_conv_alone(w: np.ndarray, num_weight_bits: int, upsample: int) -> bool:
    """True when Lava's clipping and truncation change no synapse weight of this conv's matrix.

    A single-sign kernel gives a single-sign matrix; for a mixed kernel the
    stricter mixed rule is required, which covers every sign mode the matrix can have.
    """
    values = _candidate_synapse_weights(w, upsample)
    step = 1 << (8 - num_weight_bits + (sign_mode(w) == "mixed"))
    return bool(np.abs(values).max(initial=0) <= 255 and np.all(values % step == 0))


def make_term(s: Synapse, src: str, delay: int, to_readout: bool, net: Netlist) -> Term:
    """The evaluated form of one synapse with Lava's effective weights and its exactness bound."""
    op = s.op
    # kernels as float32: integers below 2^24 (handed weights < 2^15, shifted left by at most 7) are exact;
    # their bounds are summed in float64
    if s.kind == "conv":  # Lava Conv: raw weights, no weight_exp, 24-bit wrap
        w = op.weight.astype(np.float32)
        bound = _row_bound(w)
        return Term(src, s.dst, delay, "conv", w, _conv_geometry(op), bound,
                     wrap_bits=24 if bound >= 1 << 23 else 0)
    if op.kind == "conv" and _lava_leaves_conv_alone(op.weight, s.num_weight_bits, op.taps_per_synapse):
        w = op.weight.astype(np.float32)
        kind, geometry, bound = "conv", _conv_geometry(op), _row_bound(w)
    elif op.kind == "dense":
        w = lava_weights(op.weight, s.num_weight_bits).astype(np.float32)
        kind, geometry, bound = "dense", ("dense", op.n_in), _row_bound(w)
    elif op.kind == "identity":
        w = float(lava_weights(op.weight, s.num_weight_bits)[0])
        kind, geometry, bound = "identity", ("identity", s.name), int(abs(w))
    else:  # a conv whose synapse weights Lava changes: evaluate its exact matrix
        m = synapse_matrix(s)
        m.data = lava_weights(m.data, s.num_weight_bits)
        m.eliminate_zeros()
        w = m.astype(np.float64)
        kind, geometry = "csr", ("csr", op.n_in)
        bound = int(abs(w).sum(axis=1).max()) if w.nnz else 0
    exp = s.weight_exp
    if exp > 0:  # a left shift is an exact product (modulo 2^32 as Lava's int32): fold it into the weights
        w, bound, exp = w * (1 << exp), bound << exp, 0
    graded = net.groups[s.src].graded
    if graded:  # payloads, not 0/1 spikes: every partial sum is below sum |w| times the largest payload
        bound *= PAYLOAD_LIMIT
        if bound >= FLOAT64_EXACT:
            raise SncError(f"{s.name}: its graded sums can reach {bound:.3g}, beyond float64's exact integers: "
                           "the emulator cannot promise Lava's numbers")
    term = Term(src, s.dst, delay, kind, w, geometry, bound, exp, sum_wraps=graded and bound >= 1 << 31)
    if s.scheduled:
        term.gain = Gain(gain_schedule(s, net).astype(np.int64), s.gain_shift, delay - 1 - s.delay, s.lag > 0,
                          term.out_bound >= 1 << 31, s if s.gate else None)
    if to_readout and term.out_bound >= 1 << 31:  # the Extractor adds int32 channel values: wrap each
        term.wrap_bits = 32
    return term


def _row_bound(w: np.ndarray) -> int:
    """The largest sum of |w| over one output's weights (a kernel's output channel, a matrix row), exact."""
    return int(np.abs(w).sum(axis=tuple(range(1, w.ndim)), dtype=np.float64).max(initial=0))


def _largest(w: np.ndarray) -> float:
    return float(np.abs(w).max(initial=0))


def _conv_geometry(op) -> tuple:
    return ("conv", op.in_shape, op.weight.shape[1:], op.stride, op.padding, op.upsample, op.zeros)


def merge_terms(terms: list[Term]) -> list[Term]:
    """Sum the weights of mergeable terms with the same source, target, delay and geometry."""
    merged: dict[tuple, Term] = {}
    out = []
    for t in terms:
        if not t.mergeable or t.kind == "identity":
            out.append(t)
            continue
        key = (t.src, t.dst, t.delay, t.geometry)
        if key in merged:
            m = merged[key]
            exact = np.float32 if _largest(m.weight) + _largest(t.weight) < FLOAT32_EXACT else np.float64
            m.weight = m.weight.astype(exact) + t.weight
            m.bound += t.bound
        else:
            merged[key] = Term(t.src, t.dst, t.delay, t.kind, t.weight, t.geometry, t.bound)
            out.append(merged[key])
    return out


@dataclass
class Route:
    term: Term
    columns: slice  # of the bundle's flattened output


class Bundle:
    """Terms from one source with one geometry, evaluated as one op with concatenated outputs.

    Terms with equal weights (the same kernel re-associated into several
    targets) share one block of outputs: it is computed once and routed to each.
    """

    def __init__(self, terms: list[Term], n_src: int, device: torch.device) -> None:
        first = terms[0]
        self.src, self.kind = first.src, first.kind
        self.dtype = torch.float32 if max(t.bound for t in terms) < FLOAT32_EXACT else torch.float64
        self.routes: list[Route] = []
        self.delays = sorted({t.delay for t in terms})
        blocks: list[Term] = []  # terms whose weights are computed
        start = 0
        for t in terms:
            same = next((r for r in self.routes if _same_weights(r.term, t)), None)
            if same is None:
                n = _out_size(t, n_src)
                self.routes.append(Route(t, slice(start, start + n)))
                blocks.append(t)
                start += n
            else:
                self.routes.append(Route(t, same.columns))
        if first.kind in ("conv", "dense"):
            self.weight = torch.as_tensor(np.concatenate([t.weight for t in blocks]), dtype=self.dtype, device=device)
            if first.kind == "conv":
                _, self.in_shape, _, self.stride, self.padding, self.upsample, self.zeros = first.geometry
        elif first.kind == "identity":
            self.weight = first.weight
        else:
            from scipy import sparse
            m = sparse.vstack([t.weight for t in blocks], format="coo")
            indices = torch.as_tensor(np.stack([m.row, m.col]), dtype=torch.int64, device=device)
            self.weight = torch.sparse_coo_tensor(indices, torch.as_tensor(m.data, dtype=self.dtype, device=device),
                                                  m.shape, device=device)

    def evaluate(self, x: torch.Tensor) -> torch.Tensor:
        """Outputs [rows, n_out] for source spikes or payloads [rows, n_src] (in self.dtype)."""
        rows = x.shape[0]
        if self.kind == "conv":
            x = x.reshape(rows, *self.in_shape)
            if self.upsample > 1:
                x = zero_insert(x, self.upsample) if self.zeros else F.interpolate(x, scale_factor=self.upsample,
                                                                                   mode="nearest")
            return F.conv2d(x, self.weight, stride=self.stride, padding=self.padding).reshape(rows, -1)
        if self.kind == "dense":
            return x @ self.weight.T
        if self.kind == "identity":
            return x * self.weight
        return torch.sparse.mm(self.weight, x.T).T


def _same_weights(a: Term, b: Term) -> bool:
    if a.kind in ("identity", "csr"):
        return False  # identity bundles hold one term; csr terms are rare: not worth comparing
    return a.weight.shape == b.weight.shape and np.array_equal(a.weight, b.weight)


def _out_size(t: Term, n_src: int) -> int:
    if t.kind == "conv":
        _, (c, h, w), _, s, p, u, _ = t.geometry
        k = t.weight.shape[-1]
        return t.weight.shape[0] * ((h * u + 2 * p - k) // s + 1) * ((w * u + 2 * p - k) // s + 1)
    if t.kind == "identity":
        return n_src
    return t.weight.shape[0]


def post_process(y: torch.Tensor, term: Term, factors: Optional[torch.Tensor] = None) -> torch.Tensor:
    """A term's own post-processing: the int32 wrap of a graded sum, the floor of a right shift, the floor
    of a per-step gain (``factors`` per row of y, from ``Gain.rows``), a per-synapse wrap."""
    if term.sum_wraps:
        y = float_wrap(y.double(), 32)
    if term.exp < 0:
        y = torch.floor(y * 2.0 ** term.exp)
    if factors is not None:
        if term.gain.wrap:  # Lava multiplies the int32 sum that its shift left behind
            y = float_wrap(y.double(), 32)
        y = torch.floor(y.double() * factors.to(y.device).reshape(-1, 1))
    if term.wrap_bits:
        y = float_wrap(y.double(), term.wrap_bits)
    return y


@dataclass
class DelayLine:
    """A group that repeats ``source``'s spikes ``delay`` steps later with u = ``current`` then."""
    source: str
    delay: int
    current: int


def delay_lines(net: Netlist) -> dict[str, DelayLine]:
    """Groups proven to be delay lines (see the module docstring), resolved down to a simulated source."""
    into: dict[str, list[Synapse]] = {}
    for s in net.synapses:
        into.setdefault(s.dst, []).append(s)
    found: dict[str, DelayLine] = {}
    for g in net.groups.values():
        syns = into.get(g.name, [])
        if g.graded or len(syns) != 1 or g.name in net.inputs or g.du != 4095 or np.any(g.bias_mant != 0):
            continue
        s = syns[0]
        if s.kind != "sparse" or s.scheduled or s.op.kind != "identity" or s.src == g.name:
            continue
        w = int(lava_weights(s.op.weight, s.num_weight_bits)[0])
        a = w << s.weight_exp if s.weight_exp >= 0 else w >> -s.weight_exp
        current = int(wrap_current(wrap_int32(wrap_int32(np.int64(a)) << 6)))
        if min(current, V_LIMIT) > g.vth << 6 >= 0:
            found[g.name] = DelayLine(s.src, s.delay + 1, current)
    for name in list(found):  # a delay line of a delay line: follow it to a simulated group
        line, seen = found[name], {name}
        while line.source in found:
            if line.source in seen:  # a loop of delay lines: simulate them
                for n in seen:
                    found.pop(n, None)
                break
            seen.add(line.source)
            up = found[line.source]
            line = DelayLine(up.source, line.delay + up.delay, line.current)
        else:
            found[name] = line
    return found


def accumulator_dtypes(terms: list[Term], readout: str) -> dict[str, torch.dtype]:
    """float32 for a target whose summed input bounds stay below 2^24, else float64 (the readout: float64)."""
    total: dict[str, int] = {}
    for t in terms:
        total[t.dst] = total.get(t.dst, 0) + t.out_bound
    out = {name: torch.float32 if bound < FLOAT32_EXACT else torch.float64 for name, bound in total.items()}
    out[readout] = torch.float64
    return out
