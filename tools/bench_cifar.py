"""Benchmark a rate-realistic CIFAR-10 SDDPM through the whole tool chain (issue 18, item 4).

A randomly initialised ``cifar10-sddpm`` fires at about 1.5 % of neuron-steps; trained SDDPM networks
fire at roughly 15-25 %. This makes an instance that fires like a trained one, without training it:
``snc.models.rates.calibrate_firing_rate`` measures every BatchNorm's statistics on the calibration
inputs the compiler uses (N(0, 1) images clipped to [-1, 1], noised at 5, 35, 65 and 95 % of the diffusion
steps) and sets one common BatchNorm shift, by bisection, for a mean firing rate of ``--rate`` (default
20 %) over the spiking layers. Then, each step in its own process so that each peak memory is its own
(``os.wait4``'s ``ru_maxrss`` of that child):

1. ``snc compile`` of that checkpoint (``--allow-oversize``: it needs hundreds of chips): wall time, peak
   RSS, synapses, cores, chips, and the build's bytes on disk per synapse;
2. opening the build on the emulator (reading it, then ``open``): seconds and the process's peak RSS;
3. in that same process, one after the other on the same inputs: seconds per denoiser call of the emulator
   (``fixed``, windowed, as ``snc sample`` runs it) and of the torch model in float32, at batch 1 and
   ``--batch`` (default 8), each the best of ``--repeats``; and the firing rate the emulator's spiking
   populations reach on chip.

Prints one JSON document (``-o`` also writes it).

    .venv/bin/python tools/bench_cifar.py --out /tmp/bench-cifar -o bench-cifar.json
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from pathlib import Path

import numpy as np
import torch
from bench_backends import bench_chip, bench_torch  # tools/: the per-call timing of every backend bench
from measured import run_measured  # tools/: a child's wall time and its own peak RSS

from snc.allocator import keep_freed_memory
from snc.compiler.build import read_build
from snc.compiler.frontends import load
from snc.compiler.frontends.base import CALIBRATION_FRACTIONS
from snc.models import save_checkpoint
from snc.models.rates import calibrate_firing_rate, spike_rates
from snc.runtime.backends import get_backend

ROOT = Path(__file__).resolve().parents[1]
SNC = str(ROOT / ".venv" / "bin" / "snc")


def child(args: list[str]) -> tuple[dict, float, float]:
    """(the child's JSON on stdout, its wall seconds, its peak RSS in MB); a failure ends the bench."""
    code, stdout, stderr, seconds, peak_mb = run_measured(args)
    if code != 0:
        sys.stderr.write(stderr)
        sys.exit(f"error: {' '.join(args[:3])} ... failed (exit {code})")
    return json.loads(stdout), seconds, peak_mb


def make_checkpoint(path: Path, rate: float, seed: int) -> dict:
    """The preset at random init (``seed``), its BatchNorm calibrated to ``rate`` on the compiler's
    calibration inputs, saved as an snc checkpoint (float32); returns the calibration's summary."""
    dep = load(preset="cifar10-sddpm", seed=seed)
    pairs = [(x.float(), t) for x, t in dep.host.call_pairs(2, CALIBRATION_FRACTIONS, seed)]
    model = dep.host.model.float().eval()

    def forward(m: torch.nn.Module) -> None:
        for x, t in pairs:
            m(x, t)

    before = spike_rates(model, forward)
    start = time.perf_counter()
    rates = calibrate_firing_rate(model, forward, rate)
    seconds = time.perf_counter() - start
    values = np.array(list(rates.values()))
    summary = {"target": rate, "spiking_layers": len(rates), "mean_before": float(np.mean(list(before.values()))),
               "mean": float(values.mean()), "min": float(values.min()), "median": float(np.median(values)),
               "max": float(values.max()), "calibration_seconds": round(seconds, 1),
               "images_per_call": len(pairs[0][0]), "diffusion_steps": [int(t[0]) for _, t in pairs]}
    save_checkpoint(path, dep.arch, model, {"firing_rate_calibration": summary}, dtype=torch.float32)
    return summary


def run_build(build_dir: Path, batch: int, repeats: int) -> dict:
    """Step 3, in its own process: open the build on the emulator, then time emu and torch calls."""
    keep_freed_memory()  # as the snc command does
    start = time.perf_counter()
    build = read_build(build_dir)
    read_seconds = time.perf_counter() - start
    start = time.perf_counter()
    x, t = build.host.noisy_inputs(1, [500], seed=0)[0]
    with get_backend("emu").open(build, "fixed", 1, record=True) as chip:
        open_seconds = time.perf_counter() - start
        open_peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        chip(x.float(), t)
        groups = build.netlist("fixed").groups
        spikes = [s for name, s in chip.last.spikes.items() if groups[name].role == "neuron"]
    rate = float(sum(s.sum() for s in spikes) / sum(s.size for s in spikes))
    rows = {"emu_b1": bench_chip(build, "emu", 1, 2, repeats),
            f"emu_b{batch}": bench_chip(build, "emu", batch, 1, repeats),
            "torch_float32_b1": bench_torch(build, 1, 2, repeats),
            f"torch_float32_b{batch}": bench_torch(build, batch, 1, repeats)}
    return {"read_seconds": round(read_seconds, 2), "emu_open_seconds": round(open_seconds, 2),
            "emu_open_peak_rss_mb": round(open_peak_mb), "emu_firing_rate_on_chip": rate,
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024), "calls": rows,
            "emu_vs_torch_per_call": {f"b{b}": round(rows[f"emu_b{b}"]["seconds_per_call"]
                                                     / rows[f"torch_float32_b{b}"]["seconds_per_call"], 2)
                                      for b in (1, batch)}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("out/bench-cifar"), help="checkpoint and build go here")
    parser.add_argument("--rate", type=float, default=0.2, help="mean firing rate to calibrate to")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--residual", default="graded", help="snc compile --residual")
    parser.add_argument("--threads", type=int, default=None, help="torch threads of the timed calls (default: "
                        "torch's; 1 on a shared machine, where idle threads spin-wait for a busy core)")
    parser.add_argument("--run-build", type=Path, help=argparse.SUPPRESS)  # step 3's own process
    parser.add_argument("-o", "--output", type=Path, help="also write the JSON here")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.run_build:
        print(json.dumps(run_build(args.run_build, args.batch, args.repeats)))
        return
    args.out.mkdir(parents=True, exist_ok=True)
    checkpoint, build_dir = args.out / "cifar10-sddpm-rated.pt", args.out / f"build-{args.residual}"
    load_before = os.getloadavg()
    calibration = make_checkpoint(checkpoint, args.rate, args.seed)
    report, seconds, peak = child([SNC, "compile", str(checkpoint), "--residual", args.residual, "--allow-oversize",
                                   "-o", str(build_dir), "--json"])
    build_bytes = sum(f.stat().st_size for f in build_dir.rglob("*") if f.is_file())
    compiled = {"seconds": round(seconds, 1), "peak_rss_mb": round(peak), "synapses": report["synapses"],
                "cores": report["cores"], "chips": report["chips"], "depth": report["depth"],
                "build_bytes": build_bytes, "build_bytes_per_synapse": build_bytes / report["synapses"],
                "build_files": {f.name: f.stat().st_size for f in sorted(build_dir.iterdir())}}
    ran, seconds, peak = child([sys.executable, __file__, "--run-build", str(build_dir), "--batch", str(args.batch),
                                "--repeats", str(args.repeats), *(["--threads", str(args.threads)] if args.threads else [])])
    ran.update(process_seconds=round(seconds, 1), process_peak_rss_mb=round(peak))
    doc = {"model": "cifar10-sddpm, random init, BatchNorm calibrated to a trained model's firing rate",
           "residual": args.residual, "torch_threads": torch.get_num_threads(), "cpus": os.cpu_count(),
           "load_average_before": [round(v, 1) for v in load_before],
           "load_average_after": [round(v, 1) for v in os.getloadavg()],
           "firing_rate_calibration": calibration, "compile": compiled, "run": ran}
    text = json.dumps(doc, indent=2)
    print(text)
    if args.output:
        args.output.write_text(text + "\n")


if __name__ == "__main__":
    main()
