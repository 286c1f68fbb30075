"""Supervised Lava runs: a Lava process that dies, SIGTERM / SIGHUP, or a call past --timeout end the run
with one error line and every process of it gone (issue 15). The hang guards below (``communicate``'s
timeout) only stop a broken test; no test asserts how fast anything is."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from snc import api
from snc.compiler.netlist import netlist_currents
from snc.errors import SncError
from snc.runtime.backends import get_backend
from snc.runtime.backends.supervised import group_members, shm_prefix

pytestmark = pytest.mark.lava
HANG_GUARD = 300  # seconds: only a hang takes this long


@pytest.fixture(scope="module")
def mlp_build(tmp_path_factory):
    path = tmp_path_factory.mktemp("supervised") / "mlp"
    api.compile(preset="digits-mlp", output=path)
    return path


def _worker_of(proc: subprocess.Popen, members: int = 10) -> int:
    """The pid of the supervised worker of the snc process ``proc`` (the leader of its own process group),
    once its group holds at least ``members`` processes (Lava has started)."""
    deadline = time.monotonic() + HANG_GUARD
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        for pid in map(int, filter(str.isdigit, os.listdir("/proc"))):
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == proc.pid and int(fields[2]) == pid and len(group_members(pid)) >= members:
                return pid
        time.sleep(0.2)
    raise AssertionError("no Lava worker started")


def _left(pgid: int) -> tuple[dict, list]:
    """Processes of the run's group that are alive, and shared-memory segments of the run, after it ended."""
    alive = {pid: m for pid, m in group_members(pgid).items() if m.state not in ("Z", "X")}
    return alive, [n for n in os.listdir("/dev/shm") if n.startswith(shm_prefix(pgid))]


def _snc(*args: str) -> subprocess.Popen:
    """snc in a session of its own (so that a hung run's processes can all be found and killed)."""
    exe = Path(sys.executable).with_name("snc")
    return subprocess.Popen([str(exe), *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)


def _finish(proc: subprocess.Popen) -> tuple[str, str]:
    """``proc``'s output once it exits; a run that hangs fails the test with every process of it killed."""
    try:
        return proc.communicate(timeout=HANG_GUARD)
    except subprocess.TimeoutExpired:
        for pid in map(int, filter(str.isdigit, os.listdir("/proc"))):
            with contextlib.suppress(OSError, IndexError, ValueError):
                if int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[3]) == proc.pid:  # session
                    os.kill(pid, signal.SIGKILL)
        proc.communicate()
        raise AssertionError(f"snc {' '.join(proc.args[1:])} hung; its processes were killed") from None


def test_a_killed_lava_process_ends_the_run_with_one_error(mlp_build, tmp_path):
    proc = _snc("sample", str(mlp_build), "--backend", "lava", "--sampler", "ddpm", "-n", "1",
                "-o", str(tmp_path / "s.png"))
    worker = _worker_of(proc)
    victim = max(p for p in group_members(worker) if p != worker)  # one of Lava's process models
    os.kill(victim, signal.SIGKILL)
    _, err = _finish(proc)
    assert proc.returncode == 1, err
    assert err.count("error:") == 1 and "Traceback" not in err and f"{victim}" in err
    assert "a Lava process died during the run" in err
    assert _left(worker) == ({}, [])


def test_a_lava_process_killed_as_it_starts_ends_the_run(unet_build, tmp_path):
    """Killed before any check of the supervisor could see it, and reaped at once by its Lava parent (the
    U-Net: Lava starts its many processes slowly enough for that; this hung before births were announced)."""
    proc = _snc("sample", str(unet_build.path), "--backend", "lava", "--steps", "1", "-n", "1",
                "-o", str(tmp_path / "s.png"))
    victim = None
    while victim is None and proc.poll() is None:
        for worker in _children_leading_a_group(proc.pid):
            forked = [p for p in group_members(worker) if p != worker]
            if len(forked) >= 10:
                victim = max(forked)  # the newest of Lava's processes, as they are being started
                os.kill(victim, signal.SIGKILL)
                break
    _, err = _finish(proc)
    assert proc.returncode == 1 and err.count("error:") == 1 and "Traceback" not in err, err
    assert f"process {victim}" in err and "a Lava process died during the run" in err
    assert _left(worker) == ({}, [])


def _children_leading_a_group(parent: int) -> list[int]:
    found = []
    for pid in map(int, filter(str.isdigit, os.listdir("/proc"))):
        with contextlib.suppress(OSError, IndexError):
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            if int(fields[1]) == parent and int(fields[2]) == pid:
                found.append(pid)
    return found


@pytest.mark.parametrize("sig,repeated", [(signal.SIGTERM, False), (signal.SIGHUP, False), (signal.SIGINT, False),
                                          (signal.SIGINT, True), (signal.SIGTERM, True)])
def test_sigterm_sighup_and_sigint_stop_every_lava_process(mlp_build, tmp_path, sig, repeated):
    """One signal, or the same signal again and again (Ctrl-C held down) through the teardown."""
    proc = _snc("sample", str(mlp_build), "--backend", "lava", "--sampler", "ddpm", "-n", "1",
                "-o", str(tmp_path / "s.png"))
    worker = _worker_of(proc)
    os.kill(proc.pid, sig)
    while repeated and proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, sig)
        time.sleep(0.005)
    out, err = _finish(proc)
    assert proc.returncode == (130 if sig == signal.SIGINT else 128 + sig), (out, err)
    assert "Traceback" not in err, err
    assert ("interrupted" if sig == signal.SIGINT else "terminated") in out + err
    assert _left(worker) == ({}, [])
    assert not (tmp_path / "s.png").exists()


def test_a_call_past_its_timeout_is_stopped(mlp_build, tmp_path):
    proc = _snc("sample", str(mlp_build), "--backend", "lava", "--sampler", "ddpm", "-n", "1", "--timeout", "0.01",
                "-o", str(tmp_path / "s.png"))
    _, err = _finish(proc)
    assert proc.returncode == 1 and err.count("error:") == 1 and "Traceback" not in err
    assert "took longer than --timeout 0.01 s" in err


def test_the_supervised_network_equals_lava_in_process_and_reports_a_death(mlp_build):
    from snc.runtime.backends.lava import LavaNetwork

    build = api.read_build(mlp_build)
    net = build.netlist("fixed")
    g = torch.Generator().manual_seed(0)
    x, t = torch.randn(2, 1, 8, 8, generator=g, dtype=torch.float64), torch.tensor([100, 700])
    currents = netlist_currents(net, build.host.call_inputs(x, t))
    with LavaNetwork(net, batch=2, record=True) as direct:
        expected = direct.call(currents)
    network = get_backend("lava").network(net, batch=2, record=True)
    try:
        got = network.call(currents)
        assert np.array_equal(got.readout, expected.readout)
        assert all(np.array_equal(got.spikes[k], v) for k, v in expected.spikes.items())
        victim = max(p for p in group_members(network.pgid) if p != network.pgid)
        os.kill(victim, signal.SIGKILL)
        with pytest.raises(SncError, match="a Lava process died during the run"):
            network.call(currents)
    finally:
        network.close()
    assert _left(network.pgid) == ({}, [])

