"""The ``snc`` command line: parses arguments, calls ``snc.api``, renders the results (``snc.render``).

Every user error is an ``SncError``: printed as one ``error: ...`` line on
stderr with exit status 1, never a traceback.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Optional

import click
import numpy as np
import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from snc import render
from snc.allocator import keep_freed_memory
from snc.errors import SncError
from snc.signals import Terminated, terminating_signals
from snc.runtime.backends import BACKENDS

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="snc: compile spiking diffusion models to neuromorphic targets (NIR -> Lava / Loihi 2).",
)
# Tables are wide: do not squeeze them to 80 columns when stderr is not a terminal.
console = Console(stderr=True, width=None if sys.stderr.isatty() else 160)
BACKEND_NAMES = " | ".join(BACKENDS)


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


class _StepBar:
    """A progress bar shown from the first step it is told of (spinners may run before it)."""

    def __init__(self, label: str) -> None:
        self.label, self.progress, self.task = label, None, None

    def __call__(self, step: int, total: int) -> None:
        if self.progress is None:
            self.progress = _progress()
            self.progress.start()
            self.task = self.progress.add_task(self.label, total=total, info="")
        self.progress.update(self.task, completed=step, total=total)

    def __enter__(self) -> "_StepBar":
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.progress is not None:
            self.progress.stop()


def _emit(result: dict, as_json: bool, lines: list[str]) -> None:
    if as_json:
        print(json.dumps(result, indent=2, default=str))
    else:
        for line in lines:
            console.print(line, highlight=False)


def _backends(spec: str) -> list[str]:
    chosen = [b.strip() for b in spec.split(",") if b.strip()]
    if not chosen or len(set(chosen)) != len(chosen):
        raise SncError(f"--backends takes a comma list of different backends ({BACKEND_NAMES}), got {spec!r}")
    return chosen


DEFAULT_DIRS = (Path("out"), Path("build"))  # where the defaults and the README put outputs and builds:
# created when needed; snc creates no other directory


def _parent_of(path: Path) -> None:
    """The directory ``path`` goes into exists (one of ``DEFAULT_DIRS`` is created), or one SncError."""
    parent = path.parent
    if parent.exists() and not parent.is_dir():
        raise SncError(f"{path}: {parent} is not a directory")
    if not parent.exists():
        if parent not in DEFAULT_DIRS:
            raise SncError(f"{path}: no such directory {parent} (snc creates none but "
                           f"{' and '.join(f'{d}/' for d in DEFAULT_DIRS)})")
        parent.mkdir()


def _output_file(path: Path) -> Path:
    """An output file's path, checked before any work: not a directory, in a directory that exists."""
    if path.is_dir():
        raise SncError(f"{path}: is a directory; give a file name")
    _parent_of(path)
    return path


def _seed_option() -> Any:
    # torch's generators take seeds in 0..2^64 - 1; one range for every command
    return typer.Option(0, "--seed", min=0, max=2**64 - 1, help="random seed (0..2^64-1)")


def _timeout_option() -> Any:
    return typer.Option(None, "--timeout", help="seconds one Lava call may take; past it the run is stopped "
                        "(every Lava run is watched: a Lava process that dies ends it at once)")


def _device_option() -> Any:
    return typer.Option(None, "--device", help="cpu | cuda | cuda:N: the torch device the emulator (emu) runs on, "
                        "bit-identical on any (default cpu; the torch model and Lava stay on the CPU)")


