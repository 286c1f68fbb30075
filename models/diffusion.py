"""DDPM noise schedule and the epsilon-prediction training loss.

Shared by the trainer (here) and the samplers (``snc.runtime.samplers``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class Schedule:
    """Linear betas ``beta_1 .. beta_T`` as in DDPM (Ho et al. 2020) and SDDPM."""

    steps: int = 1000
    beta_1: float = 1e-4
    beta_T: float = 0.02

    @property
    def betas(self) -> torch.Tensor:
        return torch.linspace(self.beta_1, self.beta_T, self.steps, dtype=torch.float64)

    @property
    def alphas_bar(self) -> torch.Tensor:
        return torch.cumprod(1.0 - self.betas, dim=0)


def q_sample(schedule: Schedule, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """Noisy x_t = sqrt(a_bar_t) x0 + sqrt(1 - a_bar_t) eps."""
    ab = schedule.alphas_bar.to(x0.dtype)[t].view(-1, *([1] * (x0.dim() - 1)))
    return ab.sqrt() * x0 + (1 - ab).sqrt() * noise


def epsilon_loss(
    model: nn.Module, schedule: Schedule, x0: torch.Tensor, generator: torch.Generator
) -> torch.Tensor:
    """MSE between the true and predicted noise at uniformly drawn steps."""
    t = torch.randint(schedule.steps, (x0.shape[0],), generator=generator)
    noise = torch.randn(x0.shape, generator=generator, dtype=x0.dtype)
    return F.mse_loss(model(q_sample(schedule, x0, t, noise), t), noise)
