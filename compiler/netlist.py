"""The netlist: what a compiled build holds and every backend, report and check reads.

A ``Netlist`` is the output of a target's lowering (``compiler/targets``)
in one arithmetic ``mode`` (``fixed``: the target's integers; ``float``: the
same network with real-valued parameters). Its vocabulary is modelled on
Lava's process library, which is what Loihi 2 runs:

- **neuron groups** (Lava ``LIF``; ``LIFReset`` when ``reset_interval > 0``):
  ``du``, ``dv``, ``vth``, ``bias_mant``, ``bias_exp`` (integers in ``fixed``
  mode; in ``float`` mode the floating_pt parameters: ``bias_mant`` is the
  float bias, ``bias_exp`` is 0). A bias per logical step (TSM) has arrays
  [T, n] instead of [n]. ``role`` says what the group is for (``neuron``, a
  ``relay`` of the delay balancing, a spike ``and``); ``threshold`` is the
  model-unit threshold that ``vth`` encodes at ``scale`` integer units per
  model unit (float mode: ``vth == threshold``, ``scale == 1``). A group with
  ``subtractive_reset`` (snc's ``StepBiasLIFReset`` with reset by subtraction,
  the ANN-to-SNN conversion's IF neuron) subtracts the threshold from v on a
  spike instead of setting v to 0. A ``graded`` group (snc's ``GradedSum``,
  the sum population of ``--residual graded``) has no threshold and no
  state: each step its value is its summed input plus its bias
  (``bias_mant << bias_exp``, in the input's units: no shift by 6), and it
  sends ``graded_payload``: its value shifted right by ``payload_shift``,
  rounded half up, saturated at the target's payload bits (fixed; Loihi 2's
  graded spikes carry 24 bits), or the value itself (float);
- **synapses** from a group to a group (any group: a synapse into its own
  source or into an earlier group is a recurrent connection) or to the
  readout; a synapse from a graded group multiplies its weights by the
  payload (``(W . payload) << weight_exp``, Lava's graded mat-vec, its sum
  an int32 that wraps before the shift), from any other group by 0/1 spikes:

  - ``sparse``: a sparse matrix (Lava ``Sparse``; ``DelaySparse`` when
    ``delay > 0``);
  - ``dense``: a dense matrix (Lava ``Dense``);
  - ``conv``: a convolution processed as such (Lava ``Conv``): no delay, no
    upsampling.

  A ``sparse`` synapse without delay may carry a per-step ``gain`` [T]
  (TSM): its output for spikes of logical step t is multiplied by ``gain[t]``
  (fixed: ``(a * gain[t]) >> gain_shift``, an arithmetic shift; float:
  ``a * gain[t]``). A lagged synapse (``lag`` k: the target's step t
  reads the source's step t - k; k = 1 closes a recurrent loop, any k
  delays a feed-forward path) passes only the spikes of source steps
  0..T-1-k: in the model there is nothing before step 0, on the chip the
  source's last step of the previous call would reach the first step of
  this one. Its gain is the target's at t (the source's step t - 1). A gated
  synapse (``gate``: an ``snc.Gate`` key) has its gain times the host's
  per-call gate values g[t] (|g| <= 1): fixed ``round(gain[t] * g[t])``
  mantissas over the same shift, so backends re-program the table per call.
  ``gain_schedule`` gives the factor for every step of a call.

  Every synapse keeps its structural ``LinearOp`` with the weights the
  backend is handed (fixed: the quantized integers; an identity op carries
  its scalar weight as a one-element array), in torch's orientation (a conv
  is a cross-correlation over C x H x W tensors flattened in C order);
- **host inputs and host ops**: the tensors the host computes per call
  (``host_inputs``, by name and shape) and the float ops that turn them
  into currents (``host_ops``: the analog stem conv of direct encoding, an
  MLP's first layer, time-embedding biases; work of the host, in float64);
  ``inputs`` maps each group that receives a host current to the scale that
  turns model units into its integers;
- **the readout**: the summed output of the synapses into it, read every
  step; the host adds its ``bias`` (and host ops into it) and integrates it
  through its ``filters`` (a non-spiking NIR output neuron, ``readout.py``);
- **gate tables** (``gates``, key -> [diffusion steps, T]): what each call
  programs into the gated synapses (``model_gates``: the model's values
  where the compiler's specialisation changed them).

Timing (Lava's): every synapse adds one step (a spike at step t reaches its
target at step t + 1 + delay); ``LIFReset`` zeroes u and v at the start of
every step with ``time_step % reset_interval == reset_offset`` (time steps
count from 1 across calls). A denoiser call runs ``depth + T`` steps; a
group's logical step 0 is at 0-based step ``depth`` of the call. Per-step
values of a group (bias, host current) and of a synapse (gain, indexed by its
source group's depth) are taken at ``logical_steps``: the step of the call
minus the depth, clipped to 0..T-1 (outside its window a group's state is
wiped by its next reset, so any value would do; the clip makes it defined).

``Netlist.check`` checks structure (names, sizes, what each kind can
express); the numeric ranges are the target's (``Target.check``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import numpy as np
import torch
from scipy import sparse

from snc.errors import SncError

from .gates import Gates, gates_at, gates_off, switched_off
from .linear import LinearOp, Shape, op_from_dict, op_to_dict
from .readout import ReadoutFilter

MODES = ("fixed", "float")
SYNAPSE_KINDS = ("sparse", "dense", "conv")
ROLES = ("neuron", "relay", "and", "graded")
FORMAT = "snc-netlist"
FORMAT_VERSION = 5  # 3: subtractive_reset; 4: graded groups (payload_shift); 5: sign-split pairs stored once


def logical_steps(time_steps: np.ndarray, depth: int, timestep: int, call_steps: int) -> np.ndarray:
    """The logical step (0..T-1) whose per-step values apply at each Lava time step (counted from 1)."""
    return np.clip((np.asarray(time_steps) - 1) % call_steps - depth, 0, timestep - 1)


def window_reset(depth: int, call_steps: int) -> tuple[int, int]:
    """(reset_interval, reset_offset) of a group whose logical step 0 is at 0-based step ``depth`` of every
    call of ``call_steps`` steps: it starts each call's window from zero."""
    return call_steps, (depth + 1) % call_steps


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
    role: str = "neuron"  # neuron | relay | and
    scale: float = 1.0  # integer units per model unit (fixed mode)
    threshold: float = 0.0  # model units: what vth encodes at scale
    subtractive_reset: bool = False  # a spike subtracts vth from v (snc's StepBiasLIFReset), else v = 0 (LIF's)
    payload_shift: int = 0  # graded, fixed mode: the payload is the value >> payload_shift

    @property
    def n(self) -> int:
        return int(np.prod(self.shape))

    @property
    def graded(self) -> bool:
        return self.role == "graded"

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
    lag: int = 0  # k: the target's step t reads the source's step t - k (a NIR Delay; 1 closes a recurrent loop)
    gate: str = ""  # snc.Gate key: the gain is also multiplied by the host's per-call values
    origin: tuple[str, ...] = ()  # the NIR ops composed into it

    @property
    def scheduled(self) -> bool:
        """True when the output is scaled per step (a StepGainSparse)."""
        return self.gain is not None or self.lag > 0


