"""snc as a library: every command of the ``snc`` CLI as a function with a typed result.

    from snc import api
    result = api.compile("models/checkpoints/digits-unet.pt", target="loihi2", output="build/unet")
    build = api.read_build("build/unet")
    samples = api.sample(build, backend="emu", sampler="ddim", steps=20, n=16)
    report = api.verify(build, backends=("lava", "emu"))
    energy = api.energy(build, profile="loihi2", backends=("emu",))

A source is loaded once per call (one checkpoint read, one export or NIR
read); a ``Build`` or ``Deployable`` can be passed instead of a path to
reuse what is loaded. The CLI (``snc.cli``) parses arguments, calls these
and renders the results.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
import tempfile
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, ContextManager, Mapping, Optional, Sequence, Union

import nir
import numpy as np
import torch

from snc.compiler import frontends
from snc.compiler.frontends import GraphOptions, nir_file
from snc.compiler.build import (MODEL_FILE, Build, PipelineBuild, check_destination, read_any_build, read_build,
                               write_build, write_pipeline)
from snc.compiler.driver import CompileResult, compile_deployable
from snc.compiler.frontends.base import Deployable, Pipeline
from snc.compiler.ir_io import save_graph
from snc.compiler.netx_export import write_netx
from snc.compiler.nir_export import for_reader
from snc.compiler.pass_manager import RESIDUALS, WEIGHT_BITS, CompileOptions
from snc.compiler.targets import get_target
from snc.errors import SncError
from snc.hw_profiles import load_profile
from snc.models.diffusion import Schedule
from snc.runtime.backends import BACKENDS, check_device, get_backend
from snc.runtime.energy import (EnergyReport, LoweredCount, NirLevelCount, NirModel, PipelineEnergyReport,
                                calibration_pairs, energy_report, tally_calls)
from snc.runtime.energy.graph import GraphEnergyReport, graph_energy
from snc.runtime.graph_run import GraphRun, run_graph
from snc.memory import available_mb
from snc.runtime.moments import cached_moments
from snc.runtime.samplers import check_options as check_sampler_options
from snc.runtime.samplers import timesteps_for
from snc.runtime.samplers import sample as run_sampler
from snc.runtime.verify import PipelineVerifyReport, VerifyReport, verify_build

PathLike = Union[str, Path]
Status = Callable[[str], ContextManager]  # a context shown while a step runs (the CLI: a spinner)


def _quiet(_: str) -> ContextManager:
    return contextlib.nullcontext()


def load(source: Union[PathLike, nir.NIRGraph, None] = None, *, preset: Optional[str] = None,
         arch: Optional[str] = None, config: Optional[Union[PathLike, Mapping[str, Any]]] = None, weights: str = "net",
         seed: int = 0, graph: Optional[GraphOptions] = None) -> Union[Deployable, Pipeline]:
    """A checkpoint (snc's, or the public SDDPM / SDM code's with ``arch``), a ``.nir`` file or an
    in-memory NIR graph (e.g. a framework exporter's result; read with ``graph``'s dt, convention, T and
    calibration input), or a preset, ready to compile and run."""
    if isinstance(source, nir.NIRGraph):
        g = graph or GraphOptions()
        return nir_file.from_graph(source, "NIR graph (in memory)", g.dt, g.convention, g.timestep, g.calibration)
    return frontends.load(Path(source) if source is not None else None, preset=preset, reference_arch=arch,
                          reference_config=Path(config) if isinstance(config, str) else config, weights=weights,
                          seed=seed, graph=graph)


def load_array(path: PathLike, what: str = "input", named: bool = False) -> Union[np.ndarray, dict[str, np.ndarray]]:
    """A numeric .npy file, or with ``named`` an .npz of numeric arrays by name (never unpickled); one SncError if
    it is missing or not one."""
    try:
        x = np.load(Path(path), allow_pickle=False)
        if isinstance(x, np.lib.npyio.NpzFile):
            if not named:
                x.close()
                raise SncError(f"{path}: the {what} must be one array (.npy), not an .npz")
            with x:
                x = {name: x[name] for name in x.files}
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        raise SncError(f"{path}: not a readable .npy / .npz {what} ({exc})") from None
    arrays = x.values() if isinstance(x, dict) else [x]
    if not arrays or any(not isinstance(a, np.ndarray) or a.dtype.kind not in "biuf" for a in arrays):
        raise SncError(f"{path}: the {what} must be arrays of numbers")
    return x


Source = Union[Build, Deployable, PipelineBuild, Pipeline]


def open_source(source: Union[PathLike, Source]) -> Source:
    """A build (a build directory, one core's or a pipeline's) or a deployable (a checkpoint or ``.nir``
    file), as given or read."""
    if isinstance(source, (Build, Deployable, PipelineBuild, Pipeline)):
        return source
    path = Path(source)
    return read_any_build(path) if path.is_dir() else load(path)


def export(source: Union[PathLike, Source, None] = None, *, preset: Optional[str] = None, seed: int = 0,
           convention: str = "snc", at_step: Optional[int] = None) -> Union[nir.NIRGraph, dict[str, nir.NIRGraph]]:
    """The NIR graph of one spiking step of a model's core (a checkpoint, preset or build), written for a
    reader's ``convention`` (``compiler/nir_export.py``); ``at_step``: a denoiser at that diffusion step, its
    inputs that do not depend on the image (the time embedding) folded into biases. A model of several
    cores: each core's graph, by stage."""
    if source is not None and not isinstance(source, (Build, Deployable, PipelineBuild, Pipeline)):
        source = read_any_build(Path(source)) if Path(source).is_dir() else load(source, preset=preset, seed=seed)
    elif source is None:
        source = load(preset=preset, seed=seed)
    if isinstance(source, (PipelineBuild, Pipeline)):
        if at_step is not None:
            raise SncError(f"--at-step folds a denoiser's time embedding; a {source.arch} model has none")
        return {name: export(stage, convention=convention) for name, stage in source.stages.items()}
    if isinstance(source, Build):
        graph, host = source.nir_graph, source.host if source.has_host else None
    else:
        graph, host = source.nir_graph, source.host
    constants = None
    if at_step is not None:
        if host is None:
            raise SncError("--at-step needs a denoiser (a checkpoint, preset or build of one)")
        constants = _step_constants(host, at_step)
    return for_reader(graph, convention, constants)


