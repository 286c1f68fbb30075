"""Lava's memory per build and batch, measured beside snc's estimate (``runtime/backends/lava_memory.py``).

For each model (the digits MLP preset, the shipped U-Net and lateral transformer) and batch, one supervised
Lava run of one denoiser call (fixed_pt, recording spikes, as verify and energy run it); the proportional
set size (PSS: shared pages split among the processes that share them) of every process of the run is
summed every 0.1 s, and its peak is reported beside the estimate. JSON on stdout.

    .venv/bin/python tools/bench_lava_memory.py [--batches 1,2,4]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import threading
import time
from pathlib import Path

import torch

from snc import api
from snc.runtime.backends import get_backend
from snc.runtime.backends.lava_memory import estimate_mb, per_image_mb, processes
from snc.runtime.backends.supervised import group_members

MODELS = {"digits-mlp": dict(preset="digits-mlp"), "digits-unet": dict(source="models/checkpoints/digits-unet.pt"),
          "digits-lateral": dict(source="models/checkpoints/digits-lateral.pt")}


def _pss_mb(pgid: int) -> float:
    total = 0
    for pid in group_members(pgid):
        try:
            with open(f"/proc/{pid}/smaps_rollup") as f:
                total += next(int(line.split()[1]) for line in f if line.startswith("Pss:"))
        except (OSError, StopIteration):
            pass
    return total / 1024


def measure(build, batch: int) -> dict:
    """Peak PSS of one call at ``batch`` images, and the number of processes of the run."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 1, 8, 8, generator=g, dtype=torch.float64)
    t = torch.full((batch,), 500)
    peak, group, stop = [0.0], [], threading.Event()

    def sample() -> None:
        while not stop.is_set():
            if group:
                peak[0] = max(peak[0], _pss_mb(group[0]))
            time.sleep(0.1)

    watcher = threading.Thread(target=sample)
    watcher.start()
    try:
        with get_backend("lava").open(build, "fixed", batch=batch, record=True) as runner:
            group.append(runner.network.pgid)
            runner(x, t)
            members = len(group_members(runner.network.pgid))
            peak[0] = max(peak[0], _pss_mb(runner.network.pgid))
    finally:
        stop.set()
        watcher.join()
    return {"processes": members, "peak_pss_mb": round(peak[0])}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--batches", default="1,2,4")
    batches = [int(b) for b in parser.parse_args().batches.split(",")]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, source in MODELS.items():
            build = api.compile(source.get("source"), preset=source.get("preset"), output=Path(tmp) / name).build
            net = build.netlist("fixed")
            for batch in batches:
                row = {"model": name, "batch": batch, **measure(build, batch),
                       "estimated_processes": processes(net), "estimate_mb": round(estimate_mb(net, batch)),
                       "estimated_mb_per_image": round(per_image_mb(net), 1)}
                row["estimate_over_measured"] = round(row["estimate_mb"] / row["peak_pss_mb"], 3)
                rows.append(row)
                print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
