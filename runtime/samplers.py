"""Diffusion samplers: the outer loop runs on the host and calls a denoiser.

A denoiser is any callable ``eps = denoiser(x_t, t)`` with x_t [B, C, H, W]
(float32) and t [B] (int64) diffusion steps; backends (torch reference,
Lava, emulator) provide one. Randomness comes only from ``(seed, first)``: image ``first + j`` draws its
initial noise and every step's from its own stream (``snc.models.image_noise``), so images ``i .. i+k-1`` of
a run are the same whether sampled alone (``first=i``, k images) or among others.
"""

from __future__ import annotations

import math
from typing import Callable, Mapping, Optional, Sequence

import numpy as np
import torch

from snc.errors import SncError
from snc.models import image_noise
from snc.models.diffusion import Schedule

Denoiser = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
StepCallback = Callable[[int, int], None]

SAMPLERS = ("ddpm", "ddim", "analytic", "dpm-solver")
DPM_SOLVER_ORDERS = (1, 2, 3)

PIXEL = 2 / 255  # one 8-bit grey level on the [-1, 1] scale: Bao et al.'s quantisation width


def ddim_timesteps(total: int, steps: int) -> list[int]:
    """``steps`` evenly spaced diffusion steps, descending, always ending at 0."""
    if not 1 <= steps <= total:
        raise SncError(f"sampler steps must be in 1..{total}, got {steps}")
    return sorted({int(round(i)) for i in np.linspace(0, total - 1, steps)}, reverse=True)


SPACINGS = ("time", "logsnr")


def logsnr_timesteps(schedule: Schedule, steps: int) -> list[int]:
    """``steps`` diffusion steps, descending to 0, evenly spaced in ``lambda = log(alpha / sigma)``: DPM-Solver's
    spacing for low-resolution pixel models (the official code's ``skip_type='logSNR'``), each the integer
    step nearest its point of the grid, kept distinct."""
    total = schedule.steps
    if not 1 <= steps <= total:
        raise SncError(f"sampler steps must be in 1..{total}, got {steps}")
    ab = schedule.alphas_bar.double()
    lam = (0.5 * (torch.log(ab) - torch.log1p(-ab))).numpy()
    grid = np.linspace(lam[-1], lam[0], steps)
    nearest = [int(np.argmin(np.abs(lam - g))) for g in grid]  # lambda falls with t: the grid runs from T down
    out = [0] * steps
    out[-1] = 0
    for i in range(steps - 2, -1, -1):  # strictly above the next, and leaving room for the ones before
        out[i] = min(max(nearest[i], out[i + 1] + 1), total - 1 - i)
    return out


def timesteps_for(schedule: Schedule, sampler: str, steps: Optional[int], spacing: Optional[str]) -> list[int]:
    """The steps a sampler visits: all of them (ddpm), else ``steps`` (default 50) spaced evenly in time
    (DDIM's) or in logSNR (DPM-Solver's default)."""
    if sampler == "ddpm":
        if steps not in (None, schedule.steps):
            raise SncError(f"ddpm runs all {schedule.steps} steps; use --sampler ddim for {steps}")
        return list(range(schedule.steps - 1, -1, -1))
    spacing = spacing or ("logsnr" if sampler == "dpm-solver" else "time")
    count = 50 if steps is None else steps
    return logsnr_timesteps(schedule, count) if spacing == "logsnr" else ddim_timesteps(schedule.steps, count)


def _predict_x0(schedule_ab: torch.Tensor, x: torch.Tensor, t: int, eps: torch.Tensor) -> torch.Tensor:
    ab = schedule_ab[t]
    return ((x.double() - (1 - ab).sqrt() * eps.double()) / ab.sqrt()).clamp(-1, 1)


