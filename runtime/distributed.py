"""Sampling beyond one process: a run's images in contiguous shards, each one Ray task.

``snc sample BUILD -n 50000 --workers N [--ray-address HOST:PORT]`` (``snc.api.sample_distributed``) cuts
images ``0 .. n-1`` into at most N contiguous shards and runs each as one Ray task on a local cluster of N
CPUs (started here, shut down on every way out) or on an existing cluster. Each shard samples its images
with their own random streams (``snc.models.image_noise``), so the shards, concatenated, are the images of
the one-process run bit for bit, provided the denoiser computes each image the same in both:

- the same calls: a backend whose results depend on the batch (torch: ``Backend.split_batch``) gets shards
  cut at multiples of its batch (``--batch`` or the backend's own), so every shard makes the forwards of
  the one-process run; a netlist backend computes every image on its own (integers on the emulator and
  Lava fixed_pt, a network copy per image on Lava), so its shards may be cut anywhere;
- the same kernels: torch's float kernels differ with the thread count, so a torch shard runs with the
  driver's thread count; on a cluster of other machines (other CPUs, other kernels) only the netlist
  backends' integer results are guaranteed equal.

A task that dies (its worker killed, its node lost) is re-run by Ray up to ``RETRIES`` times; its shard
starts over. One ``_Progress`` actor collects every shard's sampler steps for one progress bar.
"""

from __future__ import annotations

import logging
import os
import re
import signal
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from snc.errors import SncError
from snc.signals import Terminated

RETRIES = 3  # re-runs of a shard whose worker died
POLL_SECONDS = 0.25  # how often the driver reads the progress
CONNECT_SECONDS = 5.0  # for a cluster's address to answer
KILL_ENV = "SNC_TEST_KILL_SHARD"  # "SHARD:STEP:MARKER": that shard's process SIGKILLs itself at its sampler
# step STEP, once (it writes MARKER first; a re-run finds it and goes on): the tests' dying worker
ADDRESS = re.compile(r"^[A-Za-z0-9_.\-\[\]:]+:\d{1,5}$")

OnProgress = Callable[[int, int], None]  # (steps done, averaged over the images; steps of a run)
ShardRun = Callable[[int, int, Callable[[int, int], None]], Any]  # (first, n, on_step) -> the shard's result


@dataclass(frozen=True)
class Shard:
    index: int
    first: int  # the index of its first image in the run
    n: int


def plan_shards(n: int, workers: int, unit: Optional[int] = None) -> list[Shard]:
    """At most ``workers`` contiguous shards of images ``0 .. n-1`` as even as blocks of ``unit`` images allow
    (every shard but the last starts and ends at a multiple of ``unit``; None: any image)."""
    if workers < 1:
        raise SncError(f"--workers must be at least 1, not {workers}")
    unit = unit or 1
    blocks = -(-n // unit)
    count = min(workers, blocks)
    shards, block = [], 0
    for k in range(count):
        size = blocks // count + (1 if k < blocks % count else 0)
        first, end = block * unit, min(n, (block + size) * unit)
        shards.append(Shard(k, first, end - first))
        block += size
    return shards


class _Progress:
    """The Ray actor every shard reports to: its latest sampler step and how often it started."""

    def __init__(self, shards: int) -> None:
        self.steps, self.totals, self.attempts = [0] * shards, [0] * shards, [0] * shards

    def start(self, shard: int) -> None:
        self.attempts[shard] += 1
        self.steps[shard] = 0

    def step(self, shard: int, step: int, total: int) -> None:
        self.steps[shard], self.totals[shard] = step, total

    def snapshot(self) -> tuple[list[int], list[int], list[int]]:
        return self.steps, self.totals, self.attempts


class _Signals:
    """SIGINT, SIGTERM and SIGHUP noted while Ray's calls run (a Python exception raised by a handler inside
    them comes out as Ray's SystemError) and raised between them: KeyboardInterrupt or ``Terminated``, as
    ``snc.signals`` does. From the first one on, all three are ignored: the teardown runs to its end."""

    STOPPING = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

    def __init__(self) -> None:
        self.previous = {s: signal.getsignal(s) for s in self.STOPPING}
        self.arrived: list[int] = []

    def _note(self, signum: int, frame: Any) -> None:
        for s in self.STOPPING:
            signal.signal(s, signal.SIG_IGN)
        self.arrived.append(signum)

    def catch(self) -> None:
        for s in self.STOPPING:
            signal.signal(s, self._note)

    def check(self) -> None:
        if self.arrived:
            raise KeyboardInterrupt if self.arrived[0] == signal.SIGINT else Terminated(self.arrived[0])

    def restore(self) -> None:
        if not self.arrived:  # after a signal the process is on its way out: keep ignoring them
            for s, h in self.previous.items():
                signal.signal(s, h)


def _kill_once(spec: Optional[str], shard: int, step: int) -> None:
    """The test hook of ``KILL_ENV``: SIGKILL this process at ``step`` of ``shard`` unless its marker exists."""
    if not spec:
        return
    which, at, marker = spec.split(":", 2)
    if int(which) != shard or int(at) != step or Path(marker).exists():
        return
    with open(marker, "w") as f:
        f.write(f"shard {shard} killed at step {step} in process {os.getpid()}\n")
        f.flush()
        os.fsync(f.fileno())
    os.kill(os.getpid(), signal.SIGKILL)


def _run_shard(run: ShardRun, shard: Shard, progress: Any, threads: Optional[int], kill: Optional[str]) -> Any:
    """One shard in a Ray worker: ``run(first, n, on_step)`` with its steps reported to ``progress``."""
    import ray
    import torch

    if threads:
        torch.set_num_threads(threads)
    ray.get(progress.start.remote(shard.index))

    def on_step(step: int, total: int) -> None:
        progress.step.remote(shard.index, step, total)
        _kill_once(kill, shard.index, step)

    return run(shard.first, shard.n, on_step)


@dataclass
class ShardResults:
    results: list[Any]  # per shard, in image order
    shards: list[Shard]
    attempts: list[int]  # starts of each shard (1: it never died)
    cluster_seconds: float  # starting (or joining) the cluster
    seconds: float  # from the first task submitted to the last result


def check_address(address: str) -> str:
    if not ADDRESS.match(address):
        raise SncError(f"--ray-address must be HOST:PORT (a running Ray cluster's GCS address), not {address!r}")
    return address


HTTP2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"  # a client's first bytes on an HTTP/2 (gRPC) connection
HTTP2_SETTINGS = 4  # the frame type an HTTP/2 server's preface starts with


def check_reachable(address: str, seconds: float = CONNECT_SECONDS) -> None:
    """Refuse an address nothing listens on, or where what listens is not a gRPC server as a Ray cluster's GCS
    is (``ray.init`` would retry either for minutes, deaf to signals): after the HTTP/2 client preface, an
    HTTP/2 server's first frame is SETTINGS."""
    host, port = check_address(address).rsplit(":", 1)
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=seconds) as conn:
            conn.sendall(HTTP2_PREFACE)
            header = b""
            while len(header) < 9:  # a frame header: length (3 bytes), type, flags, stream id (4)
                chunk = conn.recv(9 - len(header))
                if not chunk:
                    break
                header += chunk
    except socket.timeout:
        header = b""
    except OSError as exc:
        raise SncError(f"cannot reach the Ray cluster at {address}: {exc.strerror or exc}") from None
    if len(header) < 9 or header[3] != HTTP2_SETTINGS:
        raise SncError(f"{address} is not a Ray cluster: what listens there does not speak gRPC, as a Ray head's GCS "
                       f"port does (ray start --head --port P; then --ray-address HOST:P)")


