"""DDPM training of the denoisers on digits, on the CPU, deterministic under a seed.

Adam with warm-up and cosine decay and gradient clipping. The final weights are
saved, not an exponential moving average as in the DDPM reference code: averaging
the weights of a spiking net moves its membrane potentials across thresholds, and
on digits-unet the EMA model's held-out loss was 3-10x the raw model's (1.6 vs 0.18
at step 600). BatchNorm statistics are re-estimated over many batches at the end,
so eval mode sees population statistics instead of the last momentum-weighted ones.

``finetune_tsm`` is SDM's second stage (paper 004, Alg. 1): a trained U-Net
gets TSM scales p[t] = 1 and only p is fitted, with the same loop and loss.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Callable, Iterable, Optional

import torch
from torch import nn

from .data import digits
from .diffusion import Schedule, epsilon_loss, q_sample
from .presets import Config, build_model
from .unet import SpikingUNet, SpikingUNetTSM


@dataclass(frozen=True)
class TrainSettings:
    steps: int = 6000
    batch_size: int = 128
    lr: float = 2e-3
    warmup: int = 200
    grad_clip: float = 1.0
    bn_batches: int = 50
    seed: int = 0


def _lr_factor(step: int, s: TrainSettings) -> float:
    if step < s.warmup:
        return (step + 1) / s.warmup
    progress = (step - s.warmup) / max(1, s.steps - s.warmup)
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))


@torch.no_grad()
def recalibrate_batchnorm(
    model: nn.Module, schedule: Schedule, images: torch.Tensor, settings: TrainSettings, generator: torch.Generator
) -> None:
    """Replace BatchNorm running statistics by their average over noisy training batches."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # cumulative average
    model.train()
    for _ in range(settings.bn_batches):
        idx = torch.randint(len(images), (settings.batch_size,), generator=generator)
        t = torch.randint(schedule.steps, (settings.batch_size,), generator=generator)
        noise = torch.randn(images[idx].shape, generator=generator)
        model(q_sample(schedule, images[idx], t, noise), t)
    for norm in norms:
        norm.momentum = 0.1


def train_denoiser(
    arch: str,
    config: Config,
    settings: TrainSettings,
    on_step: Optional[Callable[[int, float], None]] = None,
) -> tuple[nn.Module, dict]:
    """Train on the digits training split; returns the model (eval mode) and run metadata."""
    generator = torch.Generator().manual_seed(settings.seed)
    with torch.random.fork_rng():  # parameter init draws from the global RNG: seed it locally
        torch.manual_seed(settings.seed)
        model = build_model(arch, config)
    schedule = Schedule(steps=config.diffusion_steps)
    images, _ = digits("train")
    model.train()
    start = time.perf_counter()
    loss_avg = _fit(model, model.parameters(), schedule, images, settings, generator, on_step)
    recalibrate_batchnorm(model, schedule, images, settings, generator)
    model.eval()
    return model, _run_meta(settings, loss_avg, start)


def finetune_tsm(
    base: SpikingUNet, settings: TrainSettings, on_step: Optional[Callable[[int, float], None]] = None
) -> tuple[SpikingUNetTSM, dict]:
    """SDM's TSM stage on digits: ``base``'s weights, p[t] = 1, then only every p is trained.

    Everything else stays as in ``base``, BatchNorm statistics included: the
    model runs in eval mode (the spiking neurons act the same in both modes),
    so p is fitted to the normalization it will be sampled with. Returns the
    model in eval mode and run metadata; ``base`` is not modified.
    """
    generator = torch.Generator().manual_seed(settings.seed)
    model = SpikingUNetTSM.from_unet(base).eval()
    scales = [p for name, p in model.named_parameters() if name.endswith("tsmp")]
    frozen = [p for name, p in model.named_parameters() if not name.endswith("tsmp") and p.requires_grad]
    for p in frozen:
        p.requires_grad_(False)  # no weight gradients: a step costs the forward and the input gradients only
    images, _ = digits("train")
    start = time.perf_counter()
    loss_avg = _fit(model, scales, Schedule(steps=model.config.diffusion_steps), images, settings, generator, on_step)
    for p in frozen:
        p.requires_grad_(True)
    return model, _run_meta(settings, loss_avg, start)


def _fit(
    model: nn.Module,
    parameters: Iterable[nn.Parameter],
    schedule: Schedule,
    images: torch.Tensor,
    settings: TrainSettings,
    generator: torch.Generator,
    on_step: Optional[Callable[[int, float], None]],
) -> Optional[float]:
    """Adam on ``parameters`` for ``settings.steps`` epsilon-loss steps; returns the smoothed final loss."""
    parameters = list(parameters)
    opt = torch.optim.Adam(parameters, lr=settings.lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: _lr_factor(s, settings))
    loss_avg = None
    for step in range(settings.steps):
        idx = torch.randint(len(images), (settings.batch_size,), generator=generator)
        x0 = images[idx]
        loss = epsilon_loss(model, schedule, x0, generator)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(parameters, settings.grad_clip)
        opt.step()
        sched.step()
        value = float(loss)
        loss_avg = value if loss_avg is None else 0.98 * loss_avg + 0.02 * value
        if on_step is not None:
            on_step(step, loss_avg)
    return loss_avg


def _run_meta(settings: TrainSettings, loss_avg: Optional[float], start: float) -> dict:
    return {
        "train_steps": settings.steps,
        "batch_size": settings.batch_size,
        "lr": settings.lr,
        "seed": settings.seed,
        "final_loss_smoothed": float(loss_avg) if loss_avg is not None else float("nan"),
        "train_seconds": round(time.perf_counter() - start, 1),
        "torch": str(torch.__version__),
    }


# Defaults per preset, sized to train here (2 CPU cores) well inside 15 minutes.
PRESET_SETTINGS = {
    "digits-unet": TrainSettings(steps=2500, batch_size=64, lr=2e-3),
    "digits-mlp": TrainSettings(steps=4000, batch_size=128, lr=2e-3),
    "digits-lateral": TrainSettings(steps=4000, batch_size=64, lr=1e-3),
}


# SDM fine-tunes p for under a tenth of the training iterations (paper 004, IV-B).
TSM_FINETUNE_SETTINGS = TrainSettings(steps=250, batch_size=64, lr=1e-3, warmup=25)


def default_settings(preset: str) -> TrainSettings:
    return PRESET_SETTINGS.get(preset, TrainSettings())
