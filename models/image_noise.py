"""Per-image random streams: image ``i`` of a sampling run with seed ``s`` draws all of its noise (its
initial noise and every step's) from its own ``torch.Generator``, seeded from BLAKE2b of ``(s, i)``.

So an image does not depend on which other images are sampled with it: images ``i .. i+k-1`` of a run are
the same whether the run makes them alone (a shard, ``snc sample --workers``) or among others, as long as
the denoiser computes each image the same (see ``snc.runtime.distributed`` on the forward's batch).
No global state: every stream is made from ``(seed, index)`` alone.
"""

from __future__ import annotations

import hashlib
from typing import Callable, Sequence

import torch

from snc.errors import SncError

_PERSON = b"snc-image-noise"  # BLAKE2b's personalisation: these seeds are nobody else's


def image_seed(seed: int, index: int) -> int:
    """The seed (0..2^64-1) of image ``index``'s stream in a run seeded ``seed`` (both 0..2^64-1)."""
    if not (0 <= seed < 2**64 and 0 <= index < 2**64):
        raise SncError(f"seeds and image indices are in 0..2^64-1, not {seed} and {index}")
    digest = hashlib.blake2b(seed.to_bytes(8, "little") + index.to_bytes(8, "little"), digest_size=8,
                             person=_PERSON).digest()
    return int.from_bytes(digest, "little")


def image_generators(seed: int, first: int, n: int) -> list[torch.Generator]:
    """The streams of images ``first .. first + n - 1`` of a run seeded ``seed``."""
    return [torch.Generator().manual_seed(image_seed(seed, first + i)) for i in range(n)]


def per_image(generators: Sequence[torch.Generator], draw: Callable[[torch.Generator], torch.Tensor]) -> torch.Tensor:
    """``[n, ...]``: ``draw(g)`` of each image's stream, stacked (one draw per image, in image order)."""
    return torch.stack([draw(g) for g in generators])


def randn(generators: Sequence[torch.Generator], shape: Sequence[int],
          dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """Standard normal noise ``[n, *shape]``, image ``j``'s from ``generators[j]``."""
    return per_image(generators, lambda g: torch.randn(tuple(shape), generator=g, dtype=dtype))
