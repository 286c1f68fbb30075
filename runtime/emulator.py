"""Bit-exact, vectorised emulator of a netlist with Lava 0.10's fixed_pt semantics.

Requires a fixed-mode ``Netlist`` (``compiler/lower.py``). Guarantees: every
step's spikes, u, v and readout equal those of Lava's fixed_pt process
models (``lava/proc/{lif,sparse,dense,conv}/models.py``) for the same netlist,
batch and host currents, counting time steps across calls as Lava does. The
tests compare every step against Lava on random netlists and on the digits
U-Net and MLP.

Lava's arithmetic, replicated (``platform-facts.md``):

- a synapse's output at step t is its weights applied to its source's spikes
  of step ``t - 1 - delay``; Sparse/Dense clip their weights to 8 bits
  ([-256, 255] mixed sign, [0, 255] / [-255, 0] single sign) and drop
  ``8 - num_weight_bits + mixed`` low bits (arithmetic shifts: mixed-sign
  weights become even), then shift the sum by ``weight_exp`` (a negative
  exponent is an arithmetic right shift: floor); Conv uses its raw weights,
  ignores ``weight_exp`` and wraps its sum to 24 bits; every output crosses
  an int32 channel; the inputs of a neuron are summed in int32;
- LIF: ``u = wrap(trunc0(u * (4096 - du - 1) / 4096) + (a_in << 6))`` where
  the shift and the sum are int32 and ``wrap`` subtracts 2^24 above 2^23 and
  adds it at or below -2^23 (once); ``v = clip(trunc0(v * (4096 - dv) / 4096)
  + u + (bias_mant << bias_exp), +-(2^23 - 1))``; spike when
  ``v > vth << 6``, then ``v = 0``; ``LIFReset`` zeroes u and v first at
  steps with ``time_step % reset_interval == reset_offset``;
- the readout (Lava's Extractor) sums its synapses' int32 outputs exactly;
- snc's step processes (``lava_processes/step.py``): a gained synapse's
  output after the ``weight_exp`` shift is ``floor(a * gain / 2^gain_shift)``
  with the gain of its source's logical step; a per-step bias and host
  current are those of the group's logical step (``logical_steps``).

How it is fast:

- **Time-batched, event-driven synapses.** Groups are integrated in
  topological order of the netlist's strongly connected components, a whole
  run of steps at a time: once a group's spikes for every step are known,
  each of its synapses is evaluated for all (step, image) rows that hold at
  least one spike, in one structural call (``torch.conv2d`` on the op's
  kernel, with nearest upsampling first, or a matrix product); rows without
  spikes contribute exactly 0 and are skipped. Groups in a recurrent loop
  advance step by step, evaluating their loop synapses per step.
- **float32 only with a proof.** A float32 sum of 0/1 spikes times integer
  weights is exact when every partial sum is an integer below 2^24 in
  magnitude, which holds when, for every output, the sum of |w| over its
  fan-in is below 2^24 (then the result does not depend on summation order;
  torch's CPU convolutions and matrix products add products, they do not
  transform the operands). That bound is computed per evaluated op when the
  emulator is built; an op that fails it runs in float64 (exact below 2^53),
  and so does an accumulator whose summed bounds fail it.
- **Fewer, smaller ops.** Synapses that differ only in their weights (the
  excitatory and inhibitory halves of ``split_signs``) are summed into one
  kernel, with non-negative ``weight_exp`` folded in (exact) when no
  per-synapse wrap can occur; synapses from one group with the same geometry
  are concatenated along their output channels, and equal kernels (one
  kernel re-associated into several targets) are computed once.
- **Delay lines are not simulated.** A group whose only input is one
  identity synapse, with ``du = 4095``, zero bias and a weight that always
  makes it spike, spikes exactly when its source spiked ``delay + 1`` steps
  earlier, and its u is that weight's current then and v is always 0 (by
  induction from zero state; resets change nothing). The relays of
  ``balance_delays`` are such groups: they are read from their source's
  spike history instead of being integrated.
- **Only the logical windows, when that is provably the same.** With
  ``windows_only`` (what ``ChipDenoiser`` uses) a window-separable netlist
  (see ``EmuNetwork``) integrates each group only in its T logical steps of
  a call, which gives the same ``CallResult`` as all ``depth + T`` steps.
- **Memory reuse.** A call at batch 64 allocates about 90 MB of
  temporaries; the ``snc`` command (and the bench) raise glibc's mmap and
  trim thresholds (``snc.allocator``) so freed blocks are reused instead of
  faulted in again every call (about 15 % of a call otherwise).
- **Integer work where it is cheap.** Neuron state is int64 numpy with
  explicit wraps and saturation; when every input of a run is below 2^17 in
  magnitude no wrap can occur and u, v run in int32 without the wrap passes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Union

import networkx as nx
import numpy as np
import torch
import torch.nn.functional as F

from snc.compiler.ir import Graph
from snc.compiler.lower import Netlist, NeuronGroup, Synapse, gain_schedule, synapse_matrix
from snc.errors import SncError

from .chip import CallResult, Trace, as_netlist, call_result, host_values, step_rows

FLOAT32_EXACT = 1 << 24  # integers below this are exact in float32
V_LIMIT = (1 << 23) - 1
DECAY_UNITY = 4096


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


def _float_wrap(y: torch.Tensor, bits: int) -> torch.Tensor:
    """Signed modular wrap of integer-valued floats to ``bits`` bits (exact in float64)."""
    half = float(1 << (bits - 1))
    return y - 2 * half * torch.floor((y + half) / (2 * half))


# --- synapses as evaluated ops --------------------------------------------------------------------
@dataclass
class _Term:
    """One evaluated synapse (or several summed): source spikes -> integer contributions to ``dst``."""
    src: str
    dst: str
    delay: int  # steps from the source's spike to the target's input (>= 1)
    kind: str  # conv | dense | identity | csr
    weight: object  # conv kernel / dense matrix / scalar / scipy csr, float64 holding integers
    geometry: tuple  # what must match for two terms to share an evaluation
    bound: int  # max over outputs of sum |w|: every partial sum is below it
    exp: int = 0  # remaining right shift (negative weight_exp): floor(y * 2^exp)
    wrap_bits: int = 0  # per-synapse wrap (24: Lava Conv; 32: an int32 channel into the readout)
    gain: Optional["_Gain"] = None

    @property
    def mergeable(self) -> bool:
        return self.exp == 0 and self.wrap_bits == 0 and self.gain is None

    @property
    def out_bound(self) -> int:
        if self.wrap_bits:
            return 1 << (self.wrap_bits - 1)
        bound = -(-self.bound >> -self.exp) if self.exp < 0 else self.bound
        if self.gain is not None:
            bound = -(-bound * int(np.abs(self.gain.schedule).max()) >> self.gain.shift)
        return bound


@dataclass
class _Gain:
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


def _term(s: Synapse, src: str, delay: int, to_readout: bool, net: Netlist) -> _Term:
    """The evaluated form of one synapse with Lava's effective weights and its exactness bound."""
    op = s.op
    if s.kind == "conv":  # Lava Conv: raw weights, no weight_exp, 24-bit wrap
        w = op.weight.astype(np.float64)
        bound = int(np.abs(w).sum(axis=(1, 2, 3)).max(initial=0))
        return _Term(src, s.dst, delay, "conv", w, _conv_geometry(op), bound,
                     wrap_bits=24 if bound >= 1 << 23 else 0)
    if op.kind == "conv" and _lava_leaves_conv_alone(op.weight, s.num_weight_bits, op.upsample):
        w = op.weight.astype(np.float64)
        kind, geometry, bound = "conv", _conv_geometry(op), int(np.abs(w).sum(axis=(1, 2, 3)).max(initial=0))
    elif op.kind == "dense":
        w = lava_weights(op.weight, s.num_weight_bits).astype(np.float64)
        kind, geometry, bound = "dense", ("dense", op.n_in), int(np.abs(w).sum(axis=1).max(initial=0))
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
    if exp > 0:  # a left shift is an exact product: fold it into the weights
        w, bound, exp = w * float(1 << exp), bound << exp, 0
    term = _Term(src, s.dst, delay, kind, w, geometry, bound, exp)
    if s.scheduled:
        term.gain = _Gain(gain_schedule(s, net).astype(np.int64), s.gain_shift, delay - 1 - s.delay, s.lag > 0,
                          term.out_bound >= 1 << 31, s if s.gate else None)
    if to_readout and term.out_bound >= 1 << 31:  # the Extractor adds int32 channel values: wrap each
        term.wrap_bits = 32
    return term


