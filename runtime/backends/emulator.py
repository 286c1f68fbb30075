"""Bit-exact, vectorised emulator of a netlist with Lava 0.10's fixed_pt semantics.

Requires a fixed-mode ``Netlist`` of the ``loihi2`` target (``compiler/netlist.py``). Guarantees: every
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
  ``v > vth << 6``, then ``v = 0`` (``v -= vth << 6`` for a reset by
  subtraction); ``LIFReset`` zeroes u and v first at
  steps with ``time_step % reset_interval == reset_offset``;
- the readout (Lava's Extractor) sums its synapses' int32 outputs exactly;
- snc's ``GradedSum`` (a graded group, ``lava_processes/graded.py``): its
  value is the int32 sum of its inputs plus its bias, it sends
  ``graded_payload`` (shifted right, rounded half up, saturated at the
  payload bits) and keeps nothing; a synapse from it (Lava's graded
  mat-vec) sums weights times payloads in int32, which wraps, then shifts by
  ``weight_exp``;
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
- **float32 only with a proof.** (A graded group's payloads, up to 2^23,
  always take float64: exact below 2^53, which the sums of at most 2^30
  |weights| times payloads stay under.) A float32 sum of 0/1 spikes times integer
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
  ``windows_only`` (what the ``emu`` backend's runners use) a window-separable netlist
  (see ``EmuNetwork``) integrates each group only in its T logical steps of
  a call, which gives the same ``CallResult`` as all ``depth + T`` steps.
- **Memory reuse.** A call at batch 64 allocates about 90 MB of
  temporaries; the ``snc`` command (and the bench) raise glibc's mmap and
  trim thresholds (``snc.allocator``) so freed blocks are reused instead of
  faulted in again every call (about 15 % of a call otherwise).
- **Integer work where it is cheap.** Neuron state is int64 numpy with
  explicit wraps and saturation; when every input of a run is below 2^17 in
  magnitude no wrap can occur and u, v run in int32 without the wrap passes.

On a device (``device``, ``--device cpu|cuda``): the synapses run there (their weights, the spike
histories, the input accumulators and every op on them) and the neuron recurrences run on the host
(integer numpy, the same on any machine); each group's summed input crosses to the host and its spikes
back (once per run; per step in a recurrent loop), and outputs are read on the host. The results are bit-identical on every device, because
the float proofs above need only that each op multiplies and adds IEEE floats: every product of a 0/1
spike and an integer weight is exact, and every partial sum of a float32 op is an integer below 2^24
(float64: 2^53), so any summation order gives the same exact sum (cuBLAS's split reductions, cuSPARSE,
and the atomic adds of CUDA's ``index_put_`` accumulate alike; ``torch.use_deterministic_algorithms``
is not needed and not set). Two CUDA features break that premise and are disabled around every run
(``devices.exact_float_ops``, restored after): TF32 matrix products (operands rounded to 10-bit
mantissas) and cuDNN's convolutions (FFT and Winograd algorithms transform the operands); torch's own
CUDA convolution is an im2col and a float32 matrix product. The shifts, floors and wraps of
``post_process`` scale integers by powers of two or by gains whose products stay below 2^53 (exact IEEE
operations on any device), and nearest upsampling, zero insertion and integer casts copy values.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import networkx as nx
import numpy as np
import torch

from snc.compiler.netlist import Netlist, NeuronGroup, gain_schedule, graded_payload
from snc.errors import SncError

from .base import CallResult, NetlistBackend, Trace, call_result, host_values, step_rows
from .devices import DEVICE_TYPES, exact_float_ops
from .emu_synapses import (DECAY_UNITY, FLOAT32_EXACT, PAYLOAD_LIMIT, V_LIMIT, Bundle, Term, accumulator_dtypes, decay,
                           delay_lines, make_term, merge_terms, post_process, wrap_current, wrap_int32)


HOST = torch.device("cpu")  # where the neuron recurrences run (integer numpy), whatever the synapses' device


# --- the network -----------------------------------------------------------------------------------
@dataclass
class _State:
    u: np.ndarray  # [B, n] int64
    v: np.ndarray  # [B, n] int64
    bias: np.ndarray  # [n] or [T, n] int64
    history: torch.Tensor  # [H, B, n] bool: spikes of the last H steps, on the network's device


@dataclass
class _Run:
    """The arrays of one run. Steps are Lava time steps (absolute, from 1)."""
    first_step: int
    steps: int
    span: dict[str, tuple[int, int]]  # per simulated group and the readout: steps [start, stop) integrated
    spike_start: dict[str, int] = field(default_factory=dict)  # step of row 0 of spikes[g]
    spikes: dict[str, torch.Tensor] = field(default_factory=dict)  # [rows, B, n] bool, on the network's device
    inputs: dict[str, torch.Tensor] = field(default_factory=dict)  # [(stop - start) * B, n] float accumulators, too
    u: dict[str, np.ndarray] = field(default_factory=dict)  # traces [steps, B, n]
    v: dict[str, np.ndarray] = field(default_factory=dict)


class EmuNetwork:
    """A fixed-mode netlist (or a compiled graph, lowered) for a batch of images, with Lava's contract.

    ``windows_only=True`` lets ``call`` integrate each group only in its T
    logical steps when the netlist is *window-separable* (checked here):
    every simulated group is a ``LIFReset`` that resets at the first step of
    its window (``reset_interval`` = call length, ``reset_offset`` = depth + 1)
    or a graded group (it keeps no state at all) and every synapse joins a source at depth d to a target at depth
    d + 1 + delay (``balance_delays`` builds exactly this) or is a recurrent
    synapse (only spikes that land in the target's window pass). Then a spike
    outside its source's window reaches its target outside the target's
    window, where it only changes state that the target's next reset wipes:
    the readout and the spikes of every window, all a ``CallResult`` holds,
    are those of every-step emulation (the tests check both against Lava).
    Such a network keeps no state between calls, so it has no ``trace``.
    """

    def __init__(self, net: Netlist, batch: int = 1, record: bool = False, windows_only: bool = False,
                 device: torch.device = HOST) -> None:
        if batch < 1:
            raise SncError("batch must be at least 1")
        net = BACKEND.accept(net)
        self.net, self.batch, self.record, self.device = net, batch, record, torch.device(device)
        self.length = net.call_steps
        self.time_step = 0  # Lava's time_step of the last step run
        self.lines = delay_lines(net)
        self.simulated = [g for g in net.groups if g not in self.lines]
        terms = []
        for s in net.synapses:
            if s.dst in self.lines:
                continue  # a delay line's input is its definition
            line = self.lines.get(s.src)
            src, extra = (line.source, line.delay) if line else (s.src, 0)
            terms.append(make_term(s, src, s.delay + 1 + extra, s.dst == net.readout.name, net))
        terms = merge_terms(terms)
        self.gated = [t.gain for t in terms if t.gain is not None and t.gain.gated is not None]
        self.order = self._components(terms)
        self.windowed = windows_only and self._window_separable(terms)
        component = {g: i for i, members in enumerate(self.order) for g in members}
        self.loop_bundles: dict[str, list[Bundle]] = {}  # per source: terms inside a recurrent component
        self.bundles: dict[str, list[Bundle]] = {}  # per source: terms into later components or the readout
        grouped: dict[tuple, list[Term]] = {}
        for t in terms:
            inside = t.dst in component and component[t.dst] == component[t.src]
            key = (t.src, inside, t.delay if inside else None, t.geometry, t.bound < FLOAT32_EXACT)
            grouped.setdefault(key, []).append(t)
        for (src, inside, *_), ts in grouped.items():
            (self.loop_bundles if inside else self.bundles).setdefault(src, []).append(
                Bundle(ts, net.groups[src].n, self.device))
        self.recurrent = {i for i, members in enumerate(self.order) if any(m in self.loop_bundles for m in members)}
        self.accumulator_dtype = accumulator_dtypes(terms, net.readout.name)
        history = {g: 0 for g in self.simulated}
        for t in terms:
            history[t.src] = max(history[t.src], t.delay)
        for line in self.lines.values():
            history[line.source] = max(history[line.source], line.delay)
        self.state = {}
        for name in self.simulated:
            g = net.groups[name]
            self.state[name] = _State(np.zeros((batch, g.n), np.int64), np.zeros((batch, g.n), np.int64),
                                      g.bias(),
                                      torch.zeros((history[name], batch, g.n), dtype=_sent_dtype(g), device=self.device))

    def _window_separable(self, terms: list[Term]) -> bool:
        net, length = self.net, self.length
        depth = {name: g.depth for name, g in net.groups.items()} | {net.readout.name: net.readout.depth}
        if any(not 0 <= d <= length - net.timestep for d in depth.values()):
            return False
        for name in self.simulated:
            g = net.groups[name]
            if not g.graded and (g.reset_interval != length or g.reset_offset != (g.depth + 1) % length):
                return False  # (a graded group keeps no state between steps)
        if any(depth[name] != depth[line.source] + line.delay for name, line in self.lines.items()):
            return False
        if any(len({depth[m] for m in members}) > 1 for members in self.order):
            return False  # a loop across pipeline stages: its members' windows do not line up
        # a recurrent synapse passes only spikes that land in its target's window: separable at any depth
        return all(depth[t.dst] == depth[t.src] + t.delay or (t.gain is not None and t.gain.recurrent)
                   for t in terms)

    def _components(self, terms: list[Term]) -> list[list[str]]:
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
            g = self.net.groups[name]
            run.spikes[name] = torch.zeros((T, b, g.n), dtype=_sent_dtype(g), device=self.device)
        self._execute(run, values, trace=False)
        self.time_step += self.length
        readout = self._readout(run).reshape(T, b, *self.net.readout.shape) / self.net.readout.scale
        spikes = {}
        if self.record:
            for name, g in self.net.groups.items():
                spikes[name] = self._spikes(run, name).reshape(T, b, *g.shape) != 0  # graded: a non-zero payload
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
            run.spikes[name] = torch.cat([hist, torch.zeros((steps, *hist.shape[1:]), dtype=hist.dtype,
                                                            device=self.device)])
        self._execute(run, values, trace)
        for name in self.simulated:
            st = self.state[name]
            st.history = run.spikes[name][run.spikes[name].shape[0] - st.history.shape[0]:].clone()
        self.time_step += steps
        return run

    def _execute(self, run: _Run, values: dict[str, np.ndarray], trace: bool) -> None:
        with exact_float_ops():
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
        return run.spikes[source][first:first + stop - start].cpu().numpy()

    def _readout(self, run: _Run) -> np.ndarray:
        name = self.net.readout.name
        start, stop = run.span[name]
        acc = run.inputs.get(name)
        if acc is None:
            return np.zeros((stop - start, self.batch, self.net.readout.n))
        return acc.reshape(stop - start, self.batch, -1).cpu().numpy()

    def _take_input(self, run: _Run, name: str, values: dict[str, np.ndarray]) -> torch.Tensor:
        """The group's summed input over its span [steps, B, n], exact, host current included, on the host.

        int32 when its synaptic sums are float32 (proven below 2^24) and host currents (below 2^17)
        cannot overflow it; int64 otherwise.
        """
        start, stop = run.span[name]
        acc = run.inputs.pop(name, None)
        shape = (stop - start, self.batch, self.net.groups[name].n)
        if acc is None:
            a = torch.zeros(shape, dtype=torch.int32, device=HOST)
        else:
            a = acc.to(HOST, torch.int32 if acc.dtype == torch.float32 else torch.int64).reshape(shape)
        if name in values:
            a += torch.from_numpy(values[name][step_rows(self.net, name, start, stop - start)]).to(a.dtype)
        return a

    def _evaluate(self, run: _Run, bundle: Bundle) -> None:
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
                                                      dtype=self.accumulator_dtype[t.dst], device=self.device)
            if dense:
                j0, j1 = max(0, -shift), min(hi - lo, length - shift)
                if j1 > j0:
                    factors = None if t.gain is None else \
                        t.gain.rows(np.repeat(np.arange(s0 + lo + j0, s0 + lo + j1), b), self.length)
                    acc[(j0 + shift) * b:(j1 + shift) * b] += \
                        post_process(y[j0 * b:j1 * b, route.columns], t, factors).to(acc.dtype)
            else:
                target = rows + shift * b
                keep = (target >= 0) & (target < length * b)
                if bool(keep.any()):
                    factors = None if t.gain is None else \
                        t.gain.rows(s0 + lo + (rows[keep] // b).cpu().numpy(), self.length)
                    acc.index_put_((target[keep],), post_process(y[keep][:, route.columns], t, factors).to(acc.dtype),
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
                        a[t.dst][0] += post_process(y[:, route.columns], t, factors).to(HOST, torch.int64)
            for name in members:
                self._integrate(run, name, a[name], j, trace)

    def _integrate(self, run: _Run, name: str, a: torch.Tensor, first: int, trace: bool) -> None:
        """Advance a group over the steps of ``a`` [k, B, n] (exact input sums, consumed), from span step ``first``."""
        g: NeuronGroup = self.net.groups[name]
        st = self.state[name]
        k = a.shape[0]
        start = run.span[name][0] + first
        if g.graded:
            self._send_values(run, g, a, start, first, trace)
            return
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
        spikes = run.spikes[name][row:row + k]
        host_spikes = spikes.cpu()
        bias = torch.from_numpy(st.bias[step_rows(self.net, name, start, k)][:, None] if g.per_step else st.bias)
        x = u.add_(bias.to(u.dtype))  # u is ours: x = u + bias in place
        v = _integrate_v(g, st, x, host_spikes.numpy(), resets, trace)
        spikes.copy_(host_spikes)  # a no-op on the host: the same tensor
        if trace:
            steps = run.span[name][1] - run.span[name][0]
            run.u.setdefault(name, np.empty((steps, *a.shape[1:]), np.int64))[first:first + k] = u_trace
            run.v.setdefault(name, np.empty((steps, *a.shape[1:]), np.int64))[first:first + k] = v


    def _send_values(self, run: _Run, g: NeuronGroup, a: torch.Tensor, start: int, first: int, trace: bool) -> None:
        """A graded group (snc's GradedSum): its value, the int32 sum of its inputs plus its bias, sent as
        ``graded_payload``."""
        k = a.shape[0]
        a_in = wrap_int32(a.to(torch.int64).numpy())  # Lava's InPort sums int32 channel values in int32
        bias = self.state[g.name].bias
        value = a_in + (bias[step_rows(self.net, g.name, start, k)][:, None] if g.per_step else bias)
        row = start - run.spike_start[g.name]
        payload = torch.from_numpy(graded_payload(value, g.payload_shift, PAYLOAD_LIMIT))
        run.spikes[g.name][row:row + k] = payload.to(self.device)
        if trace:
            steps = run.span[g.name][1] - run.span[g.name][0]
            run.u.setdefault(g.name, np.empty((steps, *a.shape[1:]), np.int64))[first:first + k] = a_in
            run.v.setdefault(g.name, np.empty((steps, *a.shape[1:]), np.int64))[first:first + k] = value


def _sent_dtype(g: NeuronGroup) -> torch.dtype:
    """What a group sends each step: 0/1 spikes, or a graded group's integer payloads."""
    return torch.int32 if g.graded else torch.bool


def _any_spike(rows: torch.Tensor) -> torch.Tensor:
    """Per row [rows, n] of spikes or payloads: any non-zero (a uint8 max: torch's bool ``any(dim)`` is far
    slower)."""
    if rows.dtype != torch.bool:
        rows = rows != 0
    return rows.view(torch.uint8).amax(dim=1) > 0


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
        if g.subtractive_reset:  # snc's StepBiasLIFReset: v -= vth << 6 where it spiked
            v -= threshold * ~quiet
        else:
            v *= quiet  # spiking neurons reset to 0
        np.logical_not(quiet, out=spikes[j])
        if trace:
            v_trace[j] = v
    st.v = v.astype(np.int64)
    return v_trace


class EmuBackend(NetlistBackend):
    name = "emu"
    modes = ("fixed",)
    default_mode = "fixed"
    description = "snc's bit-exact emulator of Lava fixed_pt"
    targets = ("loihi2",)

    def semantics(self, mode: str) -> str:
        return "lava-fixed_pt"  # the emulator's promise: Lava fixed_pt bit for bit

    devices = DEVICE_TYPES

    def network(self, net: Netlist, batch: int = 1, record: bool = False, every_step: bool = False,
                device: torch.device = HOST) -> EmuNetwork:
        """Only the logical windows are integrated unless ``every_step`` (the same CallResults)."""
        return EmuNetwork(net, batch, record, windows_only=not every_step, device=device)


BACKEND = EmuBackend()
