"""The pass manager: a pipeline of pass objects over one IR and one compile context.

A ``Pass`` is data: a name, the facts it ``requires`` and ``provides``, and
two functions over ``(graph, ctx)``: ``run`` (returns the graph, usually the
same object changed) and ``verify`` (checks the IR the pass left, raising
``GraphError``; it reads the graph, never the pass's own log). The first
pass of a pipeline makes the IR from ``ctx.nir_graph`` (it gets ``None``).

``PassManager(passes)`` checks the chain once (every requirement provided
by an earlier pass, no name twice). ``run`` executes it, after each pass
running its verifier (``ctx.options.verify``), recording the pass's name in
``graph.passes`` and its wall time and peak memory in a ``PassRecord``,
dumping the IR (``dump_ir``: ``NN-<pass>.json`` + ``.npz``, reloadable with
``compiler.ir_io.load_graph``) and stopping after ``stop_after``. Given a
graph that passes already ran on (a reloaded dump), it resumes after them.

Peak memory is the process's resident set size, sampled every 5 ms while the
pass and its verifier run (a sampler thread reading ``/proc/self/statm``; the
process's lifetime peak where that file does not exist). The sampler is also
the compile's memory guard: a pass whose process grows past the memory it
had when the pass began plus what the machine had available then
(``snc.memory.available_mb``, which keeps a reserve) is stopped with one
error, instead of the kernel's OOM killer ending the process (run from the
main thread: the sampler signals it with ``SIGUSR1``).
"""

from __future__ import annotations

import _thread
import os
import resource
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Optional, Sequence

import nir
import torch

from snc.errors import GraphError, SncError
from snc.memory import available_mb

from .gates import Gates, GateTable
from .ir import Graph
from .nir_io import NIR_DT

if TYPE_CHECKING:
    from .targets import Target



@dataclass(frozen=True)
class CalibrationCall:
    """One call of calibration data: its diffusion step (which row of a gated graph's gate tables the call
    uses; None for an ungated source) and the host inputs the source computes for the call's gates."""
    step: Optional[int]
    inputs: Callable[[Optional[Gates]], dict[str, torch.Tensor]]


RESIDUALS = ("reassociate", "graded")  # how real-valued tensors read twice reach the chip (``reassociate`` pass)
WEIGHT_BITS = (8, 16)  # mantissa bits per weight: one synapse, or a coarse and a fine one (``slice_weights``)


@dataclass(frozen=True)
class CompileOptions:
    allow_oversize: bool = False  # keep a graph that does not fit the target (the violations are reported)
    threshold_scale: float = 1.0  # threshold guidance factor S
    verify: bool = True  # run each pass's verifier
    modes: Optional[tuple[str, ...]] = None  # the arithmetic modes to lower (None: every mode of the target)
    residual: str = "graded"  # real-valued tensors read twice: graded (sum populations) | reassociate (copies)
    weight_bits: int = 8  # mantissa bits per weight: 8 (one synapse) | 16 (coarse + fine synapse, slice_weights)


@dataclass
class CompileContext:
    """Everything the passes read besides the IR."""
    target: "Target"
    timestep: int  # spiking steps T per call
    arch: str = ""
    nir_graph: Optional[nir.NIRGraph] = None  # what the first pass imports
    options: CompileOptions = field(default_factory=CompileOptions)
    calibration: Optional[Sequence[CalibrationCall]] = None  # None: uncalibrated
    gate_table: Optional[GateTable] = None  # every snc.Gate's values per diffusion step
    dt: float = NIR_DT  # seconds per step of the NIR graph's Euler discretisation


@dataclass(frozen=True)
class Pass:
    name: str
    run: Callable[[Optional[Graph], CompileContext], Graph]
    verify: Callable[[Graph, CompileContext], None]
    requires: tuple[str, ...] = ()
    provides: tuple[str, ...] = ()


@dataclass
class PassRecord:
    name: str
    seconds: float  # the pass
    verify_seconds: float  # its verifier
    peak_rss_mb: float  # the process's peak resident memory while both ran

    def as_dict(self) -> dict[str, Any]:
        return {"pass": self.name, "seconds": round(self.seconds, 4), "verify_seconds": round(self.verify_seconds, 4),
                "peak_rss_mb": round(self.peak_rss_mb, 1)}


@dataclass
class PipelineRun:
    graph: Graph
    records: list[PassRecord]
    complete: bool  # False when it stopped early (``stop_after``)