def export_netx(build: Union[PathLike, Build], path: PathLike) -> Path:
    """Write a build's fixed-point netlist as a lava-dl netx network (``compiler/netx_export.py``)."""
    b = build if isinstance(build, Build) else read_build(Path(build))
    write_netx(b.netlist("fixed"), Path(path))
    return Path(path)


@torch.no_grad()
def _step_constants(host, step: int) -> dict[str, Any]:
    """The host inputs of a call at diffusion step ``step`` that do not depend on the image, one step's value."""
    if not hasattr(host.config, "diffusion_steps") or not hasattr(host.config, "img_ch"):
        raise SncError("--at-step needs a denoiser of images; this core has no time embedding")
    if not 0 <= step < host.config.diffusion_steps:
        raise SncError(f"--at-step must be in 0..{host.config.diffusion_steps - 1}")
    shape = (1, host.config.img_ch, host.config.img_size, host.config.img_size)
    t = torch.full((1,), step)
    a, b = (host.core_inputs(torch.full(shape, v, dtype=torch.float64), t, None) for v in (0.0, 1.0))
    per_step = {k: v for k, v in a.items() if torch.equal(v, b[k])}
    varying = [k for k, v in per_step.items() if not torch.equal(v[0], v[-1])]
    if varying:
        raise SncError(f"inputs {', '.join(varying)} change over the spiking steps: they cannot be biases")
    return {k: v[0, 0].numpy() for k, v in per_step.items()}


@dataclass
class CompiledPipeline:
    """Every core of a pipeline model compiled (``stages``: each core's ``Compiled``, in process order)."""

    stages: dict[str, "Compiled"]
    output: Optional[Path]
    seconds: float
    build: PipelineBuild


@dataclass
class Compiled:
    result: CompileResult
    output: Optional[Path]
    seconds: float  # everything, writing included

    @property
    def build(self) -> Optional[Build]:
        return self.result.build

    @property
    def report(self):
        return self.result.report


def compile(source: Union[PathLike, Deployable, nir.NIRGraph, None] = None, *, preset: Optional[str] = None,
            arch: Optional[str] = None, config: Optional[Union[PathLike, Mapping[str, Any]]] = None,
            weights: str = "net", target: str = "loihi2", output: Optional[PathLike] = None, mode: Optional[str] = None,
            calibration: int = 4, seed: int = 0, dump_ir: Optional[PathLike] = None, verify: bool = True,
            allow_oversize: bool = False, threshold_scale: float = 1.0, stop_after: Optional[str] = None,
            from_ir: Optional[PathLike] = None, modes: Optional[Sequence[str]] = None,
            observe: Optional[Callable[[str, Any], None]] = None,
            graph: Optional[GraphOptions] = None, residual: str = "graded",
            weight_bits: int = 8) -> Union[Compiled, CompiledPipeline]:
    """Compile a source for ``target``; with ``output`` write the build there (or, when ``stop_after``
    ends the pipeline early, the IR after that pass, reloadable with ``from_ir``). ``modes``: the
    arithmetic modes to lower (default: all of the target's); ``observe(pass, graph)`` after each pass;
    ``graph``: how to read a NIR source (dt, convention, T, calibration input). A model of several cores
    (a pipeline) compiles each core, into a pipeline build. ``residual``: how real-valued tensors read twice
    reach the chip: ``reassociate`` (each reader gets its own copy of the ops behind it) or ``graded`` (a sum
    population sends the value as graded spikes). ``weight_bits``: mantissa bits per weight, 8 (one synapse)
    or 16 (a coarse and a fine synapse per weight map: twice the synapses, closer to the float model)."""
    start = time.perf_counter()
    if residual not in RESIDUALS:
        raise SncError(f"--residual {residual}: use {' or '.join(RESIDUALS)}")
    if weight_bits not in WEIGHT_BITS:
        raise SncError(f"--weight-bits {weight_bits}: use {' or '.join(map(str, WEIGHT_BITS))}")
    if output is not None and stop_after is None:
        check_destination(Path(output))  # before the compile, not after
    deployable = source if isinstance(source, (Deployable, Pipeline)) else \
        load(source, preset=preset, arch=arch, config=config, weights=weights, seed=seed, graph=graph)
    options = CompileOptions(allow_oversize=allow_oversize, threshold_scale=threshold_scale, verify=verify,
                             modes=tuple(modes) if modes is not None else None, residual=residual,
                             weight_bits=weight_bits)
    if isinstance(deployable, Pipeline):
        if stop_after or dump_ir or from_ir:
            raise SncError(f"--stop-after, --dump-ir and --from-ir work on one graph; a {deployable.arch} model "
                           f"compiles {len(deployable.stages)} cores")
        return _compile_pipeline(deployable, target, mode, options, calibration, seed, output, observe, start)
    result = compile_deployable(deployable, target, mode, options, calibration, seed, stop_after,
                                Path(dump_ir) if dump_ir is not None else None,
                                Path(from_ir) if from_ir is not None else None, observe)
    out = Path(output) if output is not None else None
    if out is not None:
        if result.build is not None:
            write_build(out, result.build, deployable.checkpoint)
        else:
            out.mkdir(parents=True, exist_ok=True)
            graph = result.graph
            save_graph(graph, out / f"{len(graph.passes):02d}-{graph.passes[-1]}")
    return Compiled(result, out, time.perf_counter() - start)