def run_shards(run: ShardRun, shards: Sequence[Shard], workers: int, address: Optional[str] = None,
               on_progress: Optional[OnProgress] = None, threads: Optional[int] = None) -> ShardResults:
    """Each shard as one Ray task (``max_retries=RETRIES``) on a local cluster of ``workers`` CPUs, or on the
    cluster at ``address``; the results in shard order. A local cluster is shut down on every way out (an
    error, Ctrl-C, SIGTERM); on a cluster of its own the unfinished tasks are cancelled."""
    try:
        import ray
        import ray.exceptions
    except ImportError as exc:  # pragma: no cover: ray is a dependency
        raise SncError(f"--workers needs Ray ({exc})") from None
    if address is not None:
        check_reachable(address)
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    kill = os.environ.get(KILL_ENV)
    signals = _Signals()
    start = time.perf_counter()
    refs: list[Any] = []
    try:
        try:
            if address is None:
                ray.init(num_cpus=workers, include_dashboard=False, logging_level=logging.ERROR, log_to_driver=False)
            else:
                ray.init(address=address, logging_level=logging.ERROR, log_to_driver=False)
        except SystemExit as exc:  # ray.init's own SIGTERM handler exits
            raise Terminated(signal.SIGTERM) if exc.code == signal.SIGTERM else exc from None
        except Exception as exc:  # Ray's errors on a bad or unreachable cluster come in many types
            where = f"the Ray cluster at {address}" if address else "a local Ray cluster"
            raise SncError(f"cannot start or join {where}: {str(exc).strip().splitlines()[0] if str(exc) else exc!r}") \
                from None
        signals.catch()  # ray.init replaced the SIGTERM handler: from here on a signal stops the loop below
        progress = ray.remote(num_cpus=0)(_Progress).remote(len(shards))
        task = ray.remote(num_cpus=1, max_retries=RETRIES)(_run_shard)
        ray.get(progress.snapshot.remote())  # the actor is up: the cluster is ready
        cluster_seconds = time.perf_counter() - start
        start = time.perf_counter()
        refs = [task.remote(run, shard, progress, threads, kill) for shard in shards]
        pending = list(refs)
        while pending:
            _, pending = ray.wait(pending, num_returns=len(pending), timeout=POLL_SECONDS)
            signals.check()
            steps, totals, attempts = ray.get(progress.snapshot.remote())
            if on_progress is not None and any(totals):
                total = max(totals)
                done = sum(s.n * step for s, step in zip(shards, steps)) / sum(s.n for s in shards)
                on_progress(min(total, int(done)), total)
        try:
            results = ray.get(refs)
        except ray.exceptions.RayTaskError as exc:
            cause = exc.cause
            if isinstance(cause, SncError):
                raise SncError(str(cause)) from None
            raise SncError(f"a shard failed: {type(cause).__name__}: {cause}") from None
        except ray.exceptions.RayError as exc:
            raise SncError(f"a shard's worker died {RETRIES + 1} times ({type(exc).__name__}); the run is "
                           "stopped") from None
        _, _, attempts = ray.get(progress.snapshot.remote())
        return ShardResults(results, list(shards), list(attempts), cluster_seconds, time.perf_counter() - start)
    finally:
        if address is not None and ray.is_initialized():
            for ref in refs:  # a cluster of its own goes on: leave it no work of this run
                try:
                    ray.cancel(ref, force=True)
                except Exception:  # noqa: BLE001 (done or gone already)
                    pass
        ray.shutdown()  # a local cluster's processes with it (also after a failed start)
        signals.restore()
