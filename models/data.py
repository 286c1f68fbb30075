"""scikit-learn's digits (1797 images, 8x8, 17 grey levels): offline, real data.

Images are scaled from 0..16 to [-1, 1] and split once, by a fixed
permutation, into a training set and a held-out set of ``HELD_OUT`` images.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch
from sklearn.datasets import load_digits

HELD_OUT = 297  # 1797 = 1500 training + 297 held-out
SPLIT_SEED = 20240601


@lru_cache(maxsize=1)
def _digits() -> tuple[np.ndarray, np.ndarray]:
    data = load_digits()
    images = (data.images.astype(np.float32) / 16.0) * 2.0 - 1.0
    order = np.random.default_rng(SPLIT_SEED).permutation(len(images))
    return images[order][:, None], data.target[order]


def digits(split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``(images [N,1,8,8] in [-1,1], labels [N])`` of split 'train' or 'heldout'."""
    images, labels = _digits()
    if split == "train":
        sl = slice(HELD_OUT, None)
    elif split == "heldout":
        sl = slice(None, HELD_OUT)
    else:
        raise ValueError(f"split must be 'train' or 'heldout', got {split!r}")
    return torch.from_numpy(images[sl].copy()), torch.from_numpy(labels[sl].copy())
