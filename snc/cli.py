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
    preset: str = typer.Option(..., "--preset", help="digits-unet | digits-mlp (any preset name)"),
    output: Path = typer.Option(..., "-o", "--output", help="checkpoint file to write"),
    steps: int = typer.Option(None, "--steps", help="optimizer steps (default: the preset's)"),
    seed: int = typer.Option(0, "--seed"),
    batch_size: int = typer.Option(None, "--batch-size"),
    lr: float = typer.Option(None, "--lr"),
) -> None:
    """Train a denoiser with DDPM (epsilon prediction, 1000 steps) on scikit-learn's digits."""
    from snc.models import preset as get_preset
    from snc.models.checkpoint import save_checkpoint
    from snc.models.train import TrainSettings, default_settings, train_denoiser

    arch, config = get_preset(preset)
    if (config.img_ch, config.img_size) != (1, 8):
        raise SncError(f"preset {preset!r} is not a digits model (8x8x1); snc trains only on digits")
    base = default_settings(preset)
    settings = TrainSettings(
        steps=steps if steps is not None else base.steps,
        batch_size=batch_size if batch_size is not None else base.batch_size,
        lr=lr if lr is not None else base.lr,
        seed=seed,
    )
    if settings.steps < 1 or settings.batch_size < 1:
        raise SncError("--steps and --batch-size must be positive")
    with _progress() as progress:
        task = progress.add_task(f"train {preset}", total=settings.steps, info="")

        def on_step(step: int, loss: float) -> None:
            progress.update(task, completed=step + 1, info=f"loss {loss:.4f}")

        model, meta = train_denoiser(arch, config, settings, on_step)
    meta.update(preset=preset, command=" ".join(["snc", *sys.argv[1:]]))
    save_checkpoint(output, arch, model, meta)
    console.print(f"wrote {output} ({meta['train_seconds']} s, final loss {meta['final_loss_smoothed']:.4f})")


