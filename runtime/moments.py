"""The model's epsilon moments on its data set, for Analytic-DPM.

``Gamma_t = E ||eps_theta(x_t, t)||^2 / d`` over x_t ~ q(x_t | x_0), x_0 from the
training digits (Bao et al. 2022, eq. 8's Monte Carlo estimate), computed
with the float torch model for the diffusion steps a sampler visits. A build
directory caches them in ``moments.json`` (with the sample size and seed) so
every backend samples with the same statistics.

This is the epsilon form of the paper's moment: with the score
``s_t = -eps_t / sqrt(bbar_t)``, the paper's ``bbar_t Gamma_t`` (score) is this
``Gamma_t`` (epsilon), so the variance uses ``1 - Gamma_t`` (the official code's
``ms_eps``). For the true epsilon predictor ``Gamma_t <= 1``; the sampler clips
the variance into the paper's bounds (``snc.runtime.samplers.analytic_variance``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable, Optional

import torch
from torch import nn

from snc.errors import SncError
from snc.models.data import digits
from snc.models.diffusion import Schedule, q_sample

MOMENTS_FILE = "moments.json"


@torch.no_grad()
def eps_moments(model: nn.Module, schedule: Schedule, timesteps: Iterable[int], n: int = 256,
                seed: int = 0) -> dict[int, float]:
    """Gamma_t for each t from ``n`` training digits noised at t (the same digits and noise at every t)."""
    cfg = model.config
    if (cfg.img_ch, cfg.img_size) != (1, 8):
        raise SncError("epsilon moments need the model's data set; snc has it only for 8x8 digits models")
    g = torch.Generator().manual_seed(seed)
    pool, _ = digits("train")
    dtype = next(model.parameters()).dtype  # the model as the caller holds it (the host keeps float64)
    x0 = pool[torch.randperm(len(pool), generator=g)[:n]].to(dtype)
    noise = torch.randn(x0.shape, generator=g, dtype=torch.float64).to(dtype)
    moments = {}
    for t in timesteps:
        tt = torch.full((len(x0),), int(t), dtype=torch.long)
        eps = model(q_sample(schedule, x0, tt, noise), tt)
        moments[int(t)] = float(eps.double().pow(2).mean())
    return moments


def cached_moments(build_path: Optional[Path], model: nn.Module, schedule: Schedule, timesteps: list[int],
                   model_digest: Optional[str] = None, n: int = 256, seed: int = 0) -> dict[int, float]:
    """Moments for ``timesteps``: read from the build's cache (if it was made for the model of digest
    ``model_digest``, n and seed; an unreadable cache counts as none), the missing ones computed and added."""
    path = build_path / MOMENTS_FILE if build_path is not None else None
    cache: dict[int, float] = {}
    if path is not None and path.is_file():
        try:
            doc = json.loads(path.read_text())
            if doc.get("n") == n and doc.get("seed") == seed and doc.get("model") == model_digest:
                cache = {int(t): float(v) for t, v in doc["gamma"].items()}
        except (ValueError, TypeError, AttributeError, KeyError):
            cache = {}
    missing = [t for t in timesteps if t not in cache]
    if missing:
        cache.update(eps_moments(model, schedule, missing, n, seed))
        if path is not None:
            path.write_text(json.dumps({"n": n, "seed": seed, "model": model_digest,
                                        "gamma": {str(t): cache[t] for t in sorted(cache)}}))
    return {t: cache[t] for t in timesteps}
