"""Compile variants side by side: the two lowerings of real-valued tensors read twice (issue 18, item 1) and
the weight precision (item 3).

For each model (the shipped digits U-Net and lateral transformer, and the CIFAR presets at random init), each
``--residual`` (``reassociate``: every reader gets a copy of the ops behind it; ``graded``: sum populations
send the value as graded spikes) and each ``--weight-bits`` (8: one synapse per weight map; 16: a coarse and a
fine one), through the ``snc`` command as a user runs it, one process per step so that each peak memory is
its own:

- ``snc compile --json``: compile time and peak RSS, depth, neurons, synapses, cores, chips;
- the build's size on disk;
- ``snc verify --backends emu --json``: fixed point (the emulator, = Lava fixed_pt) vs the torch model,
  spike agreement and output error;
- ``snc energy --backend emu --json`` per sample on ``loihi2`` (an estimate) and ``cmos45nm-fp32``;
- with ``--fdd``: ``snc sample --backend emu`` of ``--fdd-n`` images per sampler (``ddim:20``: DDIM, 20 steps;
  ``ddpm``: all 1000 steps) and ``snc eval``: the FDD, beside the torch model's (same sampler, n and seed).

A step that fails (a model too large to lower, a machine too small to run it) is recorded with its error.
Output: JSON on stdout (``-o`` writes it to a file too) and a markdown table on stderr.

    .venv/bin/python tools/residual_table.py --models digits-unet,digits-lateral -n 4
    .venv/bin/python tools/residual_table.py --models cifar10-sddpm --no-verify --energy-n 1
    .venv/bin/python tools/residual_table.py --models out/bench-cifar/cifar10-sddpm-rated.pt -n 1 --energy-n 1
    .venv/bin/python tools/residual_table.py --models digits-unet --residuals graded --weight-bits 8,16 -n 8 \
        --fdd ddim:20,ddpm --fdd-n 256
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

from measured import run_measured  # tools/: a child's wall time and its own peak RSS

ROOT = Path(__file__).resolve().parents[1]
SNC = str(ROOT / ".venv" / "bin" / "snc")
SOURCES = {  # model -> what `snc compile` takes
    "digits-unet": [str(ROOT / "models" / "checkpoints" / "digits-unet.pt")],
    "digits-lateral": [str(ROOT / "models" / "checkpoints" / "digits-lateral.pt")],
    "cifar10-sddpm": ["--preset", "cifar10-sddpm"],
    "cifar10-lateral": ["--preset", "cifar10-lateral"],
}
RESIDUALS = ("reassociate", "graded")


def source_of(model: str) -> list[str]:
    """What `snc compile` takes for a model of ``--models``: a known name, or a checkpoint's path."""
    return SOURCES.get(model, [model])
PROFILES = ("loihi2", "cmos45nm-fp32")


def run(args: list[str], timeout: float) -> tuple[dict | None, str, float, float]:
    """(the command's JSON or None, its error line, seconds, the command's peak RSS in MB)."""
    code, stdout, stderr, seconds, peak_mb = run_measured([SNC, *args], timeout)
    if code != 0:
        lines = [ln for ln in stderr.splitlines() if ln.startswith("error:")] or stderr.splitlines()[-1:]
        reason = "killed (timeout)" if code == -9 else f"exit {code}"
        return None, lines[0] if lines else reason, seconds, peak_mb
    return json.loads(stdout), "", seconds, peak_mb


