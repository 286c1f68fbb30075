"""snc checkpoint files, and the public SDDPM / SDM ones: one dict, loaded without executing code.

Layout (format version 1)::

    {"format": "snc-checkpoint", "format_version": 1, "arch": str,
     "config": dict, "state_dict": {name: tensor}, "meta": dict}

``load_checkpoint(path, arch="sddpm"|"sdm-tsm", config=...)`` reads the
public code's ``{"net_model", "ema_model", ...}`` files instead, and
``arch="spiking-diffusion-vqsvae"|"spiking-diffusion-sdid"`` the public
Spiking-Diffusion code's bare state dicts (see ``reference.py``). Loading
uses ``torch.load(..., weights_only=True)``: a pickle that asks for any
global beyond tensors and plain containers is refused, never executed.
"""

from __future__ import annotations

import json
import pickle
import zipfile
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Mapping, Optional

import torch
from torch import nn

from snc.errors import CheckpointError, SncError

from .presets import Config, build_model, config_from_dict, config_to_dict
from .reference import BARE_STATE_DICT, REFERENCE_ARCHS, WEIGHTS, reference_config

FORMAT = "snc-checkpoint"
FORMAT_VERSION = 1


@dataclass
class Checkpoint:
    arch: str
    config: Config
    model: nn.Module
    meta: dict[str, Any]


def shipped_checkpoint(name: str) -> Path:
    """Path of a checkpoint shipped with snc (``models/checkpoints/NAME.pt``)."""
    path = Path(str(resources.files("snc.models") / "checkpoints" / f"{name}.pt"))
    if not path.is_file():
        raise CheckpointError(f"no shipped checkpoint named {name!r} ({path})")
    return path


def save_checkpoint(path: str | Path, arch: str, model: nn.Module, meta: dict[str, Any],
                    dtype: Optional[torch.dtype] = None) -> None:
    """Write ``model``'s checkpoint; ``dtype``: its floating-point tensors converted (the model is not)."""
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    torch.save(
        {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "arch": arch,
            "config": config_to_dict(model.config),
            "state_dict": {k: v.to(dtype) if dtype is not None and v.is_floating_point() else v.clone()
                           for k, v in state.items()},
            # json round trip: meta must hold only plain types, or weights_only loading refuses
            # the file (torch.__version__, for one, is a TorchVersion object).
            "meta": json.loads(json.dumps(meta, default=str)),
        },
        path,
    )


def read_raw(path: str | Path) -> Any:
    """``torch.load`` with ``weights_only=True``, every failure as one CheckpointError."""
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"{path}: a directory, not a checkpoint file")
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file")
    if not zipfile.is_zipfile(path):  # torch's format; its legacy one is a pickle (protocol 2+: first byte 0x80)
        with open(path, "rb") as f:
            if f.read(1) != b"\x80":
                raise CheckpointError(f"{path}: not a torch checkpoint (neither torch's zip format nor a pickle)")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        # torch's message is a paragraph of advice; keep only what it refused.
        reason = str(exc).rpartition("WeightsUnpickler error:")[2].strip() or "refused"
        raise CheckpointError(
            f"{path}: refused to load: the file asks to run code or build objects "
            f"a checkpoint never needs ({reason.splitlines()[0]})"
        ) from None
    except Exception as exc:  # noqa: BLE001 - corrupt bytes fail anywhere in torch's (weights-only) reader
        raise CheckpointError(f"{path}: not a readable torch checkpoint ({type(exc).__name__}: {exc})") from None


def check_finite(state_dict: dict[str, torch.Tensor], source: str) -> None:
    bad = [k for k, v in state_dict.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise CheckpointError(f"{source}: non-finite (NaN/inf) values in {len(bad)} tensor(s): {', '.join(bad)}")


def load_checkpoint(
    path: str | Path, arch: Optional[str] = None, config: Optional[Mapping[str, Any]] = None, weights: str = "net"
) -> Checkpoint:
    """Load a checkpoint into a model in eval mode; any problem is one SncError (CheckpointError for the file).

    ``arch=None``: an snc checkpoint. ``arch="sddpm"|"sdm-tsm"``: a checkpoint of
    the public code, ``config`` its constructor's arguments, ``weights`` "net"
    or "ema" for its ``net_model`` / ``ema_model`` state_dict.
    ``arch="spiking-diffusion-vqsvae"|"spiking-diffusion-sdid"``: the public
    Spiking-Diffusion code's bare state dict files (``model.pth``, ``diff_model.pth``).
    """
    if arch is not None:
        return _load_reference(Path(path), arch, config, weights)
    if config is not None or weights != "net":
        raise SncError("a config and a choice of weights apply to checkpoints of the public code only "
                       f"(arch {' or '.join(REFERENCE_ARCHS)})")
    raw = read_raw(path)
    if not isinstance(raw, dict) or raw.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not an snc checkpoint (no 'format': '{FORMAT}' entry)")
    if raw.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: checkpoint format version {raw.get('format_version')!r}, this snc reads {FORMAT_VERSION}"
        )
    missing = [k for k in ("arch", "config", "state_dict") if k not in raw]
    if missing:
        raise CheckpointError(f"{path}: checkpoint lacks {', '.join(missing)}")
    try:
        config = config_from_dict(raw["arch"], raw["config"])
        model = build_model(raw["arch"], config)
    except SncError as exc:
        raise CheckpointError(f"{path}: {exc}") from None
    meta = raw.get("meta", {})
    if not isinstance(meta, dict):
        raise CheckpointError(f"{path}: 'meta' is not a mapping")
    _load_weights(model, raw["state_dict"], str(path), "state_dict")
    return Checkpoint(raw["arch"], config, model, dict(meta))