class PassManager:
    def __init__(self, passes: Sequence[Pass]) -> None:
        names = [p.name for p in passes]
        if len(set(names)) != len(names):
            raise SncError(f"a pass appears twice in the pipeline: {', '.join(names)}")
        provided: set[str] = set()
        for p in passes:
            missing = sorted(set(p.requires) - provided)
            if missing:
                raise SncError(f"pass {p.name} requires {', '.join(missing)}, which no earlier pass provides")
            provided |= set(p.provides)
        self.passes = list(passes)

    @property
    def names(self) -> list[str]:
        return [p.name for p in self.passes]

    def run(self, ctx: CompileContext, graph: Optional[Graph] = None, stop_after: Optional[str] = None,
            dump_ir: Optional[Path] = None, observe: Optional[Callable[[str, Graph], None]] = None) -> PipelineRun:
        """Run the pipeline from the start (``graph`` None: import ``ctx.nir_graph``) or after the passes a
        reloaded ``graph`` records; stop after ``stop_after``; dump the IR after each pass into ``dump_ir``;
        ``observe(pass name, graph)`` after each pass (it reads the graph; the next pass may change it)."""
        from .ir_io import save_graph

        if stop_after is not None and stop_after not in self.names:
            raise SncError(f"--stop-after {stop_after!r}: no such pass; passes: {', '.join(self.names)}")
        start = 0
        if graph is not None:
            done = list(graph.passes)
            if done != self.names[:len(done)]:
                raise GraphError(f"the IR records the passes {', '.join(done) or '(none)'}, which are not the "
                                 f"start of this pipeline ({', '.join(self.names)})")
            start = len(done)
        elif ctx.nir_graph is None:
            raise SncError("nothing to compile: no NIR graph and no IR")
        if dump_ir is not None:
            dump_ir.mkdir(parents=True, exist_ok=True)
        if stop_after is not None and self.names.index(stop_after) < start:
            raise SncError(f"the IR has already been through {stop_after}")
        records = []
        for index in range(start, len(self.passes)):
            p = self.passes[index]
            with _PeakRSS(p.name) as peak:
                began = time.perf_counter()
                graph = p.run(graph, ctx)
                ran = time.perf_counter()
                if ctx.options.verify:
                    p.verify(graph, ctx)
                verified = time.perf_counter()
            graph.passes.append(p.name)
            records.append(PassRecord(p.name, ran - began, verified - ran, peak.mb))
            if dump_ir is not None:
                save_graph(graph, dump_ir / f"{index + 1:02d}-{p.name}")
            if observe is not None:
                observe(p.name, graph)
            if p.name == stop_after:
                return PipelineRun(graph, records, complete=index == len(self.passes) - 1)
        return PipelineRun(graph, records, complete=True)


class _PeakRSS:
    """The peak resident set size while the block runs, sampled every ``interval`` seconds; past the RSS at
    the start plus the memory then available, the main thread gets one ``SncError`` (the block is a pass)."""

    interval = 0.005

    def __init__(self, name: str = "the block") -> None:
        self.name, self.mb, self.exceeded = name, 0.0, 0.0
        self._stop = threading.Event()
        self._page = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
        self._statm = Path("/proc/self/statm")
        self._ceiling: Optional[float] = None
        self._previous: Any = None

    def _rss(self) -> float:
        if self._statm.is_file():
            return int(self._statm.read_text().split()[1]) * self._page / 2**20
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # the lifetime peak

    def _sample(self) -> None:
        while not self._stop.wait(self.interval):
            rss = self._rss()
            self.mb = max(self.mb, rss)
            if self._ceiling is not None and rss > self._ceiling and not self.exceeded:
                self.exceeded = rss
                _thread.interrupt_main(signal.SIGUSR1)

    def _out_of_memory(self, signum: int = 0, frame: Any = None) -> None:
        raise SncError(f"{self.name} needed more memory than this machine has: the compile grew past "
                       f"{self._ceiling / 1024:.1f} GB (its size when the pass began plus the memory then "
                       f"available); a smaller model or a machine with more memory (a real-valued stream read "
                       f"twice: --residual graded stores each op once)")

    def __enter__(self) -> "_PeakRSS":
        self.mb = self._rss()
        available = available_mb()
        if available is not None and self._statm.is_file() and threading.current_thread() is threading.main_thread():
            self._ceiling = self.mb + max(available, 0.0)
            self._previous = signal.signal(signal.SIGUSR1, self._out_of_memory)
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        try:
            self._stop.set()
            self._thread.join()
            time.sleep(0)  # a call: the sampler's signal, if it sent one, is handled here at the latest
            if self.exceeded and exc[0] is None:
                self._out_of_memory()
        finally:
            if self._ceiling is not None:
                signal.signal(signal.SIGUSR1, self._previous)
            self.mb = max(self.mb, self._rss())
