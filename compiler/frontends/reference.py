"""Checkpoints of the public SDDPM / SDM code (``--arch sddpm|sdm-tsm``).

``snc.models.load_checkpoint(path, arch, config, weights)`` reads the public
code's ``{"net_model", "ema_model", ...}`` files with ``weights_only=True``
into snc's ``spiking-unet`` / ``spiking-unet-tsm`` (every missing, extra and
mis-shaped key listed in one error); from there the U-Net family exports it.
The build keeps the converted model as an snc checkpoint (``model.pt``):
sampling and verification read only that format.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Optional, Union

from snc.models.checkpoint import load_checkpoint
from snc.models.reference import read_config_json

from .base import Deployable


def load(path: Path, arch: str, config: Optional[Union[Path, Mapping[str, Any]]], weights: str) -> Deployable:
    """``config``: the reference constructor's arguments, or the JSON file holding them."""
    from . import deployable  # the family registry (this module is one of its sources)

    values = read_config_json(config) if isinstance(config, (str, Path)) else config
    ckpt = load_checkpoint(path, arch, values, weights)
    source = f"{path} ({arch} checkpoint of the public code, {weights} weights)"
    return deployable(ckpt.model, ckpt.arch, source, meta=ckpt.meta | {"converted_from": str(path)})
