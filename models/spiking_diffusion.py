"""Spiking-Diffusion (paper 003, Liu et al.): the VQ-SVAE and the SDID denoiser.

Key names and inference semantics are those of the public code (github.com/Arktis2022/Spiking-Diffusion,
``Spiking-Diffusion-release/snn_model``), so its bare ``state_dict()`` files load: every spiking layer is
SpikingJelly's multi-step ``LIFNode`` (``LIFNeuron``), conv and BatchNorm act on each of the T steps
alone, and the network state starts from zero at every call. The public code fixes T = 16, a 28x28 input
with two stride-2 stages (a 7x7 token grid) and a 16-channel ASG; here they are config fields, with the
public values as defaults.

- ``VQSVAE``: ``model(x)`` with images ``[B, C, H, W]`` in [-0.5, 0.5] (repeated over the T steps) returns
  ``(asg_spikes [T, B, D, h, w], x_recon [B, C, H, W], indices [B*h*w])`` as the public eval forward;
  ``encode`` (encoder spikes), ``quantize`` (features -> codebook indices), ``decode`` (indices -> images)
  are its stages, ``losses`` the public training losses.
- ``SDID``: ``model(x_t, t)`` with token ids ``[B, n, h, w]`` as floats (mask id = K) and ``t [B]`` returns
  the logits ``[B, K, h, w]``: the time mean of the last conv over the T steps.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from . import absorbing
from .neurons import LIFNeuron, per_step


class MultiStep(nn.Sequential):
    """A Sequential over ``[T, B, ...]`` sequences: neurons see the whole sequence, every other layer each
    step alone (SpikingJelly's multi-step mode folds T into the batch). Indices as the public code's, since
    neurons hold no parameters."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self:
            x = layer(x) if isinstance(layer, LIFNeuron) else per_step(layer, x)
        return x


def repeat_steps(x: torch.Tensor, timestep: int) -> torch.Tensor:
    """Direct encoding: ``x`` unchanged at each of ``timestep`` steps, ``[T, *x.shape]``."""
    return x.unsqueeze(0).repeat(timestep, *([1] * x.dim()))


class MembraneOutput(nn.Module):
    """The public ``MembraneOutputLayer``: ``sum_t x[t] * decay^(T-1-t)`` over a ``[T, ...]`` sequence, a
    fixed buffer ``coef`` (kept in the state dict, as there)."""

    def __init__(self, timestep: int, decay: float) -> None:
        super().__init__()
        self.register_buffer("coef", torch.pow(torch.tensor(decay), torch.arange(timestep - 1, -1, -1))
                             .reshape(timestep, 1, 1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sum(x * self.coef, dim=0)


def _conv_bn_lif(conv: nn.Module, channels: int, tau: float) -> list[nn.Module]:
    return [conv, nn.BatchNorm2d(channels), LIFNeuron(tau)]


@dataclass(frozen=True)
class VQSVAEConfig:
    """``channels`` / ``strides``: the encoder's 3x3 conv stages (the decoder mirrors them with
    ConvTranspose2d); ``membrane_decay``: the membrane output's; ``timestep``: T spiking steps per call."""

    in_dim: int = 1
    embedding_dim: int = 16
    num_embeddings: int = 128
    channels: tuple[int, ...] = (32, 64)
    strides: tuple[int, ...] = (2, 2)
    img_size: int = 28
    timestep: int = 16
    tau: float = 2.0
    membrane_decay: float = 0.8
    commitment_cost: float = 0.25

    def __post_init__(self) -> None:
        object.__setattr__(self, "channels", tuple(self.channels))
        object.__setattr__(self, "strides", tuple(self.strides))
        if len(self.channels) != len(self.strides):
            raise ValueError(f"one stride per encoder stage: {len(self.channels)} channels, "
                             f"{len(self.strides)} strides")
        if self.tau < 1:
            raise ValueError(f"tau must be >= 1, got {self.tau}")
        size = self.img_size
        for stride in self.strides:
            if size % stride:
                raise ValueError(f"img_size {self.img_size} does not divide by the strides {list(self.strides)}")
            size //= stride

    @property
    def latent_size(self) -> int:
        size = self.img_size
        for stride in self.strides:
            size //= stride
        return size


class Encoder(nn.Module):
    def __init__(self, cfg: VQSVAEConfig) -> None:
        super().__init__()
        layers, previous = [], cfg.in_dim
        for channels, stride in zip(cfg.channels, cfg.strides):
            layers += _conv_bn_lif(nn.Conv2d(previous, channels, 3, stride, 1), channels, cfg.tau)
            previous = channels
        layers += _conv_bn_lif(nn.Conv2d(previous, cfg.embedding_dim, 1), cfg.embedding_dim, cfg.tau)
        self.snn_convs = MultiStep(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.snn_convs(x)


class Decoder(nn.Module):
    def __init__(self, cfg: VQSVAEConfig) -> None:
        super().__init__()
        layers, previous = [], cfg.embedding_dim
        for channels, stride in zip(cfg.channels[::-1], cfg.strides[::-1]):
            conv = nn.ConvTranspose2d(previous, channels, 3, stride, 1, output_padding=stride - 1)
            layers += _conv_bn_lif(conv, channels, cfg.tau)
            previous = channels
        layers.append(nn.ConvTranspose2d(previous, cfg.in_dim, 3, 1, 1))  # real-valued output every step
        self.snn_convs = MultiStep(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.snn_convs(x)


class VectorQuantizer(nn.Module):
    """Features mixing the spike rate (weight ``alpha``) and the membrane output (``1 - alpha``) of the
    encoder's spikes, their nearest codebook rows, and the adaptive spike generator (``poisson``, as the
    public code names it; deterministic) that turns codebook rows back into spikes."""

    def __init__(self, cfg: VQSVAEConfig) -> None:
        super().__init__()
        self.timestep = cfg.timestep
        self.alpha = nn.Parameter(torch.tensor(0.5))
        self.memout = MembraneOutput(cfg.timestep, cfg.membrane_decay)
        self.embeddings = nn.Embedding(cfg.num_embeddings, cfg.embedding_dim)
        self.poisson = MultiStep(*_conv_bn_lif(nn.Conv2d(cfg.embedding_dim, cfg.embedding_dim, 1),
                                               cfg.embedding_dim, cfg.tau))

    def features(self, z: torch.Tensor) -> torch.Tensor:
        """Encoder spikes ``[T, B, D, h, w]`` -> features ``[B, D, h, w]``."""
        return (1 - self.alpha) * self.memout(z) + self.alpha * torch.sum(z, dim=0) / self.timestep

    def nearest(self, f: torch.Tensor) -> torch.Tensor:
        """Indices ``[B*h*w]`` (rows in (b, h, w) order) of the codebook rows nearest to features
        ``[B, D, h, w]``: squared distances in the expanded form the public code uses, first index on ties."""
        flat = f.permute(0, 2, 3, 1).reshape(-1, f.shape[1])
        e = self.embeddings.weight
        distances = torch.sum(flat ** 2, dim=1, keepdim=True) + torch.sum(e ** 2, dim=1) \
            - 2 * torch.matmul(flat, e.t())
        return torch.argmin(distances, dim=1)

    def rows(self, indices: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """Codebook rows of ``indices`` (any shape holding B*h*w ids) as ``[B, D, h, w]``."""
        q = self.embeddings.weight[indices.reshape(-1)]
        return q.reshape(-1, *grid, q.shape[1]).permute(0, 3, 1, 2)

    def generate(self, q: torch.Tensor) -> torch.Tensor:
        """The ASG: ``[B, D, h, w]`` repeated over T steps -> spikes ``[T, B, D, h, w]``."""
        return self.poisson(repeat_steps(q, self.timestep))


class VQSVAE(nn.Module):
    """The public ``SNN_VQVAE``'s inference (see the module docstring)."""

    def __init__(self, config: VQSVAEConfig) -> None:
        super().__init__()
        self.config = config
        self.encoder = Encoder(config)
        self.vq_layer = VectorQuantizer(config)
        self.decoder = Decoder(config)
        self.memout = MembraneOutput(config.timestep, config.membrane_decay)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Images ``[B, C, H, W]`` (the same at every step) -> encoder spikes ``[T, B, D, h, w]``."""
        return self.encoder(repeat_steps(x, self.config.timestep))

    def quantize(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Encoder spikes -> ``(features, indices [B*h*w], codebook rows [B, D, h, w])``; in training the
        rows carry the features' gradient straight through (same values)."""
        f = self.vq_layer.features(z)
        indices = self.vq_layer.nearest(f)
        q = self.vq_layer.rows(indices, f.shape[2:])
        return f, indices, f + (q - f).detach() if self.training else q

    def reconstruct(self, e: torch.Tensor) -> torch.Tensor:
        """ASG spikes -> images: ``tanh`` of the membrane output of the decoder's last conv."""
        return torch.tanh(self.memout(self.decoder(e)))

    def decode(self, indices: torch.Tensor) -> torch.Tensor:
        """Token ids ``[B, h, w]`` (or ``[B, 1, h, w]``) -> images ``[B, C, H, W]``."""
        size = self.config.latent_size
        return self.reconstruct(self.vq_layer.generate(self.vq_layer.rows(indices, (size, size))))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        z = self.encode(x)
        _, indices, q = self.quantize(z)
        e = self.vq_layer.generate(q)
        return e, self.reconstruct(e), indices

    def losses(self, x: torch.Tensor, data_variance: float) -> dict[str, torch.Tensor]:
        """The public training losses of a batch of images: ``loss`` (what its trainer minimises) =
        ``codebook`` (codebook + commitment terms, on the features and on the PSP-filtered spike trains) +
        ``recon`` (MSE / data variance); ``mse`` the plain reconstruction MSE."""
        beta = self.config.commitment_cost
        z = self.encode(x)
        f, indices, q = self.quantize(z)
        rows = self.vq_layer.rows(indices, f.shape[2:])
        e = self.vq_layer.generate(q)
        x_recon = self.reconstruct(e)
        features = F.mse_loss(rows, f.detach()) + beta * F.mse_loss(f, rows.detach())
        spikes = torch.mean((psp(e) - psp(z.detach())) ** 2) + beta * torch.mean((psp(e.detach()) - psp(z)) ** 2)
        mse = F.mse_loss(x_recon, x)
        codebook = features + spikes
        return {"loss": codebook + mse / data_variance, "codebook": codebook, "recon": mse / data_variance,
                "mse": mse}


def psp(x: torch.Tensor, tau: float = 2.0) -> torch.Tensor:
    """The public ``PSP`` (used in the training loss only): ``s[t] = s[t-1] + (x[t] - s[t-1]) / tau``."""
    s, out = torch.zeros_like(x[0]), []
    for x_t in x:
        s = s + (x_t - s) / tau
        out.append(s)
    return torch.stack(out)


@dataclass(frozen=True)
class SDIDConfig:
    """``n_channel``: token channels (the time map has as many); ``channels``: the 3x3 conv-BN-LIF stages
    (the last one's spikes are concatenated with the first one's before the output conv);
    ``diffusion_steps``: the absorbing process's, the public code's h*w; ``latent_size``: the token grid's side."""

    n_channel: int = 1
    num_embeddings: int = 128
    channels: tuple[int, ...] = (64, 128, 256, 512, 256)
    latent_size: int = 7
    timestep: int = 16
    tau: float = 2.0
    diffusion_steps: int = 49

    def __post_init__(self) -> None:
        object.__setattr__(self, "channels", tuple(self.channels))
        if len(self.channels) < 2:
            raise ValueError("the SDID needs two or more conv stages (its skip joins the first and the last)")
        if self.tau < 1:
            raise ValueError(f"tau must be >= 1, got {self.tau}")

    @property
    def mask_id(self) -> int:
        return self.num_embeddings


class SDID(nn.Module):
    """The public ``DummyModel``: token map and time map in, per-token logits out (module docstring)."""

    def __init__(self, config: SDIDConfig) -> None:
        super().__init__()
        self.config = cfg = config
        previous = 2 * cfg.n_channel
        for i, channels in enumerate(cfg.channels, start=1):
            self.add_module(f"conv{i}", MultiStep(*_conv_bn_lif(nn.Conv2d(previous, channels, 3, 1, 1), channels,
                                                                 cfg.tau)))
            previous = channels
        out = MultiStep(nn.Conv2d(cfg.channels[-1] + cfg.channels[0], cfg.num_embeddings, 3, 1, 1))
        self.add_module(f"conv{len(cfg.channels) + 1}", out)
        self.stages = len(cfg.channels)

    def inputs(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The input currents of every step: ``[x_t, t-map]`` (raw ids and raw t), ``[T, B, 2n, h, w]``."""
        t_map = torch.ones_like(x_t) * t.to(x_t.dtype).reshape(-1, 1, 1, 1)
        return repeat_steps(torch.cat([x_t, t_map], dim=1), self.config.timestep)

    def forward(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        h = first = self.conv1(self.inputs(x_t, t))
        for i in range(2, self.stages + 1):
            h = getattr(self, f"conv{i}")(h)
        out = getattr(self, f"conv{self.stages + 1}")(torch.cat([h, first], dim=2))
        return torch.sum(out, dim=0) / self.config.timestep


@dataclass(frozen=True)
class SpikingDiffusionVQConfig:
    """Both stages of a Spiking-Diffusion model (one snc checkpoint): the VQ-SVAE and the SDID over its
    token grid. ``pixel_scale``: images in [-1, 1] (snc's) times it are the VQ-SVAE's input range."""

    vqsvae: VQSVAEConfig = field(default_factory=VQSVAEConfig)
    sdid: SDIDConfig = field(default_factory=SDIDConfig)
    pixel_scale: float = 0.5

    def __post_init__(self) -> None:
        for name, cls in (("vqsvae", VQSVAEConfig), ("sdid", SDIDConfig)):
            if isinstance(getattr(self, name), dict):
                object.__setattr__(self, name, cls(**getattr(self, name)))
        v, s = self.vqsvae, self.sdid
        if (s.num_embeddings, s.latent_size, s.n_channel) != (v.num_embeddings, v.latent_size, 1):
            raise ValueError(f"the SDID must take the VQ-SVAE's tokens: num_embeddings {v.num_embeddings}, "
                             f"latent_size {v.latent_size}, n_channel 1 (it has {s.num_embeddings}, "
                             f"{s.latent_size}, {s.n_channel})")

    @property
    def img_size(self) -> int:
        return self.vqsvae.img_size

    @property
    def img_ch(self) -> int:
        return self.vqsvae.in_dim


class SpikingDiffusionVQ(nn.Module):
    """``vqsvae`` and ``sdid`` of one model; ``sample`` draws token grids with the absorbing diffusion and
    decodes them to images in [-1, 1]."""

    def __init__(self, config: SpikingDiffusionVQConfig) -> None:
        super().__init__()
        self.config = config
        self.vqsvae = VQSVAE(config.vqsvae)
        self.sdid = SDID(config.sdid)

    def tokens(self, images: torch.Tensor) -> torch.Tensor:
        """Images ``[B, C, H, W]`` in [-1, 1] -> token grids ``[B, 1, h, w]`` (int64)."""
        size = self.config.vqsvae.latent_size
        z = self.vqsvae.encode(images * self.config.pixel_scale)  # the encoder and the codebook; no decoder
        return self.vqsvae.quantize(z)[1].reshape(-1, 1, size, size)

    def images(self, tokens: torch.Tensor) -> torch.Tensor:
        """Token grids -> images in [-1, 1] (the decoder's tanh output over ``pixel_scale``, clipped)."""
        return torch.clamp(self.vqsvae.decode(tokens) / self.config.pixel_scale, -1, 1)

    @torch.no_grad()
    def sample(self, n: int, temperature: float = 1.0, steps: Optional[int] = None, seed: int = 0,
               first: int = 0) -> torch.Tensor:
        """``n`` images (``first ..`` of the run seeded ``seed``, each from its own random stream): token grids
        from the absorbing diffusion (``steps`` default: the SDID's), decoded."""
        size = self.config.sdid.latent_size
        tokens = absorbing.sample(self.sdid, n, (size, size), self.config.sdid.mask_id,
                                  steps or self.config.sdid.diffusion_steps, temperature, seed, first)
        return self.images(tokens)