@dataclass(frozen=True)
class HostOp:
    """A current the host computes per call: ``gain[t] * op(host input src)`` into ``dst`` (float64)."""
    src: str  # a host input
    dst: str  # a neuron group or the readout
    op: LinearOp
    gain: Optional[np.ndarray] = None  # [T] per logical step
    origin: tuple[str, ...] = ()


@dataclass(frozen=True)
class ReadoutPort:
    name: str
    shape: Shape
    scale: float  # integer units per model unit (fixed); 1.0 in float mode
    depth: int  # 0-based step of a call at which logical step 0 arrives
    bias: Optional[np.ndarray] = None  # model units, [*shape] or [T, *shape], added by the host
    filters: tuple[ReadoutFilter, ...] = ()  # host integration after the bias (LI / I / CubaLI outputs)

    @property
    def n(self) -> int:
        return int(np.prod(self.shape))

    def step_bias(self, timestep: int) -> np.ndarray:
        """The bias per logical step [T, *shape] (0 without one)."""
        b = np.zeros(self.shape) if self.bias is None else np.asarray(self.bias, dtype=np.float64)
        return np.broadcast_to(b, (timestep, *self.shape)) if b.shape == tuple(self.shape) else b


@dataclass
class Netlist:
    mode: str  # fixed | float
    groups: dict[str, NeuronGroup]
    synapses: list[Synapse]
    readout: ReadoutPort
    timestep: int  # logical steps T per call
    inputs: dict[str, float] = field(default_factory=dict)  # group -> host-current scale
    host_inputs: dict[str, Shape] = field(default_factory=dict)
    host_ops: list[HostOp] = field(default_factory=list)
    gates: dict[str, np.ndarray] = field(default_factory=dict)  # key -> [diffusion steps, T]
    model_gates: dict[str, np.ndarray] = field(default_factory=dict)
    target: str = "loihi2"

    @property
    def depth(self) -> int:
        return self.readout.depth

    @property
    def call_steps(self) -> int:
        """Steps of one denoiser call: the pipeline depth plus T."""
        return self.readout.depth + self.timestep

    def step_invariant(self) -> list[str]:
        """What ties the netlist to its T (per-step biases, gains, gates): empty when it runs any length."""
        tied = [f"{g.name}: a bias per step" for g in self.groups.values() if g.per_step]
        tied += [f"{s.name}: a per-step gain" for s in self.synapses if s.gain is not None]
        tied += [f"{h.src}->{h.dst}: a per-step host gain" for h in self.host_ops if h.gain is not None]
        r = self.readout
        if r.bias is not None and np.shape(r.bias) != tuple(r.shape):
            tied.append(f"{r.name}: a readout bias per step")
        return tied

    def for_steps(self, steps: int) -> "Netlist":
        """The same network run for ``steps`` logical steps in one call (each group reset once, when its
        window starts); refused when the netlist has values per logical step (``step_invariant``)."""
        if steps == self.timestep:
            return self
        tied = self.step_invariant()
        if tied or steps < 1:
            raise SncError(f"this build runs calls of T = {self.timestep} steps, not {steps}: "
                           + ("; ".join(tied) if tied else "need at least one step"))
        length = self.depth + steps
        groups = {name: g if not g.reset_interval else replace(g, **dict(zip(("reset_interval", "reset_offset"),
                                                                             window_reset(g.depth, length))))
                  for name, g in self.groups.items()}
        return replace(self, groups=groups, timestep=steps)

    def size(self, name: str) -> int:
        return self.readout.n if name == self.readout.name else self.groups[name].n

    def into(self, name: str) -> list[Synapse]:
        return [s for s in self.synapses if s.dst == name]

    def gate_keys(self) -> list[str]:
        return sorted({s.gate for s in self.synapses} - {""})

    # --- the gates of a call --------------------------------------------------------------------
    def gates_at(self, step: int, specialised: bool = True) -> Gates:
        """Every gate's values [T] for diffusion step ``step`` (the model's, unless ``specialised``)."""
        return gates_at(self.gates if specialised else {**self.gates, **self.model_gates}, step)

    def call_gates(self, t: torch.Tensor, specialised: bool = True) -> Optional[Gates]:
        """The gate values [T] of a call at diffusion steps t (one step per call), None without gates."""
        if not self.gates:
            return None
        steps = torch.unique(t)
        if len(steps) > 1:
            raise SncError("a gated model's call needs one diffusion step for the whole batch")
        return self.gates_at(int(steps[0]), specialised)

    def gates_off(self, step: int) -> set[str]:
        """The (specialised) gates that are 0 at every inner step of diffusion step ``step``."""
        return gates_off(self.gates, step)

    def switched_off(self, step: int) -> set[str]:
        """Groups every synapse into which is behind a gate that is 0 for the whole diffusion step: they
        do nothing in that call."""
        return switched_off(((s.dst, s.gate) for s in self.synapses), self.gates_off(step), self.groups.__contains__)

    def relay_source(self, relay: str) -> str:
        """The group whose spikes a relay (of a chain of relays) repeats."""
        source = self.into(relay)[0].src
        while self.groups[source].role == "relay":
            source = self.into(source)[0].src
        return source

    # --- checks -----------------------------------------------------------------------------------
    def problems(self) -> list[str]:
        """Every structural problem (names, sizes, shapes, what each synapse kind can express)."""
        problems: list[str] = []
        if self.mode not in MODES:
            problems.append(f"mode {self.mode!r} is not one of {', '.join(MODES)}")
        if self.readout.name in self.groups:
            problems.append(f"readout {self.readout.name!r} has the name of a neuron group")
        for g in self.groups.values():
            problems += _group_problems(g, self.timestep)
        names = set()
        for s in self.synapses:
            if s.name in names:
                problems.append(f"synapse name {s.name!r} is used twice")
            names.add(s.name)
            problems += _synapse_problems(s, self)
        for name in self.inputs:
            if name not in self.groups:
                problems.append(f"host input into {name!r}, which is not a neuron group")
        for h in self.host_ops:
            if h.src not in self.host_inputs:
                problems.append(f"host op {h.src}->{h.dst}: no host input {h.src!r}")
            elif h.dst not in self.groups and h.dst != self.readout.name:
                problems.append(f"host op {h.src}->{h.dst}: no group or readout {h.dst!r}")
            elif h.op.n_in != int(np.prod(self.host_inputs[h.src])) or h.op.n_out != self.size(h.dst):
                problems.append(f"host op {h.src}->{h.dst}: op {h.op.in_shape}->{h.op.out_shape} does not fit")
        if self.timestep < 1 or self.readout.depth < 0:
            problems.append(f"T = {self.timestep} and depth = {self.readout.depth}: need T >= 1, depth >= 0")
        return problems

    def check(self) -> None:
        """Raise one SncError listing every structural problem."""
        raise_problems(self.problems())


