"""A child process's wall time and its own peak memory, for the benches and tables in ``tools/``.

Standard library only: ``ru_maxrss`` of a child counts what it inherited at the fork until its exec, so
the parent that measures should stay small (no torch).
"""

from __future__ import annotations

import os
import subprocess
import tempfile
import threading
import time


def run_measured(argv: list[str], timeout: float | None = None) -> tuple[int, str, str, float, float]:
    """Run ``argv`` to its end: (exit code, stdout, stderr, wall seconds, its peak RSS in MB). The peak is
    ``os.wait4``'s ``ru_maxrss`` of that child alone (at least the parent's RSS at the fork); past
    ``timeout`` seconds the child is killed (exit code -9)."""
    start = time.perf_counter()
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        child = subprocess.Popen(argv, stdout=out, stderr=err, text=True)
        timer = threading.Timer(timeout, child.kill) if timeout is not None else None
        if timer is not None:
            timer.start()
        try:
            _, status, usage = os.wait4(child.pid, 0)
        finally:
            if timer is not None:
                timer.cancel()
        child.returncode = os.waitstatus_to_exitcode(status)  # reaped here: Popen must not wait again
        seconds, peak_mb = time.perf_counter() - start, usage.ru_maxrss / 1024
        out.seek(0)
        err.seek(0)
        return child.returncode, out.read(), err.read(), seconds, peak_mb
