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
console = Console(stderr=True)


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
    console.print(f"wrote {output} ({meta['train_seconds']} s, final loss {meta['final_loss_ema']:.4f})")


@app.command()
def sample(
    model: Path = typer.Argument(..., help="snc checkpoint (.pt)"),
    output: Path = typer.Option(Path("out/samples.png"), "-o", "--output", help="PNG grid; the raw samples go beside it as .npy"),
    backend: str = typer.Option("torch", "--backend", help="torch (the float reference model)"),
    sampler: str = typer.Option("ddim", "--sampler", help="ddpm | ddim"),
    steps: Optional[int] = typer.Option(None, "--steps", help="sampler steps (ddim; ddpm always runs all)"),
    eta: float = typer.Option(0.0, "--eta", help="DDIM eta (0: deterministic)"),
    n: int = typer.Option(16, "-n", help="number of images"),
    seed: int = typer.Option(0, "--seed"),
    as_json: bool = typer.Option(False, "--json", help="print a JSON summary on stdout"),
) -> None:
    """Generate images with a diffusion sampler driving the denoiser on a backend."""
    import torch

    from snc.models.checkpoint import load_checkpoint
    from snc.models.diffusion import Schedule
    from snc.runtime.images import save_grid
    from snc.runtime.samplers import sample as run_sampler

    if backend != "torch":
        raise SncError(f"unknown backend {backend!r} for a checkpoint; available: torch")
    if n < 1:
        raise SncError("-n must be at least 1")
    ckpt = load_checkpoint(model)
    cfg = ckpt.config
    schedule = Schedule(steps=cfg.diffusion_steps)
    start = time.perf_counter()
    with _progress() as progress:
        task = progress.add_task(f"{sampler} on {backend}", total=None, info="")
        images = run_sampler(
            ckpt.model,
            (n, cfg.img_ch, cfg.img_size, cfg.img_size),
            schedule,
            sampler=sampler,
            steps=steps,
            eta=eta,
            generator=torch.Generator().manual_seed(seed),
            on_step=lambda i, total: progress.update(task, completed=i, total=total),
        )
    seconds = time.perf_counter() - start
    output.parent.mkdir(parents=True, exist_ok=True)
    save_grid(images, output)
    npy = output.with_suffix(".npy")
    import numpy as np

    np.save(npy, images.numpy())
    result = {
        "model": str(model), "backend": backend, "sampler": sampler, "steps": steps, "eta": eta,
        "n": n, "seed": seed, "seconds": round(seconds, 2), "png": str(output), "npy": str(npy),
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


def main() -> None:
    try:
        app(standalone_mode=False)
    except SncError as exc:
        console.print(f"[bold red]error:[/] {exc}", highlight=False)
        sys.exit(1)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except (click.exceptions.Abort, KeyboardInterrupt):
        console.print("interrupted")
        sys.exit(130)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)


if __name__ == "__main__":
    main()
