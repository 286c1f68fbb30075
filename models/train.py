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

import dataclasses
import math
import time
from dataclasses import dataclass
from typing import Callable, Iterable, Optional

import torch
from torch import nn

from . import absorbing
from .data import digits
from .diffusion import Schedule, epsilon_loss, q_sample
from .presets import Config, build_model
from .spiking_diffusion import SpikingDiffusionVQ, SpikingDiffusionVQConfig
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
def recalibrate_batchnorm(model: nn.Module, run_batch: Callable[[], object], batches: int) -> None:
    """Replace BatchNorm running statistics by their average over ``batches`` calls of ``run_batch`` (a
    forward pass of ``model`` on a training batch, in training mode)."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # cumulative average
    model.train()
    for _ in range(batches):
        run_batch()
    for norm in norms:
        norm.momentum = 0.1


def train_denoiser(
    arch: str,
    config: Config,
    settings: TrainSettings,
    on_step: Optional[Callable[[int, int, float], None]] = None,
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
    loss_avg = _minimise(model.parameters(), _epsilon_batches(model, schedule, images, settings, generator), settings,
                         settings.steps, _report(on_step, 0, settings.steps), torch.optim.Adam)

    def noisy_batch() -> None:
        idx = torch.randint(len(images), (settings.batch_size,), generator=generator)
        t = torch.randint(schedule.steps, (settings.batch_size,), generator=generator)
        noise = torch.randn(images[idx].shape, generator=generator)
        model(q_sample(schedule, images[idx], t, noise), t)

    recalibrate_batchnorm(model, noisy_batch, settings.bn_batches)
    model.eval()
    return model, _run_meta(settings, loss_avg, start)


def train_spiking_diffusion(
    arch: str,
    config: SpikingDiffusionVQConfig,
    settings: TrainSettings,
    on_step: Optional[Callable[[int, int, float], None]] = None,
) -> tuple[SpikingDiffusionVQ, dict]:
    """Paper 003's two stages on the digits training split, as its public trainer: the VQ-SVAE for
    ``settings.steps`` minibatches on its reconstruction and codebook losses, then the SDID for twice as many
    (the public code trains the diffusion for twice the epochs) on the reweighted ELBO of the VQ-SVAE's tokens
    of every training image. AdamW (``settings.lr``, weight decay 1e-3, as there) with snc's warm-up and cosine
    decay and gradient clipping; BatchNorm statistics re-estimated after each stage. ``on_step`` counts the
    steps of both stages; returns the model (eval mode) and run metadata with each stage's loss."""
    generator = torch.Generator().manual_seed(settings.seed)
    with torch.random.fork_rng():  # parameter init draws from the global RNG: seed it locally
        torch.manual_seed(settings.seed)
        model = build_model(arch, config)
    images = digits("train")[0] * config.pixel_scale
    data_variance = float(images.var())
    start = time.perf_counter()

    def batch() -> torch.Tensor:
        return images[torch.randint(len(images), (settings.batch_size,), generator=generator)]

    total = 3 * settings.steps
    vq = model.vqsvae.train()
    vq_loss = _minimise(vq.parameters(), lambda: vq.losses(batch(), data_variance)["loss"], settings, settings.steps,
                        _report(on_step, 0, total), weight_decayed)
    recalibrate_batchnorm(vq, lambda: vq(batch()), settings.bn_batches)
    vq.eval()
    vq_seconds = time.perf_counter() - start
    with torch.no_grad():
        tokens = model.tokens(images / config.pixel_scale).float()
    sdid, steps = model.sdid.train(), config.sdid.diffusion_steps

    def sdid_loss() -> torch.Tensor:
        x0 = tokens[torch.randint(len(tokens), (settings.batch_size,), generator=generator)]
        return absorbing.training_loss(sdid, x0, steps, config.sdid.mask_id, generator)

    sdid_settings = dataclasses.replace(settings, steps=2 * settings.steps)
    sdid_loss_avg = _minimise(sdid.parameters(), sdid_loss, sdid_settings, sdid_settings.steps,
                              _report(on_step, settings.steps, total), weight_decayed)

    def masked_batch() -> None:
        x0 = tokens[torch.randint(len(tokens), (settings.batch_size,), generator=generator)]
        t = torch.randint(1, steps + 1, (settings.batch_size,), generator=generator)
        sdid(absorbing.q_sample(x0, t, steps, config.sdid.mask_id, generator)[0], t)

    recalibrate_batchnorm(sdid, masked_batch, settings.bn_batches)
    model.eval()
    with torch.no_grad():
        mse = float(((model.vqsvae.decode(tokens.long()) - images) ** 2).mean())
    return model, _run_meta(settings, sdid_loss_avg, start) | {
        "vqsvae_steps": settings.steps, "vqsvae_final_loss_smoothed": vq_loss, "sdid_steps": sdid_settings.steps,
        "vqsvae_seconds": round(vq_seconds, 1), "sdid_seconds": round(time.perf_counter() - start - vq_seconds, 1),
        "train_reconstruction_mse": round(mse, 6), "codes_used": int(tokens.unique().numel()),
        "data_variance": data_variance}


