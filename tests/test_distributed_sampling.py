"""Sampling in shards on Ray (``snc sample --workers``, issue 18 item 6), on a real local cluster of 2 CPUs:
the shards' images equal the one-process run's bit for bit (torch, the emulator, Spiking-Diffusion), a
worker killed mid-shard re-runs its shard, the CLI writes one .npy / grid that ``snc eval`` takes, and no
Ray process outlives a test."""

import http.server
import json
import os
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from conftest import REPO, run_snc
from snc import api
from snc.errors import SncError
from snc.models import shipped_checkpoint
from snc.runtime import distributed

RAY_PROCESS = ("raylet", "gcs_server", "ray::")


def _ray_processes() -> list[str]:
    out = subprocess.run(["ps", "-eo", "pid=,stat=,args="], capture_output=True, text=True).stdout
    return [line for line in out.splitlines()
            if any(p in line for p in RAY_PROCESS) and " Z" not in f" {line.split()[1]}"]


@pytest.fixture(autouse=True)
def no_ray_process_left():
    """Every test leaves no Ray process behind (a cluster's processes take a few seconds to go)."""
    yield
    deadline = time.monotonic() + 20
    while _ray_processes() and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not _ray_processes()


@pytest.fixture(autouse=True)
def one_thread():
    """torch on one thread here and so in the torch shards (they take the driver's count): two threads per
    process on 2 busy cores spin-wait (a DDIM-5 of 70 images took 20 s instead of 1 s)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_shards_are_contiguous_and_cut_at_multiples_of_the_batch():
    assert distributed.plan_shards(10, 2) == [distributed.Shard(0, 0, 5), distributed.Shard(1, 5, 5)]
    shards = distributed.plan_shards(200, 3, 64)  # 4 blocks of 64 (the last 8 images)
    assert [(s.first, s.n) for s in shards] == [(0, 128), (128, 64), (192, 8)]
    assert [(s.first, s.n) for s in distributed.plan_shards(3, 8)] == [(0, 1), (1, 1), (2, 1)]
    with pytest.raises(SncError, match="--workers must be at least 1"):
        distributed.plan_shards(3, 0)


def _equal(one, two) -> bool:
    return np.array_equal(one.images.numpy(), two.images.numpy())


def test_two_workers_on_the_emulator_equal_one_process(unet_build):
    args = dict(backend="emu", sampler="ddim", steps=4, n=10, seed=5)
    one = api.sample(unet_build, **args)
    two = api.sample_distributed(unet_build.path, workers=2, **args)
    assert two.shards == [(0, 5), (5, 5)] and two.attempts == [1, 1]
    assert _equal(one, two) and two.mode == "fixed"


def test_two_workers_on_torch_equal_one_process():
    """torch's floats depend on the forward's batch: shards are cut at its multiples (64 left to snc, or
    --batch) and run with the driver's thread count, so they make the one-process run's forwards."""
    ckpt = shipped_checkpoint("digits-unet")
    args = dict(backend="torch", sampler="ddim", steps=5, eta=1.0, n=70, seed=1)
    one = api.sample(ckpt, **args)
    two = api.sample_distributed(ckpt, workers=2, **args)
    assert two.shards == [(0, 64), (64, 6)] and _equal(one, two)
    args = dict(backend="torch", sampler="dpm-solver", steps=6, n=10, batch=3, seed=2)
    one = api.sample(ckpt, **args)
    two = api.sample_distributed(ckpt, workers=2, **args)
    assert two.shards == [(0, 6), (6, 4)] and _equal(one, two)


def test_two_workers_sample_spiking_diffusion_as_one_process():
    ckpt = shipped_checkpoint("digits-vq")
    args = dict(backend="torch", n=9, batch=4, seed=3, temperature=0.8)
    one = api.sample(ckpt, **args)
    two = api.sample_distributed(ckpt, workers=2, **args)
    assert two.sampler == "absorbing" and two.shards == [(0, 8), (8, 1)] and _equal(one, two)


@pytest.mark.slow
def test_two_workers_sample_spiking_diffusion_on_the_emulator_as_one_process(tmp_path):
    build = tmp_path / "vq"
    api.compile(shipped_checkpoint("digits-vq"), output=build)
    args = dict(backend="emu", n=12, seed=4, temperature=0.65)
    one = api.sample(build, **args)
    two = api.sample_distributed(build, workers=2, **args)
    assert two.shards == [(0, 6), (6, 6)] and _equal(one, two)


def test_a_worker_killed_mid_shard_reruns_its_shard(unet_build, tmp_path, monkeypatch):
    """The test hook makes shard 1's process SIGKILL itself at its sampler step 2, once (a marker file
    records it): Ray re-runs the shard, and the result is the one-process run's."""
    marker = tmp_path / "killed"
    args = dict(backend="emu", sampler="ddim", steps=4, n=8, seed=9)
    one = api.sample(unet_build, **args)
    monkeypatch.setenv(distributed.KILL_ENV, f"1:2:{marker}")
    two = api.sample_distributed(unet_build.path, workers=2, **args)
    assert marker.exists() and "shard 1 killed at step 2" in marker.read_text()
    assert two.attempts == [1, 2] and _equal(one, two)