def raise_problems(problems: Sequence[str]) -> None:
    if problems:
        raise SncError(f"netlist check failed ({len(problems)} problem(s)): " + "; ".join(problems))


def _group_problems(g: NeuronGroup, timestep: int) -> list[str]:
    out = []
    if g.bias_mant.shape not in ((g.n,), (timestep, g.n)) or g.bias_exp.shape != g.bias_mant.shape:
        out.append(f"{g.name}: bias arrays must have shape ({g.n},) or ({timestep}, {g.n})")
        return out
    if g.per_step and g.reset_interval == 0 and not g.graded:
        out.append(f"{g.name}: a per-step bias needs a LIFReset group (the step is counted within a call)")
    if g.subtractive_reset and (g.reset_interval == 0 or g.role != "neuron"):
        out.append(f"{g.name}: a reset by subtraction is for a neuron that starts every call afresh (LIFReset)")
    if g.graded and (g.reset_interval or g.subtractive_reset or g.payload_shift < 0):
        out.append(f"{g.name}: a graded group keeps no state (no reset) and shifts its payload right (>= 0)")
    if not g.graded and g.payload_shift:
        out.append(f"{g.name}: only a graded group has a payload shift")
    if not 0 <= g.reset_offset < max(g.reset_interval, 1):
        out.append(f"{g.name}: reset_offset {g.reset_offset} outside 0..reset_interval-1")
    if g.role not in ROLES:
        out.append(f"{g.name}: role {g.role!r} is not one of {', '.join(ROLES)}")
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
    if s.kind == "conv" and (s.op.kind != "conv" or s.op.upsample != 1 or s.op.out_shape != s.op.conv_shape):
        out.append(f"{s.name}: a conv synapse needs a conv op without upsampling or an output view")
    if s.delay and s.kind != "sparse":
        out.append(f"{s.name}: only sparse synapses have delays")
    if net.groups[s.src].graded and s.kind != "sparse":
        out.append(f"{s.name}: a graded group's payloads go through sparse synapses (Lava's graded mat-vec)")
    if s.delay < 0:
        out.append(f"{s.name}: negative delay {s.delay}")
    if s.scheduled:
        out += _schedule_problems(s, net)
    if net.mode == "fixed":
        if w.dtype.kind not in "iu":
            out.append(f"{s.name}: weights must be integers in fixed mode")
    elif not np.all(np.isfinite(w)):
        out.append(f"{s.name}: non-finite weights")
    return out