@app.command()
def train(
    preset: Optional[str] = typer.Option(None, "--preset", help="digits-unet | digits-mlp | digits-lateral | "
                                         "digits-vq (paper 003: the VQ-SVAE, then the SDID on its tokens)"),
    tsm_finetune: Optional[Path] = typer.Option(None, "--tsm-finetune", help="instead of --preset: fine-tune SDM's "
                                                "per-step scales p[t] of this snc U-Net checkpoint (all else "
                                                "frozen) into a spiking-unet-tsm checkpoint"),
    output: Path = typer.Option(..., "-o", "--output", help="checkpoint file to write"),
    steps: int = typer.Option(None, "--steps", help="optimizer steps (default: the preset's; 250 for --tsm-finetune)"),
    seed: int = _seed_option(),
    batch_size: int = typer.Option(None, "--batch-size"),
    lr: float = typer.Option(None, "--lr"),
) -> None:
    """Train a denoiser with DDPM (epsilon prediction, 1000 steps) on scikit-learn's digits (digits-vq: the
    VQ-SVAE, then the absorbing-state SDID on its tokens), or fine-tune the TSM scales of a trained U-Net
    (--tsm-finetune)."""
    from snc import api
    from snc.models.checkpoint import save_checkpoint

    _output_file(output)  # before minutes of training, not after
    with _progress() as progress:
        task = progress.add_task(f"train {preset}" if preset else "TSM fine-tune", total=None, info="")

        def on_step(step: int, total: int, loss: float) -> None:
            progress.update(task, completed=step + 1, total=total, info=f"loss {loss:.4f}")

        trained = api.train(preset, tsm_finetune=tsm_finetune, steps=steps, seed=seed, batch_size=batch_size, lr=lr,
                            on_step=on_step)
    meta = trained.meta | {"command": " ".join(["snc", *sys.argv[1:]])}
    save_checkpoint(output, trained.arch, trained.model, meta)
    console.print(f"wrote {output} ({meta['train_seconds']} s, final loss {meta['final_loss_smoothed']:.4f})")


@app.command()
def sample(
    model: Path = typer.Argument(..., help="snc checkpoint (.pt) or build directory (snc compile)"),
    output: Path = typer.Option(Path("out/samples.png"), "-o", "--output", help="PNG grid; the raw samples go beside it as .npy"),
    backend: str = typer.Option("torch", "--backend",
                                help=f"{BACKEND_NAMES} (torch: the model; the others run a build's netlist)"),
    mode: Optional[str] = typer.Option(None, "--mode", help="lava: fixed | float (default: the build's); emu: fixed; "
                                                            "torch: float32 | float64"),
    sampler: Optional[str] = typer.Option(None, "--sampler", help="ddpm | ddim | analytic (Analytic-DPM) | "
                                          "dpm-solver (multistep DPM-Solver); default ddim; a spiking-diffusion-vq "
                                          "model: absorbing (its own)"),
    steps: Optional[int] = typer.Option(None, "--steps", help="sampler steps (ddim, analytic, dpm-solver; ddpm always "
                                        "runs all)"),
    order: int = typer.Option(3, "--order", help="DPM-Solver's order: 1 (DDIM), 2 or 3"),
    spacing: Optional[str] = typer.Option(None, "--spacing", help="the sampler's steps evenly in time | logsnr "
                                          "(default: logsnr for dpm-solver, time for the others)"),
    eta: float = typer.Option(0.0, "--eta", help="DDIM eta (0: deterministic)"),
    temperature: float = typer.Option(1.0, "--temperature", help="a spiking-diffusion-vq model: its token "
                                      "sampler's softmax temperature"),
    threshold_scale: float = typer.Option(1.0, "--threshold-scale", help="threshold guidance: every spiking "
                                          "threshold x S (e.g. 0.997)"),
    n: int = typer.Option(16, "-n", help="number of images"),
    batch: Optional[int] = typer.Option(None, "--batch", help="images per denoiser call (default: all n on a "
                                        "chip, 64 on torch; Lava holds a copy of the network per image, so large "
                                        "models need fewer)"),
    seed: int = _seed_option(),
    as_json: bool = typer.Option(False, "--json", help="print a JSON summary on stdout"),
    timeout: Optional[float] = _timeout_option(),
    device: Optional[str] = _device_option(),
    workers: Optional[int] = typer.Option(None, "--workers", help="sample in N shards, each a Ray task (a local "
                                          "cluster of N CPUs unless --ray-address): the same images as one process"),
    ray_address: Optional[str] = typer.Option(None, "--ray-address", help="HOST:PORT of a running Ray cluster "
                                              "for --workers (its nodes need snc and MODEL at the same path)"),
) -> None:
    """Generate images with a diffusion sampler driving the denoiser on a backend."""
    from snc import api
    from snc.runtime.images import save_grid

    _output_file(output)
    if output.suffix.lower() != ".png":  # checked before minutes of sampling, not after
        raise SncError(f"{output}: the grid is a PNG; give a name ending in .png (the raw samples go beside it "
                       f"as .npy)")
    if ray_address is not None and workers is None:
        raise SncError("--ray-address needs --workers (the number of shards to run on the cluster)")
    label = f"{sampler or 'sampling'} on {backend}" + (f" ({mode})" if mode else "")
    options = dict(backend=backend, mode=mode, sampler=sampler, steps=steps, eta=eta,
                   threshold_scale=threshold_scale, n=n, batch=batch, seed=seed, status=console.status,
                   timeout=timeout, order=order, spacing=spacing, temperature=temperature, device=device)
    with _StepBar(label + (f", {workers} workers" if workers is not None else "")) as bar:
        if workers is None:
            result = api.sample(model, on_step=bar, **options)
        else:
            result = api.sample_distributed(model, workers=workers, address=ray_address, on_step=bar, **options)
    save_grid(result.images, output)
    npy = output.with_suffix(".npy")
    np.save(npy, result.images.numpy())
    summary = {
        "model": str(model), "backend": result.backend, "mode": result.mode, "sampler": result.sampler,
        "steps": result.steps, "order": order if result.sampler == "dpm-solver" else None, "spacing": spacing,
        "temperature": result.temperature,
        "eta": eta, "threshold_scale": threshold_scale, "n": n, "batch": result.batch, "seed": seed,
        "seconds": round(result.seconds, 2), "png": str(output), "npy": str(npy),
    }
    lines = [f"wrote {n} samples to {output} (and {npy}) in {result.seconds:.1f} s"]
    if workers is not None:
        summary |= {"workers": workers, "ray_address": ray_address, "shards": result.shards,
                    "attempts": result.attempts, "cluster_seconds": round(result.cluster_seconds, 2)}
        retried = sum(a - 1 for a in result.attempts)
        lines.append(f"{len(result.shards)} shards on {workers} workers (cluster ready in "
                     f"{result.cluster_seconds:.1f} s)" + (f"; {retried} re-run after a worker died" if retried else ""))
    _emit(summary, as_json, lines)