@app.command()
def sample(
    model: Path = typer.Argument(..., help="snc checkpoint (.pt) or build directory (snc compile)"),
    output: Path = typer.Option(Path("out/samples.png"), "-o", "--output", help="PNG grid; the raw samples go beside it as .npy"),
    backend: str = typer.Option("torch", "--backend", help="torch (float reference) | lava (build only)"),
    mode: Optional[str] = typer.Option(None, "--mode", help="Lava mode: fixed | float (default: the build's)"),
    sampler: str = typer.Option("ddim", "--sampler", help="ddpm | ddim"),
    steps: Optional[int] = typer.Option(None, "--steps", help="sampler steps (ddim; ddpm always runs all)"),
    eta: float = typer.Option(0.0, "--eta", help="DDIM eta (0: deterministic)"),
    n: int = typer.Option(16, "-n", help="number of images"),
    seed: int = typer.Option(0, "--seed"),
    as_json: bool = typer.Option(False, "--json", help="print a JSON summary on stdout"),
) -> None:
    """Generate images with a diffusion sampler driving the denoiser on a backend."""
    import contextlib

    import torch

    from snc.compiler.build import read_build
    from snc.models.checkpoint import load_checkpoint
    from snc.models.diffusion import Schedule
    from snc.runtime.compiled import ChipDenoiser, load_host_model
    from snc.runtime.images import save_grid
    from snc.runtime.samplers import sample as run_sampler

    if backend not in ("torch", "lava"):
        raise SncError(f"unknown backend {backend!r}; available: torch, lava")
    if n < 1:
        raise SncError("-n must be at least 1")
    build = read_build(model) if model.is_dir() else None
    if backend == "lava" and build is None:
        raise SncError(f"--backend lava needs a build directory (snc compile {model} -o build/), not {model}")
    mode = mode or (build.meta.get("mode", "fixed") if build else None)
    with contextlib.ExitStack() as stack:
        if backend == "lava":
            denoiser = stack.enter_context(ChipDenoiser(build, mode, batch=n))
            cfg = denoiser.model.config
        else:
            net = load_host_model(build).float() if build else load_checkpoint(model).model
            denoiser, cfg = net, net.config
        start = time.perf_counter()
        with _progress() as progress:
            label = f"{sampler} on {backend}" + (f" {mode}_pt" if backend == "lava" else "")
            task = progress.add_task(label, total=None, info="")
            images = run_sampler(
                denoiser,
                (n, cfg.img_ch, cfg.img_size, cfg.img_size),
                Schedule(steps=cfg.diffusion_steps),
                sampler=sampler,
                steps=steps,
                eta=eta,
                generator=torch.Generator().manual_seed(seed),
                on_step=lambda i, total: progress.update(task, completed=i, total=total),
            )
        seconds = time.perf_counter() - start
    images = images.float()
    output.parent.mkdir(parents=True, exist_ok=True)
    save_grid(images, output)
    npy = output.with_suffix(".npy")
    np.save(npy, images.numpy())
    result = {
        "model": str(model), "backend": backend, "mode": mode if backend == "lava" else None, "sampler": sampler,
        "steps": steps, "eta": eta, "n": n, "seed": seed, "seconds": round(seconds, 2), "png": str(output),
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


def _compile_source(model: Optional[Path], preset: Optional[str], seed: int):
    """(arch, config, model or None, NIR graph, checkpoint path or None) for snc compile."""
    import torch

    from snc.compiler.export import export_model
    from snc.compiler.nir_io import read_graph
    from snc.models import build_model
    from snc.models import preset as get_preset
    from snc.models.checkpoint import load_checkpoint

    if model is None and preset is None:
        raise SncError("give a model (checkpoint .pt or .nir) or --preset NAME")
    if model is not None and preset is not None:
        raise SncError("give a model or --preset NAME, not both")
    if preset is not None:
        arch, config = get_preset(preset)
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            net = build_model(arch, config).eval()
        return arch, config, net, export_model(net), None
    if model.suffix == ".nir":
        graph = read_graph(model)
        timestep = graph.metadata.get("snc.timestep")
        if timestep is None:
            raise SncError(f"{model}: no snc.timestep in the NIR metadata; snc needs T to compile a .nir file")
        return str(graph.metadata.get("snc.arch", "")), int(timestep), None, graph, None
    ckpt = load_checkpoint(model)
    return ckpt.arch, ckpt.config, ckpt.model, export_model(ckpt.model), model


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
            "synapses_in": sum(e.op.synapse_count() for e in chip), "synapse_groups_in": len(chip),
            "weight_exp": sorted({int(e.fixed["weight_exp"]) for e in chip}),
            # mixed-sign synapses keep 7 magnitude bits (Lava drops the low bit), single-sign 8
            "weight_bits": sorted({7 if e.fixed["weight"].min() < 0 < e.fixed["weight"].max() else 8 for e in chip}),
            "weight_rel_error": max((errors[e.name] for e in chip), default=0.0),
            "delays_in": sorted({e.delay for e in chip if e.delay}),
            "vth": int(p.fixed["vth"]), "scale": p.scale,
            "partition": "chip" + (" + host current" if host else ""),
        })
    return rows


