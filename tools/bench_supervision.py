"""How a supervised Lava run ends when a Lava process is killed, or snc gets SIGTERM / SIGHUP / SIGINT: seconds
from the signal to snc's exit, its exit code and error line, and the processes and shared-memory segments of
the run left afterwards. JSON on stdout (a few minutes: one DDPM sample of the digits MLP on Lava per case).

    .venv/bin/python tools/bench_supervision.py
"""

from __future__ import annotations

import json
import os
import signal
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from test_supervised import _left, _snc, _worker_of  # noqa: E402

from snc import api  # noqa: E402
from snc.runtime.backends.supervised import group_members  # noqa: E402


def case(build: Path, out: Path, what: str) -> dict:
    proc = _snc("sample", str(build), "--backend", "lava", "--sampler", "ddpm", "-n", "1", "-o", str(out))
    worker = _worker_of(proc)
    processes = len(group_members(worker))
    if what == "kill -9 a Lava process":
        os.kill(max(p for p in group_members(worker) if p != worker), signal.SIGKILL)
    else:
        os.kill(proc.pid, getattr(signal, what))
    start = time.perf_counter()
    _, err = proc.communicate(timeout=300)
    seconds = time.perf_counter() - start
    alive, shm = _left(worker)
    return {"case": what, "processes_of_the_run": processes, "seconds_to_exit": round(seconds, 2),
            "exit_code": proc.returncode, "stderr_last_line": err.strip().splitlines()[-1] if err.strip() else "",
            "processes_left": len(alive), "shared_memory_left": len(shm)}


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        build = Path(tmp) / "mlp"
        api.compile(preset="digits-mlp", output=build)
        rows = [case(build, Path(tmp) / "s.png", what)
                for what in ("kill -9 a Lava process", "SIGTERM", "SIGHUP", "SIGINT")]
    print(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