def analytic_variance(ab_n: float, ab_s: float, gamma: float, half_range: float = 1.0) -> float:
    """Analytic-DPM's reverse variance from step n down to s < n, clipped into Theorem 2's bounds.

    Bao et al. 2022, eq. 7 with the epsilon form of the score moment: with
    ``lambda^2 = bbar_s / bbar_n * (1 - a_n|s)`` (the DDPM posterior variance,
    ``a_n|s = abar_n / abar_s``), ``gap = sqrt(bbar_n / a_n|s) - sqrt(bbar_s - lambda^2)``
    and ``Gamma_n = E||eps(x_n, n)||^2 / d`` (= the paper's ``bbar_n E||s_n||^2 / d``),

        sigma^2 = lambda^2 + gap^2 (1 - Gamma_n).

    A model's Gamma_n is a biased Monte Carlo estimate, so the paper clips the
    result into the bounds of its Theorem 2: the lower bound ``lambda^2``
    (``Gamma_n <= 1``), the upper bound ``lambda^2 + gap^2`` (``Gamma_n >= 0``) and,
    for data in ``[a, b]^d``, ``lambda^2 + (sqrt(abar_s) - sqrt(bbar_s - lambda^2)
    sqrt(abar_n / bbar_n))^2 ((b - a) / 2)^2 = lambda^2 + gap^2 abar_n / bbar_n
    ((b - a) / 2)^2``, i.e. the implied covariance of x_0 given x_n,
    ``bbar_n / abar_n (1 - Gamma_n)``, is at most ``((b - a) / 2)^2``
    (``half_range`` = (b - a) / 2 = 1 for images in [-1, 1]). The official
    code (baofff/Analytic-DPM) clips that covariance into [0, 1] the same way.
    """
    bb_n, bb_s = 1 - ab_n, 1 - ab_s
    a_ns = ab_n / ab_s
    lam2 = bb_s / bb_n * (1 - a_ns)
    gap = math.sqrt(bb_n / a_ns) - math.sqrt(max(bb_s - lam2, 0.0))
    weight = min(max(1 - gamma, 0.0), 1.0, ab_n / bb_n * half_range**2)
    return lam2 + gap**2 * weight


def last_step_variance_cap(pixels: float = 2.0, pixel: float = PIXEL) -> float:
    """Bao et al.'s cap on the variance of the last noisy step: ``(pixels * pixel * sqrt(pi / 2))^2``.

    The last step that adds noise (the one landing on the smallest sampled
    step; the final step to x_0 adds none) is clipped so that the mean absolute
    noise it adds, ``sigma sqrt(2 / pi)``, is at most ``pixels`` quantisation
    levels ``pixel`` of the data (2 / 255 for 8-bit images on [-1, 1]): noise
    the model cannot remove any more shows up in the samples. The official code's
    Analytic-DDPM runs use 2 pixels for the linear schedule (1 for the cosine one).
    """
    return (pixels * pixel * math.sqrt(math.pi / 2)) ** 2


def analytic_variances(schedule: Schedule, timesteps: Sequence[int], eps_moment: Mapping[int, float],
                       clip_pixels: Optional[float] = 2.0, half_range: float = 1.0) -> list[float]:
    """Analytic-DPM's variance of every noisy transition ``timesteps[i] -> timesteps[i + 1]``.

    Each is ``analytic_variance`` (clipped into Theorem 2's bounds); the last one
    is further capped by ``last_step_variance_cap(clip_pixels)`` (None: not capped).
    """
    ab = schedule.alphas_bar
    out = [analytic_variance(ab[t].item(), ab[s].item(), eps_moment[t], half_range)
           for t, s in zip(timesteps[:-1], timesteps[1:])]
    if out and clip_pixels is not None:
        out[-1] = min(out[-1], last_step_variance_cap(clip_pixels))
    return out


