"""Diffusion-step embedding: a frozen sinusoidal table followed by an MLP.

Runs on the host in a deployed model: its output only biases the spiking
core, once per denoiser call (see ``time_biases`` of the denoisers).
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import init

from .neurons import Swish


def sinusoidal_table(steps: int, dim: int) -> torch.Tensor:
    """Row t is the sin/cos embedding of diffusion step t (interleaved, as DDPM)."""
    if dim % 2:
        raise ValueError(f"embedding width must be even, got {dim}")
    freqs = torch.exp(-torch.arange(0, dim, step=2) / dim * math.log(10000))
    angles = torch.arange(steps).float()[:, None] * freqs[None, :]
    return torch.stack([torch.sin(angles), torch.cos(angles)], dim=-1).view(steps, dim)


class TimeEmbedding(nn.Module):
    """``timembedding`` = [frozen table, Linear, Swish, Linear] (reference key names)."""

    def __init__(self, steps: int, d_model: int, dim: int) -> None:
        super().__init__()
        self.timembedding = nn.Sequential(
            nn.Embedding.from_pretrained(sinusoidal_table(steps, d_model)),
            nn.Linear(d_model, dim),
            Swish(),
            nn.Linear(dim, dim),
        )
        for module in self.modules():
            if isinstance(module, nn.Linear):
                init.xavier_uniform_(module.weight)
                init.zeros_(module.bias)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return self.timembedding(t)


def temb_projection(tdim: int, out_ch: int) -> nn.Sequential:
    """Per-block projection ``[Swish, Linear]`` of the step embedding to a channel bias."""
    proj = nn.Sequential(Swish(), nn.Linear(tdim, out_ch))
    init.xavier_uniform_(proj[1].weight)
    init.zeros_(proj[1].bias)
    return proj
