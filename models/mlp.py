"""A small spiking MLP denoiser: flatten -> spiking hidden layers -> linear readout.

Made only of operations NIR has primitives for, so its export loads with the
stock ``nir.read``; used for fast tests and as the simplest compile target.
Split like the U-Net into ``encode`` / ``time_biases`` / ``core`` / ``decode``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from .neurons import NeuronConfig, make_activation
from .time_embedding import TimeEmbedding, temb_projection


@dataclass(frozen=True)
class MLPConfig:
    img_size: int = 8
    img_ch: int = 1
    hidden: tuple[int, ...] = (256, 256)
    temb_ch: int = 64
    timestep: int = 4
    diffusion_steps: int = 1000
    spiking: bool = True
    neuron: NeuronConfig = field(default_factory=NeuronConfig)

    def __post_init__(self) -> None:
        object.__setattr__(self, "hidden", tuple(self.hidden))
        if isinstance(self.neuron, dict):
            object.__setattr__(self, "neuron", NeuronConfig(**self.neuron))
        if not self.spiking and self.timestep != 1:
            raise ValueError("the ANN twin runs one step: set timestep=1")


class HiddenLayer(nn.Module):
    def __init__(self, in_dim: int, out_dim: int, tdim: int, cfg: MLPConfig) -> None:
        super().__init__()
        self.fc = nn.Linear(in_dim, out_dim)
        self.temb_proj = temb_projection(tdim, out_dim)
        self.neuron = make_activation(cfg.spiking, cfg.neuron)

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        return self.neuron(self.fc(x) + bias[None])


class SpikingMLP(nn.Module):
    """``forward(x, t)``: x [B, C, H, W] noisy images, t [B] diffusion steps -> epsilon."""

    def __init__(self, config: MLPConfig) -> None:
        super().__init__()
        self.config = cfg = config
        tdim = cfg.temb_ch * 4
        self.time_embedding = TimeEmbedding(cfg.diffusion_steps, cfg.temb_ch, tdim)
        dims = [cfg.img_ch * cfg.img_size**2, *cfg.hidden]
        self.hidden = nn.ModuleList(HiddenLayer(a, b, tdim, cfg) for a, b in zip(dims[:-1], dims[1:]))
        self.readout = nn.Linear(dims[-1], dims[0])

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return x.unsqueeze(0).repeat(self.config.timestep, 1, 1, 1, 1)

    def time_biases(self, t: torch.Tensor) -> dict[str, torch.Tensor]:
        temb = self.time_embedding(t)
        return {f"hidden.{i}": layer.temb_proj(temb) for i, layer in enumerate(self.hidden)}

    def core(self, x_seq: torch.Tensor, biases: dict[str, torch.Tensor]) -> torch.Tensor:
        """[T,B,C,H,W] -> readout currents [T,B,C*H*W]."""
        h = x_seq.flatten(2)
        for i, layer in enumerate(self.hidden):
            h = layer(h, biases[f"hidden.{i}"])
        return self.readout(h)

    def decode(self, out: torch.Tensor) -> torch.Tensor:
        """Mean readout over the spiking steps, back to image shape."""
        cfg = self.config
        return out.mean(0).reshape(-1, cfg.img_ch, cfg.img_size, cfg.img_size)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.decode(self.core(self.encode(x), self.time_biases(t)))
