"""Wall time of one process against Ray workers (``snc sample --workers``), and that their images are equal.

    .venv/bin/python tools/bench_distributed.py [--build build/digits-unet] [--workers 2] [--batch 64]
                                                [-n 64 1024] [--steps 20] [--threads T] [-o out/bench_distributed.json]

The shipped digits U-Net's default build (compiled into a temporary directory unless ``--build``) sampled
with DDIM on the emulator, for each ``-n``: one process (``api.sample``) and ``--workers`` shards on a local
Ray cluster started for the run (``api.sample_distributed``), both with the same ``--batch``. JSON on stdout:
wall times (the whole call: reading the build, the cluster's start and shutdown included), the sampling
loop's seconds, the cluster's start, and ``equal`` (``np.array_equal`` of the two sets of images).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from snc import api
from snc.models import shipped_checkpoint


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--build", type=Path, default=None, help="a build of the digits U-Net (default: compile one)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("-n", type=int, nargs="+", default=[64, 1024])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="torch threads of the one-process run (default: "
                        "torch's; the emulator's Ray workers run one each)")
    parser.add_argument("-o", "--output", type=Path, default=None, help="also write the JSON here")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as tmp:
        build = args.build
        if build is None:
            build = Path(tmp) / "digits-unet"
            api.compile(shipped_checkpoint("digits-unet"), target="loihi2", output=build)
        rows = []
        for n in args.n:
            common = dict(backend="emu", sampler="ddim", steps=args.steps, n=n, batch=min(args.batch, n),
                          seed=args.seed)
            start = time.perf_counter()
            one = api.sample(build, **common)
            one_wall = time.perf_counter() - start
            start = time.perf_counter()
            two = api.sample_distributed(build, workers=args.workers, **common)
            two_wall = time.perf_counter() - start
            rows.append({
                "n": n, "batch": common["batch"], "one_process_wall_s": round(one_wall, 2),
                "one_process_sampling_s": round(one.seconds, 2), "workers": args.workers,
                "workers_wall_s": round(two_wall, 2), "workers_sampling_s": round(two.seconds, 2),
                "cluster_start_s": round(two.cluster_seconds, 2), "shards": two.shards,
                "speedup_wall": round(one_wall / two_wall, 2), "speedup_sampling": round(one.seconds / two.seconds, 2),
                "equal": bool(np.array_equal(one.images.numpy(), two.images.numpy())),
            })
    report = {"model": "digits-unet (shipped, default build)", "backend": "emu", "sampler": f"ddim-{args.steps}",
              "seed": args.seed, "cpus": os.cpu_count(), "one_process_torch_threads": torch.get_num_threads(),
              "worker_torch_threads": 1, "runs": rows}
    text = json.dumps(report, indent=2)
    print(text)
    if args.output is not None:
        args.output.write_text(text + "\n")


if __name__ == "__main__":
    main()
