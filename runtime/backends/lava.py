"""Build Lava processes from a netlist and run denoiser calls on Lava's CPU simulator.

One Lava network holds ``batch`` independent copies of the netlist (every
group is ``batch`` copies long and every sparse/dense synapse block-diagonal),
so a whole batch of images advances with one Lava time step. Per netlist item:

- neuron group: ``LIFReset`` (``reset_interval > 0``) or ``LIF``;
  ``StepBiasLIFReset`` (``lava_processes/step.py``) for a bias per logical step
  or a reset by subtraction; a graded group: ``GradedSum``
  (``lava_processes/graded.py``), its synapses on Lava's graded path with the
  payload's bits;
The backend runs netlists of the ``loihi2`` target (``LavaBackend``,
registered as ``lava``) in both of its modes.

- ``sparse`` synapse: ``Sparse``, or ``DelaySparse`` when it has a delay,
  with the op expanded to a CSR matrix in torch's orientation. By default the
  synapses are told ``num_message_bits=1``: Lava's graded path computes
  ``W @ s`` with a sparse mat-vec, which for 0/1 spikes is the same number as
  the binary path's sum of selected columns and about 3x faster on the digits
  U-Net (a CSR column slice costs 2.4 ns per non-zero, the mat-vec 0.8 ns).
  ``binary_path=True`` uses Lava's binary-spike path; tests check both agree;
  ``StepGainSparse`` (``lava_processes/step.py``) for a per-step gain,
  its gain table re-programmed (``Var.set``) when a call's gate values change
  the schedule of a gated synapse;
- ``dense`` synapse: ``Dense``;
- ``conv`` synapse: ``Conv`` (batch 1 only: Lava's Conv has no batch axis),
  handed the torch kernel flipped and transposed to Lava's (out, x, y, in)
  layout, with the group's C-order vector reshaped and transposed to Lava's
  (x, y, c) order on both sides;
- host currents: an ``Injector`` into the group's ``a_in`` (integers in
  ``fixed_pt`` through ``IntInjectorModel``), each step the current of its logical step;
- readout: an ``Extractor`` on the summed output synapses, read every step;
- with ``record=True`` an ``Extractor`` on each group's spikes (relays included).

Processes are stopped on every path (``close()`` / context manager), errors
and Ctrl-C included. The backend (``LavaBackend.network``) runs the network
in a supervised worker process (``supervised.py``): a Lava process that dies,
a call past ``--timeout``, SIGTERM or SIGHUP end the run with one error and
every process of it gone.
"""

from __future__ import annotations

import contextlib
import gc
import signal
import threading
from typing import Iterator, Optional

import numpy as np
from scipy import sparse

from snc.compiler.netlist import Netlist, Synapse, gain_schedule, synapse_matrix
from snc.compiler.targets import get_target
from snc.errors import SncError

from .base import CallResult, NetlistBackend, Trace, call_result, host_values, step_rows
from .lava_memory import check_batch, estimate_mb, fitting_batch
from .supervised import Supervised

MODES = {"fixed": "fixed_pt", "float": "floating_pt"}


def _injector_models():
    """Process models for the host <-> chip boundary.

    Lava's Injector sends floats and LIF's fixed_pt model needs integers: the
    same model with int32 ports. Lava's injector ``__del__`` also joins a port
    that a process may never have opened and prints an ignored exception at
    exit; both variants here only join what exists.
    """
    from lava.magma.core.decorator import implements, requires
    from lava.magma.core.model.py.ports import PyInPort, PyOutPort
    from lava.magma.core.model.py.type import LavaPyType
    from lava.magma.core.resources import CPU
    from lava.magma.core.sync.protocols.loihi_protocol import LoihiProtocol
    from lava.proc.io.extractor import Extractor, PyLoihiExtractorModel
    from lava.proc.io.injector import Injector, PyLoihiInjectorModel

    @implements(proc=Injector, protocol=LoihiProtocol)
    @requires(CPU)
    class FloatInjectorModel(PyLoihiInjectorModel):
        def __del__(self) -> None:
            port = getattr(self, "_p_to_pm_dst_port", None)
            if port is not None:
                port.join()

    bits = get_target("loihi2").rules.state_bits  # a current's precision: the neuron state's

    @implements(proc=Injector, protocol=LoihiProtocol)
    @requires(CPU)
    class IntInjectorModel(FloatInjectorModel):
        in_port: PyInPort = LavaPyType(PyInPort.VEC_DENSE, np.int32, precision=bits)
        out_port: PyOutPort = LavaPyType(PyOutPort.VEC_DENSE, np.int32, precision=bits)

    return {
        "fixed": {Injector: IntInjectorModel, Extractor: PyLoihiExtractorModel},
        "float": {Injector: FloatInjectorModel, Extractor: PyLoihiExtractorModel},
    }


