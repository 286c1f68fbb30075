"""Lower a compiled graph to a netlist: the processes a chip backend instantiates.

A ``Netlist`` is the one lowering target of snc and is backend-neutral:
``runtime/lava_backend.py`` builds Lava processes from it and
``runtime/emulator.py`` executes it. It holds

- **neuron groups** (Lava ``LIF``; ``LIFReset`` when ``reset_interval > 0``):
  ``du``, ``dv``, ``vth``, ``bias_mant``, ``bias_exp`` (integers in ``fixed``
  mode; in ``float`` mode the floating_pt parameters: ``bias_mant`` is the
  float bias, ``bias_exp`` is 0). A bias per logical step (TSM) has arrays
  [T, n] instead of [n]: snc's ``StepBiasLIFReset`` process;
- **synapses** from a group to a group (any group: a synapse into its own
  source or into an earlier group is a recurrent connection) or to the
  readout, one Lava connection process each:

  - ``sparse``: Lava ``Sparse`` (``DelaySparse`` when ``delay > 0``);
  - ``dense``: Lava ``Dense``;
  - ``conv``: Lava ``Conv``, whose fixed_pt model ignores ``weight_exp`` and
    ``num_weight_bits``, does not clip its weights and wraps its output at 24
    bits; so a ``conv`` synapse must have ``weight_exp == 0``,
    ``num_weight_bits == 8``, no delay and no upsampling.

  A ``sparse`` synapse without delay may carry a per-step ``gain`` [T]
  (TSM): snc's ``StepGainSparse`` process multiplies its output for spikes of
  logical step t by ``gain[t]`` (fixed: ``(a * gain[t]) >> gain_shift``,
  an arithmetic shift, after Lava's ``weight_exp``; float: ``a * gain[t]``).
  A recurrent synapse (``lag`` 1: the target's step t reads the source's
  step t - 1) passes only the spikes of source steps 0..T-2 (the same
  process with a gain of 0 at the other steps): in the model there is
  nothing before step 0, on the chip the source's last step of the previous
  call would reach the first step of this one. Its gain is the target's at
  t (the source's step t - 1). A gated synapse (``gate``: an ``snc.Gate``
  key) has its gain times the host's per-call gate values g[t] (|g| <= 1):
  fixed ``round(gain[t] * g[t])`` mantissas over the same shift, so the
  backends re-program the table per call. ``gain_schedule`` gives the factor
  for every step of a call.

  Every synapse keeps its structural ``LinearOp`` with the weights the
  backend is handed (fixed: the quantized integers before Lava's own
  clipping and truncation; an identity op carries its scalar weight as a
  one-element array). Ops are in torch's orientation (a conv is a
  cross-correlation over C x H x W tensors flattened in C order); a backend
  chooses how to evaluate it (Lava: a CSR matrix, or the flipped kernel for
  ``Conv``; the emulator: torch convolutions);
- **host inputs**: the groups that receive a host current every step (a Lava
  ``Injector``), with the scale that turns model units into integers;
- **the readout**: the summed output of the synapses into it, read every step.

Timing (Lava's): every synapse adds one step (a spike at step t reaches its
target at step t + 1 + delay); ``LIFReset`` zeroes u and v at the start of
every step with ``time_step % reset_interval == reset_offset`` (time steps
count from 1 across calls). A denoiser call runs ``depth + T`` steps; a
group's logical step 0 is at 0-based step ``depth`` of the call. Per-step
values of a group (bias, host current) and of a synapse (gain, indexed by its
source group's depth) are taken at ``logical_steps``: the step of the call
minus the depth, clipped to 0..T-1 (outside its window a group's state is
wiped by its next reset, so any value would do; the clip makes it defined).

Requires: a graph after ``quantize`` for ``fixed`` mode (any compiled graph
for ``float``). Guarantees: ``Netlist.check`` passed (every parameter within
the range Lava represents, every synapse joins existing groups with matching
sizes); bad input raises one ``SncError`` listing every problem.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Optional

import numpy as np
from scipy import sparse

from snc.errors import SncError

from .ir import Graph, HostInput, Population
from .linear import LinearOp, Shape

MODES = ("fixed", "float")
SYNAPSE_KINDS = ("sparse", "dense", "conv")

# Ranges of Loihi 2's neuron and synapse parameters (lava/proc/lif/models.py, lava/utils/weightutils.py).
DECAY_MAX = 4095  # du, dv: 12 bits unsigned
VTH_LIMIT = 1 << 17  # vth: 17 bits unsigned
BIAS_MANT_LIMIT = 1 << 12  # bias_mant: 13 bits signed
BIAS_EXP_MAX = 7  # bias_exp: 3 bits unsigned
WEIGHT_LIMIT = 1 << 15  # raw weights handed to Lava (it clips Dense/Sparse weights to 8 bits itself)
WEIGHT_EXP_RANGE = (-8, 7)
MAX_DELAY = 62
CONV_SUM_LIMIT = 1 << 31  # Lava's Conv casts its float64 sums to int32
GAIN_MANT_LIMIT = 1 << 12  # StepGainSparse: signed 13-bit gain mantissa (hw_profiles/loihi2.toml)
GAIN_SHIFT_MAX = 12


def logical_steps(time_steps: np.ndarray, depth: int, timestep: int, call_steps: int) -> np.ndarray:
    """The logical step (0..T-1) whose per-step values apply at each Lava time step (counted from 1)."""
    return np.clip((np.asarray(time_steps) - 1) % call_steps - depth, 0, timestep - 1)


@dataclass(frozen=True)
class NeuronGroup:
    name: str
    shape: Shape
    du: float  # int in fixed mode
    dv: float
    vth: float
    bias_mant: np.ndarray  # [n], or [T, n] per logical step
    bias_exp: np.ndarray  # same shape as bias_mant
    reset_interval: int = 0  # 0: plain LIF, no reset
    reset_offset: int = 0
    depth: int = 0  # 0-based step of a call at which logical step 0 is integrated

    @property
    def n(self) -> int:
        return int(np.prod(self.shape))

    @property
    def per_step(self) -> bool:
        return self.bias_mant.ndim == 2

    def bias(self) -> np.ndarray:
        """Bias added every step, [n] or [T, n]: ``bias_mant << bias_exp`` (fixed), ``bias_mant`` (float)."""
        if self.bias_mant.dtype.kind == "f":
            return self.bias_mant
        return self.bias_mant.astype(np.int64) << self.bias_exp.astype(np.int64)


@dataclass(frozen=True)
class Synapse:
    name: str
    src: str  # a neuron group
    dst: str  # a neuron group or the readout
    kind: str  # sparse | dense | conv
    op: LinearOp  # weights: integers (fixed) or floats (float); identity: a one-element array
    weight_exp: int = 0
    num_weight_bits: int = 8
    delay: int = 0  # steps beyond the one every synapse adds
    gain: Optional[np.ndarray] = None  # [T] per logical step of the source (fixed: integer mantissas)
    gain_shift: int = 0  # fixed: the gain is gain / 2^gain_shift
    lag: int = 0  # 1: a recurrent synapse (the target's step t reads the source's step t - 1)
    gate: str = ""  # snc.Gate key: the gain is also multiplied by the host's per-call values

    @property
    def scheduled(self) -> bool:
        """True when the output is scaled per step (a StepGainSparse)."""
        return self.gain is not None or self.lag > 0


@dataclass(frozen=True)
class ReadoutPort:
    name: str
    shape: Shape
    scale: float  # integer units per model unit (fixed); 1.0 in float mode
    depth: int  # 0-based step of a call at which logical step 0 arrives

    @property
    def n(self) -> int:
        return int(np.prod(self.shape))


@dataclass
class Netlist:
    mode: str  # fixed | float
    groups: dict[str, NeuronGroup]
    synapses: list[Synapse]
    readout: ReadoutPort
    timestep: int  # logical steps T per call
    inputs: dict[str, float] = field(default_factory=dict)  # group -> host-current scale

    @property
    def depth(self) -> int:
        return self.readout.depth

    @property
    def call_steps(self) -> int:
        """Steps of one denoiser call: the pipeline depth plus T."""
        return self.readout.depth + self.timestep

    def size(self, name: str) -> int:
        return self.readout.n if name == self.readout.name else self.groups[name].n

    def check(self) -> None:
        """Raise one SncError listing every structural or range problem."""
        problems: list[str] = []
        if self.mode not in MODES:
            problems.append(f"mode {self.mode!r} is not one of {', '.join(MODES)}")
        if self.readout.name in self.groups:
            problems.append(f"readout {self.readout.name!r} has the name of a neuron group")
        for g in self.groups.values():
            problems += _group_problems(g, self.mode, self.timestep)
        names = set()
        for s in self.synapses:
            if s.name in names:
                problems.append(f"synapse name {s.name!r} is used twice")
            names.add(s.name)
            problems += _synapse_problems(s, self)
        for name in self.inputs:
            if name not in self.groups:
                problems.append(f"host input into {name!r}, which is not a neuron group")
        if self.timestep < 1 or self.readout.depth < 0:
            problems.append(f"T = {self.timestep} and depth = {self.readout.depth}: need T >= 1, depth >= 0")
        if problems:
            raise SncError(f"netlist check failed ({len(problems)} problem(s)): " + "; ".join(problems))


def _group_problems(g: NeuronGroup, mode: str, timestep: int) -> list[str]:
    out = []
    if g.bias_mant.shape not in ((g.n,), (timestep, g.n)) or g.bias_exp.shape != g.bias_mant.shape:
        out.append(f"{g.name}: bias arrays must have shape ({g.n},) or ({timestep}, {g.n})")
        return out
    if g.per_step and g.reset_interval == 0:
        out.append(f"{g.name}: a per-step bias needs a LIFReset group (the step is counted within a call)")
    if not 0 <= g.reset_offset < max(g.reset_interval, 1):
        out.append(f"{g.name}: reset_offset {g.reset_offset} outside 0..reset_interval-1")
    if mode != "fixed":
        return out
    for key in ("du", "dv", "vth"):
        if not isinstance(getattr(g, key), (int, np.integer)):
            out.append(f"{g.name}: {key} must be an integer in fixed mode")
            return out
    if g.bias_mant.dtype.kind not in "iu" or g.bias_exp.dtype.kind not in "iu":
        out.append(f"{g.name}: bias_mant and bias_exp must be integer arrays in fixed mode")
        return out
    if not (0 <= g.du <= DECAY_MAX and 0 <= g.dv <= DECAY_MAX):
        out.append(f"{g.name}: du {g.du}, dv {g.dv} outside 0..{DECAY_MAX}")
    if not 0 <= g.vth < VTH_LIMIT:
        out.append(f"{g.name}: vth {g.vth} outside 0..{VTH_LIMIT - 1}")
    if g.bias_mant.max(initial=0) > BIAS_MANT_LIMIT - 1 or g.bias_mant.min(initial=0) < -BIAS_MANT_LIMIT:
        out.append(f"{g.name}: bias_mant outside {-BIAS_MANT_LIMIT}..{BIAS_MANT_LIMIT - 1}")
    if g.bias_exp.min(initial=0) < 0 or g.bias_exp.max(initial=0) > BIAS_EXP_MAX:
        out.append(f"{g.name}: bias_exp outside 0..{BIAS_EXP_MAX}")
    return out


def _synapse_problems(s: Synapse, net: Netlist) -> list[str]:
    out = []
    if s.src not in net.groups:
        return [f"{s.name}: source {s.src!r} is not a neuron group"]
    if s.dst not in net.groups and s.dst != net.readout.name:
        return [f"{s.name}: target {s.dst!r} is neither a neuron group nor the readout"]
    if s.kind not in SYNAPSE_KINDS:
        return [f"{s.name}: kind {s.kind!r} is not one of {', '.join(SYNAPSE_KINDS)}"]
    if s.op.n_in != net.size(s.src) or s.op.n_out != net.size(s.dst):
        out.append(f"{s.name}: op {s.op.in_shape}->{s.op.out_shape} does not join {s.src} and {s.dst}")
    w = s.op.weight
    if w is None or (s.op.kind == "identity" and w.shape != (1,)):
        return out + [f"{s.name}: no weights (an identity op carries its scalar weight as a 1-element array)"]
    if s.kind == "dense" and s.op.kind != "dense":
        out.append(f"{s.name}: a dense synapse needs a dense op, not {s.op.kind}")
    if s.kind == "conv":
        if s.op.kind != "conv" or s.op.upsample != 1:
            out.append(f"{s.name}: a conv synapse needs a conv op without upsampling")
        if (s.weight_exp, s.num_weight_bits) != (0, 8):
            out.append(f"{s.name}: Lava's Conv ignores weight_exp and num_weight_bits: they must be 0 and 8")
    if s.delay and s.kind != "sparse":
        out.append(f"{s.name}: only sparse synapses have delays (Lava DelaySparse)")
    if s.scheduled:
        out += _gain_problems(s, net)
    if not 0 <= s.delay <= MAX_DELAY:
        out.append(f"{s.name}: delay {s.delay} outside 0..{MAX_DELAY}")
    if net.mode != "fixed":
        if not np.all(np.isfinite(w)):
            out.append(f"{s.name}: non-finite weights")
        return out
    if w.dtype.kind not in "iu":
        out.append(f"{s.name}: weights must be integers in fixed mode")
        return out
    if np.abs(w).max(initial=0) >= WEIGHT_LIMIT:
        out.append(f"{s.name}: weights beyond +-{WEIGHT_LIMIT - 1}")
    if not WEIGHT_EXP_RANGE[0] <= s.weight_exp <= WEIGHT_EXP_RANGE[1]:
        out.append(f"{s.name}: weight_exp {s.weight_exp} outside {WEIGHT_EXP_RANGE[0]}..{WEIGHT_EXP_RANGE[1]}")
    if not 1 <= s.num_weight_bits <= 8:
        out.append(f"{s.name}: num_weight_bits {s.num_weight_bits} outside 1..8")
    if s.kind == "conv" and s.op.kind == "conv" and \
            np.abs(w.astype(np.int64)).sum(axis=(1, 2, 3)).max(initial=0) >= CONV_SUM_LIMIT:
        out.append(f"{s.name}: a Conv sum can exceed int32 (Lava casts it)")
    return out


def _gain_problems(s: Synapse, net: Netlist) -> list[str]:
    out = []
    if s.kind != "sparse" or s.delay:
        out.append(f"{s.name}: only sparse synapses without delay have per-step gains or lags (StepGainSparse)")
    if s.lag not in (0, 1):
        out.append(f"{s.name}: lag {s.lag}: only one-step recurrence is lowered")
    if s.gate and s.gain is None:
        out.append(f"{s.name}: a gated synapse needs a gain (its mantissas and shift carry the gate)")
    if s.gain is None:
        return out
    if np.shape(s.gain) != (net.timestep,):
        return out + [f"{s.name}: gain of shape {np.shape(s.gain)}, not ({net.timestep},)"]
    if net.mode != "fixed":
        return out + ([] if np.all(np.isfinite(s.gain)) else [f"{s.name}: non-finite gain"])
    if s.gain.dtype.kind not in "iu" or np.abs(s.gain).max() >= GAIN_MANT_LIMIT:
        out.append(f"{s.name}: gain mantissas must be integers in {-GAIN_MANT_LIMIT + 1}..{GAIN_MANT_LIMIT - 1}")
    if not 0 <= s.gain_shift <= GAIN_SHIFT_MAX:
        out.append(f"{s.name}: gain_shift {s.gain_shift} outside 0..{GAIN_SHIFT_MAX}")
    return out


def gain_schedule(s: Synapse, net: Netlist, gates: Optional[dict[str, np.ndarray]] = None) -> np.ndarray:
    """The factor on a scheduled synapse's output for the spikes of each step of a call [call_steps]:
    the gain of the step they reach (the source's logical step + lag; mantissas in fixed mode, over
    ``2^gain_shift``; 1 without a gain), for a gated synapse times the call's gate values ``gates[key]``
    [T] (rounded to mantissas in fixed mode; without ``gates`` a gate counts as its bound 1); for a
    recurrent synapse 0 unless they come from source steps 0..T-1-lag (spikes that land in the
    target's window of the same call)."""
    steps = np.arange(net.call_steps)
    depth = net.groups[s.src].depth
    one = 1 if net.mode == "fixed" else 1.0
    logical = logical_steps(steps + 1 + s.lag, depth, net.timestep, net.call_steps)
    table = np.full(net.call_steps, one) if s.gain is None else s.gain[logical]
    if s.gate and gates is not None:
        if s.gate not in gates:
            raise SncError(f"{s.name}: no value for gate {s.gate} in this call")
        table = table * np.asarray(gates[s.gate], dtype=np.float64)[logical]
        if net.mode == "fixed":
            table = np.round(table).astype(np.int64)
    if s.lag:
        table = table * ((steps >= depth) & (steps < depth + net.timestep - s.lag))
    return table


def synapse_matrix(s: Synapse) -> sparse.csr_matrix:
    """The synapse's matrix [n_dst, n_src] over C-order flattened tensors, with the netlist's weights.

    int64 in fixed mode (before Lava's clipping and truncation), float64 in float mode.
    """
    w = s.op.weight
    if s.op.kind == "identity":
        m = sparse.identity(s.op.n_in, format="csr", dtype=w.dtype) * w[0]
    else:
        m = replace(s.op, weight=w.astype(np.float64)).to_csr()
    return m.astype(np.int64 if w.dtype.kind in "iu" else np.float64).tocsr()


def lower(graph: Graph, mode: str) -> Netlist:
    """The netlist of a compiled graph: populations become groups, chip edges sparse synapses."""
    if mode not in MODES:
        raise SncError(f"unknown mode {mode!r}; use fixed or float")
    length = graph.depth + graph.timestep
    groups: dict[str, NeuronGroup] = {}
    for p in graph.of_type(Population):
        n = int(np.prod(p.shape))
        if mode == "fixed":
            if not p.fixed:
                raise SncError(f"{p.name} has no fixed-point parameters: the graph was not quantized")
            f = p.fixed
            mant = np.asarray(f["bias_mant"], dtype=np.int64)
            rows = (-1, n) if mant.size > n else (n,)  # per logical step: [T, n]
            params = dict(du=int(f["du"]), dv=int(f["dv"]), vth=int(f["vth"]), bias_mant=mant.reshape(rows),
                          bias_exp=np.asarray(f["bias_exp"], dtype=np.int64).reshape(rows))
        else:
            bias = np.asarray(p.bias, dtype=np.float64)
            bias = bias.reshape((-1, n) if bias.size > n else (n,))  # per logical step: [T, n]
            params = dict(du=1.0, dv=1.0 - p.decay, vth=float(p.threshold), bias_mant=bias,
                          bias_exp=np.zeros(bias.shape, np.int64))
        # relays keep no state worth resetting; every other population starts each call from zero
        reset = (0, 0) if p.role == "relay" else (length, (p.depth + 1) % length)
        groups[p.name] = NeuronGroup(p.name, tuple(p.shape), reset_interval=reset[0], reset_offset=reset[1],
                                     depth=p.depth, **params)
    synapses = []
    inputs: dict[str, float] = {}
    for e in graph.edges:
        src = graph.nodes[e.src]
        if isinstance(src, HostInput):
            if e.dst in groups:
                inputs[e.dst] = float(graph.nodes[e.dst].scale) if mode == "fixed" else 1.0
            continue
        gain, gain_shift = e.gain, 0
        if gain is not None and mode == "fixed":
            gain, gain_shift = np.asarray(e.fixed["gain"], dtype=np.int64), int(e.fixed["gain_shift"])
        synapses.append(Synapse(e.name, e.src, e.dst, "sparse", _lowered_op(e.op, e.fixed, mode),
                                weight_exp=int(e.fixed["weight_exp"]) if mode == "fixed" else 0, delay=e.delay,
                                gain=gain, gain_shift=gain_shift, lag=e.lag, gate=e.gate))
    r = graph.readout
    readout = ReadoutPort(r.name, tuple(r.shape), float(r.scale) if mode == "fixed" else 1.0, r.depth)
    net = Netlist(mode, groups, synapses, readout, graph.timestep, inputs)
    net.check()
    return net


def _lowered_op(op: LinearOp, fixed: dict, mode: str) -> LinearOp:
    if mode == "float":
        return replace(op, weight=np.ones(1)) if op.kind == "identity" else op
    w: Optional[np.ndarray] = fixed.get("weight")
    if w is None:
        raise SncError("a chip edge has no integer weights: the graph was not quantized")
    w = np.asarray(w, dtype=np.int64)
    return replace(op, weight=w.reshape(1) if op.kind == "identity" else w)