@app.command("compile")
def compile_cmd(
    model: Optional[Path] = typer.Argument(None, help="snc checkpoint (.pt) or NIR graph (.nir)"),
    target: str = typer.Option("loihi2", "--target", help="hardware profile (hw_profiles/NAME.toml)"),
    output: Path = typer.Option(Path("build"), "-o", "--output", help="build directory to write"),
    mode: str = typer.Option("fixed", "--mode", help="default Lava mode of the build: fixed | float"),
    preset: Optional[str] = typer.Option(None, "--preset", help="compile a preset with random init instead"),
    dump_ir: Optional[Path] = typer.Option(None, "--dump-ir", help="write the IR after each pass here"),
    verify: bool = typer.Option(True, "--verify/--no-verify", help="run each pass's verifier"),
    calibration: int = typer.Option(4, "--calibration", help="images per calibration step (0: none)"),
    seed: int = typer.Option(0, "--seed"),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Compile a model for a target: NIR -> passes -> lowered graph in a build directory."""
    import resource

    from rich.table import Table

    from snc.compiler.build import write_build
    from snc.compiler.pipeline import compile_graph
    from snc.runtime.compiled import calibrator

    if mode not in ("fixed", "float"):
        raise SncError("--mode must be fixed or float")
    start = time.perf_counter()
    arch, config, net, nir_graph, checkpoint = _compile_source(model, preset, seed)
    timestep = config if isinstance(config, int) else config.timestep
    calibrate = calibrator(net.double(), nir_graph, calibration, seed) if net is not None and calibration > 0 else None
    graph = compile_graph(nir_graph, timestep, arch, target, calibrate, dump_ir, verify)
    rows = _layer_rows(graph)
    seconds = time.perf_counter() - start
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    reassoc = next(entry for entry in graph.log if entry["pass"] == "reassociate")
    host_ops = next(entry for entry in graph.log if entry["pass"] == "partition_host")["host_ops"]
    meta = {
        "arch": arch, "target": target, "mode": mode, "timestep": timestep, "depth": graph.depth,
        "call_steps": graph.depth + timestep, "source": str(model) if model else f"preset {preset} (random init)",
        "calibrated": calibrate is not None, "layers": rows, "host_ops": host_ops,
        "synapses_before_reassociation": reassoc["synapses_before"],
        "synapses": sum(r["synapses_in"] for r in rows),
        "compile_seconds": round(seconds, 2), "peak_rss_mb": round(peak_mb),
    }
    write_build(output, graph, nir_graph, meta, checkpoint)
    result = {k: v for k, v in meta.items() if k != "layers"} | {"build": str(output), "layers": rows}
    if as_json:
        print(json.dumps(result, indent=2))
        return
    table = Table(title=f"{arch} for {target} ({'fixed_pt' if mode == 'fixed' else 'floating_pt'})")
    for col in ("population", "role", "neurons", "depth", "synapses in", "weight bits", "weight exp", "weight err",
                "delays in", "vth", "partition"):
        table.add_column(col, justify="left" if col in ("population", "role", "partition") else "right")
    for r in rows:
        table.add_row(r["population"], r["role"], str(r["neurons"]), str(r["depth"]), f"{r['synapses_in']:,}",
                      ",".join(map(str, r["weight_bits"])), ",".join(map(str, r["weight_exp"])),
                      f"{r['weight_rel_error']:.2%}", ",".join(map(str, r["delays_in"])), str(r["vth"]),
                      r["partition"])
    console.print(table)
    console.print(
        f"host: {', '.join(host_ops + ['time embedding', 'tail'])}\n"
        f"synapses: {meta['synapses']:,} on chip (the NIR graph's ops had {meta['synapses_before_reassociation']:,}; "
        f"{len(reassoc['rewritten'])} edges re-associated, relays included)\n"
        "weight err: largest relative L2 error of the 8-bit weights of a synapse into the population\n"
        f"pipeline depth {graph.depth}, {meta['call_steps']} Lava steps per denoiser call (T={timestep})\n"
        f"wrote {output}: compiled in {seconds:.1f} s, {time.perf_counter() - start:.1f} s with writing; "
        f"peak memory {peak_mb:.0f} MB",
        highlight=False,
    )


@app.command()
def verify(
    build_dir: Path = typer.Argument(..., help="build directory from snc compile"),
    n: int = typer.Option(8, "-n", help="images per call"),
    seed: int = typer.Option(0, "--seed"),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """One denoiser call per diffusion step through torch, Lava floating_pt and fixed_pt; compare."""
    from rich.table import Table

    from snc.compiler.build import read_build
    from snc.runtime.verify import verify_build

    if n < 1:
        raise SncError("-n must be at least 1")
    start = time.perf_counter()
    report = verify_build(read_build(build_dir), n=n, seed=seed)
    result = report.as_dict() | {"seconds": round(time.perf_counter() - start, 1)}
    if as_json:
        print(json.dumps(result, indent=2))
        return
    table = Table(title=f"spike agreement over {report.n} images x diffusion steps {report.timesteps}")
    for col in ("population", "neurons", "torch rate", "float vs torch", "fixed vs float", "fixed vs torch"):
        table.add_column(col, justify="left" if col == "population" else "right")
    for r in report.layers:
        table.add_row(r["population"], str(r["neurons"]), f"{r['torch_rate']:.3f}", f"{r['float_vs_torch']:.2%}",
                      f"{r['fixed_vs_float']:.2%}", f"{r['fixed_vs_torch']:.2%}")
    console.print(table)
    a, e = report.agreement, report.output_rel_error
    console.print(
        f"all layers: float vs torch {a['float_vs_torch']:.4%}, fixed vs float {a['fixed_vs_float']:.4%}, "
        f"fixed vs torch {a['fixed_vs_torch']:.4%}\n"
        f"output relative error: float vs torch {e['float_vs_torch']:.2e}, fixed vs float {e['fixed_vs_float']:.2e}, "
        f"fixed vs torch {e['fixed_vs_torch']:.2e}  ({result['seconds']} s)",
        highlight=False,
    )


INTERRUPTED = 130  # the shell's code for SIGINT; typer returns it for Ctrl-C when not standalone


def main() -> None:
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