def weight_decayed(parameters: Iterable[nn.Parameter], lr: float) -> torch.optim.Optimizer:
    """AdamW with weight decay 1e-3: the public Spiking-Diffusion trainer's optimiser."""
    return torch.optim.AdamW(parameters, lr=lr, weight_decay=1e-3)


def _report(on_step: Optional[Callable[[int, int, float], None]], offset: int,
            total: int) -> Optional[Callable[[int, float], None]]:
    """A stage's ``(step, loss)`` callback as the trainer's ``on_step(step of all, total steps, loss)``."""
    return None if on_step is None else (lambda step, loss: on_step(offset + step, total, loss))


def _minimise(parameters: Iterable[nn.Parameter], loss_of_batch: Callable[[], torch.Tensor], settings: TrainSettings,
              steps: int, on_step: Optional[Callable[[int, float], None]],
              optimizer: Callable[..., torch.optim.Optimizer]) -> Optional[float]:
    """``steps`` minibatches of ``loss_of_batch`` with ``optimizer`` on ``parameters`` at ``settings.lr`` under
    the warm-up and cosine schedule, gradients clipped; ``on_step(step, smoothed loss)`` after each. Returns
    the smoothed final loss."""
    parameters = list(parameters)
    opt = optimizer(parameters, lr=settings.lr)
    schedule = dataclasses.replace(settings, steps=steps)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: _lr_factor(s, schedule))
    loss_avg = None
    for step in range(steps):
        loss = loss_of_batch()
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


def finetune_tsm(
    base: SpikingUNet, settings: TrainSettings, on_step: Optional[Callable[[int, int, float], None]] = None
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
    loss = _epsilon_batches(model, Schedule(steps=model.config.diffusion_steps), images, settings, generator)
    loss_avg = _minimise(scales, loss, settings, settings.steps, _report(on_step, 0, settings.steps), torch.optim.Adam)
    for p in frozen:
        p.requires_grad_(True)
    return model, _run_meta(settings, loss_avg, start)


def _epsilon_batches(model: nn.Module, schedule: Schedule, images: torch.Tensor, settings: TrainSettings,
                     generator: torch.Generator) -> Callable[[], torch.Tensor]:
    """DDPM's loss of a random minibatch of ``images``, one per call."""
    def loss() -> torch.Tensor:
        idx = torch.randint(len(images), (settings.batch_size,), generator=generator)
        return epsilon_loss(model, schedule, images[idx], generator)

    return loss


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
    # the VQ-SVAE's steps; the SDID gets twice as many. Batch 32 and lr 1e-3 as the public code.
    "digits-vq": TrainSettings(steps=2500, batch_size=32, lr=1e-3, warmup=100),
}

# trainers other than DDPM's (train_denoiser), by architecture
TRAINERS = {"spiking-diffusion-vq": train_spiking_diffusion}


# SDM fine-tunes p for under a tenth of the training iterations (paper 004, IV-B).
TSM_FINETUNE_SETTINGS = TrainSettings(steps=250, batch_size=64, lr=1e-3, warmup=25)


def default_settings(preset: str) -> TrainSettings:
    return PRESET_SETTINGS.get(preset, TrainSettings())