def _compile_pipeline(pipeline: Pipeline, target: str, mode: Optional[str], options: CompileOptions,
                      calibration: int, seed: int, output: Optional[PathLike],
                      observe: Optional[Callable[[str, Any], None]], start: float) -> CompiledPipeline:
    stages = {}
    for name, deployable in pipeline.stages.items():
        began = time.perf_counter()
        result = compile_deployable(deployable, target, mode, options, calibration, seed, None, None, None, observe)
        stages[name] = Compiled(result, None, time.perf_counter() - began)
    meta = {"arch": pipeline.arch, "target": target, "source": pipeline.source}
    built = PipelineBuild(meta, {name: c.build for name, c in stages.items()})
    out = Path(output) if output is not None else None
    if out is not None:
        write_pipeline(out, built, pipeline.checkpoint)
        for name, c in stages.items():
            c.output = out / name
    return CompiledPipeline(stages, out, time.perf_counter() - start, built)


@dataclass
class SampleResult:
    images: torch.Tensor  # [n, C, H, W] float32 in [-1, 1]
    backend: str
    mode: str
    sampler: str
    steps: Optional[int]
    eta: float
    threshold_scale: float
    n: int
    batch: int
    seed: int
    seconds: float  # the sampling loop
    temperature: Optional[float] = None  # a pipeline's token sampler


def sample(source: Union[PathLike, Build, Deployable], *, backend: str = "torch", mode: Optional[str] = None,
           sampler: Optional[str] = None, steps: Optional[int] = None, eta: float = 0.0, threshold_scale: float = 1.0,
           n: int = 16, batch: Optional[int] = None, seed: int = 0, on_step: Optional[Callable[[int, int], None]] = None,
           status: Status = _quiet, timeout: Optional[float] = None, order: int = 3,
           spacing: Optional[str] = None, temperature: float = 1.0, device: Optional[str] = None,
           first: int = 0) -> SampleResult:
    """Images from a diffusion sampler driving the denoiser on ``backend`` (chip backends need a build);
    ``timeout``: seconds one denoiser call of a supervised backend (Lava) may take; ``device``: the torch
    device of a backend that runs on one (``Backend.devices``; default cpu); ``order``: DPM-Solver's;
    ``spacing``: of the sampler's steps, ``time`` or ``logsnr`` (default: the sampler's own). A model of several
    cores runs its own process (``runtime/pipelines.py``; ``temperature``: its token sampler's).

    The result is images ``first .. first + n - 1`` of the run seeded ``seed``: each image draws its noise from
    its own stream (``snc.models.image_noise``), so a shard (``first``, ``n``) holds the same images as the
    whole run, given the same denoiser calls: the same ``batch`` (images per call, on every backend, torch
    included: its floats depend on the forward's batch) with ``first`` a multiple of it
    (``snc.runtime.distributed``)."""
    if n < 1 or (batch is not None and not 1 <= batch <= n):
        raise SncError("-n must be at least 1 and --batch in 1..n")
    if not (isinstance(first, int) and 0 <= first and first + n <= 2**64):
        raise SncError(f"the first image's index must be in 0..2^64-n, not {first}")
    if steps is not None and steps < 1:
        raise SncError(f"--steps must be at least 1, not {steps}")
    if not 0 < threshold_scale < float("inf"):
        raise SncError("--threshold-scale must be a positive finite number")
    chosen = get_backend(backend)
    options = chosen.call_options(timeout, check_device(device, [backend]))
    src = open_source(source)
    _check_options_apply(src, eta, order, spacing, temperature)
    if isinstance(src, (Pipeline, PipelineBuild)):
        return _sample_pipeline(src, chosen, mode, sampler, steps, threshold_scale, n, batch, seed, first, on_step,
                                options, temperature)
    sampler = sampler or "ddim"
    check_sampler_options(sampler, eta, order, spacing)
    _check_image_denoiser(src)
    with chosen.open(src, mode, batch=batch or n, threshold_scale=threshold_scale, auto_batch=batch is None,
                     **options) as runner:
        host = runner.host  # moments: the model as the runner holds it, without its own guidance
        cfg = host.config
        schedule = Schedule(steps=cfg.diffusion_steps)
        _check_images_fit(n, cfg.img_ch * cfg.img_size ** 2)
        moments = None
        if sampler == "analytic":
            with status("epsilon moments of the model on its data (Analytic-DPM)"):
                moments = cached_moments(src.path if isinstance(src, Build) else None, host.model, schedule,
                                         timesteps_for(schedule, sampler, steps, spacing),
                                         src.meta.get("files", {}).get(MODEL_FILE) if isinstance(src, Build) else None)
        start = time.perf_counter()
        images = run_sampler(runner, (n, cfg.img_ch, cfg.img_size, cfg.img_size), schedule, sampler=sampler,
                             steps=steps, eta=eta, seed=seed, first=first, on_step=on_step,
                             eps_moment=moments, order=order, spacing=spacing)
        seconds = time.perf_counter() - start
    return SampleResult(images.float(), backend, runner.mode, sampler, steps, eta, threshold_scale, n,
                        getattr(runner, "batch", batch or n), seed, seconds)


