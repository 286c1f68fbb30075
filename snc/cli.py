"""The ``snc`` command line.

Every user error is an ``SncError``: printed as one ``error: ...`` line on
stderr with exit status 1, never a traceback.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Optional

import click
import numpy as np
import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from snc.allocator import keep_freed_memory
from snc.errors import SncError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="snc: compile spiking diffusion models to neuromorphic targets (NIR -> Lava / Loihi 2).",
)
# Tables are wide: do not squeeze them to 80 columns when stderr is not a terminal.
console = Console(stderr=True, width=None if sys.stderr.isatty() else 160)


def _progress() -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=False,
    )


def _emit(result: dict, as_json: bool, lines: list[str]) -> None:
    if as_json:
        print(json.dumps(result, indent=2))
    else:
        for line in lines:
            console.print(line, highlight=False)


@app.command()
def train(
    preset: Optional[str] = typer.Option(None, "--preset", help="digits-unet | digits-mlp (any preset name)"),
    tsm_finetune: Optional[Path] = typer.Option(None, "--tsm-finetune", help="instead of --preset: fine-tune SDM's "
                                                "per-step scales p[t] of this snc U-Net checkpoint (all else "
                                                "frozen) into a spiking-unet-tsm checkpoint"),
    output: Path = typer.Option(..., "-o", "--output", help="checkpoint file to write"),
    steps: int = typer.Option(None, "--steps", help="optimizer steps (default: the preset's; 250 for --tsm-finetune)"),
    seed: int = typer.Option(0, "--seed"),
    batch_size: int = typer.Option(None, "--batch-size"),
    lr: float = typer.Option(None, "--lr"),
) -> None:
    """Train a denoiser with DDPM (epsilon prediction, 1000 steps) on scikit-learn's digits, or fine-tune
    the TSM scales of a trained U-Net (--tsm-finetune)."""
    import dataclasses

    from snc.models import preset as get_preset
    from snc.models.checkpoint import load_checkpoint, save_checkpoint
    from snc.models.train import TSM_FINETUNE_SETTINGS, default_settings, finetune_tsm, train_denoiser

    if (preset is None) == (tsm_finetune is None):
        raise SncError("give --preset NAME to train, or --tsm-finetune CHECKPOINT to fine-tune TSM scales")
    if tsm_finetune is not None:
        base = load_checkpoint(tsm_finetune)
        if base.arch != "spiking-unet":
            raise SncError(f"{tsm_finetune}: --tsm-finetune needs a spiking-unet checkpoint, not {base.arch}")
        arch, config, defaults, what = "spiking-unet-tsm", base.config, TSM_FINETUNE_SETTINGS, str(tsm_finetune)
        origin = {"tsm_finetune_of": str(tsm_finetune)}
    else:
        arch, config = get_preset(preset)
        defaults, what, origin = default_settings(preset), f"preset {preset!r}", {"preset": preset}
    if (config.img_ch, config.img_size) != (1, 8):
        raise SncError(f"{what} is not a digits model (8x8x1); snc trains only on digits")
    settings = dataclasses.replace(
        defaults,
        steps=steps if steps is not None else defaults.steps,
        batch_size=batch_size if batch_size is not None else defaults.batch_size,
        lr=lr if lr is not None else defaults.lr,
        seed=seed,
    )
    if settings.steps < 1 or settings.batch_size < 1:
        raise SncError("--steps and --batch-size must be positive")
    with _progress() as progress:
        task = progress.add_task(f"train {preset}" if preset else "TSM fine-tune", total=settings.steps, info="")

        def on_step(step: int, loss: float) -> None:
            progress.update(task, completed=step + 1, info=f"loss {loss:.4f}")

        if tsm_finetune is not None:
            model, meta = finetune_tsm(base.model, settings, on_step)
        else:
            model, meta = train_denoiser(arch, config, settings, on_step)
    meta.update(origin, command=" ".join(["snc", *sys.argv[1:]]))
    save_checkpoint(output, arch, model, meta)
    console.print(f"wrote {output} ({meta['train_seconds']} s, final loss {meta['final_loss_smoothed']:.4f})")


@app.command()
def sample(
    model: Path = typer.Argument(..., help="snc checkpoint (.pt) or build directory (snc compile)"),
    output: Path = typer.Option(Path("out/samples.png"), "-o", "--output", help="PNG grid; the raw samples go beside it as .npy"),
    backend: str = typer.Option("torch", "--backend",
                                help="torch (float reference) | lava | emu (bit-exact emulator of Lava fixed_pt); "
                                     "lava and emu need a build"),
    mode: Optional[str] = typer.Option(None, "--mode", help="Lava mode: fixed | float (default: the build's; "
                                                            "emu is fixed)"),
    sampler: str = typer.Option("ddim", "--sampler", help="ddpm | ddim | analytic (Analytic-DPM)"),
    steps: Optional[int] = typer.Option(None, "--steps", help="sampler steps (ddim, analytic; ddpm always runs all)"),
    eta: float = typer.Option(0.0, "--eta", help="DDIM eta (0: deterministic)"),
    threshold_scale: float = typer.Option(1.0, "--threshold-scale", help="threshold guidance: every spiking "
                                          "threshold x S (e.g. 0.997)"),
    n: int = typer.Option(16, "-n", help="number of images"),
    batch: Optional[int] = typer.Option(None, "--batch", help="images per chip call (default: all n; Lava "
                                        "holds a copy of the network per image, so large models need fewer)"),
    seed: int = typer.Option(0, "--seed"),
    as_json: bool = typer.Option(False, "--json", help="print a JSON summary on stdout"),
) -> None:
    """Generate images with a diffusion sampler driving the denoiser on a backend."""
    import contextlib
    import copy
    import dataclasses

    from snc.compiler.passes import guide_thresholds
    from snc.hw_profiles import load_profile
    from snc.models.neurons import scale_thresholds

    import torch

    from snc.compiler.build import read_build
    from snc.models.checkpoint import load_checkpoint
    from snc.models.diffusion import Schedule
    from snc.runtime.compiled import ChipDenoiser, load_host_model
    from snc.runtime.images import save_grid
    from snc.runtime.moments import cached_moments
    from snc.runtime.samplers import ddim_timesteps
    from snc.runtime.samplers import sample as run_sampler

    if backend not in ("torch", "lava", "emu"):
        raise SncError(f"unknown backend {backend!r}; available: torch, lava, emu")
    if n < 1 or (batch is not None and not 1 <= batch <= n):
        raise SncError("-n must be at least 1 and --batch in 1..n")
    chip = backend in ("lava", "emu")
    if backend == "emu" and mode not in (None, "fixed"):
        raise SncError(f"--backend emu emulates Lava fixed_pt only, not --mode {mode}; use --backend lava for floating_pt")
    build = read_build(model) if model.is_dir() else None
    if chip and build is None:
        raise SncError(f"--backend {backend} needs a build directory (snc compile {model} -o build/), not {model}")
    mode = "fixed" if backend == "emu" else mode or (build.meta.get("mode", "fixed") if build else None)
    if not 0 < threshold_scale < float("inf"):
        raise SncError("--threshold-scale must be a positive finite number")
    with contextlib.ExitStack() as stack:
        if chip:
            if threshold_scale != 1.0:  # on top of the guidance the build was compiled with, if any
                vth_bits = load_profile(build.meta.get("target", "loihi2"))["fixed_point"]["vth_bits"]
                guided = guide_thresholds.run(copy.deepcopy(build.graph), threshold_scale, vth_bits)
                build = dataclasses.replace(build, graph=guided)
            denoiser = stack.enter_context(ChipDenoiser(build, mode, batch=batch or n, backend=backend))
            host = denoiser.model
        else:
            host = load_host_model(build).float() if build else load_checkpoint(model).model
            denoiser = scale_thresholds(copy.deepcopy(host), threshold_scale)
        cfg = host.config
        schedule = Schedule(steps=cfg.diffusion_steps)
        moments = None
        if sampler == "analytic":
            with console.status("epsilon moments of the model on its data (Analytic-DPM)"):
                moments = cached_moments(build.path if build else None, host, schedule,
                                         ddim_timesteps(schedule.steps, steps or 50))
        start = time.perf_counter()
        with _progress() as progress:
            label = f"{sampler} on {backend}" + (f" {mode}_pt" if chip else "")
            task = progress.add_task(label, total=None, info="")
            images = run_sampler(
                denoiser,
                (n, cfg.img_ch, cfg.img_size, cfg.img_size),
                schedule,
                sampler=sampler,
                steps=steps,
                eta=eta,
                generator=torch.Generator().manual_seed(seed),
                on_step=lambda i, total: progress.update(task, completed=i, total=total),
                eps_moment=moments,
            )
        seconds = time.perf_counter() - start
    images = images.float()
    output.parent.mkdir(parents=True, exist_ok=True)
    save_grid(images, output)
    npy = output.with_suffix(".npy")
    np.save(npy, images.numpy())
    result = {
        "model": str(model), "backend": backend, "mode": mode if chip else None, "sampler": sampler,
        "steps": steps, "eta": eta, "threshold_scale": threshold_scale, "n": n, "batch": batch or n, "seed": seed,
        "seconds": round(seconds, 2), "png": str(output),
        "npy": str(npy),
    }
    _emit(result, as_json, [f"wrote {n} samples to {output} (and {npy}) in {seconds:.1f} s"])


@app.command("eval")
def evaluate(
    samples: Path = typer.Argument(..., help="samples as .npy ([N,1,8,8] in [-1,1]) or an snc .png grid"),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Sample quality of digits: Fréchet Digits Distance beside two reference points."""
    from snc.models.quality import evaluate_samples
    from snc.runtime.images import load_samples

    images = load_samples(samples)
    try:
        report = evaluate_samples(images)
    except ValueError as exc:
        raise SncError(f"{samples}: {exc}") from None
    r = report.as_dict()
    _emit(
        r,
        as_json,
        [
            f"FDD (Fréchet Digits Distance, lower is better) of {r['n']} samples vs the training digits:",
            f"  samples          {r['fdd']:10.3f}",
            f"  held-out digits  {r['reference_heldout_vs_train']:10.3f}   (real digits, n={r['reference_heldout_n']})",
            f"  Gaussian noise   {r['reference_noise_vs_train']:10.3f}   (useless generator)",
            f"  samples / noise  {r['fdd_over_noise']:10.4f}",
        ],
    )