def _schedule_problems(s: Synapse, net: Netlist) -> list[str]:
    out = []
    if s.kind != "sparse" or s.delay:
        out.append(f"{s.name}: only sparse synapses without delay have per-step gains or lags")
    if s.lag < 0:
        out.append(f"{s.name}: negative lag {s.lag}")
    if s.gate and s.gain is None:
        out.append(f"{s.name}: a gated synapse needs a gain (its mantissas and shift carry the gate)")
    if s.gain is None:
        return out
    if np.shape(s.gain) != (net.timestep,):
        return out + [f"{s.name}: gain of shape {np.shape(s.gain)}, not ({net.timestep},)"]
    if net.mode == "fixed" and s.gain.dtype.kind not in "iu":
        out.append(f"{s.name}: gain mantissas must be integers in fixed mode")
    elif net.mode != "fixed" and not np.all(np.isfinite(s.gain)):
        out.append(f"{s.name}: non-finite gain")
    return out


# --- semantics both chip backends share ---------------------------------------------------------------
def gain_schedule(s: Synapse, net: Netlist, gates: Optional[Gates] = None) -> np.ndarray:
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


def graded_payload(value: np.ndarray, shift: int, limit: int) -> np.ndarray:
    """What a fixed-mode graded group sends for its integer values: ``value >> shift`` rounded half up
    (``(value + 2^(shift - 1)) >> shift``), saturated at +-``limit`` (the target's ``payload_limit``), int32."""
    value = np.asarray(value, dtype=np.int64)
    if shift:
        value = (value + (1 << (shift - 1))) >> shift
    return np.clip(value, -limit, limit).astype(np.int32)