@dataclass
class DistributedSampleResult(SampleResult):
    workers: int = 1
    shards: list[tuple[int, int]] = dataclasses.field(default_factory=list)  # (first image, images) per shard
    attempts: list[int] = dataclasses.field(default_factory=list)  # starts per shard (2: its worker died once)
    cluster_seconds: float = 0.0  # starting (or joining) the Ray cluster
    address: Optional[str] = None  # the cluster joined; None: a local one of ``workers`` CPUs


RAY_WORKER_MB = 400.0  # a Ray worker process and its share of the cluster's own (measured: about 250 MB)


def sample_distributed(source: Union[PathLike, Build], *, workers: int, address: Optional[str] = None,
                       backend: str = "torch", mode: Optional[str] = None, sampler: Optional[str] = None,
                       steps: Optional[int] = None, eta: float = 0.0, threshold_scale: float = 1.0, n: int = 16,
                       batch: Optional[int] = None, seed: int = 0, on_step: Optional[Callable[[int, int], None]] = None,
                       status: Status = _quiet, timeout: Optional[float] = None, order: int = 3,
                       spacing: Optional[str] = None, temperature: float = 1.0,
                       device: Optional[str] = None) -> DistributedSampleResult:
    """``sample`` with its images in contiguous shards, each one Ray task (``snc.runtime.distributed``) on a
    local cluster of ``workers`` CPUs or, with ``address`` (HOST:PORT), on a running cluster whose nodes have
    snc and the source at the same path. The images equal ``sample``'s with the same arguments bit for bit:
    every image has its own random stream, and the shards are cut so that each makes the one-process run's
    denoiser calls (at multiples of ``batch`` or, left to snc, of the backend's ``split_batch``); a shard whose
    worker dies re-runs. ``on_step``: the sampler steps done, averaged over the images."""
    from snc.runtime import distributed

    if not (isinstance(workers, int) and workers >= 1):
        raise SncError(f"--workers must be at least 1, not {workers}")
    if address is not None:
        distributed.check_address(address)
    if n < 1 or (batch is not None and not 1 <= batch <= n):
        raise SncError("-n must be at least 1 and --batch in 1..n")
    chosen = get_backend(backend)
    chosen.call_options(timeout, check_device(device, [backend]))
    where = getattr(source, "path", source) if isinstance(source, (Build, PipelineBuild)) else source
    if where is None or isinstance(source, (Deployable, Pipeline)):
        raise SncError("distributed sampling reads its source in every worker: give a checkpoint or build path")
    path = str(Path(where).resolve())
    src = open_source(source)
    _check_options_apply(src, eta, order, spacing, temperature)
    cores = [src.stage(name) for name in src.stages] if isinstance(src, (Pipeline, PipelineBuild)) else [src]
    if not isinstance(src, (Pipeline, PipelineBuild)):
        check_sampler_options(sampler or "ddim", eta, order, spacing)
        _check_image_denoiser(src)
        cfg = src.host.config
        _check_images_fit(n, cfg.img_ch * cfg.img_size ** 2)
        if (sampler or "ddim") == "analytic" and isinstance(src, Build):  # cached once, read by every shard
            schedule = Schedule(steps=cfg.diffusion_steps)
            with status("epsilon moments of the model on its data (Analytic-DPM)"):
                cached_moments(src.path, src.host.model, schedule, timesteps_for(schedule, "analytic", steps, spacing),
                               src.meta.get("files", {}).get(MODEL_FILE))
    unit = batch or chosen.split_batch
    shards = distributed.plan_shards(n, workers, unit)
    if address is None:
        _check_workers_fit(chosen, cores, mode, batch, len(shards))
    kwargs = dict(backend=backend, mode=mode, sampler=sampler, steps=steps, eta=eta, threshold_scale=threshold_scale,
                  seed=seed, timeout=timeout, order=order, spacing=spacing, temperature=temperature, device=device)
    run = functools.partial(_sample_shard, path, batch, kwargs)
    threads = torch.get_num_threads() if chosen.split_batch else None  # torch's kernels differ with threads
    done = distributed.run_shards(run, shards, workers, address, on_step, threads)
    parts = done.results
    head = parts[0]
    return DistributedSampleResult(
        torch.cat([p.images for p in parts]), head.backend, head.mode, head.sampler, head.steps, eta,
        threshold_scale, n, batch or head.batch, seed, done.seconds, head.temperature, workers,
        [(s.first, s.n) for s in done.shards], done.attempts, done.cluster_seconds, address)


