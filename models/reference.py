"""Checkpoints of the public SDDPM / SDM code as snc models: formats and configs.

The public code (papers 002 and 004) saves ``torch.save({"net_model":
state_dict, "optim": ..., "step": int, "x_T": tensor})``; SDM adds
``"ema_model"``. Its state_dicts use the key names of ``Spk_UNet`` (arch
``sddpm``) and ``Spk_UNet_TSM`` (arch ``sdm-tsm``), which snc's
``spiking-unet`` and ``spiking-unet-tsm`` reproduce key for key.

Requires: the reference constructor's arguments as a dict (``T``, ``ch``,
``ch_mult``, ``attn``, ``num_res_blocks``, ``dropout``, ``timestep``,
``img_ch``; ``global_thres`` for sdm-tsm; plus ``img_size``, which the
reference scripts pass to the sampler, not the model).
Guarantees: the config builds a model that computes the reference
``forward(x, t)``: SpikingJelly's ``IFNode`` (no leak, hard reset to 0,
firing at ``v >= threshold``), TSM scales where the reference applies them,
the same tail. Every problem in a config is listed in one ``SncError``.
``snc.models.checkpoint.load_checkpoint(path, arch=...)`` reads the file.

The public Spiking-Diffusion code (paper 003) saves a bare ``state_dict()``
(``model.pth``: ``SNN_VQVAE``, arch ``spiking-diffusion-vqsvae``; ``diff_model.pth``:
``DummyModel``, arch ``spiking-diffusion-sdid``), read into snc's ``vq-svae`` / ``sdid``
(``spiking_diffusion.py``) from the constructors' arguments (``in_dim``,
``embedding_dim``, ``num_embeddings`` [, ``data_variance``, ``commitment_cost``];
``n_channel``, ``num_embeddings``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping, Union

from snc.errors import SncError

from .neurons import NeuronConfig
from .spiking_diffusion import SDIDConfig, VQSVAEConfig
from .unet import UNetConfig

# reference arch -> snc arch
REFERENCE_ARCHS = {"sddpm": "spiking-unet", "sdm-tsm": "spiking-unet-tsm",
                   "spiking-diffusion-vqsvae": "vq-svae", "spiking-diffusion-sdid": "sdid"}
# the reference archs whose files are the bare state dict (others: {"net_model": ..., "ema_model": ...})
BARE_STATE_DICT = ("spiking-diffusion-vqsvae", "spiking-diffusion-sdid")
WEIGHTS = ("net", "ema")  # the checkpoint entries net_model and ema_model

_REQUIRED = ("T", "ch", "ch_mult", "num_res_blocks", "timestep")
_POSITIVE_INTS = ("T", "ch", "num_res_blocks", "timestep", "img_ch", "img_size")


def _optional_keys(arch: str) -> tuple[str, ...]:
    keys = ("attn", "dropout", "img_ch", "img_size")
    return keys + ("global_thres",) if arch == "sdm-tsm" else keys  # only Spk_UNet_TSM takes a threshold


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _key_problems(values: Mapping[str, Any], required: tuple[str, ...], optional: tuple[str, ...],
                  positive_ints: tuple[str, ...]) -> list[str]:
    """Unknown and missing constructor arguments, and those of ``positive_ints`` that are not one."""
    known = required + optional
    problems = []
    unknown = sorted(set(values) - set(known))
    if unknown:
        problems.append(f"unknown keys {', '.join(unknown)} (known: {', '.join(known)})")
    missing = [k for k in required if k not in values]
    if missing:
        problems.append(f"missing keys {', '.join(missing)}")
    return problems + [f"{k} must be a positive integer, got {values[k]!r}"
                       for k in positive_ints if k in values and not (_is_int(values[k]) and values[k] > 0)]


def _problems(arch: str, values: Mapping[str, Any]) -> list[str]:
    problems = _key_problems(values, _REQUIRED, _optional_keys(arch), _POSITIVE_INTS)
    ch_mult = values.get("ch_mult", [1])
    if not (isinstance(ch_mult, list) and ch_mult and all(_is_int(m) and m > 0 for m in ch_mult)):
        problems.append(f"ch_mult must be a non-empty list of positive integers, got {ch_mult!r}")
    if _is_int(values.get("ch")) and values["ch"] % 2:
        problems.append(f"ch must be even (the sinusoidal time table pairs sin and cos), got {values['ch']}")
    attn = values.get("attn", [])
    if not isinstance(attn, list):
        problems.append(f"attn must be a list, got {attn!r}")
    elif attn:
        problems.append(f"attn {attn}: attention blocks are not supported (the public SDDPM and SDM "
                        "checkpoints use attn=[]; snc's U-Net has no attention)")
    dropout = values.get("dropout", 0.0)
    if not (_is_number(dropout) and 0 <= dropout < 1):
        problems.append(f"dropout must be a number in [0, 1), got {dropout!r}")
    threshold = values.get("global_thres", 1.0)
    if not (_is_number(threshold) and threshold > 0):
        problems.append(f"global_thres must be a positive number, got {threshold!r}")
    return problems


def reference_config(arch: str, values: Mapping[str, Any]) -> Union[UNetConfig, VQSVAEConfig, SDIDConfig]:
    """The snc config of a reference model from its constructor's arguments.

    SDDPM / SDM: ``T`` is the number of diffusion steps (snc: ``diffusion_steps``),
    ``timestep`` the spiking steps per call. ``dropout`` is accepted and has
    no effect: the reference residual blocks never apply it.
    """
    if arch not in REFERENCE_ARCHS:
        raise SncError(f"unknown reference architecture {arch!r}; known: {', '.join(REFERENCE_ARCHS)}")
    if not isinstance(values, Mapping):
        raise SncError(f"{arch} config must be a JSON object of the constructor's arguments, "
                       f"got {type(values).__name__}")
    if arch in BARE_STATE_DICT:
        return _spiking_diffusion_config(arch, values)
    problems = _problems(arch, values)
    if problems:
        raise SncError(f"invalid {arch} config: " + "; ".join(problems))
    try:
        return UNetConfig(
            img_size=values.get("img_size", 32),
            img_ch=values.get("img_ch", 3),
            ch=values["ch"],
            ch_mult=tuple(values["ch_mult"]),
            num_res_blocks=values["num_res_blocks"],
            timestep=values["timestep"],
            diffusion_steps=values["T"],
            neuron=NeuronConfig(threshold=float(values.get("global_thres", 1.0)), fire_at_threshold=True),
        )
    except ValueError as exc:
        raise SncError(f"invalid {arch} config: {exc}") from None


# Spiking-Diffusion's constructors: required and optional arguments
_SPIKING_DIFFUSION_KEYS = {
    "spiking-diffusion-vqsvae": (("in_dim", "embedding_dim", "num_embeddings"), ("data_variance", "commitment_cost")),
    "spiking-diffusion-sdid": (("n_channel", "num_embeddings"), ()),
}


def _spiking_diffusion_config(arch: str, values: Mapping[str, Any]) -> Union[VQSVAEConfig, SDIDConfig]:
    """``SNN_VQVAE(in_dim, embedding_dim, num_embeddings, data_variance, commitment_cost)``'s or
    ``DummyModel(n_channel, num_embeddings)``'s arguments -> the config of the same network (28x28 input,
    two stride-2 stages, a 7x7 grid, 49 absorbing steps, T = 16). ``data_variance`` only scales a training
    loss and is accepted without effect."""
    required, optional = _SPIKING_DIFFUSION_KEYS[arch]
    problems = _key_problems(values, required, optional, required)
    problems += [f"{k} must be a positive number, got {values[k]!r}"
                 for k in optional if k in values and not (_is_number(values[k]) and 0 < values[k] < float("inf"))]
    if values.get("embedding_dim", 16) != 16 and "embedding_dim" not in " ".join(problems):
        problems.append(f"embedding_dim must be 16: the public code's spike generator has 16 channels, got "
                        f"{values['embedding_dim']!r}")
    if problems:
        raise SncError(f"invalid {arch} config: " + "; ".join(problems))
    if arch == "spiking-diffusion-vqsvae":
        return VQSVAEConfig(in_dim=values["in_dim"], embedding_dim=16, num_embeddings=values["num_embeddings"],
                            commitment_cost=float(values.get("commitment_cost", 0.25)))
    return SDIDConfig(n_channel=values["n_channel"], num_embeddings=values["num_embeddings"])


def read_config_json(path: str | Path) -> dict[str, Any]:
    """A config file of constructor arguments; an unreadable or malformed file is one SncError."""
    path = Path(path)
    try:
        values = json.loads(path.read_text())
    except OSError as exc:
        raise SncError(f"{path}: cannot read the config ({exc.strerror or exc})") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise SncError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(values, dict):
        raise SncError(f"{path}: the config must be a JSON object of the constructor's arguments")
    return values
