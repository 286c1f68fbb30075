"""Named model configurations and the architecture registry."""

from __future__ import annotations

import dataclasses
from typing import Any, Union

from torch import nn

from snc.errors import SncError

from .lateral import LateralConfig, SpikingLateralTransformer
from .mlp import MLPConfig, SpikingMLP
from .unet import SpikingUNet, SpikingUNetTSM, UNetConfig

Config = Union[UNetConfig, MLPConfig, LateralConfig]

ARCHS: dict[str, tuple[type, type[nn.Module]]] = {
    "spiking-unet": (UNetConfig, SpikingUNet),
    "spiking-unet-tsm": (UNetConfig, SpikingUNetTSM),  # SDM's per-step conv scales (paper 004, IV-B)
    "spiking-mlp": (MLPConfig, SpikingMLP),
    "lateral-transformer": (LateralConfig, SpikingLateralTransformer),  # paper 000
}

PRESETS: dict[str, tuple[str, Config]] = {
    # Paper 002's CIFAR-10 model (reference layout, T = 4).
    "cifar10-sddpm": ("spiking-unet", UNetConfig()),
    # Small enough to train on 2 CPU cores: 8x8x1 digits, two levels.
    "digits-unet": (
        "spiking-unet",
        UNetConfig(img_size=8, img_ch=1, ch=32, ch_mult=(1, 2), num_res_blocks=1, timestep=4),
    ),
    "digits-mlp": ("spiking-mlp", MLPConfig(img_size=8, img_ch=1, hidden=(256, 256), timestep=4)),
    # Paper 000's CIFAR-10 model (patch 2, 12 blocks, D = 768, N = 3, k = 2, T_s = 2), not trained here.
    "cifar10-lateral": ("lateral-transformer", LateralConfig()),
    # 8x8x1 digits: 16 tokens, 4 blocks of D = 64; trains on 2 CPU cores.
    "digits-lateral": ("lateral-transformer", LateralConfig(img_size=8, img_ch=1, hidden=64, depth=4, mlp_ratio=2)),
}


def preset(name: str) -> tuple[str, Config]:
    if name not in PRESETS:
        raise SncError(f"unknown preset {name!r}; known: {', '.join(PRESETS)}")
    return PRESETS[name]


def config_to_dict(config: Config) -> dict[str, Any]:
    """Plain dict (lists, numbers, strings) that ``torch.load(weights_only=True)`` accepts."""
    d = dataclasses.asdict(config)
    return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}


def config_from_dict(arch: str, values: dict[str, Any]) -> Config:
    if arch not in ARCHS:
        raise SncError(f"unknown architecture {arch!r}; known: {', '.join(ARCHS)}")
    config_cls = ARCHS[arch][0]
    known = {f.name for f in dataclasses.fields(config_cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise SncError(f"unknown {arch} config keys: {', '.join(unknown)}")
    try:
        return config_cls(**values)
    except (TypeError, ValueError) as exc:
        raise SncError(f"invalid {arch} config: {exc}") from None


def build_model(arch: str, config: Config) -> nn.Module:
    if arch not in ARCHS:
        raise SncError(f"unknown architecture {arch!r}; known: {', '.join(ARCHS)}")
    return ARCHS[arch][1](config)


def arch_of(model: nn.Module) -> str:
    """The architecture name of a model (its class in ``ARCHS``): what its checkpoint records."""
    for name, (_, cls) in ARCHS.items():
        if type(model) is cls:
            return name
    raise SncError(f"{type(model).__name__} is not a registered architecture")


def ann_twin(config: Config) -> Config:
    """The same graph without spikes (ReLU neurons, one step): for ANN-vs-SNN energy."""
    return dataclasses.replace(config, spiking=False, timestep=1)
