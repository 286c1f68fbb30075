"""Absorbing-state (masking) discrete diffusion over token grids, as the public Spiking-Diffusion code
(Austin et al.'s absorbing D3PM in the form of Bond et al.): at step t of S each token is masked with
probability t/S; the denoiser predicts the clean tokens; sampling unmasks positions until none is left.

Training draws from an explicit ``torch.Generator`` (the public code draws from the global RNG). Sampling
draws each image's randomness from its own stream (``snc.models.image_noise``: image ``first + j`` of the
run seeded ``seed``), in the same order per step: its mask draw, then its token draws.
"""

from __future__ import annotations

import math
from typing import Callable, Optional

import torch
import torch.nn.functional as F

from . import image_noise

# the denoiser's call: token ids as floats [B, 1, h, w] (mask id = K) and steps t [B] -> logits [B, K, h, w]
Logits = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def q_sample(x0: torch.Tensor, t: torch.Tensor, steps: int, mask_id: int,
             generator: Optional[torch.Generator] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Tokens ``x0 [B, 1, h, w]`` masked at steps ``t [B]`` (1..steps): each position independently with
    probability ``t / steps``. Returns ``(x_t, target)``: the target is ``x0`` where masked, -1 elsewhere."""
    mask = torch.rand(x0.shape, generator=generator) < (t.reshape(-1, 1, 1, 1).float() / steps)
    x_t = torch.where(mask, torch.full_like(x0, mask_id), x0)
    target = torch.where(mask, x0, torch.full_like(x0, -1))
    return x_t, target


def reweighted_elbo(logits: torch.Tensor, target: torch.Tensor, t: torch.Tensor, steps: int) -> torch.Tensor:
    """The public training loss: cross-entropy summed over the masked positions of each sample, weighted by
    ``1 - t / steps``, in bits per position; the batch mean (a fully masked input has weight 0)."""
    b, k = logits.shape[:2]
    positions = target[0].numel()
    ce = F.cross_entropy(logits.reshape(b, k, -1), target.reshape(b, -1).long(), ignore_index=-1,
                         reduction="none").sum(1)
    return ((1 - t / steps) * ce / (math.log(2) * positions)).mean()


def training_loss(denoiser: Logits, x0: torch.Tensor, steps: int, mask_id: int,
                  generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """One batch's loss: ``t`` uniform in 1..steps, ``x0`` masked at it, the denoiser's reweighted ELBO."""
    t = torch.randint(1, steps + 1, (x0.shape[0],), generator=generator)
    x_t, target = q_sample(x0, t, steps, mask_id, generator)
    return reweighted_elbo(denoiser(x_t.float(), t), target, t, steps)


@torch.no_grad()
def sample(denoiser: Logits, n: int, grid: tuple[int, int], mask_id: int, steps: int, temperature: float = 1.0,
           seed: int = 0, first: int = 0, on_step: Optional[Callable[[int], None]] = None) -> torch.Tensor:
    """Tokens ``[n, 1, h, w]`` (int64) of images ``first .. first + n - 1`` of the run seeded ``seed``: from all
    masks, for t = steps .. 1 each still-masked position is unmasked with probability 1/t (all at t = 1) to a
    draw from ``softmax(logits / temperature)``; unmasked tokens are never revisited. The denoiser sees the
    raw step t, as the public code's."""
    if not temperature > 0:
        raise ValueError(f"the temperature must be positive, got {temperature}")
    generators = image_noise.image_generators(seed, first, n)
    x = torch.full((n, 1, *grid), mask_id, dtype=torch.long)
    unmasked = torch.zeros_like(x, dtype=torch.bool)
    positions = (1, *grid)
    for step in range(steps, 0, -1):
        t = torch.full((n,), step, dtype=torch.long)
        uniform = image_noise.per_image(generators, lambda g: torch.rand(positions, generator=g))
        changes = (uniform < 1 / step) & ~unmasked
        unmasked |= changes
        logits = denoiser(x.float(), t).permute(0, 2, 3, 1) / temperature
        probabilities = torch.softmax(logits.double(), dim=-1).reshape(n, -1, logits.shape[-1])
        draws = torch.stack([torch.multinomial(p, 1, generator=g) for p, g in zip(probabilities, generators)])
        x = torch.where(changes, draws.reshape(n, 1, *grid), x)
        if on_step is not None:
            on_step(step)
    return x
