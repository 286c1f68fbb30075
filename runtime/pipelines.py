"""How a model that runs as several cores (a pipeline build, ``compiler/build.py``) makes samples: which
core runs when, by the pipeline's arch. One core's network is open at a time (Lava holds a network copy
per image: the cores never compete for memory), each on the same backend and mode.

- ``spiking-diffusion-vq``: the absorbing-state sampler (``models/absorbing.py``) over the SDID's calls
  (one per sampling step, all images at once), then one decoder call on the token grids; the decoder's
  images (the VQ-SVAE's range) over ``pixel_scale``, clipped to [-1, 1].
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, ContextManager, Optional

import torch

from snc.errors import SncError
from snc.models import absorbing
from snc.models.spiking_diffusion import SpikingDiffusionVQ

from snc.compiler.frontends.base import HostProgram

from .backends.base import Runner

OpenStage = Callable[[str], ContextManager[Runner]]  # a runner for the stage of that name
OnStep = Callable[[int, int], None]  # (calls done, calls in all)


@dataclass
class PipelineSample:
    images: torch.Tensor  # [n, C, H, W] float64 in [-1, 1]
    mode: str
    batch: int
    calls: dict[str, int]  # per stage


def sample_spiking_diffusion(open_stage: OpenStage, n: int, steps: Optional[int], temperature: float,
                             seed: int, first: int = 0, on_step: Optional[OnStep] = None) -> PipelineSample:
    """``n`` images (``first ..`` of the run seeded ``seed``, each from its own random stream): token grids
    from the absorbing diffusion with the SDID on the chip (``steps`` sampling steps, default the SDID's
    diffusion steps), then the decoder on the chip."""
    if not temperature > 0:
        raise SncError(f"--temperature must be positive, not {temperature}")
    with open_stage("sdid") as sdid:
        cfg = sdid.host.config
        steps = steps or cfg.diffusion_steps
        total = steps + 1
        tick = (lambda step: on_step(steps - step + 1, total)) if on_step is not None else None
        tokens = absorbing.sample(sdid, n, (cfg.latent_size, cfg.latent_size), cfg.mask_id, steps, temperature,
                                  seed, first, tick)
        mode, batch = sdid.mode, getattr(sdid, "batch", n)
    with open_stage("decoder") as decoder:
        images = decoder(tokens.double(), torch.zeros(n, dtype=torch.long))
        model = decoder.host.model
        scale = model.config.pixel_scale if isinstance(model, SpikingDiffusionVQ) else 0.5
    if on_step is not None:
        on_step(total, total)
    return PipelineSample(torch.clamp(images.double() / scale, -1, 1), mode, batch, {"sdid": steps, "decoder": 1})


def spiking_diffusion_calls(steps: Optional[int], host_of: Callable[[str], HostProgram]) -> dict[str, int]:
    """Calls of each core per sample: one SDID call per sampling step, one decoder call."""
    return {"sdid": steps or host_of("sdid").config.diffusion_steps, "decoder": 1}


@dataclass(frozen=True)
class Process:
    """What a pipeline's sample (or, for a model that does not generate, its one use) runs."""

    calls: Callable[[Optional[int], Callable[[str], HostProgram]], dict[str, int]]  # (steps, a stage's host) -> calls
    sampler: Optional[str] = None  # its name (``--sampler``); None: the model does not generate
    run: Optional[Callable[..., PipelineSample]] = None  # (open_stage, n, steps, temperature, seed, first, on_step)


PROCESSES: dict[str, Process] = {
    "spiking-diffusion-vq": Process(spiking_diffusion_calls, "absorbing", sample_spiking_diffusion),
    "vq-svae": Process(lambda steps, host_of: {"encoder": 1, "decoder": 1}),  # a reconstruction
}


def process_for(arch: str, sampler: Optional[str] = None, sampling: bool = False) -> Process:
    """The process of the pipeline ``arch``; ``sampling``: it must generate, with ``sampler`` its own (or None)."""
    if arch not in PROCESSES:
        raise SncError(f"no process for the pipeline {arch!r}")
    process = PROCESSES[arch]
    if sampling and process.run is None:
        raise SncError(f"a {arch} model does not generate images (it reconstructs them: snc verify / energy take it)")
    if sampling and sampler not in (None, process.sampler):
        raise SncError(f"a {arch} model samples with --sampler {process.sampler} (its own process), not {sampler}")
    return process