def synapse_matrix(s: Synapse) -> sparse.csr_matrix:
    """The synapse's matrix [n_dst, n_src] over C-order flattened tensors, with the netlist's weights.

    int64 in fixed mode (the integers the target was handed), float64 in float mode.
    """
    w = s.op.weight
    if s.op.kind == "identity":
        m = sparse.identity(s.op.n_in, format="csr", dtype=w.dtype) * w[0]
    else:
        m = replace(s.op, weight=w.astype(np.float64)).to_csr()
    return m.astype(np.int64 if w.dtype.kind in "iu" else np.float64).tocsr()


def host_currents(host_ops: Sequence[HostOp], host_inputs: Mapping[str, Shape], inputs: Mapping[str, torch.Tensor],
                  timestep: int, dtype: torch.dtype = torch.float64) -> dict[str, torch.Tensor]:
    """Currents [T, B, *shape] per logical step into each group / readout from the host ops, for host
    inputs [B, *shape] (the same every step) or [T, B, *shape] (one per step)."""
    missing = sorted(name for name in host_inputs if name not in inputs)
    if missing:
        raise SncError(f"missing host inputs: {', '.join(missing)}")
    currents: dict[str, torch.Tensor] = {}
    for h in host_ops:
        x = inputs[h.src].to(dtype)
        per_step = x.dim() == len(host_inputs[h.src]) + 2
        rows = x.shape[:2] if per_step else (1, x.shape[0])
        y = h.op.apply(x.reshape(rows[0] * rows[1], *h.op.in_shape)).reshape(*rows, *h.op.out_shape)
        gain = torch.ones(timestep, dtype=dtype) if h.gain is None else torch.as_tensor(h.gain, dtype=dtype)
        currents[h.dst] = currents.get(h.dst, 0) + gain.view(-1, *([1] * (y.dim() - 1))) * y
    return currents


