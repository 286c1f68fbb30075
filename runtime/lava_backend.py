"""Lower a compiled graph to Lava processes and run denoiser calls on Lava's CPU simulator.

One Lava network holds ``batch`` independent copies of the graph (every
population is ``batch`` copies long and every synapse block-diagonal), so a
whole batch of images advances with one Lava time step. Per process:

- population: ``LIFReset`` (relays: ``LIF``) with ``reset_interval`` = the
  call length ``L = depth + T`` and ``reset_offset`` = its depth + 1, so each
  population starts every call from zero state (Lava counts time steps from 1
  across runs);
- synapse: ``Sparse``, or ``DelaySparse`` for the delayed identity edges into
  relays; convolutions are expanded to sparse matrices in torch's orientation
  (so no kernel flip is needed, unlike Lava's ``Conv``). By default the
  synapses are told ``num_message_bits=1``: Lava's graded path computes
  ``W @ s`` with a sparse mat-vec, which for 0/1 spikes is the same number as
  the binary path's sum of selected columns and about 3x faster on the digits
  U-Net (a CSR column slice costs 2.4 ns per non-zero, the mat-vec 0.8 ns).
  ``binary_path=True`` uses Lava's binary-spike path; tests check both agree.
- host currents: an ``Injector`` into the population's ``a_in`` (integers in
  ``fixed_pt`` through ``IntInjectorModel``), the same value every step of a call;
- readout: an ``Extractor`` on the summed output synapses, read every step;
- with ``record=True`` an ``Extractor`` on each population's spikes (relays included).

``fixed_pt`` uses the integers of ``quantize``; ``floating_pt`` the float
weights, thresholds and biases. Processes are stopped on every path
(``close()`` / context manager), errors and Ctrl-C included.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from dataclasses import dataclass, field, replace
from typing import Iterator

import numpy as np
from scipy import sparse

from snc.compiler.ir import Edge, Graph, HostInput, Population, Readout
from snc.errors import SncError

MODES = {"fixed": "fixed_pt", "float": "floating_pt"}


@dataclass
class CallResult:
    readout: np.ndarray  # [T, B, *shape], model units, chip part only (host adds bias and host currents)
    spikes: dict[str, np.ndarray] = field(default_factory=dict)  # [T, B, *shape] per neuron population


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

    @implements(proc=Injector, protocol=LoihiProtocol)
    @requires(CPU)
    class IntInjectorModel(FloatInjectorModel):
        in_port: PyInPort = LavaPyType(PyInPort.VEC_DENSE, np.int32, precision=24)
        out_port: PyOutPort = LavaPyType(PyOutPort.VEC_DENSE, np.int32, precision=24)

    return {
        "fixed": {Injector: IntInjectorModel, Extractor: PyLoihiExtractorModel},
        "float": {Injector: FloatInjectorModel, Extractor: PyLoihiExtractorModel},
    }


def edge_matrix(edge: Edge, mode: str) -> sparse.csr_matrix:
    """One image's synapse matrix [n_dst, n_src]: float weights, or the quantized integers."""
    if mode == "float":
        return edge.op.to_csr()
    w = edge.fixed["weight"]
    if edge.op.kind == "identity":
        return (sparse.identity(edge.op.n_in, format="csr") * int(w.reshape(-1)[0])).astype(np.int64).tocsr()
    m = replace(edge.op, weight=w.astype(np.float64)).to_csr()
    return m.astype(np.int64)


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


