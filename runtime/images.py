"""Sample grids as PNG (with their layout in a PNG text chunk) and raw .npy arrays."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image, PngImagePlugin

from snc.errors import SncError

GRID_KEY = "snc-grid"


def save_grid(samples: torch.Tensor, path: str | Path, scale: int = 4, pad: int = 1) -> None:
    """Tile samples [N, C, H, W] in [-1, 1] into one PNG, each pixel ``scale`` x ``scale``."""
    n, c, h, w = samples.shape
    cols = math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    pixels = ((samples.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).numpy()
    canvas = np.zeros((rows * (h + pad) + pad, cols * (w + pad) + pad, c), dtype=np.uint8)
    for i in range(n):
        r, q = divmod(i, cols)
        y, x = pad + r * (h + pad), pad + q * (w + pad)
        canvas[y : y + h, x : x + w] = pixels[i].transpose(1, 2, 0)
    canvas = canvas.repeat(scale, 0).repeat(scale, 1)
    image = Image.fromarray(canvas[..., 0] if c == 1 else canvas)
    info = PngImagePlugin.PngInfo()
    layout = {"n": n, "channels": c, "height": h, "width": w, "rows": rows, "cols": cols, "pad": pad, "scale": scale}
    info.add_text(GRID_KEY, json.dumps(layout))
    image.save(path, pnginfo=info)


def load_grid(path: str | Path) -> torch.Tensor:
    """Samples [N, C, H, W] in [-1, 1] back from a grid written by ``save_grid``."""
    try:
        image = Image.open(path)
        image.load()
    except OSError as exc:
        raise SncError(f"{path}: not a readable PNG ({exc})") from None
    if GRID_KEY not in image.info:
        raise SncError(f"{path}: not an snc sample grid (no '{GRID_KEY}' layout chunk); pass the .npy instead")
    g = json.loads(image.info[GRID_KEY])
    canvas = np.asarray(image)
    if canvas.ndim == 2:
        canvas = canvas[..., None]
    canvas = canvas[:: g["scale"], :: g["scale"]]
    h, w, pad = g["height"], g["width"], g["pad"]
    tiles = []
    for i in range(g["n"]):
        r, q = divmod(i, g["cols"])
        y, x = pad + r * (h + pad), pad + q * (w + pad)
        tiles.append(canvas[y : y + h, x : x + w].transpose(2, 0, 1))
    return torch.from_numpy(np.stack(tiles).astype(np.float32) / 127.5 - 1.0)


def load_samples(path: str | Path) -> torch.Tensor:
    """Samples from a ``.npy`` array ([N, C, H, W] or [N, H, W], values in [-1, 1]) or an snc PNG grid."""
    path = Path(path)
    if not path.is_file():
        raise SncError(f"{path}: no such file")
    if path.suffix.lower() == ".png":
        return load_grid(path)
    if path.suffix.lower() != ".npy":
        raise SncError(f"{path}: expected a .npy array or an snc .png grid")
    try:
        array = np.load(path, allow_pickle=False)
    except (ValueError, OSError) as exc:
        raise SncError(f"{path}: not a readable .npy array ({exc})") from None
    if array.ndim == 3:
        array = array[:, None]
    if array.ndim != 4 or not np.issubdtype(array.dtype, np.number):
        raise SncError(f"{path}: expected numbers shaped [N, C, H, W] or [N, H, W], got {array.dtype} {list(array.shape)}")
    return torch.from_numpy(array.astype(np.float32))