@contextlib.contextmanager
def _deferred_sigint() -> Iterator[None]:
    """Hold Ctrl-C until the block is done, then raise it.

    A terminal's Ctrl-C signals the whole process group. Lava's processes fork
    inside this block and inherit the handler, so they only take note and keep
    running; this process finishes the current exchange (an interrupted
    exchange leaves Lava's processes waiting for data, and ``stop()`` waiting
    for them forever) and then raises KeyboardInterrupt, and the caller stops
    Lava. A call lasts seconds, so Ctrl-C still answers promptly.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    interrupted: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: interrupted.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if interrupted:
        raise KeyboardInterrupt


def lava_conv_kernel(weight: np.ndarray) -> np.ndarray:
    """A torch conv kernel [out, in, ky, kx] as Lava's Conv wants it: [out, kx, ky, in], flipped.

    Lava's Conv is a true convolution (scipy ``convolve2d``) over (x, y, c)
    tensors; torch's conv2d a cross-correlation over (c, y, x).
    """
    return np.ascontiguousarray(weight[:, :, ::-1, ::-1].transpose(0, 3, 2, 1))


class LavaNetwork:
    """A netlist on Lava's CPU simulator, in the netlist's mode (fixed_pt or floating_pt)."""

    def __init__(self, net: Netlist, batch: int = 1, record: bool = False, binary_path: bool = False) -> None:
        from lava.magma.core.run_configs import Loihi2SimCfg
        from lava.proc.io.extractor import Extractor
        from lava.proc.io.injector import Injector
        from lava.proc.lif.process import LIF, LIFReset

        net = BACKEND.accept(net)
        mode = net.mode
        if batch > 1 and any(s.kind == "conv" for s in net.synapses):
            raise SncError("Lava's Conv has no batch axis: run netlists with conv synapses at batch 1")
        self.net, self.mode, self.batch, self.record = net, mode, batch, record
        self.dtype = np.int32 if mode == "fixed" else np.float64  # of weights, gains and host currents
        self.length = net.call_steps
        self.cfg = Loihi2SimCfg(select_tag=MODES[mode], exception_proc_model_map=_injector_models()[mode])
        self.procs: dict[str, object] = {}
        self.injectors: dict[str, object] = {}
        self.extractors: dict[str, object] = {}
        self._schedules: dict[str, np.ndarray] = {}  # what each gated synapse's gain table holds now
        self._started = False
        self._ran = False  # Var.set needs a runtime that has run
        self.time_step = 0  # Lava's time step of the last step run
        buffer = self.length + 1
        for g in net.groups.values():
            n = batch * g.n
            if mode == "fixed":
                params = dict(du=int(g.du), dv=int(g.dv), vth=int(g.vth), bias_mant=np.tile(g.bias_mant, batch),
                              bias_exp=np.tile(g.bias_exp, batch))
            else:
                params = dict(du=float(g.du), dv=float(g.dv), vth=float(g.vth),
                              bias_mant=np.tile(g.bias_mant, batch).astype(np.float64), bias_exp=0)
            if g.graded:
                from .lava_processes.graded import GradedSum
                mant, exp = self._bias_table(g, params.pop("bias_mant"), params.pop("bias_exp"))
                proc = GradedSum(shape=(n,), name=g.name, bias_table_mant=mant, bias_table_exp=exp,
                                 payload_shift=g.payload_shift)
            elif g.per_step or g.subtractive_reset:
                from .lava_processes.step import StepBiasLIFReset
                mant, exp = self._bias_table(g, params.pop("bias_mant"), params.pop("bias_exp"))
                proc = StepBiasLIFReset(shape=(n,), name=g.name, reset_interval=g.reset_interval,
                                        reset_offset=g.reset_offset, bias_table_mant=mant, bias_table_exp=exp,
                                        subtractive_reset=g.subtractive_reset, **params)
            elif g.reset_interval:
                proc = LIFReset(shape=(n,), name=g.name, reset_interval=g.reset_interval,
                                reset_offset=g.reset_offset, **params)
            else:
                proc = LIF(shape=(n,), name=g.name, **params)
            self.procs[g.name] = proc
            if g.name in net.inputs:
                inj = Injector(shape=(n,), buffer_size=buffer)
                inj.out_port.connect(proc.a_in)
                self.injectors[g.name] = inj
            if record:
                ext = Extractor(shape=(n,), buffer_size=buffer)
                proc.s_out.connect(ext.in_port)
                self.extractors[g.name] = ext
        self.readout_ext = Extractor(shape=(batch * net.readout.n,), buffer_size=buffer)
        for s in net.synapses:
            self._connect(s, binary_path)
        self._anchor = next(iter(self.procs.values()))
        self.gated = [s for s in net.synapses if s.gate]

    def _bias_table(self, g, mant: np.ndarray, exp) -> tuple[np.ndarray, np.ndarray]:
        """A group's bias as a table of one row per step of a call (one row: the same bias every step)."""
        exp = np.broadcast_to(exp, mant.shape)  # (floating_pt: 0)
        if not g.per_step:
            return mant[None], exp[None].copy()
        rows = step_rows(self.net, g.name, 1, self.length)
        return mant[rows], exp[rows]

    def _connect(self, s: Synapse, binary_path: bool) -> None:
        from lava.proc.conv.process import Conv
        from lava.proc.dense.process import Dense
        from lava.proc.sparse.process import DelaySparse, Sparse

        fixed = self.mode == "fixed"
        # a graded group's payloads always take the graded path; 0/1 spikes either
        graded = self.net.groups[s.src].graded
        kw = dict(num_message_bits=get_target(self.net.target).rules.payload_bits if graded else
                  0 if binary_path else 1)
        if fixed:
            kw.update(weight_exp=s.weight_exp, num_weight_bits=s.num_weight_bits)
        dtype = self.dtype
        src = self.procs[s.src].s_out
        target = self.readout_ext.in_port if s.dst == self.net.readout.name else self.procs[s.dst].a_in
        if s.kind == "conv":
            op = s.op
            syn = Conv(weight=lava_conv_kernel(op.weight).astype(dtype), input_shape=op.in_shape[::-1],
                       padding=op.padding, stride=op.stride, name=s.name, **kw)
            src.reshape(op.in_shape).transpose([2, 1, 0]).connect(syn.s_in)
            syn.a_out.transpose([2, 1, 0]).reshape((op.n_out,)).connect(target)
        else:
            w = sparse.kron(sparse.identity(self.batch, format="csr", dtype=dtype),
                            synapse_matrix(s).astype(dtype), format="csr")
            if s.gate:
                self._schedules[s.name] = gain_schedule(s, self.net)  # the bound; a call re-programs it
            if s.kind == "dense":
                syn = Dense(weights=w.toarray(), name=s.name, **kw)
            elif s.scheduled:
                from .lava_processes.step import StepGainSparse
                syn = StepGainSparse(weights=w, gain=gain_schedule(s, self.net).astype(dtype), gain_shift=s.gain_shift,
                                     name=s.name, **kw)
            elif s.delay:
                delays = w.astype(np.int64)  # DelaySparse insists on int64 delays
                delays.data[:] = s.delay
                syn = DelaySparse(weights=w, delays=delays, name=s.name, **kw)
            else:
                syn = Sparse(weights=w, name=s.name, **kw)
            src.connect(syn.s_in)
            syn.a_out.connect(target)
        self.procs[s.name] = syn

    # --- running -------------------------------------------------------------------------
    def _run(self, steps: int, values: dict[str, np.ndarray],
             gates: Optional[dict[str, np.ndarray]]) -> tuple[list, dict[str, list]]:
        """Run ``steps`` steps feeding the host values every step; (readouts, spikes) per step."""
        from lava.magma.core.run_conditions import RunSteps

        if self.gated and gates is None:
            raise SncError("this netlist has gated synapses: a call needs its gate values")
        with _deferred_sigint():
            for s in self.gated:
                table = gain_schedule(s, self.net, gates)
                if not np.array_equal(table, self._schedules[s.name]):
                    gain = self.procs[s.name].gain
                    if self._ran:
                        gain.set(table.astype(self.dtype))
                    else:  # Lava sets Vars only of a runtime that has run: before, the initial value
                        gain.init = table.astype(self.dtype)
                    self._schedules[s.name] = table
            if not self._started:
                self._started = True  # set first: close() must stop whatever part of the runtime did start
                # Lava forks an OS process per process model; frozen objects are left alone by the
                # children's garbage collector, so it does not copy every page of the parent's heap
                gc.freeze()
                try:
                    self._anchor.create_runtime(run_cfg=self.cfg)
                finally:
                    gc.unfreeze()
            self._ran = True
            self._anchor.run(condition=RunSteps(num_steps=steps, blocking=False))
            for name, inj in self.injectors.items():
                for row in step_rows(self.net, name, self.time_step + 1, steps):
                    inj.send(values[name][row])
            self.time_step += steps
            raw = [self.readout_ext.receive() for _ in range(steps)]
            spikes = {name: [ext.receive() for _ in range(steps)] for name, ext in self.extractors.items()}
            self._anchor.wait()
        return raw, spikes

    def _values(self, currents: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        values = host_values(self.net, currents, self.batch)  # [T, B, n]
        return {k: v.reshape(v.shape[0], -1).astype(self.dtype) for k, v in values.items()}

    def call(self, currents: dict[str, np.ndarray], gates: Optional[dict[str, np.ndarray]] = None) -> CallResult:
        """One denoiser call: host currents [B, *shape] or [T, B, *shape] per group -> readout [T, B, *shape];
        ``gates``: the call's values [T] per gate key (a netlist with gates needs them)."""
        raw, spikes = self._run(self.length, self._values(currents), gates)
        return call_result(self.net, np.stack(raw), {k: np.stack(v) for k, v in spikes.items()}, self.batch)

    def trace(self, steps: int, currents: dict[str, np.ndarray],
              gates: Optional[dict[str, np.ndarray]] = None) -> Trace:
        """``steps`` single-step runs with ``Var.get`` of every group's u and v after each (slow: small netlists)."""
        if not self.record:
            raise SncError("trace needs a network built with record=True")
        values = self._values(currents)
        b = self.batch
        state_dtype = np.int64 if self.mode == "fixed" else np.float64
        per_step: dict[str, dict[str, list]] = {key: {name: [] for name in self.net.groups} for key in ("s", "u", "v")}
        readouts = []
        for _ in range(steps):
            raw, spikes = self._run(1, values, gates)
            readouts.append(raw[0].reshape(b, -1))
            for name, proc in ((name, self.procs[name]) for name in self.net.groups):
                sent = spikes[name][0].reshape(b, -1)
                per_step["s"][name].append(sent.astype(state_dtype) if self.net.groups[name].graded else sent != 0)
                per_step["u"][name].append(proc.u.get().reshape(b, -1).astype(state_dtype))
                per_step["v"][name].append(proc.v.get().reshape(b, -1).astype(state_dtype))
        stacked = {key: {name: np.stack(seq) for name, seq in table.items()} for key, table in per_step.items()}
        return Trace(stacked["s"], stacked["u"], stacked["v"], np.stack(readouts))

    def close(self) -> None:
        if self._started:
            self._started = False
            self._anchor.stop()

    def __enter__(self) -> "LavaNetwork":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class LavaBackend(NetlistBackend):
    name = "lava"
    modes = ("float", "fixed")
    default_mode = "fixed"
    description = "Lava's CPU simulator of Loihi 2 (fixed_pt or floating_pt)"
    targets = ("loihi2",)
    supervised = True

    def semantics(self, mode: str) -> str:
        return f"lava-{MODES[mode]}"

    def batch_that_fits(self, net: Netlist, batch: int, record: bool) -> int:
        fits = fitting_batch(net, record)
        return batch if fits is None else max(1, min(batch, fits))  # 0: network() refuses, with the numbers

    def run_mb(self, net: Netlist, batch: int) -> Optional[float]:
        return estimate_mb(net, batch, record=False)

    def network(self, net: Netlist, batch: int = 1, record: bool = False, binary_path: bool = False,
                timeout: Optional[float] = None) -> Supervised:
        """A ``LavaNetwork`` in a supervised worker process (``supervised.py``): a Lava process that dies, a
        call longer than ``timeout`` seconds, Ctrl-C, SIGTERM or SIGHUP end the run and all its processes."""
        net = self.accept(net)  # checked here: a bad netlist is refused before any process starts
        check_batch(net, batch, record)  # and a batch that would not fit this machine's memory
        # Lava sets multiprocessing's start method when this module is first imported, and fails if anything
        # set it before: import it here, not first in the worker (whose fork has set it)
        import lava.magma.runtime.message_infrastructure.multiprocessing  # noqa: F401
        return Supervised(lambda: LavaNetwork(net, batch, record, binary_path), "Lava", timeout)


BACKEND = LavaBackend()
