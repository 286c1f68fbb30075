"""Benchmark the denoiser backends of a build: Lava fixed_pt, the emulator, the torch float model.

Prints one JSON document. Every backend is timed on the same inputs (digits
noised at diffusion step 500) through the same entry point the samplers use:
the backends' runners (``snc.runtime.backends``: the chip backends with their
host parts in float64, the torch model in float32). What a "step" is:

- Lava and emu: one Lava time step; a denoiser call is ``depth + T`` steps
  (23 on the digits U-Net). The windowed emulator (what ``snc sample``
  uses) integrates only each group's T logical steps but returns exactly the
  CallResult of all ``depth + T`` steps, so it is credited with them;
  ``emu_every_step`` integrates every step.
- torch: one spiking step of the model; a forward is T steps.

``image_steps_per_s`` multiplies by the batch; ``calls_per_s`` counts
denoiser calls (images x eps predictions per second is ``image_calls_per_s``):
one call of any backend is the same eps prediction, so ``per_call`` ratios
compare equal work, ``per_step`` ratios follow the issue's definition.
Each timing is the best of ``--repeats`` runs (the machine is shared).

    python tools/bench_backends.py build/digits-unet [--ddpm] > bench.json

``--ddpm`` also runs ``snc sample --sampler ddpm`` (1000 steps, 64 images)
on emu and on torch with the same seed, and ``snc eval`` of both.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import torch

from snc.allocator import keep_freed_memory

from snc.compiler.build import read_build
from snc.runtime.backends import get_backend


def best_seconds(fn: Callable[[], None], repeats: int) -> float:
    fn()  # warm-up: runtime start-up, first-use allocations
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def row(seconds: float, calls: int, batch: int, steps_per_call: int, note: str) -> dict:
    return {"batch": batch, "seconds_per_call": seconds / calls, "calls_per_s": calls / seconds,
            "image_calls_per_s": calls * batch / seconds, "steps_per_call": steps_per_call,
            "steps_per_s": calls * steps_per_call / seconds,
            "image_steps_per_s": calls * steps_per_call * batch / seconds, "step": note}


def _pairs(build, batch: int, calls: int) -> list:
    return [(x.float(), t) for x, t in build.host.noisy_inputs(batch, [500] * calls, seed=0)]


def bench_chip(build, backend: str, batch: int, calls: int, repeats: int, every_step: bool = False) -> dict:
    pairs = _pairs(build, batch, calls)
    options = {"every_step": every_step} if backend == "emu" else {}
    with get_backend(backend).open(build, "fixed", batch, **options) as chip:
        seconds = best_seconds(lambda: [chip(x, t) for x, t in pairs], repeats)
    return row(seconds, calls, batch, build.netlist("fixed").call_steps, "a Lava time step (depth + T per call)")


def bench_torch(build, batch: int, calls: int, repeats: int) -> dict:
    pairs = _pairs(build, batch, calls)
    with get_backend("torch").open(build, "float32") as model:
        def run() -> None:
            for x, t in pairs:
                model(x, t)

        seconds = best_seconds(run, repeats)
    return row(seconds, calls, batch, build.host.config.timestep, "a spiking step of the torch model (T per forward)")


def snc(*args: str) -> dict:
    exe = Path(sys.executable).with_name("snc")
    done = subprocess.run([str(exe), *args, "--json"], capture_output=True, text=True, check=True)
    return json.loads(done.stdout)


def ddpm(build_dir: Path, out: Path) -> dict:
    """DDPM-1000 on 64 digits with the emulator and with torch (same seed), and their FDD."""
    out.mkdir(parents=True, exist_ok=True)
    result = {}
    for backend in ("emu", "torch"):
        npy = out / f"ddpm_{backend}.png"
        start = time.perf_counter()
        sampled = snc("sample", str(build_dir), "--backend", backend, "--sampler", "ddpm", "-n", "64",
                      "--seed", "0", "-o", str(npy))
        wall = time.perf_counter() - start
        scores = snc("eval", sampled["npy"])
        result[backend] = {"sampling_seconds": sampled["seconds"], "command_seconds": round(wall, 1),
                           "fdd": scores["fdd"], "fdd_heldout_reference": scores["reference_heldout_vs_train"],
                           "fdd_noise_reference": scores["reference_noise_vs_train"], "npy": sampled["npy"]}
    return result


def main() -> None:
    keep_freed_memory()  # as the snc command does: the emulator's timings are the CLI's
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("build", type=Path, nargs="?", default=Path("build/digits-unet"))
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--lava-calls", type=int, default=2)
    parser.add_argument("--ddpm", action="store_true", help="also time DDPM-1000 on 64 digits (emu, torch)")
    parser.add_argument("--out", type=Path, default=Path("out/bench"))
    args = parser.parse_args()
    build = read_build(args.build)
    if not build.has_host:
        sys.exit(f"{args.build} has no model.pt: compile a checkpoint (snc compile model.pt -o build/)")
    b = args.batch
    load_before = os.getloadavg()
    results = {
        "lava_fixed_pt_b1": bench_chip(build, "lava", 1, args.lava_calls, 1),
        "emu_b1": bench_chip(build, "emu", 1, 8, args.repeats),
        f"emu_b{b}": bench_chip(build, "emu", b, 4, args.repeats),
        "emu_every_step_b1": bench_chip(build, "emu", 1, 4, args.repeats, every_step=True),
        f"emu_every_step_b{b}": bench_chip(build, "emu", b, 2, args.repeats, every_step=True),
        "torch_float32_b1": bench_torch(build, 1, 8, args.repeats),
        f"torch_float32_b{b}": bench_torch(build, b, 4, args.repeats),
    }
    lava = results["lava_fixed_pt_b1"]

    def ratio(a: str, ref: dict, key: str) -> float:
        return round(results[a][key] / ref[key], 2)

    ratios = {}
    for name in results:
        if name.startswith("emu"):
            ratios[f"{name}_vs_lava_b1_image_steps"] = ratio(name, lava, "image_steps_per_s")
            torch_ref = results[f"torch_float32_b{results[name]['batch']}"]
            ratios[f"{name}_vs_torch_same_batch_per_call"] = ratio(name, torch_ref, "calls_per_s")
            ratios[f"{name}_vs_torch_same_batch_per_step"] = ratio(name, torch_ref, "steps_per_s")
    net = build.netlist("fixed")
    doc = {"build": str(args.build), "depth": net.depth, "T": net.timestep,
           "torch_threads": torch.get_num_threads(), "cpus": os.cpu_count(),
           "load_average_before": [round(x, 1) for x in load_before],
           "load_average_after": [round(x, 1) for x in os.getloadavg()], "backends": results, "ratios": ratios}
    if args.ddpm:
        doc["ddpm_1000_64_digits"] = ddpm(args.build, args.out)
    print(json.dumps(doc, indent=2))


if __name__ == "__main__":
    main()