def netlist_currents(net: Netlist, inputs: Mapping[str, torch.Tensor]) -> dict[str, np.ndarray]:
    """The host currents of a call into every group and the readout, as numpy arrays."""
    currents = host_currents(net.host_ops, net.host_inputs, inputs, net.timestep)
    return {k: v.numpy() for k, v in currents.items()}


# --- files ------------------------------------------------------------------------------------------
def save_netlist(net: Netlist, stem: Path) -> None:
    """``stem.json`` (structure) and ``stem.npz`` (arrays, at the dtype they have; the two halves of a
    sign-split synapse as one array, their sum: a kernel is stored once)."""
    arrays: dict[str, np.ndarray] = {}
    groups = []
    for g in net.groups.values():
        arrays[f"g/{g.name}/bias_mant"] = g.bias_mant
        arrays[f"g/{g.name}/bias_exp"] = g.bias_exp
        groups.append({"name": g.name, "shape": list(g.shape), "du": _scalar(g.du), "dv": _scalar(g.dv),
                       "vth": _scalar(g.vth), "reset_interval": g.reset_interval, "reset_offset": g.reset_offset,
                       "depth": g.depth, "role": g.role, "scale": g.scale, "threshold": g.threshold,
                       "subtractive_reset": g.subtractive_reset, "payload_shift": g.payload_shift})
    synapses = []
    halves = _sign_halves(net.synapses)
    for i, s in enumerate(net.synapses):
        doc = {"name": s.name, "src": s.src, "dst": s.dst, "kind": s.kind, "op": op_to_dict(s.op),
               "weight_exp": s.weight_exp, "num_weight_bits": s.num_weight_bits, "delay": s.delay,
               "gain_shift": s.gain_shift, "lag": s.lag, "gate": s.gate, "origin": list(s.origin)}
        if i in halves.values():  # the inhibitory half: its weights are the negative ones of the pair's array
            doc["signs_of"] = next(plus for plus, minus in halves.items() if minus == i)
        else:
            minus = halves.get(i)
            arrays[f"s/{i}/weight"] = s.op.weight if minus is None else s.op.weight + net.synapses[minus].op.weight
        if s.gain is not None:
            arrays[f"s/{i}/gain"] = s.gain
        synapses.append(doc)
    host_ops = []
    for i, h in enumerate(net.host_ops):
        if h.op.weight is not None:
            arrays[f"h/{i}/weight"] = h.op.weight
        if h.gain is not None:
            arrays[f"h/{i}/gain"] = h.gain
        host_ops.append({"src": h.src, "dst": h.dst, "op": op_to_dict(h.op), "origin": list(h.origin)})
    r = net.readout
    if r.bias is not None:
        arrays["readout/bias"] = r.bias
    for prefix, tables in (("gates", net.gates), ("model_gates", net.model_gates)):
        arrays.update({f"{prefix}/{k}": v for k, v in tables.items()})
    doc = {"format": FORMAT, "format_version": FORMAT_VERSION, "mode": net.mode, "target": net.target,
           "timestep": net.timestep, "groups": groups, "synapses": synapses,
           "readout": {"name": r.name, "shape": list(r.shape), "scale": r.scale, "depth": r.depth,
                       "filters": [f.as_dict() for f in r.filters]},
           "inputs": net.inputs, "host_inputs": {k: list(v) for k, v in net.host_inputs.items()},
           "host_ops": host_ops}
    stem_file(stem, ".json").write_text(json.dumps(doc, indent=1))
    np.savez(stem_file(stem, ".npz"), **arrays)  # compressing weights gains little, costs minutes


