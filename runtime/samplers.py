"""Diffusion samplers: the outer loop runs on the host and calls a denoiser.

A denoiser is any callable ``eps = denoiser(x_t, t)`` with x_t [B, C, H, W]
(float32) and t [B] (int64) diffusion steps; backends (torch reference,
Lava, emulator) provide one. Randomness comes only from the generator passed in.
"""

from __future__ import annotations

from typing import Callable, Mapping, Optional, Sequence

import numpy as np
import torch

from snc.errors import SncError
from snc.models.diffusion import Schedule

Denoiser = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
StepCallback = Callable[[int, int], None]

SAMPLERS = ("ddpm", "ddim", "analytic")


def ddim_timesteps(total: int, steps: int) -> list[int]:
    """``steps`` evenly spaced diffusion steps, descending, always ending at 0."""
    if not 1 <= steps <= total:
        raise SncError(f"sampler steps must be in 1..{total}, got {steps}")
    return sorted({int(round(i)) for i in np.linspace(0, total - 1, steps)}, reverse=True)


def _predict_x0(schedule_ab: torch.Tensor, x: torch.Tensor, t: int, eps: torch.Tensor) -> torch.Tensor:
    ab = schedule_ab[t]
    return ((x.double() - (1 - ab).sqrt() * eps.double()) / ab.sqrt()).clamp(-1, 1)


@torch.no_grad()
def sample(
    denoiser: Denoiser,
    shape: Sequence[int],
    schedule: Schedule,
    sampler: str = "ddim",
    steps: Optional[int] = None,
    eta: float = 0.0,
    generator: Optional[torch.Generator] = None,
    on_step: Optional[StepCallback] = None,
    eps_moment: Optional[Mapping[int, float]] = None,
) -> torch.Tensor:
    """Generate ``shape[0]`` images from pure noise; returns float32 in [-1, 1].

    - ``ddpm``: ancestral sampling over every step (``steps`` must be None or
      the schedule length), posterior variance beta~_t ("fixedsmall").
    - ``ddim``: Song et al. 2021 over ``steps`` evenly spaced steps; ``eta`` = 0
      is deterministic, ``eta`` = 1 matches DDPM's variance.
    - ``analytic``: Analytic-DPM (Bao et al. 2022) over ``steps`` evenly spaced
      steps: the DDPM posterior mean between the chosen steps with the optimal
      variance ``lambda^2 + (sqrt(bbar_n / a_n|s) - sqrt(bbar_s - lambda^2))^2
      (1 - bbar_n Gamma_n)``, where ``Gamma_n = E||eps(x_n, n)||^2 / d`` is the
      model's moment on its data (``eps_moment[t]``, see ``snc.runtime.moments``).
    The predicted x_0 is clipped to [-1, 1] at every step, as in the SDDPM code.
    """
    if sampler not in SAMPLERS:
        raise SncError(f"unknown sampler {sampler!r}; known: {', '.join(SAMPLERS)}")
    if sampler == "ddpm":
        if steps not in (None, schedule.steps):
            raise SncError(f"ddpm runs all {schedule.steps} steps; use --sampler ddim for {steps}")
        timesteps = list(range(schedule.steps - 1, -1, -1))
    else:
        timesteps = ddim_timesteps(schedule.steps, steps or 50)
    if sampler == "analytic":
        missing = [t for t in timesteps if eps_moment is None or t not in eps_moment]
        if missing:
            raise SncError(f"analytic sampling needs the model's epsilon moments at {len(missing)} of its steps "
                           f"(first: {missing[0]})")
    ab = schedule.alphas_bar
    x = torch.randn(tuple(shape), generator=generator, dtype=torch.float64)
    batch = shape[0]
    for i, t in enumerate(timesteps):
        eps = denoiser(x.float(), torch.full((batch,), t, dtype=torch.long)).double()
        x0 = _predict_x0(ab, x, t, eps)
        t_prev = timesteps[i + 1] if i + 1 < len(timesteps) else -1
        ab_prev = ab[t_prev] if t_prev >= 0 else torch.tensor(1.0, dtype=torch.float64)
        if sampler == "ddpm":
            beta = 1 - ab[t] / ab_prev
            mean = (ab_prev.sqrt() * beta * x0 + (1 - beta).sqrt() * (1 - ab_prev) * x) / (1 - ab[t])
            var = beta * (1 - ab_prev) / (1 - ab[t])
        else:
            # recompute eps from the clipped x0 so the update stays consistent
            eps = (x - ab[t].sqrt() * x0) / (1 - ab[t]).sqrt()
            posterior = (1 - ab_prev) / (1 - ab[t]) * (1 - ab[t] / ab_prev)  # lambda^2 of DDPM between the steps
            var = eta**2 * posterior if sampler == "ddim" else posterior
            mean = ab_prev.sqrt() * x0 + (1 - ab_prev - var).clamp(min=0).sqrt() * eps
            if sampler == "analytic" and t_prev >= 0:
                gap = ((1 - ab[t]) / (ab[t] / ab_prev)).sqrt() - (1 - ab_prev - posterior).clamp(min=0).sqrt()
                # Gamma_n bounded to [0, 1/bbar_n] keeps the variance between its two analytic bounds
                var = posterior + gap**2 * min(max(1 - (1 - ab[t].item()) * eps_moment[t], 0.0), 1.0)
        if t_prev >= 0 and var > 0:
            x = mean + var.sqrt() * torch.randn(x.shape, generator=generator, dtype=torch.float64)
        else:
            x = mean
        if on_step is not None:
            on_step(i + 1, len(timesteps))
    return x.clamp(-1, 1).float()
