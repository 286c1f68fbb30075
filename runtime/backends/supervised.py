"""A network in a worker process of its own, watched: no dead child, signal or stuck call can hang snc.

Lava runs every process model as an OS process and exchanges data with them
through shared memory and semaphores: when one of them dies (the kernel's OOM
killer picks a Lava process when memory runs out; anything may send SIGKILL)
the others, and the caller, wait for it forever, ignoring Ctrl-C. So snc never
waits on Lava itself. ``Supervised`` forks a worker that builds the network
(``factory()``) and serves its calls; the worker is the leader of a process
group of its own, so every process Lava forks from it is in that group, out of
reach of the terminal's signals. This process only waits on a pipe, and while
it waits it checks, every ``POLL`` seconds:

- that no process of the group has died (a zombie: Lava never reaps a child
  mid-run) or vanished, and that the worker is alive. Every process forked in
  the worker's tree has its pid written to a pipe by its parent as it is
  forked (``_announce_forks``), so one killed before any check saw it is
  missed all the same;
- that the call has not run past its ``timeout`` (seconds, optional).

On any of those, or on an exception (Ctrl-C, and SIGTERM / SIGHUP, which the
CLI turns into exceptions: ``snc/signals.py``), the whole group is killed
(SIGKILL), the worker and its processes reaped (this process adopts its
descendants' orphans), and one ``SncError`` says what died and how
(signal, exit code, and for SIGKILL the memory left, since that is the OOM
killer's signal). ``close()`` asks the worker to stop the network and exit,
and kills the group if it does not within ``STOP_SECONDS``.

Linux only (it reads ``/proc``), as Lava's CPU backend is.
"""

from __future__ import annotations

import contextlib
import ctypes
import multiprocessing
import os
import signal
import time
import traceback
from dataclasses import dataclass
from multiprocessing import resource_tracker
from typing import Any, Callable, Optional

from snc.errors import SncError
from snc.memory import available_mb

POLL = 0.2  # seconds between checks while a call runs
STOP_SECONDS = 60.0  # a stopping network that takes longer is killed
START_SECONDS = 600.0  # building a network (Lava's processes are forked lazily, at the first call)
PR_SET_CHILD_SUBREAPER = 36  # linux/prctl.h


@dataclass(frozen=True)
class Member:
    pid: int
    name: str  # the process's comm (Lava names its children after their process models)
    state: str  # /proc state letter: Z is a zombie (dead, not yet reaped)
    exit_status: int  # waitpid-style status of a zombie, else 0


def group_members(pgid: int) -> dict[int, Member]:
    """Every process of process group ``pgid`` (from /proc; processes that vanish while read are skipped)."""
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                raw = f.read().decode("utf-8", "replace")
        except OSError:
            continue
        name = raw[raw.index("(") + 1:raw.rindex(")")]
        fields = raw[raw.rindex(")") + 2:].split()
        if int(fields[2]) != pgid:  # fields: state, ppid, pgrp, ...
            continue
        status = int(fields[49]) if len(fields) > 49 else 0  # field 52 of stat: exit_code (Linux >= 3.5)
        found[int(entry)] = Member(int(entry), name, fields[0], status)
    return found


def oom_kills() -> Optional[int]:
    """The kernel's count of processes its out-of-memory killer ended (``oom_kill`` in /proc/vmstat)."""
    with contextlib.suppress(OSError, ValueError, StopIteration):
        with open("/proc/vmstat") as f:
            return int(next(line for line in f if line.startswith("oom_kill ")).split()[1])
    return None


def describe_death(member: Member) -> str:
    """What a zombie's exit status says: the signal that killed it, or its exit code."""
    status = member.exit_status
    if status & 0x7F:
        try:
            how = f"was killed by {signal.Signals(status & 0x7F).name}"
        except ValueError:
            how = f"was killed by signal {status & 0x7F}"
    else:
        how = f"exited with code {status >> 8}"
    return f"process {member.pid} ({member.name}) {how}"


def shm_prefix(pid: int) -> str:
    """The name prefix of the shared-memory segments of the worker ``pid`` (``/dev/shm/<prefix>*``)."""
    return f"psm_snc{pid}_"


def _name_shared_memory() -> None:
    """Segments this process (and the processes it forks) creates carry its pid, so that the supervisor can
    unlink them when it had to kill the run (a killed Lava process leaves them in /dev/shm). Python 3.10's
    ``shared_memory`` takes the prefix and the name length from these module globals."""
    from multiprocessing import shared_memory

    shared_memory._SHM_NAME_PREFIX = "/" + shm_prefix(os.getpid())
    shared_memory._SHM_SAFE_NAME_LENGTH = len(shared_memory._SHM_NAME_PREFIX) + 16