@app.command()
def export(
    model: Path = typer.Argument(..., help="snc checkpoint (.pt)"),
    output: Path = typer.Option(..., "-o", "--output", help="NIR file to write (.nir, HDF5)"),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Export the spiking core to NIR (BatchNorm folded, dt in the parameters)."""
    from collections import Counter

    from snc.compiler.export import export_model
    from snc.compiler.nir_io import EXTENSIONS, write_graph
    from snc.models.checkpoint import load_checkpoint

    ckpt = load_checkpoint(model)
    graph = export_model(ckpt.model)
    output.parent.mkdir(parents=True, exist_ok=True)
    write_graph(output, graph)
    kinds = Counter(getattr(n, "TYPE", type(n).__name__) for n in graph.nodes.values())
    result = {
        "model": str(model), "nir": str(output), "nodes": len(graph.nodes), "edges": len(graph.edges),
        "node_types": dict(sorted(kinds.items())),
        "extension_nodes": sum(v for k, v in kinds.items() if k in EXTENSIONS),
    }
    summary = ", ".join(f"{k} {v}" for k, v in sorted(kinds.items()))
    _emit(result, as_json, [f"wrote {output}: {len(graph.nodes)} nodes, {len(graph.edges)} edges ({summary})"])


def _compile_source(model: Optional[Path], preset: Optional[str], seed: int, reference_arch: Optional[str] = None,
                    reference_config: Optional[Path] = None, weights: str = "net"):
    """(arch, config, model or None, NIR graph, checkpoint path or None, meta) for snc compile.

    The checkpoint path is the snc checkpoint to copy into the build; when it is
    None and there is a model, meta is what to save the model's checkpoint with.
    """
    import torch

    from snc.compiler.export import export_model
    from snc.compiler.nir_io import read_graph
    from snc.models import build_model
    from snc.models import preset as get_preset
    from snc.models.checkpoint import load_checkpoint
    from snc.models.reference import read_config_json

    if model is None and preset is None:
        raise SncError("give a model (checkpoint .pt or .nir) or --preset NAME")
    if model is not None and preset is not None:
        raise SncError("give a model or --preset NAME, not both")
    if reference_arch is None and (reference_config is not None or weights != "net"):
        raise SncError("--config and --weights describe a checkpoint of the public code: give --arch sddpm|sdm-tsm")
    if reference_arch is not None and (model is None or model.suffix == ".nir"):
        raise SncError("--arch reads a checkpoint (.pt) of the public SDDPM / SDM code; give its path")
    if preset is not None:
        arch, config = get_preset(preset)
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            net = build_model(arch, config).eval()
        return arch, config, net, export_model(net), None, {"preset": preset, "seed": seed, "random_init": True}
    if model.suffix == ".nir":
        graph = read_graph(model)
        timestep = graph.metadata.get("snc.timestep")
        if timestep is None:
            raise SncError(f"{model}: no snc.timestep in the NIR metadata; snc needs T to compile a .nir file")
        return str(graph.metadata.get("snc.arch", "")), int(timestep), None, graph, None, {}
    if reference_arch is not None:
        config = read_config_json(reference_config) if reference_config is not None else None
        ckpt = load_checkpoint(model, reference_arch, config, weights)
        # the build keeps an snc checkpoint of the converted model: sample / verify read only that format
        meta = ckpt.meta | {"converted_from": str(model)}
        return ckpt.arch, ckpt.config, ckpt.model, export_model(ckpt.model), None, meta
    ckpt = load_checkpoint(model)
    return ckpt.arch, ckpt.config, ckpt.model, export_model(ckpt.model), model, {}


def _layer_rows(graph) -> list[dict]:
    from snc.compiler.ir import HostInput, Population

    errors = {row["edge"]: row["relative_error"] for entry in graph.log if entry["pass"] == "quantize"
              for row in entry["synapses"]}
    rows = []
    for p in graph.of_type(Population):
        chip = [e for e in graph.into(p.name) if isinstance(graph.nodes[e.src], Population)]
        host = [e for e in graph.into(p.name) if isinstance(graph.nodes[e.src], HostInput)]
        rows.append({
            "population": p.name, "role": p.role, "neurons": int(np.prod(p.shape)), "depth": p.depth,
            "synapses_in": sum(e.lowered_op().synapse_count() for e in chip), "synapse_groups_in": len(chip),
            "weight_exp": sorted({int(e.fixed["weight_exp"]) for e in chip}),
            # mixed-sign synapses keep 7 magnitude bits (Lava drops the low bit), single-sign 8
            "weight_bits": sorted({7 if e.fixed["weight"].min() < 0 < e.fixed["weight"].max() else 8 for e in chip}),
            "weight_rel_error": max((errors[e.name] for e in chip), default=0.0),
            "delays_in": sorted({e.delay for e in chip if e.delay}),
            "vth": int(p.fixed["vth"]), "scale": p.scale,
            "partition": "chip" + ("+host" if host else ""),
        })
    return rows


def _compile(model: Optional[Path], preset: Optional[str], seed: int, target: str, mode: str, calibration: int,
             output: Path, dump_ir: Optional[Path] = None, verify: bool = True, allow_oversize: bool = False,
             threshold_scale: float = 1.0, reference_arch: Optional[str] = None,
             reference_config: Optional[Path] = None, weights: str = "net"):
    """Compile a checkpoint (snc's, or the public code's with ``reference_arch``), .nir file or preset
    (random init) into the build directory ``output``."""
    import resource

    from snc.compiler.build import write_build
    from snc.compiler.pipeline import compile_graph
    from snc.models.checkpoint import save_checkpoint
    from snc.runtime.compiled import calibrator, gate_table

    if mode not in ("fixed", "float"):
        raise SncError("--mode must be fixed or float")
    start = time.perf_counter()
    arch, config, net, nir_graph, checkpoint, host_meta = _compile_source(model, preset, seed, reference_arch,
                                                                         reference_config, weights)
    timestep = config if isinstance(config, int) else config.timestep
    calibrate = calibrator(net.double(), nir_graph, calibration, seed) if net is not None and calibration > 0 else None
    graph = compile_graph(nir_graph, timestep, arch, target, calibrate, dump_ir, verify, allow_oversize,
                          threshold_scale, gate_table(net.double()) if net is not None else None)
    rows = _layer_rows(graph)
    seconds = time.perf_counter() - start
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    reassoc = next(entry for entry in graph.log if entry["pass"] == "reassociate")
    host_ops = next(entry for entry in graph.log if entry["pass"] == "partition_host")["host_ops"]
    source = f"preset {preset} (random init)" if model is None else str(model)
    if reference_arch is not None:
        source += f" ({reference_arch} checkpoint of the public code, {weights} weights)"
    meta = {
        "arch": arch, "target": target, "mode": mode, "timestep": timestep, "depth": graph.depth,
        "call_steps": graph.depth + timestep, "source": source,
        "calibrated": calibrate is not None, "threshold_scale": threshold_scale, "layers": rows, "host_ops": host_ops,
        "synapses_before_reassociation": reassoc["synapses_before"],
        "synapses": sum(r["synapses_in"] for r in rows),
        "compile_seconds": round(seconds, 2), "peak_rss_mb": round(peak_mb),
    }
    if checkpoint is None and net is not None:  # a preset's random weights or a converted reference checkpoint:
        output.mkdir(parents=True, exist_ok=True)  # saved so the build samples, verifies and counts spikes
        checkpoint = output / "model.pt"
        save_checkpoint(checkpoint, arch, net.float(), host_meta)
    return write_build(output, graph, nir_graph, meta, checkpoint), time.perf_counter() - start


def _count(value: Optional[int]) -> str:
    return "n/a" if value is None else f"{value:,}"


@app.command("compile")
def compile_cmd(
    model: Optional[Path] = typer.Argument(None, help="snc checkpoint (.pt), the public code's (with --arch) or NIR "
                                                       "graph (.nir)"),
    target: str = typer.Option("loihi2", "--target", help="hardware profile (hw_profiles/NAME.toml)"),
    output: Path = typer.Option(Path("build"), "-o", "--output", help="build directory to write"),
    mode: str = typer.Option("fixed", "--mode", help="default Lava mode of the build: fixed | float"),
    preset: Optional[str] = typer.Option(None, "--preset", help="compile a preset with random init instead"),
    dump_ir: Optional[Path] = typer.Option(None, "--dump-ir", help="write the IR after each pass here"),
    verify: bool = typer.Option(True, "--verify/--no-verify", help="run each pass's verifier"),
    calibration: int = typer.Option(4, "--calibration", help="images per calibration step (0: none)"),
    allow_oversize: bool = typer.Option(False, "--allow-oversize", help="write the build even if it does not fit "
                                        "the target (the violations are listed)"),
    threshold_scale: float = typer.Option(1.0, "--threshold-scale", help="threshold guidance: every spiking "
                                          "threshold x S (refused where vth cannot express it)"),
    reference_arch: Optional[str] = typer.Option(None, "--arch", help="the model is a checkpoint of the public "
                                                 "code: sddpm (Spk_UNet) | sdm-tsm (Spk_UNet_TSM)"),
    reference_config: Optional[Path] = typer.Option(None, "--config", help="with --arch: JSON of the reference "
                                                    "constructor's arguments (T, ch, ch_mult, attn, num_res_blocks, "
                                                    "dropout, timestep, img_ch; img_size, default 32)"),
    weights: str = typer.Option("net", "--weights", help="with --arch: net | ema (net_model or ema_model)"),
    seed: int = typer.Option(0, "--seed"),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Compile a model for a target: NIR -> passes -> lowered graph in a build directory."""
    from rich.table import Table

    build, total_seconds = _compile(model, preset, seed, target, mode, calibration, output, dump_ir, verify,
                                    allow_oversize, threshold_scale, reference_arch, reference_config, weights)
    meta, graph = build.meta, build.graph
    rows = meta["layers"]
    cores = next(entry for entry in graph.log if entry["pass"] == "map_cores")
    result = {k: v for k, v in meta.items() if k not in ("layers", "log")} | {
        "build": str(output), "layers": rows, "cores": cores.get("cores"), "chips": cores.get("chips"),
        "violations": cores["violations"]}
    if as_json:
        print(json.dumps(result, indent=2))
        return
    table = Table(title=f"{meta['arch']} for {target} ({'fixed_pt' if mode == 'fixed' else 'floating_pt'})")
    for col in ("population", "role", "neurons", "depth", "synapses in", "w bits", "w exp", "w err", "delays in",
                "vth", "syn KiB", "cores", "partition"):
        table.add_column(col, justify="left" if col in ("population", "role", "partition") else "right",
                         no_wrap=col == "population")
    placed = {g["group"]: g for g in cores["groups"]}
    for r in rows:
        group = placed[r["population"]]
        table.add_row(r["population"], r["role"], str(r["neurons"]), str(r["depth"]), f"{r['synapses_in']:,}",
                      ",".join(map(str, r["weight_bits"])), ",".join(map(str, r["weight_exp"])),
                      f"{r['weight_rel_error']:.2%}", ",".join(map(str, r["delays_in"])), str(r["vth"]),
                      f"{group['memory_kib']:,.0f}" if "memory_kib" in group else "-",
                      str(group.get("cores", "-")), r["partition"])
    console.print(table)
    reassoc = next(entry for entry in graph.log if entry["pass"] == "reassociate")
    fits = "does NOT fit the target (--allow-oversize): " + "; ".join(cores["violations"]) if cores["violations"] \
        else "fits the target"
    guided = next(entry for entry in graph.log if entry["pass"] == "guide_thresholds")["populations"]
    guidance = (f"threshold guidance x{threshold_scale}: x{min(r['effective_scale'] for r in guided):.5f}.."
                f"{max(r['effective_scale'] for r in guided):.5f} after vth rounding\n") if guided else ""
    console.print(
        f"host: {', '.join(meta['host_ops'] + ['time embedding', 'tail'])}\n"
        f"synapses: {meta['synapses']:,} on chip (the NIR graph's ops had {meta['synapses_before_reassociation']:,}; "
        f"{len(reassoc['rewritten'])} edges re-associated, relays included)\n"
        "w bits / w exp: weight magnitude bits and exponents of the synapses in; w err: their largest relative L2 "
        "quantization error; partition chip+host: the population also takes a host current\n"
        f"pipeline depth {graph.depth}, {meta['call_steps']} Lava steps per denoiser call (T={meta['timestep']})\n"
        f"{guidance}"
        f"resources (one image, readout included): {cores['neurons']:,} neurons, {cores['synapses']:,} synapses, "
        f"{_count(cores.get('cores'))} cores, {_count(cores.get('chips'))} chips: {fits}\n"
        f"wrote {output}: compiled in {meta['compile_seconds']:.1f} s, {total_seconds:.1f} s with writing; "
        f"peak memory {meta['peak_rss_mb']:.0f} MB",
        highlight=False,
    )


@app.command()
def verify(
    build_dir: Path = typer.Argument(..., help="build directory from snc compile"),
    n: int = typer.Option(8, "-n", help="images per diffusion step"),
    batch: Optional[int] = typer.Option(None, "--batch", help="images per chip call (default: n)"),
    backends: str = typer.Option("lava", "--backends", help="lava | emu | lava,emu: chip backends to run and compare"),
    seed: int = typer.Option(0, "--seed"),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """One denoiser call per diffusion step through torch and chip backends (Lava floating_pt and fixed_pt,
    the emulator); compare spikes and outputs (emu vs Lava fixed_pt must be identical)."""
    from snc.compiler.build import read_build
    from snc.runtime.verify import verify_build

    if n < 1:
        raise SncError("-n must be at least 1")
    chosen = tuple(b.strip() for b in backends.split(",") if b.strip())
    if not chosen or len(set(chosen)) != len(chosen) or not set(chosen) <= {"lava", "emu"}:
        raise SncError(f"--backends takes lava, emu or lava,emu, got {backends!r}")
    start = time.perf_counter()
    report = verify_build(read_build(build_dir), n=n, seed=seed, backends=chosen, batch=batch)
    result = report.as_dict() | {"seconds": round(time.perf_counter() - start, 1)}
    exact = report.agreement.get("emu_vs_lava_fixed", 1.0) == 1.0 and all(report.readout_identical.values())
    if as_json:
        print(json.dumps(result, indent=2))
    else:
        _print_verify(report, result["seconds"])
    if not exact:
        raise SncError("the emulator and Lava fixed_pt differ: a bug in one of them (see the report above)")


def _print_verify(report, seconds: float) -> None:
    from rich.table import Table

    keys = list(report.agreement)
    table = Table(title=f"spike agreement over {report.n} images x diffusion steps {report.timesteps}")
    for col in ["population", "neurons", "torch rate"] + [k.replace("_", " ") for k in keys]:
        table.add_column(col, justify="left" if col == "population" else "right")
    for r in report.layers:
        table.add_row(r["population"], str(r["neurons"]), f"{r['torch_rate']:.3f}",
                      *["off" if r[k] is None else f"{r[k]:.2%}" for k in keys])
    console.print(table)
    a, e = report.agreement, report.output_rel_error
    lines = ["all layers: " + ", ".join(f"{k.replace('_', ' ')} {a[k]:.4%}" for k in keys),
             "output relative error: " + ", ".join(f"{k.replace('_', ' ')} {e[k]:.2e}" for k in keys)
             + f"  ({seconds} s)"]
    if report.switched_off:
        lines.append(f"{report.switched_off:,} neuron-steps of experts switched off by the compiled selection "
                     "were left out of the comparisons with torch (off: never compared)")
    if "emu_vs_lava_fixed" in a:
        same = report.readout_identical["emu_vs_lava_fixed"]
        lines.append(f"emu vs Lava fixed_pt: {a['emu_vs_lava_fixed']:.4%} of spikes equal (relays included), "
                     f"readout {'identical' if same else 'DIFFERENT'} in every call")
    console.print("\n".join(lines), highlight=False)


def _energy_build(source: Optional[Path], preset: Optional[str], seed: int, target: str, scratch: Path):
    """The build to count: a build directory as it is, else a checkpoint or preset compiled into ``scratch``.

    A report counts a graph whether or not it fits the target: the resource
    section lists the violations.
    """
    from snc.compiler.build import read_build

    if source is not None and source.is_dir():
        if preset is not None:
            raise SncError("give a build directory or --preset NAME, not both")
        return read_build(source)
    if source is not None and source.suffix == ".nir":
        raise SncError(f"{source}: a NIR file has no host parts to run; compile the checkpoint it came from")
    with console.status("compiling"):
        build, _ = _compile(source, preset, seed, target, "fixed", 4, scratch, allow_oversize=True)
    return build


def _energy_plot(report, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")  # no display: write the file only
    import matplotlib.pyplot as plt

    rows = [r for r in report.layers if r["energy_exact_pj"] or r["energy_papers_pj"]]
    y = np.arange(len(rows))
    fig, ax = plt.subplots(figsize=(9, 0.22 * len(rows) + 1.5))
    ax.barh(y - 0.2, [r["energy_exact_pj"] / 1e3 for r in rows], 0.4, label="exact (lowered graph)")
    ax.barh(y + 0.2, [r["energy_papers_pj"] / 1e3 for r in rows], 0.4, label="papers (fr x T x FLOPs)")
    ax.set_yticks(y, [r["layer"] for r in rows], fontsize=6)
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.set_xlabel("nJ per image per denoiser call")
    estimate = " (estimate)" if report.estimate else ""
    ax.set_title(f"energy per layer on {report.profile}{estimate}, spikes from {report.backends[0]}")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


@app.command()
def energy(
    source: Optional[Path] = typer.Argument(None, help="build directory, or snc checkpoint (.pt) to compile"),
    preset: Optional[str] = typer.Option(None, "--preset", help="a preset with random init (MAC counts only)"),
    profile_name: Optional[str] = typer.Option(None, "--profile", help="hw_profiles/NAME.toml to price with "
                                               "(default: the build's target)"),
    target: str = typer.Option("loihi2", "--target", help="compile target for a checkpoint or preset"),
    backend: str = typer.Option("torch", "--backend", help="spike counts from torch | lava | emu; a comma "
                                "list (torch,lava) compares them, the first prices"),
    mode: str = typer.Option("fixed", "--mode", help="Lava mode: fixed | float"),
    steps: Optional[int] = typer.Option(None, "--steps", help="sampler steps per sample (default: the model's)"),
    n: int = typer.Option(4, "-n", help="images per calibration step"),
    seed: int = typer.Option(0, "--seed"),
    ann: bool = typer.Option(False, "--ann", help="also print the ANN twin vs SNN table by layer kind"),
    all_experts: bool = typer.Option(False, "--all-experts", help="a gated build (lateral transformer): "
                                     "run every expert, without the compiled selection specialisation"),
    nir_level: bool = typer.Option(False, "--nir-level", help="count a checkpoint or preset on its NIR graph "
                                   "without compiling it (papers' method only; for models too large to compile)"),
    as_json: bool = typer.Option(False, "--json"),
    csv_path: Optional[Path] = typer.Option(None, "--csv", help="write the per-layer table as CSV"),
    plot: Optional[Path] = typer.Option(None, "--plot", help="write a per-layer bar chart (PNG)"),
) -> None:
    """Energy, SOPs and resources per layer: exact (lowered graph) and the papers' fr x T x FLOPs."""
    import csv
    import tempfile

    from rich.table import Table

    from snc.hw_profiles import load_profile
    from snc.runtime.energy import BACKENDS, count_spikes, energy_report, nir_energy_report

    backends = [b.strip() for b in backend.split(",") if b.strip()]
    bad = [b for b in backends if b not in BACKENDS]
    if not backends or bad or len(set(backends)) != len(backends):
        raise SncError(f"--backend takes {' / '.join(BACKENDS)} or a comma list of them, got {backend!r}")
    if (source is None) == (preset is None):
        raise SncError("give a build directory or checkpoint, or --preset NAME")
    if n < 1 or (steps is not None and steps < 1):
        raise SncError("-n and --steps must be positive")
    if mode not in ("fixed", "float"):
        raise SncError("--mode must be fixed or float")
    for path in (csv_path, plot):  # before minutes of counting, not after
        if path is not None and not path.parent.is_dir():
            raise SncError(f"{path}: no such directory {path.parent}")
    if nir_level:
        if backends != ["torch"] or (source is not None and source.suffix != ".pt"):
            raise SncError("--nir-level counts a checkpoint (.pt) or --preset with torch spikes (--backend torch)")
        arch, _, net, nir_graph, _, host_meta = _compile_source(source, preset, seed)
        profile = load_profile(profile_name or target)
        with console.status("counting on the NIR graph with torch spikes"):
            report = nir_energy_report(net, arch, nir_graph, profile, n=n, seed=seed, specialised=not all_experts,
                                       steps_per_sample=steps)
        random_init = bool(host_meta.get("random_init"))
    else:
        with tempfile.TemporaryDirectory(prefix="snc-energy-") as scratch:
            build = _energy_build(source, preset, seed, target, Path(scratch))
            profile = load_profile(profile_name or build.meta.get("target", target))
            counts = []
            for b in backends:
                with console.status(f"counting spikes on {b}"):
                    counts.append(count_spikes(build, b, n=n, seed=seed, mode=mode, specialised=not all_experts))
            report = energy_report(build, profile, counts, steps)
            random_init = "random init" in str(build.meta.get("source", ""))
    result = report.as_dict() | {"random_init": random_init}
    try:
        if csv_path is not None:
            keys = list(dict.fromkeys(k for r in report.layers for k in r))
            with open(csv_path, "w", newline="") as f:
                writer = csv.DictWriter(f, fieldnames=keys)
                writer.writeheader()
                writer.writerows(report.layers)
        if plot is not None:
            _energy_plot(report, plot)
    except OSError as exc:
        raise SncError(f"cannot write the report: {exc}") from None
    if as_json:
        print(json.dumps(result, indent=2))
        return
    main = backends[0]
    table = Table(title=f"energy per layer, per image and denoiser call, on {report.profile}"
                        + (" (ESTIMATE)" if report.estimate else ""))
    cols = ["layer", "role", "neurons", f"rate {main}", "synapses out", "SOPs exact", "SOPs papers", "MACs exact",
            "MACs papers", "nJ exact", "nJ papers"]
    cols += [f"spikes {b} vs {main}" for b in backends[1:]]
    for col in cols:
        table.add_column(col, justify="left" if col in ("layer", "role") else "right")

    def num(v: float) -> str:
        return f"{v:,.0f}" if v else "-"

    for r in report.layers:
        row = [r["layer"], r["role"].split(" (")[0], num(r["neurons"]),
               f"{r[f'rate[{main}]']:.3f}" if f"rate[{main}]" in r else "-", num(r["synapses_out"]),
               num(r["sops_exact"]), num(r["sops_papers"]), num(r["macs_exact"]), num(r["macs_papers"]),
               f"{r['energy_exact_pj'] / 1e3:,.1f}", f"{r['energy_papers_pj'] / 1e3:,.1f}"]
        for b in backends[1:]:
            ref, other = r.get(f"spikes[{main}]"), r.get(f"spikes[{b}]")
            row.append(f"{(other - ref) / ref:+.2%}" if ref else "-")
        table.add_row(*row)
    console.print(table)
    if ann:
        kinds = Table(title="ANN twin vs SNN (papers' method) by layer kind, per image and denoiser call")
        for col in ("layer kind", "layers", "ANN MACs", "SNN SOPs", "SNN MACs", "ANN nJ", "SNN nJ"):
            kinds.add_column(col, justify="left" if col == "layer kind" else "right")
        for k in report.kinds:
            kinds.add_row(k["kind"], str(k["layers"]), num(k["ann_macs"]), num(k["snn_sops"]), num(k["snn_macs"]),
                          f"{k['ann_energy_pj'] / 1e3:,.1f}", f"{k['snn_energy_pj'] / 1e3:,.1f}")
        console.print(kinds)
    call, sample, res = report.totals["per_call"], report.totals["per_sample"], report.resources
    estimates = " (ESTIMATES)" if report.estimate else ""
    if report.level == "nir":
        lines = [
            f"per call (NIR level, papers' method): SOPs {call['sops_papers']:,.0f}; real-valued and host MACs "
            f"{call['macs_papers']:,.0f}; neuron updates {call['neuron_updates']:,.0f}; ANN twin MACs "
            f"{call['ann_macs']:,.0f}",
            f"per sample ({report.steps_per_sample} steps): SNN {sample['energy_papers_mj']:.4g} mJ | ANN twin "
            f"{sample['ann_energy_mj']:.4g} mJ{estimates}",
            *report.formulas,
            f"profile basis: {report.basis}",
            f"NIR graph: {res['neurons']:,} neurons, {res['synapses']:,} synapses in its ops (not lowered: no "
            "cores, chips or limits checked)",
        ]
    else:
        lines = [
            f"per call: SOPs exact {call['sops_exact']:,.0f} | papers {call['sops_papers']:,.0f}; MACs exact "
            f"{call['macs_exact']:,.0f} (host, TSM gains) | papers {call['macs_papers']:,.0f}; neuron updates "
            f"{call['neuron_updates']:,.0f}; ANN twin MACs {call['ann_macs']:,.0f}",
            f"per sample ({report.steps_per_sample} steps): exact {sample['energy_exact_mj']:.4g} mJ | papers "
            f"{sample['energy_papers_mj']:.4g} mJ | ANN twin {sample['ann_energy_mj']:.4g} mJ{estimates}",
            *report.formulas,
            f"profile basis: {report.basis}",
            f"resources (one image): {res['neurons']:,} neurons, {res['synapses']:,} synapses"
            + (f", {res['memory_kib']:,.0f} KiB synaptic memory, {res['cores']:,} cores" if "cores" in res else "")
            + (f", {res['chips']:,} chips" if "chips" in res else "")
            + (f"; does NOT fit {report.profile}: " + "; ".join(res["violations"]) if res["violations"] else ""),
        ]
    if random_init:
        lines.append("random init: firing rates and SOPs mean nothing; MAC counts and resources hold")
    for line in lines:
        console.print(line, highlight=False)


INTERRUPTED = 130  # the shell's code for SIGINT; typer returns it for Ctrl-C when not standalone


def main() -> None:
    keep_freed_memory()
    try:
        status = app(standalone_mode=False)
    except SncError as exc:
        console.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
        sys.exit(1)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except (click.exceptions.Abort, KeyboardInterrupt):
        status = INTERRUPTED
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    if status == INTERRUPTED:
        console.print("interrupted")
    if isinstance(status, int) and status:
        sys.exit(status)


if __name__ == "__main__":
    main()