def test_the_cli_writes_one_npy_and_grid_that_eval_takes(unet_build, tmp_path):
    common = ["--backend", "emu", "--sampler", "ddim", "--steps", "3", "-n", "12", "--seed", "2", "--json"]
    single = run_snc("sample", str(unet_build.path), *common, "-o", str(tmp_path / "one.png"))
    assert single.returncode == 0, single.stderr
    shards = run_snc("sample", str(unet_build.path), *common, "--workers", "2", "-o", str(tmp_path / "two.png"))
    assert shards.returncode == 0, shards.stderr
    summary = json.loads(shards.stdout)
    assert summary["workers"] == 2 and summary["shards"] == [[0, 6], [6, 6]] and summary["attempts"] == [1, 1]
    assert "2 workers" in shards.stderr and "Traceback" not in shards.stderr
    assert np.array_equal(np.load(tmp_path / "one.npy"), np.load(tmp_path / "two.npy"))
    assert (tmp_path / "one.png").read_bytes() == (tmp_path / "two.png").read_bytes()
    scored = run_snc("eval", str(tmp_path / "two.npy"), "--json")
    assert scored.returncode == 0 and json.loads(scored.stdout)["n"] == 12


@pytest.mark.parametrize("args,message", [
    (["--workers", "0"], "--workers must be at least 1"),
    (["--ray-address", "127.0.0.1:1"], "--ray-address needs --workers"),
    (["--workers", "2", "--ray-address", "nowhere"], "must be HOST:PORT"),
    (["--workers", "2", "--ray-address", "127.0.0.1:1"], "cannot reach the Ray cluster at 127.0.0.1:1"),
])
def test_bad_distributed_options_are_one_error_line(unet_build, tmp_path, args, message):
    result = run_snc("sample", str(unet_build.path), "--backend", "emu", "-n", "4", *args,
                     "-o", str(tmp_path / "x.png"))
    assert result.returncode == 1 and result.stderr.count("error:") == 1 and "Traceback" not in result.stderr
    assert message in result.stderr


def test_an_address_where_no_ray_cluster_listens_is_refused_at_once(unet_build, tmp_path):
    """An HTTP server is reachable but is no Ray GCS: ray.init would retry it for minutes."""
    server = http.server.HTTPServer(("127.0.0.1", 0), http.server.SimpleHTTPRequestHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        address = f"127.0.0.1:{server.server_address[1]}"
        result = run_snc("sample", str(unet_build.path), "--backend", "emu", "-n", "4", "--workers", "2",
                         "--ray-address", address, "-o", str(tmp_path / "x.png"), timeout=60)
    finally:
        server.shutdown()
        server.server_close()
    assert result.returncode == 1 and result.stderr.count("error:") == 1 and "Traceback" not in result.stderr
    assert f"{address} is not a Ray cluster" in result.stderr


def test_workers_on_lava_that_would_not_fit_are_refused_before_any_cluster(unet_build, monkeypatch):
    monkeypatch.setattr(api, "available_mb", lambda: 2048.0)
    with pytest.raises(SncError, match="2 workers on lava would need about"):
        api.sample_distributed(unet_build.path, workers=2, backend="lava", steps=2, n=4)


@pytest.mark.slow
def test_sigterm_stops_the_run_and_its_cluster_with_143(unet_build, tmp_path):
    exe = os.path.join(os.path.dirname(sys.executable), "snc")
    proc = subprocess.Popen([exe, "sample", str(unet_build.path), "--backend", "emu", "--steps", "200", "-n", "64",
                             "--workers", "2", "-o", str(tmp_path / "x.png")], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not any("ray::_run_shard" in line for line in _ray_processes()) and time.monotonic() < deadline:
        time.sleep(0.5)
    time.sleep(2)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143 and "terminated (SIGTERM)" in err and "Traceback" not in err
    assert not (tmp_path / "x.npy").exists()