def _unlink_shared_memory(pid: int) -> None:
    """Unlink the worker ``pid``'s segments left in /dev/shm. A segment that was registered with this
    process's resource tracker is unlinked through ``SharedMemory`` (which unregisters it); one whose creator
    was killed before it had a size (so before it was registered: ``SharedMemory`` registers after the mmap,
    and an empty segment cannot be mapped) is removed as a file."""
    from multiprocessing import shared_memory

    names = [n for n in os.listdir("/dev/shm") if n.startswith(shm_prefix(pid))] if os.path.isdir("/dev/shm") else []
    for name in names:
        try:
            segment = shared_memory.SharedMemory(name)
        except ValueError:  # empty: never registered
            with contextlib.suppress(OSError):
                os.unlink(os.path.join("/dev/shm", name))
            continue
        except OSError:  # gone meanwhile
            continue
        segment.close()
        with contextlib.suppress(OSError):
            segment.unlink()


def _announce_forks(births: int) -> None:
    """From now on, in this process and every process it forks, ``os.fork`` (what multiprocessing, and so
    Lava, starts its processes with) writes the new child's pid to the supervisor as it returns in the
    parent: a process killed at once, and reaped by its Lava parent before any check saw it, is still
    missed. (The parent writes it, so no kill can come first.)"""
    fork = os.fork

    def announcing_fork() -> int:
        pid = fork()
        if pid:
            with contextlib.suppress(OSError):
                os.write(births, f"{pid}\n".encode())
        return pid

    os.fork = announcing_fork


def _serve(conn: Any, factory: Callable[[], Any], births: int) -> None:
    """The worker: build the network, answer (method, args) requests until "close"."""
    os.setpgid(0, 0)
    _announce_forks(births)
    for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(s, signal.SIG_DFL)  # this process is stopped by its parent, never by a terminal
    _name_shared_memory()
    network = None
    try:
        network = factory()
        conn.send(("ok", None))
        while True:
            method, args = conn.recv()
            if method == "close":
                break
            try:
                conn.send(("ok", getattr(network, method)(*args)))
            except Exception as exc:  # noqa: BLE001 - every failure goes back to the caller
                conn.send(_failure(exc))
    except Exception as exc:  # noqa: BLE001
        conn.send(_failure(exc))
    finally:
        if network is not None:
            network.close()
        with contextlib.suppress(OSError):
            conn.send(("closed", None))
    # returning lets multiprocessing run this process's finalizers (Lava's shared-memory manager unlinks its
    # segments there) and then os._exit: none of the parent's atexit handlers run here


def _failure(exc: BaseException) -> tuple[str, Any]:
    if isinstance(exc, SncError):
        return "error", str(exc)
    return "crash", f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}"