def _load_reference(path: Path, arch: str, config: Optional[Mapping[str, Any]], weights: str) -> Checkpoint:
    if config is None:
        raise SncError(f"a {arch} checkpoint needs its constructor's arguments as config (--config cfg.json)")
    model_config = reference_config(arch, config)
    if weights not in WEIGHTS:
        raise SncError(f"unknown weights {weights!r}; choose {' or '.join(WEIGHTS)}")
    if arch in BARE_STATE_DICT and weights != "net":
        raise SncError(f"a {arch} file is one state dict: it has no {weights} weights")
    raw = read_raw(path)
    if isinstance(raw, dict) and raw.get("format") == FORMAT:
        raise CheckpointError(f"{path}: an snc checkpoint, not one of the public code: load it without an arch")
    entry = "state_dict" if arch in BARE_STATE_DICT else f"{weights}_model"
    if arch in BARE_STATE_DICT:
        state_dict, source = raw, str(path)
    elif isinstance(raw, dict) and entry in raw:
        state_dict, source = raw[entry], f"{path} [{entry}]"
    else:
        held = ", ".join(map(str, raw)) if isinstance(raw, dict) else f"a {type(raw).__name__}"
        raise CheckpointError(f"{path}: no '{entry}' entry, so not a {arch} checkpoint with {weights} weights "
                              f"(the file holds {held or 'nothing'})")
    snc_arch = REFERENCE_ARCHS[arch]
    model = build_model(snc_arch, model_config)
    _load_weights(model, state_dict, source, entry)
    meta: dict[str, Any] = {"reference_arch": arch, "weights": weights, "reference_config": dict(config)}
    if isinstance(raw.get("step"), int):
        meta["step"] = raw["step"]
    return Checkpoint(snc_arch, model_config, model, meta)


def _load_weights(model: nn.Module, state_dict: Any, source: str, entry: str) -> None:
    """Strict, finite-checked load of ``state_dict`` into ``model``, which ends in eval mode."""
    if not isinstance(state_dict, dict) or not all(isinstance(v, torch.Tensor) for v in state_dict.values()):
        raise CheckpointError(f"{source}: '{entry}' is not a mapping of tensors")
    check_finite(state_dict, source)
    load_state_dict_strict(model, state_dict, source)
    model.eval()


def load_state_dict_strict(model: nn.Module, state_dict: dict[str, torch.Tensor], source: str) -> None:
    """Load with every missing, unexpected and mis-shaped key listed in one error."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state_dict))
    extra = sorted(set(state_dict) - set(expected))
    shapes = sorted(
        f"{k} {tuple(state_dict[k].shape)} (expected {tuple(v.shape)})"
        for k, v in expected.items()
        if k in state_dict and state_dict[k].shape != v.shape
    )
    problems = []
    if missing:
        problems.append(f"missing keys: {', '.join(missing)}")
    if extra:
        problems.append(f"unexpected keys: {', '.join(extra)}")
    if shapes:
        problems.append(f"wrong shapes: {', '.join(shapes)}")
    # load_state_dict casts into the model's dtype: integer weights would load truncated (an int64 state dict
    # of a trained model is all zeros and small integers), so a float tensor must come as floats
    dtypes = sorted(f"{k} ({state_dict[k].dtype})" for k, v in expected.items()
                    if k in state_dict and v.is_floating_point() and not state_dict[k].is_floating_point())
    if dtypes:
        problems.append(f"not floating point: {', '.join(dtypes)}")
    if problems:
        raise CheckpointError(f"{source}: state_dict does not fit the model: " + "; ".join(problems))
    model.load_state_dict(state_dict)