def _sample_shard(path: str, batch: Optional[int], kwargs: dict[str, Any], first: int, n: int,
                  on_step: Callable[[int, int], None]) -> SampleResult:
    """One shard of ``sample_distributed`` (in a Ray worker): images ``first .. first + n - 1``."""
    return sample(path, n=n, first=first, batch=None if batch is None else min(batch, n), on_step=on_step, **kwargs)


def _check_workers_fit(chosen, cores: Sequence[Any], mode: Optional[str], batch: Optional[int], workers: int) -> None:
    """Refuse, on this machine's cluster, workers whose runs together would not fit the available memory."""
    estimates = []
    for core in cores:
        if isinstance(core, Build):
            run_mode = mode or (core.default_mode if core.default_mode in chosen.modes else chosen.default_mode)
            if run_mode in core.modes:
                estimates.append(chosen.run_mb(core.netlist(run_mode), batch or 1))
    known = [e for e in estimates if e is not None]
    available = available_mb()
    if not known or available is None:
        return
    need = workers * (max(known) + RAY_WORKER_MB)
    if need > available:
        raise SncError(f"{workers} workers on {chosen.name} would need about {need / 1024:.1f} GB "
                       f"({max(known) / 1024:.1f} GB per {chosen.name} run of {batch or 1} image(s), an estimate, "
                       f"and a Ray worker each), {max(available, 0) / 1024:.1f} GB is available; use fewer "
                       f"--workers, a smaller --batch or --backend emu")


def _sample_pipeline(src: Union[Pipeline, PipelineBuild], chosen, mode: Optional[str], sampler: Optional[str],
                     steps: Optional[int], threshold_scale: float, n: int, batch: Optional[int], seed: int, first: int,
                     on_step: Optional[Callable[[int, int], None]], options: dict[str, Any],
                     temperature: float) -> SampleResult:
    from snc.runtime.pipelines import process_for

    process = process_for(src.arch, sampler, sampling=True)

    def open_stage(name: str):
        return chosen.open(src.stage(name), mode, batch=batch or n, threshold_scale=threshold_scale,
                           auto_batch=batch is None, **options)

    start = time.perf_counter()
    result = process.run(open_stage, n, steps, temperature, seed, first, on_step)
    seconds = time.perf_counter() - start
    return SampleResult(result.images.float(), chosen.name, result.mode, process.sampler, result.calls["sdid"],
                        0.0, threshold_scale, n, result.batch, seed, seconds, temperature)


def _check_options_apply(src: Union[Build, Deployable, Pipeline, PipelineBuild], eta: float, order: int,
                         spacing: Optional[str], temperature: float) -> None:
    """Refuse a sampler option the model's sampling does not read (given other than its default): a model of
    several cores runs its own process (no DDIM eta, DPM-Solver order or step spacing); an image denoiser has
    no token sampler (no temperature)."""
    if isinstance(src, (Pipeline, PipelineBuild)):
        given = [flag for flag, unread in (("--eta", eta != 0.0), ("--order", order != 3),
                                           ("--spacing", spacing is not None)) if unread]
        if given:
            raise SncError(f"{', '.join(given)}: a {src.arch} model samples with its own process, which does not "
                           f"read {'them' if len(given) > 1 else 'it'}")
    elif temperature != 1.0:
        raise SncError("--temperature: only a spiking-diffusion-vq model's token sampler reads it")


def _check_image_denoiser(src: Union[Build, Deployable]) -> None:
    """Refuse a core that is not an image denoiser (one core of a model of several: it samples only within
    its pipeline) before any backend opens."""
    cfg = src.host.config if src.host is not None else None
    if cfg is not None and not all(hasattr(cfg, k) for k in ("img_ch", "img_size", "diffusion_steps")):
        raise SncError(f"a {src.arch} core is not an image denoiser: it samples within its model's pipeline "
                       "(compile the whole model and sample that build)")


SAMPLER_COPIES = 6  # float64 tensors of all images a sampler step holds (x, x0, eps, mean, noise, output)


def _check_images_fit(n: int, values_per_image: int) -> None:
    """Refuse an -n whose images alone (the sampler's float64 working copies) exceed the available memory."""
    need = n * values_per_image * 8 * SAMPLER_COPIES / 2**20
    available = available_mb()
    if available is not None and need > available:
        raise SncError(f"-n {n}: the sampler's images alone need about {need / 1024:.1f} GB, "
                       f"{max(available, 0) / 1024:.1f} GB is available; sample fewer images per command")


def verify(source: Union[PathLike, Build, PipelineBuild], *, backends: Sequence[str] = ("lava",), n: int = 8,
           batch: Optional[int] = None, seed: int = 0, timeout: Optional[float] = None,
           device: Optional[str] = None) -> Union[VerifyReport, PipelineVerifyReport]:
    """One denoiser call per diffusion step (0.1, 0.5, 0.9 of the schedule) on the torch model and each
    backend; every pair compared (``VerifyReport.exact``: the same arithmetic agreed bit for bit). A pipeline
    build: every core, each on its own calls. ``device``: of the backends that run on one (see ``sample``)."""
    if n < 1:
        raise SncError("-n must be at least 1")
    build = source if isinstance(source, (Build, PipelineBuild)) else read_any_build(Path(source))
    if isinstance(build, PipelineBuild):
        return PipelineVerifyReport({name: verify_build(stage, n=n, seed=seed, backends=tuple(backends), batch=batch,
                                                        timeout=timeout, device=device)
                                     for name, stage in build.stages.items()})
    return verify_build(build, n=n, seed=seed, backends=tuple(backends), batch=batch, timeout=timeout, device=device)