def size_mb(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 2**20


def sampler_args(spec: str) -> list[str]:
    """``snc sample`` arguments of a sampler spec: ``ddim:20`` (name:steps) or ``ddpm`` (all steps)."""
    name, _, steps = spec.partition(":")
    return ["--sampler", name, *(["--steps", steps] if steps else [])]


def fdd(source: list[str], backend: str, spec: str, work: Path, args: argparse.Namespace) -> tuple[float | None, str]:
    """(FDD of ``--fdd-n`` samples of ``source`` on ``backend`` with the sampler ``spec``, error line)."""
    images = work / f"samples-{os.getpid()}.png"
    batch = ["--batch", str(args.batch)] if args.batch else []
    sampled, error, _, _ = run(["sample", *source, "--backend", backend, *sampler_args(spec), "-n", str(args.fdd_n),
                                "--seed", str(args.seed), *batch, "-o", str(images), "--json"], args.timeout)
    if sampled is None:
        return None, error
    quality, error, _, _ = run(["eval", str(images.with_suffix(".npy")), "--json"], args.timeout)
    return (quality["fdd"], "") if quality is not None else (None, error)


def measure(model: str, residual: str, weight_bits: str, work: Path, args: argparse.Namespace,
            torch_fdd: dict[str, float | None]) -> dict:
    build = work / f"{Path(model).stem}-{residual}-w{weight_bits}"
    row: dict = {"model": model, "residual": residual, "weight_bits": int(weight_bits)}
    report, error, seconds, peak = run(["compile", *source_of(model), "--residual", residual, "--weight-bits",
                                        weight_bits, "--allow-oversize", "-o", str(build), "--json"], args.timeout)
    row["compile_seconds"], row["compile_peak_rss_mb"] = round(seconds, 1), round(peak, 0)
    if report is None:
        row["error"] = error
        return row
    row.update(depth=report["depth"], call_steps=report["call_steps"],
               neurons=sum(layer["neurons"] for layer in report["layers"]), synapses=report["synapses"],
               cores=report["cores"], chips=report["chips"],
               graded_populations=report.get("graded_populations", 0), build_mb=round(size_mb(build), 1))
    if args.verify:
        verified, error, seconds, peak = run(["verify", str(build), "--backends", "emu", "-n", str(args.n), "--json"],
                                             args.timeout)
        row["verify_seconds"], row["verify_peak_rss_mb"] = round(seconds, 1), round(peak, 0)
        if verified is None:
            row["verify_error"] = error
        else:
            row["fixed_vs_torch_agreement"] = verified["agreement"]["emu_vs_torch"]
            row["fixed_vs_torch_output_error"] = verified["output_rel_error"]["emu_vs_torch"]
            row["worst_layer_agreement"] = min(layer["emu_vs_torch"] for layer in verified["layers"]
                                               if layer.get("emu_vs_torch") is not None)
    for profile in PROFILES:
        energy, error, seconds, _ = run(["energy", str(build), "--profile", profile, "--backend", "emu",
                                         "-n", str(args.energy_n), "--json"], args.timeout)
        if energy is None:
            row[f"energy_error[{profile}]"] = error
            continue
        totals = energy["totals"]
        row[f"energy_mj_per_sample[{profile}]"] = round(totals["per_sample"]["energy_exact_mj"], 4)
        row["sops_per_call"] = totals["per_call"]["sops_exact"]
        row["graded_ops_per_call"] = totals["per_call"].get("graded_ops_exact", 0.0)
    for spec, reference in torch_fdd.items():
        value, error = fdd([str(build)], "emu", spec, work, args)
        row[f"fdd[{spec}]"], row[f"fdd_torch[{spec}]"] = value, reference
        if value is None:
            row[f"fdd_error[{spec}]"] = error
        elif reference:
            row[f"fdd_vs_torch[{spec}]"] = value / reference - 1
    if not args.keep:
        shutil.rmtree(build, ignore_errors=True)
    return row


def markdown(rows: list[dict], fdd_specs: list[str]) -> str:
    cols = [("model", "model"), ("residual", "residual"), ("weight_bits", "weight bits"), ("depth", "depth"),
            ("neurons", "neurons"),
            ("synapses", "synapses"), ("cores", "cores"), ("chips", "chips"), ("build_mb", "build MB"),
            ("compile_seconds", "compile s"), ("compile_peak_rss_mb", "compile MB"),
            ("fixed_vs_torch_agreement", "fixed vs torch"), ("worst_layer_agreement", "worst layer"),
            ("fixed_vs_torch_output_error", "output err"), ("sops_per_call", "SOPs/call"),
            ("graded_ops_per_call", "graded ops/call")] + \
        [(f"energy_mj_per_sample[{p}]", f"mJ/sample {p}") for p in PROFILES] + \
        [(f"{key}[{s}]", f"{title} {s}") for s in fdd_specs
         for key, title in (("fdd", "FDD emu"), ("fdd_torch", "FDD torch"), ("fdd_vs_torch", "emu/torch - 1"))]
    lines = ["| " + " | ".join(title for _, title in cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        cells = []
        for key, _ in cols:
            v = r.get(key)
            if v is None:
                v = r.get("error", "-") if key == "depth" else "-"
            elif isinstance(v, float) and key.endswith(("agreement", "error")):
                v = f"{v:.2%}" if "agreement" in key else f"{v:.3g}"
            elif isinstance(v, float) and key.startswith("fdd"):
                v = f"{v:+.2%}" if key.startswith("fdd_vs_torch") else f"{v:.3f}"
            elif isinstance(v, (int, float)) and v >= 10000:
                v = f"{v:,.0f}"
            cells.append(str(v))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="digits-unet,digits-lateral",
                        help=f"comma list of {', '.join(SOURCES)} or checkpoint paths")
    parser.add_argument("--residuals", default=",".join(RESIDUALS))
    parser.add_argument("--weight-bits", default="8", help="comma list of --weight-bits (8, 16)")
    parser.add_argument("-n", type=int, default=4, help="images per diffusion step of the verify")
    parser.add_argument("--energy-n", type=int, default=2, help="images per calibration step of the energy count")
    parser.add_argument("--no-verify", dest="verify", action="store_false")
    parser.add_argument("--fdd", default="", help="comma list of samplers to sample emu and torch with and "
                        "evaluate (FDD): ddim:20 (name:steps), ddpm (all steps); digits models only")
    parser.add_argument("--fdd-n", type=int, default=256, help="images per FDD")
    parser.add_argument("--seed", type=int, default=0, help="seed of the FDD samples")
    parser.add_argument("--batch", type=int, default=None, help="images per chip call while sampling")
    parser.add_argument("--timeout", type=float, default=3600)
    parser.add_argument("--keep", action="store_true", help="keep the builds (in --work)")
    parser.add_argument("--work", type=Path, default=None, help="directory for the builds (default: a temporary one)")
    parser.add_argument("-o", "--output", type=Path, default=None)
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="snc-residual-"))
    work.mkdir(parents=True, exist_ok=True)
    rows = []
    specs = [s for s in args.fdd.split(",") if s]
    for model in args.models.split(","):
        torch_fdd = {spec: fdd(source_of(model), "torch", spec, work, args)[0] for spec in specs}
        for residual in args.residuals.split(","):
            for weight_bits in args.weight_bits.split(","):
                rows.append(measure(model, residual, weight_bits, work, args, torch_fdd))
                print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    out = {"machine": {"cpus": os.cpu_count()}, "rows": rows}
    text = json.dumps(out, indent=1)
    print(text)
    if args.output:
        args.output.write_text(text)
    print(markdown(rows, specs), file=sys.stderr)
    if args.work is None and not args.keep:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