def _adopt_orphans() -> None:
    """Make this process the reaper of its descendants' orphans (Linux's PR_SET_CHILD_SUBREAPER): the Lava
    processes of a killed worker are then reaped here, not left as zombies of an init that may not reap."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)


class Supervised:
    """``factory()``'s network in a supervised worker (see the module docstring); the same ``call``, ``trace``
    and ``close``. ``what`` names it in errors; ``timeout`` bounds each call (seconds, None: no bound)."""

    def __init__(self, factory: Callable[[], Any], what: str = "Lava", timeout: Optional[float] = None) -> None:
        if timeout is not None and not timeout > 0:
            raise SncError(f"--timeout must be a positive number of seconds, not {timeout}")
        self.what, self.timeout = what, timeout
        _adopt_orphans()
        # the worker's shared memory is tracked by this process's tracker: one the worker started would
        # outlive it, an orphan
        resource_tracker.ensure_running()
        context = multiprocessing.get_context("fork")
        self._conn, child = context.Pipe()
        self._births, births = os.pipe()  # the pid of every process forked in the worker's tree comes here
        os.set_blocking(self._births, False)
        os.set_blocking(births, False)
        self._worker = context.Process(target=_serve, args=(child, factory, births))  # not daemonic: Lava forks
        self._worker.start()
        child.close()
        os.close(births)
        self.pgid = self._worker.pid
        self._seen: dict[int, Member] = {}
        self._oom_kills = oom_kills()
        self._open = True
        try:
            self._wait(START_SECONDS, "starting")
        except BaseException:
            self._kill()
            raise

    def call(self, *args: Any) -> Any:
        return self._request("call", args)

    def trace(self, *args: Any) -> Any:
        return self._request("trace", args)

    def _request(self, method: str, args: tuple) -> Any:
        if not self._open:
            raise SncError(f"the {self.what} network is closed")
        try:
            self._conn.send((method, args))
            return self._wait(self.timeout, "call")
        except BaseException:
            self._kill()
            raise

    def _wait(self, limit: Optional[float], doing: str) -> Any:
        deadline = None if limit is None else time.monotonic() + limit
        while not self._conn.poll(POLL):
            problem = self._problem()
            if problem and not self._conn.poll(0):  # (a worker that answered and exited: its answer says why)
                raise SncError(problem)
            if problem:
                break
            if deadline is not None and time.monotonic() > deadline:
                what = f"a {self.what} call took longer than --timeout {limit:g} s" if doing == "call" else \
                    f"{doing} the {self.what} network took longer than {limit:g} s"
                raise SncError(what + "; every process of the run was stopped")
        try:
            status, value = self._conn.recv()
        except (EOFError, OSError):
            raise SncError(self._problem() or f"the {self.what} worker process ended without an answer") from None
        if status in ("error", "crash"):  # a process that died first is the cause: say that
            time.sleep(POLL)  # its parent may be about to see it (a zombie for a moment) or reap it
            problem = self._problem(answered=True)
            if problem:
                raise SncError(problem)
        if status == "error":
            raise SncError(value)
        if status == "crash":
            raise RuntimeError(f"the {self.what} worker failed: {value}")
        return value

    def _problem(self, answered: bool = False) -> Optional[str]:
        """What died in the run, if anything (a zombie tells how; a process its parent reaped at once does not,
        but the kernel's count of out-of-memory kills does). ``answered``: the worker has sent its answer (an
        error), after which it may exit: only another death, or its own by a signal, is a problem."""
        self._read_births()
        members = group_members(self.pgid)
        dead = [m for m in members.values() if m.state in ("Z", "X")]
        gone = [m for pid, m in self._seen.items() if pid not in members]
        self._seen.update(members)
        if not self._worker.is_alive() and self.pgid not in members:
            code = self._worker.exitcode or 0  # multiprocessing's: -signal or the exit code
            dead.append(Member(self.pgid, f"the {self.what} worker", "Z", -code if code < 0 else code << 8))
        if answered:
            dead = [m for m in dead if m.pid != self.pgid or m.exit_status & 0x7F]
            gone = [m for m in gone if m.pid != self.pgid]
        if not dead and not gone:
            return None
        said = [describe_death(m) for m in dead] + [f"process {m.pid} ({m.name}) ended (its parent reaped it: how is not known)"
                                                   for m in gone]
        message = (f"a {self.what} process died during the run: {'; '.join(said)}; every process of the run "
                   "was stopped")
        kills = oom_kills()
        if kills is not None and self._oom_kills is not None and kills > self._oom_kills:
            free = available_mb(reserve=0.0)
            message += (f". The kernel's out-of-memory killer ended {kills - self._oom_kills} process(es) "
                        f"meanwhile: the run needs more memory than the machine has"
                        + (f" ({free:.0f} MB available now)" if free is not None else "") + "; try a smaller --batch")
        return message

    def _read_births(self) -> None:
        """Record the pids of the processes forked in the worker's tree (``_announce_forks``) as seen."""
        with contextlib.suppress(BlockingIOError, OSError):
            while True:
                chunk = os.read(self._births, 65536)
                if not chunk:
                    break
                for pid in map(int, chunk.split()):
                    self._seen.setdefault(pid, Member(pid, f"a {self.what} process", "?", 0))

    def _kill(self) -> None:
        """SIGKILL to every process of the run; reap the worker and, adopted, its children; unlink the
        shared memory they left."""
        self._open = False
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pgid, signal.SIGKILL)
        self._worker.join(10)
        self._conn.close()
        with contextlib.suppress(OSError):
            os.close(self._births)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            members = group_members(self.pgid)
            for pid in members:
                with contextlib.suppress(ChildProcessError, OSError):
                    os.waitpid(pid, os.WNOHANG)
            if not members:
                break
            time.sleep(0.01)
        _unlink_shared_memory(self.pgid)

    def close(self) -> None:
        if not self._open:
            return
        self._open = False
        deadline = time.monotonic() + STOP_SECONDS
        try:
            self._conn.send(("close", ()))
            # a stopping network's processes exit and wait to be reaped (zombies): only the worker is watched
            while not self._conn.poll(POLL):
                if not self._worker.is_alive() or time.monotonic() > deadline:
                    return
            # the worker has stopped the network: let its processes finish (Lava's shared-memory manager
            # unlinks its segments on the way out) before anything left is killed
            self._worker.join(max(0.0, deadline - time.monotonic()))
            while any(m.state not in ("Z", "X") for m in group_members(self.pgid).values()) \
                    and time.monotonic() < deadline:
                time.sleep(POLL / 10)
        except (OSError, EOFError):
            pass
        finally:
            self._kill()

    def __enter__(self) -> "Supervised":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