def check_options(sampler: str, eta: float, order: int = 3, spacing: Optional[str] = None) -> None:
    """Refuse an unknown sampler or spacing, an eta outside [0, 1] or a DPM-Solver order outside 1-3."""
    if spacing is not None and spacing not in SPACINGS:
        raise SncError(f"--spacing must be {' or '.join(SPACINGS)}, not {spacing!r}")
    if sampler not in SAMPLERS:
        raise SncError(f"unknown sampler {sampler!r}; known: {', '.join(SAMPLERS)}")
    if not (isinstance(eta, (int, float)) and math.isfinite(eta) and 0 <= eta <= 1):
        raise SncError(f"--eta must be a number in [0, 1] (0: deterministic DDIM, 1: DDPM's variance), not {eta}")
    if sampler == "dpm-solver" and order not in DPM_SOLVER_ORDERS:
        raise SncError(f"--order must be 1, 2 or 3 (DPM-Solver), not {order}")


def dpm_solver_update(x: torch.Tensor, history: Sequence[tuple[int, torch.Tensor]], t: int, ab: torch.Tensor,
                      order: int) -> torch.Tensor:
    """One multistep DPM-Solver update (Lu et al. 2022, noise prediction; the official code's ``multistep``
    updates of type ``dpmsolver``) from the last step in ``history`` (its ``order`` latest (step, eps) pairs,
    oldest first) to step ``t``, in ``lambda = log(alpha / sigma)``. Order 1 is DDIM."""
    def lam(step: int) -> torch.Tensor:
        return 0.5 * (torch.log(ab[step]) - torch.log1p(-ab[step]))

    (s0, m0), alpha_t, sigma_t = history[-1], ab[t].sqrt(), (1 - ab[t]).sqrt()
    h = lam(t) - lam(s0)
    phi = torch.expm1(h)
    x_t = alpha_t / ab[s0].sqrt() * x - sigma_t * phi * m0
    if order == 1:
        return x_t
    (s1, m1) = history[-2]
    r0 = (lam(s0) - lam(s1)) / h
    d1_0 = (m0 - m1) / r0
    if order == 2:
        return x_t - 0.5 * sigma_t * phi * d1_0
    (s2, m2) = history[-3]
    r1 = (lam(s1) - lam(s2)) / h
    d1_1 = (m1 - m2) / r1
    d1 = d1_0 + r0 / (r0 + r1) * (d1_0 - d1_1)
    d2 = (d1_0 - d1_1) / (r0 + r1)
    return x_t - sigma_t * (phi / h - 1) * d1 - sigma_t * ((phi / h - 1) / h - 0.5) * d2