def energy(source: Union[PathLike, Source, None] = None, *, preset: Optional[str] = None,
           profile: Optional[str] = None, target: str = "loihi2", backends: Sequence[str] = ("torch",),
           mode: str = "fixed", steps: Optional[int] = None, n: int = 4, seed: int = 0, specialised: bool = True,
           nir_level: bool = False, status: Status = _quiet, timeout: Optional[float] = None,
           device: Optional[str] = None) -> Union[EnergyReport, PipelineEnergyReport]:
    """Energy, SOPs and resources per layer of a build (or of a checkpoint / preset compiled in memory for
    ``target``, or with ``nir_level`` counted on its NIR graph), spike counts from ``backends[0]`` (the
    others compared), priced on ``profile`` (default: the build's target). A model of several cores: one
    sample, every core's calls (``steps``: the sampling steps); ``device``: see ``sample``."""
    if not backends or len(set(backends)) != len(backends) or not set(backends) <= set(BACKENDS):
        raise SncError(f"--backend takes {' / '.join(BACKENDS)} or a comma list of them, got {','.join(backends)!r}")
    on_device = check_device(device, backends)
    if n < 1 or (steps is not None and steps < 1):
        raise SncError("-n and --steps must be positive")
    if mode not in get_target(target).modes:
        raise SncError(f"--mode must be {' or '.join(get_target(target).modes)}")
    if (source is None) == (preset is None):
        raise SncError("give a build directory or checkpoint, or --preset NAME (not both)")
    src = open_source(source) if source is not None else load(preset=preset, seed=seed)
    if isinstance(src, (Pipeline, PipelineBuild)):
        from snc.runtime.pipelines import process_for

        calls = process_for(src.arch).calls(steps, lambda name: src.stage(name).host)
        return PipelineEnergyReport(src.arch, {
            name: energy(src.stage(name), profile=profile, target=target, backends=backends, mode=mode, steps=count,
                         n=n, seed=seed, specialised=specialised, nir_level=nir_level, status=status, timeout=timeout,
                         device=device)
            for name, count in calls.items()})
    if nir_level:
        if list(backends) != ["torch"] or isinstance(src, Build) or (isinstance(src, Deployable) and src.host is None):
            raise SncError("--nir-level counts a checkpoint (.pt) or --preset with torch spikes (--backend torch)")
        deployable = src
        price = load_profile(profile or target)
        with status("counting on the NIR graph with torch spikes"):
            model = NirModel(deployable.nir_graph, deployable.timestep, deployable.arch, keep_graph=True)
            counted = NirLevelCount(model, deployable.gate_table())
            host = deployable.host
            with get_backend("torch").open(deployable, "float64", record=True) as runner:
                counts = [tally_calls(runner, counted, model, calibration_pairs(host, n, seed), specialised)]
            report = energy_report(host, counted, model, price, counts, steps)
        return dataclasses.replace(report, random_init=deployable.random_init)
    model = None
    if isinstance(src, Build):
        build = src
    else:
        if isinstance(src, Deployable) and src.host is None:
            raise SncError(f"{source}: a NIR file has no host parts to run; compile the checkpoint it came from")
        deployable = src

        def papers_layers(name: str, graph: Any) -> None:  # the compile's own import, as the papers count it
            nonlocal model
            if name == "partition_host":
                model = NirModel(deployable.nir_graph, deployable.timestep, deployable.arch, imported=graph)

        # a report counts a graph whether or not it fits (the resources list the violations), on the chip's
        # integers; the other mode's netlist only if a backend runs it, and the IR is not kept
        chip = get_target(target).modes[0]
        modes = (chip,) + ((mode,) if mode != chip and any(b != "torch" for b in backends) else ())
        with status("compiling"):
            build = compile(deployable, target=target, seed=seed, allow_oversize=True, modes=modes,
                            observe=papers_layers).build
    price = load_profile(profile or build.target)
    host = build.host
    model = model or NirModel(build.nir_graph, host.config.timestep, build.arch)
    counted = LoweredCount(build.netlist(build.modes[0]))  # the chip's integers
    pairs = calibration_pairs(host, n, seed)
    counts = []
    for name in backends:
        backend = get_backend(name)
        run_mode = "float64" if name == "torch" else mode
        with status(f"counting spikes on {name}"), \
                backend.open(build, run_mode, batch=n, record=True, specialised=specialised, auto_batch=True,
                             **backend.call_options(timeout, on_device)) as runner:
            counts.append(tally_calls(runner, counted, model, pairs, specialised))
    report = energy_report(host, counted, model, price, counts, steps)
    return dataclasses.replace(report, random_init=bool(build.meta.get("host_meta", {}).get("random_init")))


def run(build: Union[PathLike, Build], inputs: Union[PathLike, np.ndarray], *, backend: str = "emu",
        mode: Optional[str] = None, timeout: Optional[float] = None, device: Optional[str] = None) -> GraphRun:
    """Run a compiled graph on an input sequence (``[steps, *input_shape]`` or ``[steps, batch,
    *input_shape]``, an array or a .npy file) on ``backend`` (lava, emu, reference: the float NIR executor);
    ``device``: see ``sample``."""
    b = build if isinstance(build, Build) else read_build(Path(build))
    x = inputs if isinstance(inputs, np.ndarray) else load_array(inputs)
    return run_graph(b, x, backend, mode, timeout, device)