def load_netlist(stem: Path) -> Netlist:
    doc = json.loads(stem_file(stem, ".json").read_text())
    if doc.get("format") != FORMAT or doc.get("format_version") != FORMAT_VERSION:
        raise SncError(f"{stem}: netlist format {doc.get('format')!r} v{doc.get('format_version')!r}, "
                       f"this snc reads {FORMAT} v{FORMAT_VERSION}")
    with np.load(stem_file(stem, ".npz"), allow_pickle=False) as npz:
        arrays = {k: npz[k] for k in npz.files}
    groups = {}
    for d in doc["groups"]:
        name = d["name"]
        groups[name] = NeuronGroup(name, tuple(d["shape"]), d["du"], d["dv"], d["vth"], arrays[f"g/{name}/bias_mant"],
                                   arrays[f"g/{name}/bias_exp"], d["reset_interval"], d["reset_offset"], d["depth"],
                                   d["role"], d["scale"], d["threshold"], bool(d["subtractive_reset"]),
                                   int(d["payload_shift"]))
    def weights(i: int, d: dict) -> np.ndarray:
        if "signs_of" in d:  # a sign-split pair is stored once: the excitatory half's array holds both
            return np.minimum(arrays[f"s/{d['signs_of']}/weight"], 0)
        w = arrays[f"s/{i}/weight"]
        return np.maximum(w, 0) if i in paired else w

    paired = {d["signs_of"] for d in doc["synapses"] if "signs_of" in d}
    synapses = [Synapse(d["name"], d["src"], d["dst"], d["kind"], op_from_dict(d["op"], weights(i, d)),
                        d["weight_exp"], d["num_weight_bits"], d["delay"], arrays.get(f"s/{i}/gain"), d["gain_shift"],
                        d["lag"], d["gate"], tuple(d["origin"]))
                for i, d in enumerate(doc["synapses"])]
    host_ops = [HostOp(d["src"], d["dst"], op_from_dict(d["op"], arrays.get(f"h/{i}/weight")),
                       arrays.get(f"h/{i}/gain"), tuple(d["origin"])) for i, d in enumerate(doc["host_ops"])]
    r = doc["readout"]
    readout = ReadoutPort(r["name"], tuple(r["shape"]), r["scale"], r["depth"], arrays.get("readout/bias"),
                          tuple(ReadoutFilter.from_dict(f) for f in r["filters"]))
    tables = {prefix: {k[len(prefix) + 1:]: v for k, v in arrays.items() if k.startswith(prefix + "/")}
              for prefix in ("gates", "model_gates")}
    net = Netlist(doc["mode"], groups, synapses, readout, doc["timestep"], dict(doc["inputs"]),
                  {k: tuple(v) for k, v in doc["host_inputs"].items()}, host_ops, tables["gates"],
                  tables["model_gates"], doc["target"])
    net.check()
    return net


def _sign_halves(synapses: Sequence[Synapse]) -> dict[int, int]:
    """{index of an excitatory half ``X+``: index of its inhibitory half ``X-``} for the pairs ``split_signs``
    made (same ends and geometry, weights >= 0 and <= 0): stored as one array, their sum."""
    index = {s.name: i for i, s in enumerate(synapses)}
    pairs = {}
    for i, s in enumerate(synapses):
        j = index.get(s.name[:-1] + "-") if s.name.endswith("+") else None
        if j is None:
            continue
        t = synapses[j]
        w, v = s.op.weight, t.op.weight
        if (s.src, s.dst, s.kind, op_to_dict(s.op)) == (t.src, t.dst, t.kind, op_to_dict(t.op)) and \
                w.shape == v.shape and w.dtype == v.dtype and w.min(initial=0) >= 0 and v.max(initial=0) <= 0:
            pairs[i] = j
    return pairs


def _scalar(v: Any) -> Any:
    return v.item() if isinstance(v, np.generic) else v


def stem_file(stem: Path, suffix: str) -> Path:
    """``stem`` + ``suffix`` (not ``with_suffix``: a stem may hold dots, as ``NN-pass.netlist-fixed`` does)."""
    return stem.parent / (stem.name + suffix)