@torch.no_grad()
def sample(
    denoiser: Denoiser,
    shape: Sequence[int],
    schedule: Schedule,
    sampler: str = "ddim",
    steps: Optional[int] = None,
    eta: float = 0.0,
    seed: int = 0,
    first: int = 0,
    on_step: Optional[StepCallback] = None,
    eps_moment: Optional[Mapping[int, float]] = None,
    analytic_clip_pixels: Optional[float] = 2.0,
    order: int = 3,
    spacing: Optional[str] = None,
) -> torch.Tensor:
    """Generate ``shape[0]`` images from pure noise; returns float32 in [-1, 1]: images ``first ..
    first + shape[0] - 1`` of the run seeded ``seed`` (each image's noise from its own stream).

    - ``ddpm``: ancestral sampling over every step (``steps`` must be None or
      the schedule length), posterior variance beta~_t ("fixedsmall").
    - ``ddim``: Song et al. 2021 over ``steps`` evenly spaced steps; ``eta`` = 0
      is deterministic, ``eta`` = 1 matches DDPM's variance.
    - ``analytic``: Analytic-DPM (Bao et al. 2022) over ``steps`` evenly spaced
      steps: the DDPM posterior mean between the chosen steps with the optimal
      variance ``lambda^2 + (sqrt(bbar_n / a_n|s) - sqrt(bbar_s - lambda^2))^2
      (1 - Gamma_n)``, where ``Gamma_n = E||eps(x_n, n)||^2 / d`` is the
      model's moment on its data (``eps_moment[t]``, see ``snc.runtime.moments``),
      clipped into the bounds of the paper's Theorem 2 (``analytic_variance``),
      and the last noisy step's variance capped so that its noise stays within
      ``analytic_clip_pixels`` 8-bit grey levels (``last_step_variance_cap``;
      default 2 as in Bao et al.'s linear-schedule runs, None: no cap).
    - ``dpm-solver``: the multistep DPM-Solver of ``order`` 1-3 (Lu et al. 2022, noise prediction,
      ``dpm_solver_update``): each step reuses the model's outputs at the previous ones (no extra calls);
      the first steps and the last ones use the orders they can (the official code's default
      ``lower_order_final``). Order 1 is DDIM (eta 0) on the same steps, exactly.
    ``spacing``: the ``steps`` evenly in time (``time``, DDIM's and Analytic-DPM's default) or in logSNR
    (``logsnr``, DPM-Solver's default, as its authors recommend for low-resolution pixel models).
    The predicted x_0 is clipped to [-1, 1] at every step, as in the SDDPM code (DDIM, Analytic-DPM and
    DPM-Solver then use the noise that clipped x_0 implies); the last step to x_0 is x_0.
    """
    check_options(sampler, eta, order, spacing)
    timesteps = timesteps_for(schedule, sampler, steps, spacing)
    if sampler == "analytic":
        missing = [t for t in timesteps if eps_moment is None or t not in eps_moment]
        if missing:
            raise SncError(f"analytic sampling needs the model's epsilon moments at {len(missing)} of its steps "
                           f"(first: {missing[0]})")
        analytic_var = analytic_variances(schedule, timesteps, eps_moment, analytic_clip_pixels)
    ab = schedule.alphas_bar
    generators = image_noise.image_generators(seed, first, shape[0])
    x = image_noise.randn(generators, shape[1:])
    batch = shape[0]
    history: list[tuple[int, torch.Tensor]] = []  # DPM-Solver: (step, eps) of the latest calls
    for i, t in enumerate(timesteps):
        eps = denoiser(x.float(), torch.full((batch,), t, dtype=torch.long)).double()
        x0 = _predict_x0(ab, x, t, eps)
        t_prev = timesteps[i + 1] if i + 1 < len(timesteps) else -1
        ab_prev = ab[t_prev] if t_prev >= 0 else torch.tensor(1.0, dtype=torch.float64)
        if sampler == "dpm-solver":
            history = (history + [(t, (x - ab[t].sqrt() * x0) / (1 - ab[t]).sqrt())])[-order:]
            remaining = len(timesteps) - 1 - i  # updates left, this one included (the last lands on x_0)
            step_order = min(len(history), remaining)  # lower_order_final
            x = dpm_solver_update(x, history, t_prev, ab, step_order) if t_prev >= 0 else x0
            if on_step is not None:
                on_step(i + 1, len(timesteps))
            continue
        if sampler == "ddpm":
            beta = 1 - ab[t] / ab_prev
            mean = (ab_prev.sqrt() * beta * x0 + (1 - beta).sqrt() * (1 - ab_prev) * x) / (1 - ab[t])
            var = beta * (1 - ab_prev) / (1 - ab[t])
        else:
            # recompute eps from the clipped x0 so the update stays consistent
            eps = (x - ab[t].sqrt() * x0) / (1 - ab[t]).sqrt()
            posterior = (1 - ab_prev) / (1 - ab[t]) * (1 - ab[t] / ab_prev)  # lambda^2 of DDPM between the steps
            var = eta**2 * posterior if sampler == "ddim" else posterior
            mean = ab_prev.sqrt() * x0 + (1 - ab_prev - var).clamp(min=0).sqrt() * eps
            if sampler == "analytic" and t_prev >= 0:
                var = torch.tensor(analytic_var[i], dtype=torch.float64)
        if t_prev >= 0 and var > 0:
            x = mean + var.sqrt() * image_noise.randn(generators, shape[1:])
        else:
            x = mean
        if on_step is not None:
            on_step(i + 1, len(timesteps))
    return x.clamp(-1, 1).float()