def graph_energy_of(build: Union[PathLike, Build], inputs: Union[PathLike, np.ndarray], *, backend: str = "emu",
                    mode: Optional[str] = None, profile: Optional[str] = None,
                    timeout: Optional[float] = None, device: Optional[str] = None) -> GraphEnergyReport:
    """Energy, SOPs and resources of a compiled graph for the spikes of a run on ``inputs``."""
    b = build if isinstance(build, Build) else read_build(Path(build))
    result = run(b, inputs, backend=backend, mode=mode, timeout=timeout, device=device)
    net = b.netlist(b.modes[0]).for_steps(result.steps)  # counted on the chip's integers
    return graph_energy(net, result.spikes, result.backend, result.mode, load_profile(profile or b.target))


@dataclass
class Trained:
    arch: str
    model: torch.nn.Module
    meta: dict[str, Any]


def train(preset: Optional[str] = None, *, tsm_finetune: Optional[PathLike] = None, steps: Optional[int] = None,
          seed: int = 0, batch_size: Optional[int] = None, lr: Optional[float] = None,
          on_step: Optional[Callable[[int, int, float], None]] = None) -> Trained:
    """Train a digits model of ``preset`` (a denoiser with DDPM; ``digits-vq``: its VQ-SVAE, then its SDID;
    ``models.train.TRAINERS``), or fine-tune the TSM scales of an snc U-Net checkpoint (``tsm_finetune``);
    ``on_step(step, steps, loss)`` after every optimizer step."""
    from snc.models import preset as get_preset
    from snc.models.checkpoint import load_checkpoint
    from snc.models.train import TRAINERS, TSM_FINETUNE_SETTINGS, default_settings, finetune_tsm, train_denoiser

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
    if not (isinstance(settings.lr, (int, float)) and math.isfinite(settings.lr) and settings.lr > 0):
        raise SncError(f"--lr must be a positive finite number, not {settings.lr}")
    if tsm_finetune is not None:
        model, meta = finetune_tsm(base.model, settings, on_step)
    else:
        model, meta = TRAINERS.get(arch, train_denoiser)(arch, config, settings, on_step)
    bad = [name for name, p in model.state_dict().items() if p.is_floating_point() and not torch.isfinite(p).all()]
    if bad:
        raise SncError(f"training diverged (final loss {meta.get('final_loss_smoothed')}): {len(bad)} tensors hold "
                       f"NaN or inf (first: {bad[0]}); no checkpoint written: try a smaller --lr")
    return Trained(arch, model, meta | origin)


def evaluate(samples: Union[PathLike, torch.Tensor]):
    """The Fréchet Digits Distance of samples ([N, 1, 8, 8] in [-1, 1], or a .npy / snc .png file) beside
    its two references (``models.quality.QualityReport``)."""
    from snc.models.quality import evaluate_samples
    from snc.runtime.images import load_samples

    images = samples if isinstance(samples, torch.Tensor) else load_samples(samples)
    if images.numel() and not (torch.isfinite(images).all() and images.abs().max() <= 1 + 1e-6):
        raise SncError(f"{samples}: samples must be finite values in [-1, 1] (these span "
                       f"[{images.min().item():.3g}, {images.max().item():.3g}])")
    try:
        return evaluate_samples(images)
    except ValueError as exc:
        raise SncError(f"{samples}: {exc}") from None


@dataclass
class Converted:
    """An ANN converted to an SNN (``compiler/ann_to_snn.py``), with its agreement measured on examples."""
    graph: nir.NIRGraph  # the SNN (snc.SubtractiveIF neurons), T = 2^bits - 1 steps per call; fine-tuned if asked
    quantized: Any  # onnx.ModelProto: the quantized ANN (eq. 21) the SNN is measured against
    source: str
    bits: int
    steps: int
    thresholds: dict[str, float]  # activation tensor -> its clipping threshold s (= the neurons' threshold)
    examples: int  # how many calibration examples the agreement was measured on
    count_agreement: dict[str, float]  # per activation: spike counts equal to the quantized ANN's levels
    output_rel_error: dict[str, float]  # "snn_vs_quantized_ann", "quantized_ann_vs_ann" (before fine-tuning)
    ann_macs: dict[str, int]  # per conv / affine layer of the ANN, one example: its energy's basis
    finetuned: Optional[dict[str, Any]] = None  # ``snn_finetune.Finetuned.as_dict()``, if fine-tuned

    def as_dict(self) -> dict[str, Any]:
        return {"source": self.source, "bits": self.bits, "steps": self.steps, "thresholds": self.thresholds,
                "examples": self.examples, "count_agreement": self.count_agreement,
                "output_rel_error": self.output_rel_error, "neurons": self.neurons, "ann_macs": self.ann_macs,
                "finetuned": self.finetuned}

    @property
    def neurons(self) -> int:
        from snc.compiler.nir_io import SubtractiveIF

        return sum(int(np.prod(n.v_threshold.shape)) for n in self.graph.nodes.values() if isinstance(n, SubtractiveIF))


