"""The SDDPM spiking U-Net (papers 002 and 004) and its ANN twin.

Layout and parameter names follow the public SDDPM code (``Spk_UNet``), so a
state_dict of that code maps key for key:

- stem: conv3x3 + BN on the analog image (direct encoding: the image repeated
  T times), IF, conv3x3 + BN (``conv_identity``);
- pre-spike residual blocks: IF -> conv3x3 -> BN -> + temb_proj(temb) -> IF ->
  conv3x3 -> BN -> + shortcut(x). The residual stream x between blocks is
  real-valued; the 1x1 shortcut acts on real values;
- down: IF -> stride-2 conv3x3 + BN; up: IF -> nearest x2 -> conv3x3 + BN;
  skips concatenated on the way up;
- tail (non-spiking): BN -> Swish -> conv3x3, a Conv3d with kernel (3, 3, 1)
  over [B, C, H, W, T] + BN + Swish added residually, then the membrane-style
  output sum_t 0.8^(T-1-t) h_t.

``SpikingUNetTSM`` is SDM's TSM variant (paper 004, section IV-B; the public
``Spk_UNet_TSM``): every Conv2d becomes a ``TSMConv2d`` whose output at
spiking step t is scaled by a learned p[t]; its state_dict adds ``tsmp`` and
nests the conv weights under ``tsmconv`` as the public code does.

The forward pass is split so the host-side parts can be separated from the
spiking core: ``encode`` (direct input encoding), ``time_biases`` (the
time-embedding MLP and per-block projections, constant over spiking steps and
pixels), ``core`` (the spiking network) and ``decode`` (the tail).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial
from typing import Callable

import torch
from torch import nn
from torch.nn import init

from .neurons import NeuronConfig, Swish, make_activation, per_step
from .time_embedding import TimeEmbedding, temb_projection


@dataclass(frozen=True)
class UNetConfig:
    """Constructor arguments; names follow the reference code where it has one."""

    img_size: int = 32
    img_ch: int = 3
    ch: int = 128
    ch_mult: tuple[int, ...] = (1, 2, 2, 4)
    num_res_blocks: int = 2
    timestep: int = 4  # spiking steps T per denoiser call
    diffusion_steps: int = 1000
    spiking: bool = True  # False: the ANN twin (ReLU instead of IF, one step)
    neuron: NeuronConfig = field(default_factory=NeuronConfig)
    output_decay: float = 0.8  # weight 0.8^(T-1-t) of step t in the output

    def __post_init__(self) -> None:
        object.__setattr__(self, "ch_mult", tuple(self.ch_mult))
        if isinstance(self.neuron, dict):
            object.__setattr__(self, "neuron", NeuronConfig(**self.neuron))
        if self.img_size % (2 ** (len(self.ch_mult) - 1)):
            raise ValueError(
                f"img_size {self.img_size} is not divisible by the {len(self.ch_mult) - 1} downsamplings"
            )
        if not self.spiking and self.timestep != 1:
            raise ValueError("the ANN twin runs one step: set timestep=1")


class TSMConv2d(nn.Module):
    """Conv2d whose output at spiking step t is multiplied by a learned scalar p[t] (SDM's TSM).

    Takes the frames of T steps flattened step-major, [T*B, C, H, W] (what
    ``per_step`` passes), and returns ``p[t] * (W x_t + b)``: the bias is
    scaled too and the BatchNorm after the layer sees the scaled current, as
    in the public code. p starts at 1 (the plain conv).
    """

    def __init__(self, timestep: int, in_ch: int, out_ch: int, kernel_size: int, stride: int = 1,
                 padding: int = 0) -> None:
        super().__init__()
        self.tsmconv = nn.Conv2d(in_ch, out_ch, kernel_size, stride=stride, padding=padding)
        self.tsmp = nn.Parameter(torch.ones(timestep, 1, 1, 1, 1))

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        y = self.tsmconv(frames)
        return (y.reshape(self.tsmp.shape[0], -1, *y.shape[1:]) * self.tsmp).flatten(0, 1)


ConvLayer = Callable[..., nn.Module]
"""``(in_ch, out_ch, kernel_size, stride=1, padding=0) -> module`` on [T*B, C, H, W] frames."""


def conv_weights(layer: nn.Module) -> nn.Conv2d:
    """The Conv2d holding a conv layer's weights: the layer itself or a TSMConv2d's ``tsmconv``."""
    return layer.tsmconv if isinstance(layer, TSMConv2d) else layer


def _init_conv(layer: nn.Module, gain: float = 1.0) -> None:
    conv = conv_weights(layer)
    init.xavier_uniform_(conv.weight, gain=gain)
    init.zeros_(conv.bias)


class ResBlock(nn.Module):
    """Pre-spike residual block; ``forward(x, bias)`` with x real-valued [T,B,C,H,W]."""

    def __init__(self, in_ch: int, out_ch: int, tdim: int, cfg: UNetConfig, conv_layer: ConvLayer = nn.Conv2d) -> None:
        super().__init__()
        self.temb_proj = temb_projection(tdim, out_ch)
        self.neuron1 = make_activation(cfg.spiking, cfg.neuron)
        self.conv1 = conv_layer(in_ch, out_ch, 3, stride=1, padding=1)
        self.bn1 = nn.BatchNorm2d(out_ch)
        self.neuron2 = make_activation(cfg.spiking, cfg.neuron)
        self.conv2 = conv_layer(out_ch, out_ch, 3, stride=1, padding=1)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.shortcut = conv_layer(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()
        # initialised after all three are built: keeps the RNG draws (and so `snc train`) as they were
        for layer in (self.conv1, self.conv2, self.shortcut):
            if not isinstance(layer, nn.Identity):
                _init_conv(layer)

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        h = per_step(self.bn1, per_step(self.conv1, self.neuron1(x)))
        h = h + bias[None, :, :, None, None]
        h = per_step(self.bn2, per_step(self.conv2, self.neuron2(h)))
        return h + per_step(self.shortcut, x)


class _Resample(nn.Module):
    """IF -> conv3x3 + BN: the common part of the down- and up-sampling layers."""

    def __init__(self, ch: int, cfg: UNetConfig, stride: int, conv_layer: ConvLayer) -> None:
        super().__init__()
        self.neuron = make_activation(cfg.spiking, cfg.neuron)
        self.conv = conv_layer(ch, ch, 3, stride=stride, padding=1)
        self.bn = nn.BatchNorm2d(ch)
        _init_conv(self.conv)


class DownSample(_Resample):
    """IF -> stride-2 conv3x3 + BN."""

    def __init__(self, ch: int, cfg: UNetConfig, conv_layer: ConvLayer = nn.Conv2d) -> None:
        super().__init__(ch, cfg, stride=2, conv_layer=conv_layer)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return per_step(self.bn, per_step(self.conv, self.neuron(x)))


class UpSample(_Resample):
    """IF -> nearest x2 -> conv3x3 + BN."""

    def __init__(self, ch: int, cfg: UNetConfig, conv_layer: ConvLayer = nn.Conv2d) -> None:
        super().__init__(ch, cfg, stride=1, conv_layer=conv_layer)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        up = per_step(lambda f: nn.functional.interpolate(f, scale_factor=2, mode="nearest"), self.neuron(x))
        return per_step(self.bn, per_step(self.conv, up))


class SpikingUNet(nn.Module):
    """``forward(x, t)``: x [B, C, H, W] noisy images, t [B] diffusion steps -> epsilon.

    ``conv_layer`` builds every 2D conv (default ``nn.Conv2d``; ``SpikingUNetTSM`` passes ``TSMConv2d``).
    """

    def __init__(self, config: UNetConfig, conv_layer: ConvLayer = nn.Conv2d) -> None:
        super().__init__()
        self.config = cfg = config
        ch = cfg.ch
        tdim = ch * 4
        self.time_embedding = TimeEmbedding(cfg.diffusion_steps, ch, tdim)
        self.conv = conv_layer(cfg.img_ch, ch, 3, stride=1, padding=1)
        self.bn = nn.BatchNorm2d(ch)
        self.neuron = make_activation(cfg.spiking, cfg.neuron)
        self.conv_identity = conv_layer(ch, ch, 3, stride=1, padding=1)
        self.bn_identity = nn.BatchNorm2d(ch)

        self.downblocks = nn.ModuleList()
        chs = [ch]  # channels of every stream kept for a skip connection
        now_ch = ch
        for level, mult in enumerate(cfg.ch_mult):
            out_ch = ch * mult
            for _ in range(cfg.num_res_blocks):
                self.downblocks.append(ResBlock(now_ch, out_ch, tdim, cfg, conv_layer))
                now_ch = out_ch
                chs.append(now_ch)
            if level != len(cfg.ch_mult) - 1:
                self.downblocks.append(DownSample(now_ch, cfg, conv_layer))
                chs.append(now_ch)
        self.middleblocks = nn.ModuleList(
            [ResBlock(now_ch, now_ch, tdim, cfg, conv_layer), ResBlock(now_ch, now_ch, tdim, cfg, conv_layer)]
        )
        self.upblocks = nn.ModuleList()
        for level, mult in reversed(list(enumerate(cfg.ch_mult))):
            out_ch = ch * mult
            for _ in range(cfg.num_res_blocks + 1):
                self.upblocks.append(ResBlock(chs.pop() + now_ch, out_ch, tdim, cfg, conv_layer))
                now_ch = out_ch
            if level != 0:
                self.upblocks.append(UpSample(now_ch, cfg, conv_layer))

        self.tail_bn = nn.BatchNorm2d(now_ch)
        self.tail_swish = Swish()
        self.tail_conv = conv_layer(now_ch, cfg.img_ch, 3, stride=1, padding=1)
        self.T_output_layer = nn.Conv3d(cfg.img_ch, cfg.img_ch, (3, 3, 1), padding=(1, 1, 0))
        self.last_bn = nn.BatchNorm2d(cfg.img_ch)
        self.swish = Swish()
        _init_conv(self.conv)
        _init_conv(self.tail_conv, gain=1e-5)

    # --- the four parts of a denoiser call -------------------------------------------
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Direct encoding: the analog image repeated over the T spiking steps."""
        return x.unsqueeze(0).repeat(self.config.timestep, 1, 1, 1, 1)

    def resblocks(self) -> list[tuple[str, ResBlock]]:
        return [(n, m) for n, m in self.named_modules() if isinstance(m, ResBlock)]

    def time_biases(self, t: torch.Tensor) -> dict[str, torch.Tensor]:
        """Per-block channel bias [B, C] from the diffusion step (host-side MLP)."""
        temb = self.time_embedding(t)
        return {name: block.temb_proj(temb) for name, block in self.resblocks()}

    def core(self, x_seq: torch.Tensor, biases: dict[str, torch.Tensor]) -> torch.Tensor:
        """The spiking network: [T,B,C,H,W] input -> [T,B,ch,H,W] real-valued stream."""
        h = per_step(self.bn, per_step(self.conv, x_seq))
        h = per_step(self.bn_identity, per_step(self.conv_identity, self.neuron(h)))
        hs = [h]
        for i, layer in enumerate(self.downblocks):
            h = layer(h, biases[f"downblocks.{i}"]) if isinstance(layer, ResBlock) else layer(h)
            hs.append(h)
        for i, layer in enumerate(self.middleblocks):
            h = layer(h, biases[f"middleblocks.{i}"])
        for i, layer in enumerate(self.upblocks):
            if isinstance(layer, ResBlock):
                h = layer(torch.cat([h, hs.pop()], dim=2), biases[f"upblocks.{i}"])
            else:
                h = layer(h)
        return h

    def decode(self, h: torch.Tensor) -> torch.Tensor:
        """The non-spiking tail and membrane-style output over the T steps."""
        h = per_step(self.tail_conv, self.tail_swish(per_step(self.tail_bn, h)))
        per_time = self.T_output_layer(h.permute(1, 2, 3, 4, 0)).permute(4, 0, 1, 2, 3)
        h = self.swish(per_step(self.last_bn, per_time.contiguous())) + h
        steps = h.shape[0]
        weights = self.config.output_decay ** torch.arange(steps - 1, -1, -1, dtype=h.dtype, device=h.device)
        return (h * weights[:, None, None, None, None]).sum(0)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.decode(self.core(self.encode(x), self.time_biases(t)))


class SpikingUNetTSM(SpikingUNet):
    """The U-Net with SDM's temporal-wise spiking mechanism: every 2D conv a ``TSMConv2d``.

    Same config, graph and host split as ``SpikingUNet``; ``config.timestep``
    sets the length of every p. The state_dict matches the public
    ``Spk_UNet_TSM`` key for key.
    """

    def __init__(self, config: UNetConfig) -> None:
        super().__init__(config, conv_layer=partial(TSMConv2d, config.timestep))

    @classmethod
    def from_unet(cls, base: SpikingUNet) -> "SpikingUNetTSM":
        """The TSM variant of ``base`` with its weights and every p[t] = 1: the same function as ``base``."""
        if isinstance(base, SpikingUNetTSM):
            raise ValueError("the model already has TSM scales")
        with torch.random.fork_rng():  # the throw-away init must not move the caller's RNG
            model = cls(base.config).to(next(base.parameters()).dtype)
        weights = base.state_dict()
        state = {key: value if key.endswith(".tsmp") else weights[key.replace(".tsmconv.", ".")]
                 for key, value in model.state_dict().items()}
        model.load_state_dict(state)
        return model.train(base.training)