def _conv_geometry(op) -> tuple:
    return ("conv", op.in_shape, op.weight.shape[1:], op.stride, op.padding, op.upsample)


def _merge(terms: list[_Term]) -> list[_Term]:
    """Sum the weights of mergeable terms with the same source, target, delay and geometry."""
    merged: dict[tuple, _Term] = {}
    out = []
    for t in terms:
        if not t.mergeable or t.kind == "identity":
            out.append(t)
            continue
        key = (t.src, t.dst, t.delay, t.geometry)
        if key in merged:
            m = merged[key]
            m.weight = m.weight + t.weight
            m.bound += t.bound
        else:
            merged[key] = _Term(t.src, t.dst, t.delay, t.kind, t.weight, t.geometry, t.bound)
            out.append(merged[key])
    return out


@dataclass
class _Route:
    term: _Term
    columns: slice  # of the bundle's flattened output


class _Bundle:
    """Terms from one source with one geometry, evaluated as one op with concatenated outputs.

    Terms with equal weights (the same kernel re-associated into several
    targets) share one block of outputs: it is computed once and routed to each.
    """

    def __init__(self, terms: list[_Term], n_src: int) -> None:
        first = terms[0]
        self.src, self.kind = first.src, first.kind
        self.dtype = torch.float32 if max(t.bound for t in terms) < FLOAT32_EXACT else torch.float64
        self.routes: list[_Route] = []
        self.delays = sorted({t.delay for t in terms})
        blocks: list[_Term] = []  # terms whose weights are computed
        start = 0
        for t in terms:
            same = next((r for r in self.routes if _same_weights(r.term, t)), None)
            if same is None:
                n = _out_size(t, n_src)
                self.routes.append(_Route(t, slice(start, start + n)))
                blocks.append(t)
                start += n
            else:
                self.routes.append(_Route(t, same.columns))
        if first.kind in ("conv", "dense"):
            self.weight = torch.as_tensor(np.concatenate([t.weight for t in blocks]), dtype=self.dtype)
            if first.kind == "conv":
                _, self.in_shape, _, self.stride, self.padding, self.upsample = first.geometry
        elif first.kind == "identity":
            self.weight = first.weight
        else:
            from scipy import sparse
            m = sparse.vstack([t.weight for t in blocks], format="coo")
            indices = torch.as_tensor(np.stack([m.row, m.col]), dtype=torch.int64)
            self.weight = torch.sparse_coo_tensor(indices, torch.as_tensor(m.data, dtype=self.dtype), m.shape)

    def evaluate(self, x: torch.Tensor) -> torch.Tensor:
        """Outputs [rows, n_out] for source spikes [rows, n_src] (0/1 in self.dtype)."""
        rows = x.shape[0]
        if self.kind == "conv":
            x = x.reshape(rows, *self.in_shape)
            if self.upsample > 1:
                x = F.interpolate(x, scale_factor=self.upsample, mode="nearest")
            return F.conv2d(x, self.weight, stride=self.stride, padding=self.padding).reshape(rows, -1)
        if self.kind == "dense":
            return x @ self.weight.T
        if self.kind == "identity":
            return x * self.weight
        return torch.sparse.mm(self.weight, x.T).T