def convert(source: PathLike, *, bits: int, calibration: Union[PathLike, np.ndarray, dict[str, np.ndarray]],
            percentile: float = 99.9, examples: int = 64, core_output: Optional[str] = None,
            finetune: int = 0, finetune_lr: float = 1e-4, seed: int = 0) -> Converted:
    """A ReLU ANN (ONNX) as an SNN of IF neurons with reset by subtraction at ``bits`` bits (T = 2^bits - 1),
    its clipping thresholds calibrated on ``calibration`` (example inputs: [N, *input_shape], or an .npz /
    mapping of every input's examples) at ``percentile``; the SNN is run on the first ``examples`` of them (the
    float NIR reference executor, between the host parts if the model has any: ``core_output``) and compared
    with the quantized ANN (onnx2torch's run of it). ``finetune``: then train the SNN that many minibatches on
    the task's loss (``compiler/snn_finetune``), whose targets the calibration mapping holds as ``target``."""
    import onnx

    from snc.compiler.ann_to_snn import (ann_macs, calibrate, convert as convert_ann, example_data, quantized_model,
                                         snn_forward, steps_of)
    from snc.compiler.frontends.onnx_ann import read_onnx, torch_module
    from snc.compiler.snn_finetune import finetune as finetune_snn

    path = Path(source)
    if path.suffix not in (".onnx", ".pt"):
        raise SncError(f"{path}: snc converts ANNs held as ONNX (.onnx; export a torch ANN with torch.onnx.export) "
                       "or as an snc checkpoint of an ANN twin (.pt)")
    T = steps_of(bits)
    if not 1 <= examples:
        raise SncError("examples must be at least 1")
    if finetune < 0 or not (math.isfinite(finetune_lr) and finetune_lr > 0):
        raise SncError(f"fine-tuning needs steps >= 0 and a finite learning rate > 0 (got {finetune}, {finetune_lr})")
    if path.suffix == ".pt":  # through the family's own ONNX writer, read as any ONNX file
        from snc.compiler.frontends import ann_onnx

        with tempfile.TemporaryDirectory(prefix="snc-convert-") as tmp:
            ann = read_onnx(ann_onnx(path, Path(tmp) / f"{path.stem}.onnx"), core_output)
        ann.source = str(path)
    else:
        ann = read_onnx(path, core_output)
    if isinstance(calibration, (str, Path)):
        calibration = load_array(calibration, "calibration data", named=True)
    target = None
    if isinstance(calibration, dict):
        calibration = dict(calibration)
        target = calibration.pop("target", None)
    if finetune and target is None:
        raise SncError("fine-tuning trains on the task's own loss: give the calibration data as an .npz of the "
                       "ANN's inputs and 'target' (class labels, or the outputs wanted, e.g. a denoiser's noise)")
    data = example_data(ann, calibration)
    thresholds = calibrate(ann, data, percentile)
    graph = convert_ann(ann, thresholds, bits)
    quantized = quantized_model(ann.model, thresholds, bits)
    some = {k: v[:examples] for k, v in data.items()}
    levels = [f"{name}/q/clipped" for name in thresholds]  # the quantized ANN's integer activations
    probe = onnx.ModelProto()
    probe.CopyFrom(quantized)
    del probe.graph.output[1:]  # the model's output (an ANN may give its core output too)
    probe.graph.output.extend(onnx.helper.make_empty_tensor_value_info(n) for n in levels)
    with torch.no_grad():
        outs = torch_module(probe, str(path))(*ann.examples(some))
        ann_out = ann.module(*ann.examples(some))
    ann_out = (ann_out[0] if isinstance(ann_out, (tuple, list)) else ann_out).double()
    q_out, level_values = outs[0].double(), [o.numpy() for o in outs[1:]]
    image = ann.host.core_input if ann.host else ann.input_names[0]
    order = [image] + [n for n in ann.input_names if n != image]  # the image first, as the SNN takes them
    snn_out, run = snn_forward(graph)([torch.from_numpy(np.asarray(some[n])) for n in order], record=True)
    counts = activation_counts(graph, run)
    count_agreement = {tensor: float((counts[tensor].numpy().reshape(values.shape) == values).mean())
                       for tensor, values in zip(thresholds, level_values)}

    def rel(a: torch.Tensor, b: torch.Tensor) -> float:  # a [N, *canonical shape] (the SNN's) or as b
        return float((a.reshape(b.shape) - b).norm() / b.norm().clamp_min(1e-300))

    tuned = None
    if finetune:
        tuned = finetune_snn(graph, [data[n] for n in order], np.asarray(target), steps=finetune, lr=finetune_lr,
                             seed=seed)
        graph = tuned.graph
    return Converted(graph, quantized, str(path), bits, T, thresholds, len(q_out), count_agreement,
                     {"snn_vs_quantized_ann": rel(snn_out, q_out), "quantized_ann_vs_ann": rel(q_out, ann_out)},
                     ann_macs(ann.fixed), tuned.as_dict() if tuned else None)


def activation_counts(graph: nir.NIRGraph, run: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """ANN activation tensor -> the spike counts [N, *shape] of its population(s) in a recorded run (the converter
    records the tensor, and for a concatenation's parts the rows each covers, in the node's metadata)."""
    parts: dict[str, list[tuple[int, torch.Tensor]]] = {}
    for name, node in graph.nodes.items():
        meta = node.metadata or {}
        if "snc.activation" in meta:
            start = int(np.asarray(meta.get("snc.rows", [0]))[0])
            parts.setdefault(str(meta["snc.activation"]), []).append((start, run[name].sum(0)))
    return {tensor: torch.cat([c for _, c in sorted(found, key=lambda p: p[0])], dim=1)
            for tensor, found in parts.items()}