@app.command("eval")
def evaluate(
    samples: Path = typer.Argument(..., help="samples as .npy ([N,1,8,8] in [-1,1]) or an snc .png grid"),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Sample quality of digits: Fréchet Digits Distance beside two reference points."""
    from snc import api

    r = api.evaluate(samples).as_dict()
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
    model: Optional[Path] = typer.Argument(None, help="snc checkpoint (.pt) or build directory"),
    output: Path = typer.Option(..., "-o", "--output", help="file to write (.nir, or .net for --format netx)"),
    fmt: str = typer.Option("nir", "--format", help="nir | netx (lava-dl's netx HDF5 of a build's fixed-point "
                            "netlist: chains of dense / conv / recurrent dense layers)"),
    preset: Optional[str] = typer.Option(None, "--preset", help="export a preset with random init instead"),
    nir_convention: str = typer.Option("snc", "--nir-convention", help="snc (NIR as snc reads it, extension nodes "
                                       "included) | norse (norse's from_nir) | snntorch (snnTorch's import_from_nir)"),
    at_step: Optional[int] = typer.Option(None, "--at-step", help="a denoiser at this diffusion step: its time "
                                          "embedding folded into biases (norse and snnTorch read one input)"),
    seed: int = _seed_option(),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Export the spiking core to NIR (BatchNorm folded, dt in the parameters), for snc or another reader, or a
    build to lava-dl netx."""
    from collections import Counter

    from snc import api
    from snc.compiler.nir_io import EXTENSIONS, write_graph

    if fmt not in ("nir", "netx"):
        raise SncError(f"--format must be nir or netx, not {fmt!r}")
    _output_file(output)
    if fmt == "netx":
        if model is None or not model.is_dir():
            raise SncError("--format netx exports a build directory (snc compile ... -o BUILD)")
        api.export_netx(model, output)
        _emit({"build": str(model), "netx": str(output)}, as_json, [f"wrote {output} (lava-dl netx)"])
        return
    exported = api.export(model, preset=preset, seed=seed, convention=nir_convention, at_step=at_step)
    if isinstance(exported, dict):  # a model of several cores: a file per core
        files = {name: output.with_stem(f"{output.stem}-{name}") for name in exported}
        for name, graph in exported.items():
            write_graph(files[name], graph)
        _emit({"model": str(model or preset), "convention": nir_convention,
               "nir": {name: str(f) for name, f in files.items()}}, as_json,
              [f"wrote {len(files)} cores: " + ", ".join(f"{name} {f}" for name, f in files.items())])
        return
    graph = exported
    write_graph(output, graph)
    kinds = Counter(getattr(n, "TYPE", type(n).__name__) for n in graph.nodes.values())
    result = {
        "model": str(model or preset), "nir": str(output), "convention": nir_convention, "at_step": at_step,
        "nodes": len(graph.nodes), "edges": len(graph.edges), "node_types": dict(sorted(kinds.items())),
        "extension_nodes": sum(v for k, v in kinds.items() if k in EXTENSIONS),
        "dt": graph.metadata.get("snc.dt"),
    }
    summary = ", ".join(f"{k} {v}" for k, v in sorted(kinds.items()))
    _emit(result, as_json, [f"wrote {output}: {len(graph.nodes)} nodes, {len(graph.edges)} edges ({summary})"
                            + (f"; read it with dt = {result['dt']:g}" if nir_convention == "norse" else "")])


@app.command()
def convert(
    model: Path = typer.Argument(..., help="a ReLU ANN as ONNX (.onnx; torch ANNs: torch.onnx.export), or an snc "
                                 "checkpoint of a U-Net's ANN twin (.pt, spiking: false)"),
    bits: int = typer.Option(..., "--bits", help="activation bits b: T = 2^b - 1 spiking steps per call"),
    output: Path = typer.Option(..., "-o", "--output", help="the SNN to write (.nir); beside it go the quantized "
                                "ANN (<name>.quantized.onnx) and 16 of the examples as a constant input per step "
                                "(<name>.inputs.npy: for snc compile --calibrate and snc run --input)"),
    calibrate: Path = typer.Option(..., "--calibrate", help=".npy of example inputs [N, *input shape] (an .npz "
                                   "of every input's examples by name for a model of several inputs: x and t): the "
                                   "clipping thresholds are a percentile of each activation on them; for "
                                   "--finetune, an .npz that also holds 'target' (class labels, or the outputs "
                                   "wanted: a denoiser's noise)"),
    percentile: float = typer.Option(99.9, "--percentile", help="of each activation's positive values"),
    core_output: Optional[str] = typer.Option(None, "--core-output", help="the tensor where the spiking core ends "
                                              "(default: the file's metadata snc.core_output, else the output); "
                                              "what follows it, and what the core reads computed from inputs "
                                              "other than the image, run on the host"),
    finetune: int = typer.Option(0, "--finetune", help="then train the SNN this many minibatches on the task's "
                                 "loss (surrogate gradient; SDM's 'w ft'): cross-entropy for integer targets, "
                                 "else mean squared error"),
    finetune_lr: float = typer.Option(1e-4, "--finetune-lr", help="Adam's learning rate for --finetune"),
    seed: int = _seed_option(),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Convert a ReLU ANN to an SNN (SDM section VI): activations quantized to b bits, IF neurons with reset by
    subtraction starting each call at half their threshold, optionally fine-tuned; compile the result with snc
    compile."""
    import onnx

    from snc import api
    from snc.compiler.nir_io import write_graph

    if output.suffix != ".nir":
        raise SncError(f"{output}: -o must name a .nir file: a converted SNN is a NIR graph of IF populations "
                       "shaped as its ANN, not one of snc's model families (.pt); snc compile and snc run "
                       "--backend reference (torch) take the .nir")
    quantized_path = output.with_name(output.stem + ".quantized.onnx")
    inputs_path = output.with_name(output.stem + ".inputs.npy")
    _output_file(output)
    examples = api.load_array(calibrate, "calibration data", named=True)
    converted = api.convert(model, bits=bits, calibration=examples, percentile=percentile, core_output=core_output,
                            finetune=finetune, finetune_lr=finetune_lr, seed=seed)
    write_graph(output, converted.graph)
    bare = "snc.host" not in converted.graph.metadata  # a model with host parts calibrates on its own data
    try:
        onnx.save(converted.quantized, str(quantized_path))
        if bare:
            image = examples if isinstance(examples, np.ndarray) else \
                next(v for k, v in examples.items() if k != "target")
            np.save(inputs_path, np.repeat(image[None, :16].astype(np.float32), converted.steps, axis=0))
    except OSError as exc:
        raise SncError(f"cannot write beside {output}: {exc}") from None
    result = converted.as_dict() | {"nir": str(output), "quantized_ann": str(quantized_path)} | \
        ({"inputs": str(inputs_path)} if bare else {})
    agreement = ", ".join(f"{k} {v:.2%}" for k, v in converted.count_agreement.items())
    errors, tuned = converted.output_rel_error, converted.finetuned
    _emit(result, as_json, [
        f"wrote {output}: {converted.neurons:,} IF neurons (reset by subtraction), T = {converted.steps} steps per "
        f"call ({bits} bits); the quantized ANN: {quantized_path}",
        f"on {converted.examples} calibration examples (float NIR reference): spike counts equal "
        f"to the quantized ANN's activations: {agreement}",
        f"output relative error: SNN vs quantized ANN {errors['snn_vs_quantized_ann']:.2e}, quantized ANN vs ANN "
        f"{errors['quantized_ann_vs_ann']:.2e}",
        *([f"fine-tuned {tuned['steps']} steps ({tuned['seconds']} s): {tuned['loss']} on {tuned['evaluated']} "
           f"examples {tuned['loss_before']:.4g} -> {tuned['loss_after']:.4g}"] if tuned else []),
        f"compile it: snc compile {output} --calibrate {inputs_path} -o BUILD; run it: snc run BUILD --input "
        f"{inputs_path}" if bare else f"compile it: snc compile {output} -o BUILD (its host parts are in the file); "
        "sample with it: snc sample BUILD"])


@app.command("compile")
def compile_cmd(
    model: Optional[Path] = typer.Argument(None, help="snc checkpoint (.pt), the public code's (with --arch) or NIR "
                                                       "graph (.nir)"),
    target: str = typer.Option("loihi2", "--target", help="compile target (snc.compiler.targets)"),
    output: Path = typer.Option(Path("build"), "-o", "--output", help="build directory to write"),
    mode: Optional[str] = typer.Option(None, "--mode", help="default mode of the build: fixed | float "
                                                            "(the build holds both)"),
    preset: Optional[str] = typer.Option(None, "--preset", help="compile a preset with random init instead"),
    dump_ir: Optional[Path] = typer.Option(None, "--dump-ir", help="write the IR after each pass here (reloadable)"),
    stop_after: Optional[str] = typer.Option(None, "--stop-after", help="stop after this pass and write its IR into "
                                             "the output directory (for --from-ir)"),
    from_ir: Optional[Path] = typer.Option(None, "--from-ir", help="resume from an IR dump of the same source "
                                           "(NN-pass.json of --dump-ir or --stop-after)"),
    verify: bool = typer.Option(True, "--verify/--no-verify", help="run each pass's verifier"),
    calibration: int = typer.Option(4, "--calibration", help="images per calibration step (0: none)"),
    allow_oversize: bool = typer.Option(False, "--allow-oversize", help="write the build even if it does not fit "
                                        "the target (the violations are listed)"),
    threshold_scale: float = typer.Option(1.0, "--threshold-scale", help="threshold guidance: every spiking "
                                          "threshold x S (refused where vth cannot express it)"),
    residual: str = typer.Option("graded", "--residual", help="real-valued tensors read twice (SDDPM's "
                                 "residual stream, skips): reassociate (each reader gets a copy of the convs "
                                 "behind it) | graded (a sum population sends the value as graded spikes)"),
    weight_bits: int = typer.Option(8, "--weight-bits", help="mantissa bits per weight: 8 (one synapse) | 16 (a "
                                    "coarse and a fine synapse per weight map: closer to the float model, twice "
                                    "the synapses and synaptic ops)"),
    reference_arch: Optional[str] = typer.Option(None, "--arch", help="the model is a checkpoint of the public "
                                                 "code: sddpm (Spk_UNet) | sdm-tsm (Spk_UNet_TSM)"),
    reference_config: Optional[Path] = typer.Option(None, "--config", help="with --arch: JSON of the reference "
                                                    "constructor's arguments (T, ch, ch_mult, attn, num_res_blocks, "
                                                    "dropout, timestep, img_ch; img_size, default 32)"),
    weights: str = typer.Option("net", "--weights", help="with --arch: net | ema (net_model or ema_model)"),
    dt: Optional[float] = typer.Option(None, "--dt", help="a .nir graph: seconds per step (default: the graph "
                                       "metadata's, else 1e-4)"),
    nir_convention: str = typer.Option("nir", "--nir-convention", help="a .nir graph: nir (as NIR defines it: "
                                       "snnTorch, SpikingJelly, snc) | norse (what norse 1.1's to_nir writes)"),
    timestep: Optional[int] = typer.Option(None, "--timestep", help="a .nir graph: logical steps T (default: "
                                           "the graph metadata's, else the calibration input's)"),
    calibrate: Optional[Path] = typer.Option(None, "--calibrate", help="a .nir graph: sample input .npy "
                                             "[steps, (batch,) *input_shape] to pick the fixed-point scales on"),
    seed: int = _seed_option(),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Compile a model for a target: NIR -> passes -> netlist in a build directory."""
    from snc import api
    from snc.compiler.frontends import GraphOptions

    _parent_of(output)
    graph = GraphOptions(dt, nir_convention, timestep,
                         api.load_array(calibrate, "calibration input") if calibrate is not None else None)
    compiled = api.compile(model, preset=preset, arch=reference_arch, config=reference_config, weights=weights,
                           target=target, output=output, mode=mode, calibration=calibration, seed=seed,
                           dump_ir=dump_ir, verify=verify, allow_oversize=allow_oversize,
                           threshold_scale=threshold_scale, stop_after=stop_after, from_ir=from_ir, graph=graph,
                           residual=residual, weight_bits=weight_bits)
    if isinstance(compiled, api.CompiledPipeline):  # a model of several cores: a build per core
        if as_json:
            print(json.dumps({"build": str(output), "seconds_with_writing": round(compiled.seconds, 2),
                              "stages": {name: _compile_summary(c.report, c.output, c.seconds)
                                         for name, c in compiled.stages.items()}}, indent=2, default=str))
            return
        for name, c in compiled.stages.items():
            console.rule(f"{name}: {c.build.arch}")
            _warn(c.report.warnings)
            render.passes(console, c.report)
            render.compile_report(console, c.report, c.output, c.seconds)
        console.print(f"wrote the pipeline build {output} ({', '.join(compiled.stages)}) in {compiled.seconds:.1f} s",
                      highlight=False)
        return
    report = compiled.report
    if not as_json:
        _warn(report.warnings)
    result = _compile_summary(report, output, compiled.seconds)
    if as_json:
        print(json.dumps(result, indent=2, default=str))
        return
    render.passes(console, report)
    if not report.complete:
        graph = compiled.result.graph
        console.print(f"stopped after {graph.passes[-1]}: wrote its IR to {output} "
                      f"({len(graph.passes):02d}-{graph.passes[-1]}.json; resume with --from-ir)", highlight=False)
        return
    render.compile_report(console, report, output, compiled.seconds)


def _warn(warnings: list[str]) -> None:
    for warning in warnings:
        console.print(f"[yellow]warning:[/] {warning}", highlight=False, soft_wrap=True)


def _compile_summary(report, output: Path, seconds: float) -> dict:
    return {k: v for k, v in report.as_dict().items() if k != "resources"} | {
        "build": str(output), "cores": report.resources.get("cores"), "chips": report.resources.get("chips"),
        "violations": report.resources.get("violations", []), "seconds_with_writing": round(seconds, 2)}


@app.command("run")
def run_cmd(
    build_dir: Path = typer.Argument(..., help="build directory from snc compile (any graph)"),
    inputs: Path = typer.Option(..., "--input", help=".npy of the graph input per logical step: "
                                "[steps, *input_shape] or [steps, batch, *input_shape]"),
    backend: str = typer.Option("emu", "--backend", help="lava | emu | reference (the float NIR executor)"),
    mode: Optional[str] = typer.Option(None, "--mode", help="fixed | float (default: the build's; emu: fixed)"),
    output: Optional[Path] = typer.Option(None, "-o", "--output", help=".npz to write: output [steps, batch, "
                                          "*output_shape] and count/<population> (spikes per neuron)"),
    as_json: bool = typer.Option(False, "--json"),
    timeout: Optional[float] = _timeout_option(),
    device: Optional[str] = _device_option(),
) -> None:
    """Run a compiled graph on an input sequence (snc adds the pipeline depth); write its output per step."""
    import time

    from snc import api
    from snc.runtime.graph_run import save_run

    if output is not None and not output.parent.is_dir():
        raise SncError(f"{output}: no such directory {output.parent}")
    start = time.perf_counter()
    result = api.run(build_dir, inputs, backend=backend, mode=mode, timeout=timeout, device=device)
    seconds = time.perf_counter() - start
    if output is not None:
        try:
            save_run(result, output)
        except OSError as exc:
            raise SncError(f"cannot write {output}: {exc}") from None
    summary = {"build": str(build_dir), "backend": result.backend, "mode": result.mode, "steps": result.steps,
               "batch": result.batch, "pipeline_depth": result.depth, "output_shape": list(result.output.shape),
               "spikes": result.totals(), "output": str(output) if output else None, "seconds": round(seconds, 2)}
    total = sum(summary["spikes"].values())
    _emit(summary, as_json, [f"ran {result.steps} steps x {result.batch} on {result.backend} ({result.mode}; "
                             f"pipeline depth {result.depth}): {total:,} spikes in {len(result.spikes)} populations"
                             + (f"; wrote {output}" if output else "") + f" ({seconds:.1f} s)"])


@app.command()
def verify(
    build_dir: Path = typer.Argument(..., help="build directory from snc compile"),
    n: int = typer.Option(8, "-n", help="images per diffusion step"),
    batch: Optional[int] = typer.Option(None, "--batch", help="images per chip call (default: n)"),
    backends: str = typer.Option("lava", "--backends", help="backends to compare with the torch model and each "
                                 "other, e.g. lava,emu (lava runs floating_pt and fixed_pt; lava:fixed one)"),
    seed: int = _seed_option(),
    as_json: bool = typer.Option(False, "--json"),
    timeout: Optional[float] = _timeout_option(),
    device: Optional[str] = _device_option(),
) -> None:
    """One denoiser call per diffusion step through torch and the backends; compare spikes and outputs
    (runs of the same arithmetic, the emulator and Lava fixed_pt, must be identical)."""
    import time

    from snc import api

    start = time.perf_counter()
    report = api.verify(build_dir, backends=_backends(backends), n=n, batch=batch, seed=seed, timeout=timeout,
                        device=device)
    result = report.as_dict() | {"seconds": round(time.perf_counter() - start, 1)}
    if as_json:
        print(json.dumps(result, indent=2))
    elif hasattr(report, "stages"):  # a pipeline build: every core
        for name, stage in report.stages.items():
            console.rule(name)
            render.verify_report(console, stage, result["seconds"])
    else:
        render.verify_report(console, report, result["seconds"])
    if not report.exact:
        raise SncError("runs of the same arithmetic differ (the emulator and Lava fixed_pt): a bug in one of them "
                       "(see the report above)")


@app.command()
def energy(
    source: Optional[Path] = typer.Argument(None, help="build directory, or snc checkpoint (.pt) to compile"),
    preset: Optional[str] = typer.Option(None, "--preset", help="a preset with random init (MAC counts only)"),
    profile_name: Optional[str] = typer.Option(None, "--profile", help="hw_profiles/NAME.toml to price with "
                                               "(default: the build's target)"),
    target: str = typer.Option("loihi2", "--target", help="compile target for a checkpoint or preset"),
    backend: str = typer.Option("torch", "--backend", help=f"spike counts from {BACKEND_NAMES}; a comma "
                                "list (torch,lava) compares them, the first prices"),
    mode: str = typer.Option("fixed", "--mode", help="Lava mode: fixed | float"),
    steps: Optional[int] = typer.Option(None, "--steps", help="sampler steps per sample (default: the model's)"),
    n: int = typer.Option(4, "-n", help="images per calibration step"),
    seed: int = _seed_option(),
    ann: bool = typer.Option(False, "--ann", help="also print the ANN twin vs SNN table by layer kind"),
    all_experts: bool = typer.Option(False, "--all-experts", help="a gated build (lateral transformer): "
                                     "run every expert, without the compiled selection specialisation"),
    nir_level: bool = typer.Option(False, "--nir-level", help="count a checkpoint or preset on its NIR graph "
                                   "without compiling it (papers' method only; for models too large to compile)"),
    inputs: Optional[Path] = typer.Option(None, "--input", help="a build of any graph: .npy input sequence to "
                                          "count the spikes of (snc run's); --backend lava | emu | reference"),
    as_json: bool = typer.Option(False, "--json"),
    csv_path: Optional[Path] = typer.Option(None, "--csv", help="write the per-layer table as CSV"),
    plot: Optional[Path] = typer.Option(None, "--plot", help="write a per-layer bar chart (PNG)"),
    timeout: Optional[float] = _timeout_option(),
    device: Optional[str] = _device_option(),
) -> None:
    """Energy, SOPs and resources per layer: exact (the netlist) and the papers' fr x T x FLOPs; for a build
    of any graph, of one run on --input."""
    from snc import api

    for path in (csv_path, plot):  # before minutes of counting, not after
        if path is not None and not path.parent.is_dir():
            raise SncError(f"{path}: no such directory {path.parent}")
    chosen = [b.strip() for b in backend.split(",") if b.strip()]
    if inputs is not None:
        if source is None or len(chosen) != 1 or nir_level or preset is not None:
            raise SncError("--input costs one run of a build directory on one --backend (lava | emu | reference)")
        graph_report = api.graph_energy_of(source, inputs, backend="emu" if chosen == ["torch"] else chosen[0],
                                           mode=mode, profile=profile_name, timeout=timeout, device=device)
        if csv_path is not None:
            _write_csv(csv_path, graph_report.layers)
        if as_json:
            print(json.dumps(graph_report.as_dict(), indent=2, default=str))
            return
        render.graph_energy_report(console, graph_report)
        return
    report = api.energy(source, preset=preset, profile=profile_name, target=target, backends=chosen, mode=mode,
                        steps=steps, n=n, seed=seed, specialised=not all_experts, nir_level=nir_level,
                        status=console.status, timeout=timeout, device=device)
    stages = getattr(report, "stages", None)  # a model of several cores: a report per core, in one sample
    try:
        if csv_path is not None:
            _write_csv(csv_path, [{"stage": name} | row for name, r in stages.items() for row in r.layers]
                       if stages else report.layers)
        if plot is not None:
            for name, r in (stages or {"": report}).items():
                render.energy_plot(r, plot.with_stem(f"{plot.stem}-{name}") if name else plot)
    except OSError as exc:
        raise SncError(f"cannot write the report: {exc}") from None
    if as_json:
        print(json.dumps(report.as_dict(), indent=2))
        return
    if stages:
        render.pipeline_energy_report(console, report, chosen, ann)
    else:
        render.energy_report(console, report, chosen, ann)


def _write_csv(path: Path, rows: list[dict]) -> None:
    import csv

    try:
        with open(path, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(dict.fromkeys(k for r in rows for k in r)))
            writer.writeheader()
            writer.writerows(rows)
    except OSError as exc:
        raise SncError(f"cannot write {path}: {exc}") from None


INTERRUPTED = 130  # the shell's code for SIGINT; typer returns it for Ctrl-C when not standalone


def main() -> None:
    keep_freed_memory()
    try:
        with terminating_signals():  # SIGTERM / SIGHUP stop what runs (Lava included): exit 128 + signal
            status = app(standalone_mode=False)
    except SncError as exc:
        console.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
        sys.exit(1)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except (click.exceptions.Abort, KeyboardInterrupt):
        status = INTERRUPTED
    except Terminated as exc:
        console.print(f"terminated ({exc})")
        sys.exit(128 + exc.signum)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    if status == INTERRUPTED:
        console.print("interrupted")
    if isinstance(status, int) and status:
        sys.exit(status)


if __name__ == "__main__":
    main()