def _same_weights(a: _Term, b: _Term) -> bool:
    if a.kind in ("identity", "csr"):
        return False  # identity bundles hold one term; csr terms are rare: not worth comparing
    return a.weight.shape == b.weight.shape and np.array_equal(a.weight, b.weight)


def _out_size(t: _Term, n_src: int) -> int:
    if t.kind == "conv":
        _, (c, h, w), _, s, p, u = t.geometry
        k = t.weight.shape[-1]
        return t.weight.shape[0] * ((h * u + 2 * p - k) // s + 1) * ((w * u + 2 * p - k) // s + 1)
    if t.kind == "identity":
        return n_src
    return t.weight.shape[0]


def _post(y: torch.Tensor, term: _Term, factors: Optional[torch.Tensor] = None) -> torch.Tensor:
    """A term's own post-processing: the floor of a right shift, the floor of a per-step gain
    (``factors`` per row of y, from ``_Gain.rows``), a per-synapse wrap."""
    if term.exp < 0:
        y = torch.floor(y * 2.0 ** term.exp)
    if factors is not None:
        if term.gain.wrap:  # Lava multiplies the int32 sum that its shift left behind
            y = _float_wrap(y.double(), 32)
        y = torch.floor(y.double() * factors.reshape(-1, 1))
    if term.wrap_bits:
        y = _float_wrap(y.double(), term.wrap_bits)
    return y


@dataclass
class _DelayLine:
    """A group that repeats ``source``'s spikes ``delay`` steps later with u = ``current`` then."""
    source: str
    delay: int
    current: int


def _delay_lines(net: Netlist) -> dict[str, _DelayLine]:
    """Groups proven to be delay lines (see the module docstring), resolved down to a simulated source."""
    into: dict[str, list[Synapse]] = {}
    for s in net.synapses:
        into.setdefault(s.dst, []).append(s)
    found: dict[str, _DelayLine] = {}
    for g in net.groups.values():
        syns = into.get(g.name, [])
        if len(syns) != 1 or g.name in net.inputs or g.du != 4095 or np.any(g.bias_mant != 0):
            continue
        s = syns[0]
        if s.kind != "sparse" or s.scheduled or s.op.kind != "identity" or s.src == g.name:
            continue
        w = int(lava_weights(s.op.weight, s.num_weight_bits)[0])
        a = w << s.weight_exp if s.weight_exp >= 0 else w >> -s.weight_exp
        current = int(wrap_current(wrap_int32(wrap_int32(np.int64(a)) << 6)))
        if min(current, V_LIMIT) > g.vth << 6 >= 0:
            found[g.name] = _DelayLine(s.src, s.delay + 1, current)
    for name in list(found):  # a delay line of a delay line: follow it to a simulated group
        line, seen = found[name], {name}
        while line.source in found:
            if line.source in seen:  # a loop of delay lines: simulate them
                for n in seen:
                    found.pop(n, None)
                break
            seen.add(line.source)
            up = found[line.source]
            line = _DelayLine(up.source, line.delay + up.delay, line.current)
        else:
            found[name] = line
    return found


# --- the network -----------------------------------------------------------------------------------
@dataclass
class _State:
    u: np.ndarray  # [B, n] int64
    v: np.ndarray  # [B, n] int64
    bias: torch.Tensor  # [n] or [T, n] int64
    history: torch.Tensor  # [H, B, n] bool: spikes of the last H steps


@dataclass
class _Run:
    """The arrays of one run. Steps are Lava time steps (absolute, from 1)."""
    first_step: int
    steps: int
    span: dict[str, tuple[int, int]]  # per simulated group and the readout: steps [start, stop) integrated
    spike_start: dict[str, int] = field(default_factory=dict)  # step of row 0 of spikes[g]
    spikes: dict[str, torch.Tensor] = field(default_factory=dict)  # [rows, B, n] bool
    inputs: dict[str, torch.Tensor] = field(default_factory=dict)  # [(stop - start) * B, n] float accumulators
    u: dict[str, np.ndarray] = field(default_factory=dict)  # traces [steps, B, n]
    v: dict[str, np.ndarray] = field(default_factory=dict)


class EmuNetwork:
    """A fixed-mode netlist (or a compiled graph, lowered) for a batch of images, with Lava's contract.

    ``windows_only=True`` lets ``call`` integrate each group only in its T
    logical steps when the netlist is *window-separable* (checked here):
    every simulated group is a ``LIFReset`` that resets at the first step of
    its window (``reset_interval`` = call length, ``reset_offset`` = depth + 1)
    and every synapse joins a source at depth d to a target at depth
    d + 1 + delay (``balance_delays`` builds exactly this) or is a recurrent
    synapse (only spikes that land in the target's window pass). Then a spike
    outside its source's window reaches its target outside the target's
    window, where it only changes state that the target's next reset wipes:
    the readout and the spikes of every window, all a ``CallResult`` holds,
    are those of every-step emulation (the tests check both against Lava).
    Such a network keeps no state between calls, so it has no ``trace``.
    """

    def __init__(self, source: Union[Graph, Netlist], batch: int = 1, record: bool = False,
                 windows_only: bool = False) -> None:
        if batch < 1:
            raise SncError("batch must be at least 1")
        net = as_netlist(source, "fixed")
        self.net, self.batch, self.record = net, batch, record
        self.length = net.call_steps
        self.time_step = 0  # Lava's time_step of the last step run
        self.lines = _delay_lines(net)
        self.simulated = [g for g in net.groups if g not in self.lines]
        terms = []
        for s in net.synapses:
            if s.dst in self.lines:
                continue  # a delay line's input is its definition
            line = self.lines.get(s.src)
            src, extra = (line.source, line.delay) if line else (s.src, 0)
            terms.append(_term(s, src, s.delay + 1 + extra, s.dst == net.readout.name, net))
        terms = _merge(terms)
        self.gated = [t.gain for t in terms if t.gain is not None and t.gain.gated is not None]
        self.order = self._components(terms)
        self.windowed = windows_only and self._window_separable(terms)
        component = {g: i for i, members in enumerate(self.order) for g in members}
        self.loop_bundles: dict[str, list[_Bundle]] = {}  # per source: terms inside a recurrent component
        self.bundles: dict[str, list[_Bundle]] = {}  # per source: terms into later components or the readout
        grouped: dict[tuple, list[_Term]] = {}
        for t in terms:
            inside = t.dst in component and component[t.dst] == component[t.src]
            key = (t.src, inside, t.delay if inside else None, t.geometry, t.bound < FLOAT32_EXACT)
            grouped.setdefault(key, []).append(t)
        for (src, inside, *_), ts in grouped.items():
            (self.loop_bundles if inside else self.bundles).setdefault(src, []).append(
                _Bundle(ts, net.groups[src].n))
        self.recurrent = {i for i, members in enumerate(self.order) if any(m in self.loop_bundles for m in members)}
        self.accumulator_dtype = _accumulator_dtypes(terms, net.readout.name)
        history = {g: 0 for g in self.simulated}
        for t in terms:
            history[t.src] = max(history[t.src], t.delay)
        for line in self.lines.values():
            history[line.source] = max(history[line.source], line.delay)
        self.state = {}
        for name in self.simulated:
            g = net.groups[name]
            self.state[name] = _State(np.zeros((batch, g.n), np.int64), np.zeros((batch, g.n), np.int64),
                                      torch.from_numpy(g.bias()),
                                      torch.zeros((history[name], batch, g.n), dtype=torch.bool))

    def _window_separable(self, terms: list[_Term]) -> bool:
        net, length = self.net, self.length
        depth = {name: g.depth for name, g in net.groups.items()} | {net.readout.name: net.readout.depth}
        if any(not 0 <= d <= length - net.timestep for d in depth.values()):
            return False
        for name in self.simulated:
            g = net.groups[name]
            if g.reset_interval != length or g.reset_offset != (g.depth + 1) % length:
                return False
        if any(depth[name] != depth[line.source] + line.delay for name, line in self.lines.items()):
            return False
        if any(len({depth[m] for m in members}) > 1 for members in self.order):
            return False  # a loop across pipeline stages: its members' windows do not line up
        # a recurrent synapse passes only spikes that land in its target's window: separable at any depth
        return all(depth[t.dst] == depth[t.src] + t.delay or (t.gain is not None and t.gain.recurrent)
                   for t in terms)

    def _components(self, terms: list[_Term]) -> list[list[str]]:
        """Simulated groups as strongly connected components in topological order."""
        g = nx.DiGraph()
        g.add_nodes_from(self.simulated)
        g.add_edges_from((t.src, t.dst) for t in terms if t.dst in self.net.groups)
        dag = nx.condensation(g)
        return [sorted(dag.nodes[c]["members"], key=self.simulated.index) for c in nx.topological_sort(dag)]

    # --- public contract ---------------------------------------------------------------------
    def set_gates(self, gates: Optional[dict[str, np.ndarray]]) -> None:
        """Re-program the gated synapses with the gate values [T] of the coming calls (as Lava's Var.set)."""
        if self.gated and gates is None:
            raise SncError("this netlist has gated synapses: a call needs its gate values")
        for gain in self.gated:
            gain.schedule = gain_schedule(gain.gated, self.net, gates).astype(np.int64)

    def call(self, currents: dict[str, np.ndarray], gates: Optional[dict[str, np.ndarray]] = None) -> CallResult:
        """One denoiser call: host currents [B, *shape] or [T, B, *shape] per group -> readout [T, B, *shape];
        ``gates``: the call's values [T] per gate key (a netlist with gates needs them)."""
        self.set_gates(gates)
        values = host_values(self.net, currents, self.batch)
        if not self.windowed:
            run = self._run(self.length, values, trace=False)
            spikes = {name: self._spikes(run, name) for name in self.net.groups} if self.record else {}
            return call_result(self.net, self._readout(run), spikes, self.batch)
        t0, T, b = self.time_step + 1, self.net.timestep, self.batch
        span = {name: (t0 + d, t0 + d + T) for name, d in
                [(g, self.net.groups[g].depth) for g in self.simulated] + [(self.net.readout.name, self.net.depth)]}
        run = _Run(t0, self.length, span)
        for name in self.simulated:
            run.spike_start[name] = span[name][0]
            run.spikes[name] = torch.zeros((T, b, self.net.groups[name].n), dtype=torch.bool)
        self._execute(run, values, trace=False)
        self.time_step += self.length
        readout = self._readout(run).reshape(T, b, *self.net.readout.shape) / self.net.readout.scale
        spikes = {}
        if self.record:
            for name, g in self.net.groups.items():
                spikes[name] = self._spikes(run, name).reshape(T, b, *g.shape)
        return CallResult(readout, spikes)

    def trace(self, steps: int, currents: dict[str, np.ndarray],
              gates: Optional[dict[str, np.ndarray]] = None) -> Trace:
        """Every step of ``steps`` steps: spikes, u, v of every group and the raw readout."""
        if self.windowed:
            raise SncError("this emulator integrates only the logical windows (windows_only=True): it has no trace")
        self.set_gates(gates)
        run = self._run(steps, host_values(self.net, currents, self.batch), trace=True)
        spikes = {name: self._spikes(run, name) for name in self.net.groups}
        u, v = {}, {}
        for name in self.net.groups:
            line = self.lines.get(name)
            if line:
                u[name] = spikes[name].astype(np.int64) * line.current
                v[name] = np.zeros_like(u[name])
            else:
                u[name], v[name] = run.u[name], run.v[name]
        return Trace(spikes, u, v, self._readout(run))

    def close(self) -> None:
        """Nothing to release; the emulator has the backends' lifecycle for symmetry."""

    def __enter__(self) -> "EmuNetwork":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # --- runs ----------------------------------------------------------------------------------
    def _run(self, steps: int, values: dict[str, np.ndarray], trace: bool) -> _Run:
        """Every step of ``steps`` steps for every group, continuing from the network's state."""
        t0 = self.time_step + 1
        run = _Run(t0, steps, {name: (t0, t0 + steps) for name in self.simulated + [self.net.readout.name]})
        for name in self.simulated:
            hist = self.state[name].history
            run.spike_start[name] = t0 - hist.shape[0]
            run.spikes[name] = torch.cat([hist, torch.zeros((steps, *hist.shape[1:]), dtype=torch.bool)])
        self._execute(run, values, trace)
        for name in self.simulated:
            st = self.state[name]
            st.history = run.spikes[name][run.spikes[name].shape[0] - st.history.shape[0]:].clone()
        self.time_step += steps
        return run

    def _execute(self, run: _Run, values: dict[str, np.ndarray], trace: bool) -> None:
        for index, members in enumerate(self.order):
            if index in self.recurrent:
                self._integrate_loop(run, members, values, trace)
            else:
                self._integrate(run, members[0], self._take_input(run, members[0], values), 0, trace)
            for name in members:
                for bundle in self.bundles.get(name, []):
                    self._evaluate(run, bundle)

    def _spikes(self, run: _Run, name: str) -> np.ndarray:
        """Spikes [rows, B, n] of a group over its span (a delay line: its source's, shifted)."""
        line = self.lines.get(name)
        source, delay = (line.source, line.delay) if line else (name, 0)
        start, stop = run.span[source]
        if line and self.windowed:
            start, stop = start + delay, stop + delay  # its window: the source's, ``delay`` steps later
        first = start - delay - run.spike_start[source]
        return run.spikes[source][first:first + stop - start].numpy()

    def _readout(self, run: _Run) -> np.ndarray:
        name = self.net.readout.name
        start, stop = run.span[name]
        acc = run.inputs.get(name)
        if acc is None:
            return np.zeros((stop - start, self.batch, self.net.readout.n))
        return acc.reshape(stop - start, self.batch, -1).numpy()

    def _take_input(self, run: _Run, name: str, values: dict[str, np.ndarray]) -> torch.Tensor:
        """The group's summed input over its span [steps, B, n], exact, host current included.

        int32 when its synaptic sums are float32 (proven below 2^24) and host currents (below 2^17)
        cannot overflow it; int64 otherwise.
        """
        start, stop = run.span[name]
        acc = run.inputs.pop(name, None)
        shape = (stop - start, self.batch, self.net.groups[name].n)
        if acc is None:
            a = torch.zeros(shape, dtype=torch.int32)
        else:
            a = acc.to(torch.int32 if acc.dtype == torch.float32 else torch.int64).reshape(shape)
        if name in values:
            a += torch.from_numpy(values[name][step_rows(self.net, name, start, stop - start)]).to(a.dtype)
        return a

    def _evaluate(self, run: _Run, bundle: _Bundle) -> None:
        """Evaluate a bundle on the source's rows (step, image) that its routes need and that hold a
        spike, and add each route's part into its target's input at ``delay`` steps later."""
        b = self.batch
        spikes, s0 = run.spikes[bundle.src], run.spike_start[bundle.src]
        needed = [(run.span[r.term.dst][0] - r.term.delay - s0, run.span[r.term.dst][1] - r.term.delay - s0)
                  for r in bundle.routes]
        lo, hi = max(0, min(a for a, _ in needed)), min(spikes.shape[0], max(z for _, z in needed))
        if hi <= lo:
            return
        window = spikes[lo:hi].reshape((hi - lo) * b, -1)
        active = _any_spike(window)
        count = int(active.sum())
        if count == 0:
            return
        dense = count * 2 > active.numel()  # most rows hold spikes: skip the gather and scatter
        rows = None if dense else torch.nonzero(active).reshape(-1)
        y = bundle.evaluate(window.to(bundle.dtype) if dense else window.index_select(0, rows).to(bundle.dtype))
        for route in bundle.routes:
            t = route.term
            start, stop = run.span[t.dst]
            shift = s0 + lo + t.delay - start  # the target's input step of window row 0
            length = stop - start
            acc = run.inputs.get(t.dst)
            if acc is None:
                acc = run.inputs[t.dst] = torch.zeros((length * b, self.net.size(t.dst)),
                                                      dtype=self.accumulator_dtype[t.dst])
            if dense:
                j0, j1 = max(0, -shift), min(hi - lo, length - shift)
                if j1 > j0:
                    factors = None if t.gain is None else \
                        t.gain.rows(np.repeat(np.arange(s0 + lo + j0, s0 + lo + j1), b), self.length)
                    acc[(j0 + shift) * b:(j1 + shift) * b] += \
                        _post(y[j0 * b:j1 * b, route.columns], t, factors).to(acc.dtype)
            else:
                target = rows + shift * b
                keep = (target >= 0) & (target < length * b)
                if bool(keep.any()):
                    factors = None if t.gain is None else \
                        t.gain.rows(s0 + lo + (rows[keep] // b).numpy(), self.length)
                    acc.index_put_((target[keep],), _post(y[keep][:, route.columns], t, factors).to(acc.dtype),
                                   accumulate=True)

    def _integrate_loop(self, run: _Run, members: list[str], values: dict[str, np.ndarray], trace: bool) -> None:
        """A recurrent component: external input for all steps, loop synapses evaluated step by step.

        Every loop synapse has a delay of at least one step, so step j reads spikes of steps before j.
        """
        external = {name: self._take_input(run, name, values).to(torch.int64) for name in members}
        start, stop = run.span[members[0]]  # every member's (a windowed loop has one depth: _window_separable)
        for j in range(stop - start):
            a = {name: external[name][j:j + 1].clone() for name in members}
            for src in members:
                for bundle in self.loop_bundles.get(src, []):
                    step = run.span[src][0] + j - bundle.delays[0]
                    if step < run.spike_start[src]:  # before a window: no spikes kept (a recurrent synapse masks them)
                        continue
                    x = run.spikes[src][step - run.spike_start[src]]
                    if not bool(_any_spike(x).any()):
                        continue
                    y = bundle.evaluate(x.to(bundle.dtype))
                    for route in bundle.routes:
                        t = route.term
                        factors = None if t.gain is None else t.gain.rows(np.full(self.batch, step), self.length)
                        a[t.dst][0] += _post(y[:, route.columns], t, factors).to(torch.int64)
            for name in members:
                self._integrate(run, name, a[name], j, trace)

    def _integrate(self, run: _Run, name: str, a: torch.Tensor, first: int, trace: bool) -> None:
        """Advance a group over the steps of ``a`` [k, B, n] (exact input sums, consumed), from span step ``first``."""
        g: NeuronGroup = self.net.groups[name]
        st = self.state[name]
        k = a.shape[0]
        start = run.span[name][0] + first
        resets = [bool(g.reset_interval) and t % g.reset_interval == g.reset_offset for t in range(start, start + k)]
        keep_u = DECAY_UNITY - (g.du + 1)
        lo, hi = (int(v) for v in torch.aminmax(a))
        if keep_u == 0 and -(1 << 17) < lo and hi < 1 << 17:
            u = a.mul_(64)  # a_in << 6 stays inside 24 bits: no int32 or 24-bit wrap can occur (fits a's dtype)
        elif keep_u == 0:  # u is this step's input alone: all steps at once
            u = torch.from_numpy(wrap_current(wrap_int32(wrap_int32(a.to(torch.int64).numpy()) << 6)))
        else:
            drive = wrap_int32(wrap_int32(a.to(torch.int64).numpy()) << 6)
            u_steps = np.empty_like(drive)
            for j in range(k):
                previous = np.zeros_like(st.u) if resets[j] else st.u
                u_steps[j] = st.u = wrap_current(wrap_int32(decay(previous, keep_u) + drive[j]))
            u = torch.from_numpy(u_steps)
        st.u = u[-1].numpy().astype(np.int64)
        u_trace = u.numpy().astype(np.int64) if trace else None
        row = start - run.spike_start[name]
        spikes = run.spikes[name][row:row + k].numpy()
        bias = st.bias[step_rows(self.net, name, start, k)].unsqueeze(1) if g.per_step else st.bias
        v = _integrate_v(g, st, u.add_(bias.to(u.dtype)), spikes, resets, trace)  # u is ours: x = u + bias in place
        if trace:
            steps = run.span[name][1] - run.span[name][0]
            run.u.setdefault(name, np.empty((steps, *a.shape[1:]), np.int64))[first:first + k] = u_trace
            run.v.setdefault(name, np.empty((steps, *a.shape[1:]), np.int64))[first:first + k] = v


def _any_spike(rows: torch.Tensor) -> torch.Tensor:
    """Per row [rows, n] of spikes: any spike (a uint8 max: torch's bool ``any(dim)`` is far slower)."""
    return rows.view(torch.uint8).amax(dim=1) > 0


def _accumulator_dtypes(terms: list[_Term], readout: str) -> dict[str, torch.dtype]:
    """float32 for a target whose summed input bounds stay below 2^24, else float64 (the readout: float64)."""
    total: dict[str, int] = {}
    for t in terms:
        total[t.dst] = total.get(t.dst, 0) + t.out_bound
    out = {name: torch.float32 if bound < FLOAT32_EXACT else torch.float64 for name, bound in total.items()}
    out[readout] = torch.float64
    return out


def _integrate_v(g: NeuronGroup, st: _State, x: torch.Tensor, spikes: np.ndarray, resets: list[bool],
                 trace: bool) -> Optional[np.ndarray]:
    """The voltage recurrence over x = u + bias [k, B, n]; writes spikes, returns v per step if tracing.

    For dv = 0 it runs in int32: |v| < 2^23, and |u + bias| < 2^31 - 2^24 + 2^19 (u leaves the
    one-step wrap of an int32 below 2^31 - 2^24; bias_mant << bias_exp < 2^19), so v + x fits.
    A voltage that did not spike is at most the threshold, so the upper clip can only bind when
    threshold + max(x) exceeds the limit.
    """
    threshold = int(g.vth) << 6
    keep_v = DECAY_UNITY - int(g.dv)
    v_trace = np.empty(x.shape, np.int64) if trace else None
    upper = threshold + int(x.max()) > V_LIMIT
    if keep_v == DECAY_UNITY:
        v, x = st.v.astype(np.int32), x.to(torch.int32).numpy()
    else:
        v, x = st.v, x.numpy()
    for j in range(x.shape[0]):
        if resets[j]:
            v[:] = 0
        if keep_v == DECAY_UNITY:
            v += x[j]
        else:
            v = decay(v, keep_v) + x[j]
        np.maximum(v, -V_LIMIT, out=v)
        if upper:
            np.minimum(v, V_LIMIT, out=v)
        quiet = np.less_equal(v, threshold, out=spikes[j])
        v *= quiet  # spiking neurons reset to 0
        np.logical_not(quiet, out=spikes[j])
        if trace:
            v_trace[j] = v
    st.v = v.astype(np.int64)
    return v_trace
