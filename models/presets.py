"""Named model configurations and the architecture registry."""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Union

from torch import nn

from snc.errors import SncError

from .lateral import LateralConfig, SpikingLateralTransformer
from .mlp import MLPConfig, SpikingMLP
from .neurons import NeuronConfig
from .spiking_diffusion import SDID, VQSVAE, SDIDConfig, SpikingDiffusionVQ, SpikingDiffusionVQConfig, VQSVAEConfig
from .unet import SpikingUNet, SpikingUNetTSM, UNetConfig

Config = Union[UNetConfig, MLPConfig, LateralConfig, VQSVAEConfig, SDIDConfig, SpikingDiffusionVQConfig]

ARCHS: dict[str, tuple[type, type[nn.Module]]] = {
    "spiking-unet": (UNetConfig, SpikingUNet),
    "spiking-unet-tsm": (UNetConfig, SpikingUNetTSM),  # SDM's per-step conv scales (paper 004, IV-B)
    "spiking-mlp": (MLPConfig, SpikingMLP),
    "lateral-transformer": (LateralConfig, SpikingLateralTransformer),  # paper 000
    # paper 003: the VQ-SVAE and the SDID denoiser alone (the public code's files), and both as one model
    "vq-svae": (VQSVAEConfig, VQSVAE),
    "sdid": (SDIDConfig, SDID),
    "spiking-diffusion-vq": (SpikingDiffusionVQConfig, SpikingDiffusionVQ),
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
    # Paper 003 on 8x8x1 digits: one stride-2 stage (a 4x4 token grid, 16 absorbing steps), T = 16 as there.
    "digits-vq": ("spiking-diffusion-vq", SpikingDiffusionVQConfig(
        VQSVAEConfig(img_size=8, num_embeddings=64, channels=(32, 64), strides=(2, 1)),
        SDIDConfig(num_embeddings=64, channels=(64, 128, 128, 64), latent_size=4, diffusion_steps=16))),
}


def preset(name: str) -> tuple[str, Config]:
    if name not in PRESETS:
        raise SncError(f"unknown preset {name!r}; known: {', '.join(PRESETS)}")
    return PRESETS[name]


def config_to_dict(config: Config) -> dict[str, Any]:
    """Plain dict (lists, numbers, strings) that ``torch.load(weights_only=True)`` accepts."""
    def plain(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        return list(value) if isinstance(value, tuple) else value

    return plain(dataclasses.asdict(config))


MAX_TIMESTEP = 4096  # spiking steps per call: per-step tables and call lengths grow with it
MAX_DIFFUSION_STEPS = 100_000
# float fields and their open / closed ranges (every float must be finite; every int >= 1)
FLOAT_RANGES = {"output_decay": (0.0, 1.0), "decay": (0.0, 1.0), "threshold": (0.0, None),
                "surrogate_alpha": (0.0, None), "attention_threshold": (0.0, None), "tau": (0.0, None),
                "membrane_decay": (0.0, 1.0), "commitment_cost": (0.0, None), "pixel_scale": (0.0, None)}
INT_LIMITS = {"timestep": MAX_TIMESTEP, "diffusion_steps": MAX_DIFFUSION_STEPS, "ann_bits": 8}


def check_config(config: Any, arch: str, where: str = "") -> None:
    """Every field of a config (and of its nested neuron configs) of the type and range it must have: ints
    (not bools, not 2.5, not "4") >= 1, tuples of them non-empty, finite floats in their ranges
    (``FLOAT_RANGES``: (low, high] ), bools; one SncError naming every bad field."""
    problems = _config_problems(config, where)
    if problems:
        raise SncError(f"invalid {arch} config: " + "; ".join(problems))


def _config_problems(config: Any, where: str) -> list[str]:
    problems = []
    for f in dataclasses.fields(config):
        key, value = f"{where}{f.name}", getattr(config, f.name)
        kind = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
        if dataclasses.is_dataclass(value):
            problems += _config_problems(value, f"{key}.")
        elif kind == "bool":
            if not isinstance(value, bool):
                problems.append(f"{key} must be true or false, not {value!r}")
        elif kind in ("int", "Optional[int]"):
            limit = INT_LIMITS.get(f.name)
            if value is None and kind != "int":
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < 1 or (limit and value > limit):
                problems.append(f"{key} must be " + (f"an integer in 1..{limit}" if limit else "a positive integer")
                                + f", not {value!r}")
        elif kind == "float":
            low, high = FLOAT_RANGES.get(f.name, (None, None))
            number = isinstance(value, (int, float)) and not isinstance(value, bool)
            if not number or not math.isfinite(value) or (low is not None and value <= low) \
                    or (high is not None and value > high):
                span = f" in ({low:g}, {high:g}]" if high is not None else f" > {low:g}" if low is not None else ""
                problems.append(f"{key} must be a finite number{span}, not {value!r}")
        elif kind.startswith("tuple"):
            if not value or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in value):
                problems.append(f"{key} must list one or more integers >= 1, not {list(value)!r}")
    return problems


def config_from_dict(arch: str, values: dict[str, Any]) -> Config:
    if arch not in ARCHS:
        raise SncError(f"unknown architecture {arch!r}; known: {', '.join(ARCHS)}")
    if not isinstance(values, dict):
        raise SncError(f"a {arch} config is a mapping of keys to values, not a {type(values).__name__}")
    config_cls = ARCHS[arch][0]
    known = {f.name for f in dataclasses.fields(config_cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise SncError(f"unknown {arch} config keys: {', '.join(unknown)}")
    for key in ("neuron", "lateral_neuron"):
        if isinstance(values.get(key), dict):
            neuron_keys = {f.name for f in dataclasses.fields(NeuronConfig)}
            if set(values[key]) - neuron_keys:
                raise SncError(f"unknown {arch} config keys: "
                               + ", ".join(f"{key}.{k}" for k in sorted(set(values[key]) - neuron_keys)))
        elif key in values and not isinstance(values[key], NeuronConfig):
            raise SncError(f"invalid {arch} config: {key} must be a mapping, not {values[key]!r}")
    for f in dataclasses.fields(config_cls):  # a string would be read as a list of characters
        if str(f.type).startswith("tuple") and f.name in values and not isinstance(values[f.name], (list, tuple)):
            raise SncError(f"invalid {arch} config: {f.name} must list integers, not {values[f.name]!r}")
    try:
        config = config_cls(**values)
    except (TypeError, ValueError, ZeroDivisionError) as exc:
        raise SncError(f"invalid {arch} config: {exc}") from None
    check_config(config, arch)
    return config


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