class LavaNetwork:
    """A compiled graph on Lava's CPU simulator; ``call(currents)`` runs one denoiser call."""

    def __init__(self, graph: Graph, mode: str = "fixed", batch: int = 1, record: bool = False,
                 binary_path: bool = False) -> None:
        if mode not in MODES:
            raise SncError(f"unknown Lava mode {mode!r}; use fixed or float")
        from lava.magma.core.run_configs import Loihi2SimCfg
        from lava.proc.io.extractor import Extractor
        from lava.proc.io.injector import Injector
        from lava.proc.lif.process import LIF, LIFReset
        from lava.proc.sparse.process import DelaySparse, Sparse

        self.graph, self.mode, self.batch, self.record = graph, mode, batch, record
        self.T = graph.timestep
        self.length = graph.depth + self.T
        self.cfg = Loihi2SimCfg(select_tag=MODES[mode], exception_proc_model_map=_injector_models()[mode])
        self.procs: dict[str, object] = {}
        self.injectors: dict[str, object] = {}
        self.extractors: dict[str, object] = {}
        self._started = False
        buffer = self.length + 1
        host_targets = {e.dst for e in graph.edges if isinstance(graph.nodes[e.src], HostInput)}
        for p in graph.of_type(Population):
            n = batch * int(np.prod(p.shape))
            if mode == "fixed":
                f = p.fixed
                params = dict(du=int(f["du"]), dv=int(f["dv"]), vth=int(f["vth"]),
                              bias_mant=np.tile(f["bias_mant"].reshape(-1), batch),
                              bias_exp=np.tile(f["bias_exp"].reshape(-1), batch))
            else:
                params = dict(du=1.0, dv=1.0 - p.decay, vth=float(p.threshold),
                              bias_mant=np.tile(p.bias.reshape(-1), batch).astype(np.float64), bias_exp=0)
            if p.role == "relay":
                proc = LIF(shape=(n,), name=p.name, **params)
            else:
                proc = LIFReset(shape=(n,), name=p.name, reset_interval=self.length,
                                reset_offset=(p.depth + 1) % self.length, **params)
            self.procs[p.name] = proc
            if p.name in host_targets:
                inj = Injector(shape=(n,), buffer_size=buffer)
                inj.out_port.connect(proc.a_in)
                self.injectors[p.name] = inj
            if record:
                ext = Extractor(shape=(n,), buffer_size=buffer)
                proc.s_out.connect(ext.in_port)
                self.extractors[p.name] = ext
        readout = graph.readout
        self.readout_ext = Extractor(shape=(batch * int(np.prod(readout.shape)),), buffer_size=buffer)
        eye = sparse.identity(batch, format="csr", dtype=np.int64)
        for e in graph.edges:
            if not isinstance(graph.nodes[e.src], Population):
                continue
            w = sparse.kron(eye, edge_matrix(e, mode), format="csr")
            kw = dict(num_message_bits=0 if binary_path else 1)
            if mode == "fixed":
                w = w.astype(np.int32)
                kw.update(weight_exp=int(e.fixed["weight_exp"]), num_weight_bits=8)
            if e.delay:
                delays = w.astype(np.int64)  # DelaySparse insists on int64 delays
                delays.data[:] = e.delay
                syn = DelaySparse(weights=w, delays=delays, name=e.name, **kw)
            else:
                syn = Sparse(weights=w, name=e.name, **kw)
            self.procs[e.src].s_out.connect(syn.s_in)
            target = self.readout_ext.in_port if isinstance(graph.nodes[e.dst], Readout) else self.procs[e.dst].a_in
            syn.a_out.connect(target)
            self.procs[e.name] = syn
        self._anchor = next(iter(self.procs.values()))

    # --- running -------------------------------------------------------------------------
    def _host_values(self, currents: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        values = {}
        for name in self.injectors:
            if name not in currents:
                raise SncError(f"no host current for population {name}")
            x = np.asarray(currents[name], dtype=np.float64).reshape(-1)
            if x.size != self.injectors[name].out_port.size:
                raise SncError(f"host current for {name} has {x.size} values, expected {self.injectors[name].out_port.size}")
            if self.mode == "fixed":
                scaled = np.round(x * self.graph.nodes[name].scale)
                limit = 2 ** 17  # a_in << 6 must stay inside the 24-bit current
                if np.abs(scaled).max(initial=0) >= limit:
                    raise SncError(f"host current into {name} exceeds the 24-bit range at this scale "
                                   f"(peak {np.abs(x).max():.3g}); recompile with calibration data like these inputs")
                values[name] = scaled.astype(np.int32)
            else:
                values[name] = x
        return values

    def call(self, currents: dict[str, np.ndarray]) -> CallResult:
        """One denoiser call: host currents [B, *shape] per population -> readout [T, B, *shape]."""
        from lava.magma.core.run_conditions import RunSteps

        values = self._host_values(currents)
        with _deferred_sigint():
            if not self._started:
                self._started = True  # set first: close() must stop whatever part of the runtime did start
                self._anchor.create_runtime(run_cfg=self.cfg)
            self._anchor.run(condition=RunSteps(num_steps=self.length, blocking=False))
            for name, inj in self.injectors.items():
                for _ in range(self.length):
                    inj.send(values[name])
            raw = [self.readout_ext.receive() for _ in range(self.length)]
            spikes_raw = {name: [ext.receive() for _ in range(self.length)] for name, ext in self.extractors.items()}
            self._anchor.wait()
        d, b = self.graph.depth, self.batch
        readout = np.stack(raw[d:d + self.T]).reshape(self.T, b, *self.graph.readout.shape)
        if self.mode == "fixed":
            readout = readout / self.graph.readout.scale
        spikes = {}
        for name, seq in spikes_raw.items():
            p = self.graph.nodes[name]
            spikes[name] = np.stack(seq[p.depth:p.depth + self.T]).reshape(self.T, b, *p.shape) != 0
        return CallResult(readout, spikes)

    def close(self) -> None:
        if self._started:
            self._started = False
            self._anchor.stop()

    def __enter__(self) -> "LavaNetwork":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
