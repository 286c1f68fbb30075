"""Threshold guidance and Analytic-DPM from the command line, on torch and the emulator."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from snc.compiler.build import read_build
from snc.models.diffusion import Schedule
from snc.models.neurons import IFNeuron
from snc.runtime.samplers import (PIXEL, analytic_variance, analytic_variances, ddim_timesteps,
                                  last_step_variance_cap, sample)

from conftest import run_snc
from test_cli import _clean_error, _ok


@pytest.mark.slow
def test_guided_compile_and_analytic_sampling(tmp):
    ckpt, build = tmp / "mlp.pt", tmp / "b"
    _ok(run_snc("train", "--preset", "digits-mlp", "--steps", "2", "-o", str(ckpt)))
    res = json.loads(_ok(run_snc("compile", str(ckpt), "-o", str(build), "--threshold-scale", "0.997",
                                 "--json")).stdout)
    assert res["threshold_scale"] == 0.997
    log = json.loads((build / "build.json").read_text())["log"]
    guided = next(e for e in log if e["pass"] == "guide_thresholds")["populations"]
    assert guided and all(r["vth"][1] < r["vth"][0] and abs(r["effective_scale"] - 0.997) < 2e-3 for r in guided)
    _clean_error(run_snc("compile", str(ckpt), "-o", str(tmp / "c"), "--threshold-scale", "1.000001"),
                 "rounds away")

    runs = {}
    for backend, source in (("torch", ckpt), ("emu", build)):
        out = json.loads(_ok(run_snc("sample", str(source), "--backend", backend, "--sampler", "analytic",
                                     "--steps", "5", "-n", "3", "--threshold-scale", "0.997",
                                     "-o", str(tmp / f"{backend}.png"), "--json")).stdout)
        assert out["sampler"] == "analytic" and out["threshold_scale"] == 0.997
        runs[backend] = np.load(tmp / f"{backend}.npy")
        assert runs[backend].shape == (3, 1, 8, 8) and np.all(np.abs(runs[backend]) <= 1)
    moments = json.loads((build / "moments.json").read_text())  # cached in the build for every backend
    assert len(moments["gamma"]) == 5 and all(0 < g < 2 for g in moments["gamma"].values())

    # the torch side of a guided build (sample --backend torch, verify, energy) is the guided model
    host = read_build(build).host.model
    assert {m.config.threshold for m in host.modules() if isinstance(m, IFNeuron)} == {0.997}
    _clean_error(run_snc("sample", str(build), "--threshold-scale", "nan", "-o", str(tmp / "x.png")),
                 "positive finite")
    _ok(run_snc("compile", str(ckpt), "-o", str(build)))
    assert not (build / "moments.json").exists()  # a new build's model: the cached moments are gone


# --- Analytic-DPM's variance clipping (Bao et al. 2022, Theorem 2 and the last-step cap) ---

_SCHEDULE = Schedule(steps=100, beta_1=1e-3, beta_T=0.05)  # small synthetic schedule, abar_99 ~ 0.07


def _paper_terms(ab_n, ab_s, half_range=1.0):
    """lambda^2 and Theorem 2's two upper bounds, written as in the paper (n -> s, abar_n|s = abar_n / abar_s)."""
    bb_n, bb_s, a = 1 - ab_n, 1 - ab_s, ab_n / ab_s
    lam2 = bb_s / bb_n * (1 - a)
    upper = lam2 + (math.sqrt(bb_n / a) - math.sqrt(bb_s - lam2)) ** 2
    upper_bounded = lam2 + (math.sqrt(ab_s) - math.sqrt(bb_s - lam2) * math.sqrt(ab_n / bb_n)) ** 2 * half_range**2
    return lam2, upper, upper_bounded


def _pairs():
    ab = _SCHEDULE.alphas_bar
    ts = ddim_timesteps(_SCHEDULE.steps, 10)
    return [(ab[t].item(), ab[s].item()) for t, s in zip(ts[:-1], ts[1:])]


def test_analytic_variance_uses_the_epsilon_moment():
    # Gamma here is E||eps||^2/d = bbar_n x the paper's score moment: sigma^2 = lambda^2 + gap^2 (1 - Gamma)
    for ab_n, ab_s in _pairs():
        lam2, upper, upper_bounded = _paper_terms(ab_n, ab_s)
        gamma = 0.9
        expected = lam2 + (upper - lam2) * (1 - gamma)
        if expected <= upper_bounded:  # where Theorem 2's bounds are not active
            assert analytic_variance(ab_n, ab_s, gamma) == pytest.approx(expected, rel=1e-12)
            score_moment = gamma / (1 - ab_n)  # the paper's eq. 7 with the score moment gives the same
            assert analytic_variance(ab_n, ab_s, gamma) == pytest.approx(
                lam2 + (upper - lam2) * (1 - (1 - ab_n) * score_moment), rel=1e-12)


def test_analytic_variance_is_clipped_into_theorem_2_bounds():
    grid = [-1.0, -0.1, 0.0, 0.2, 0.5, 0.9, 0.99, 1.0, 1.01, 1.5, 10.0]
    data_bound_active = False
    for ab_n, ab_s in _pairs():
        lam2, upper, upper_bounded = _paper_terms(ab_n, ab_s)
        top = min(upper, upper_bounded)
        data_bound_active |= upper_bounded < upper
        values = [analytic_variance(ab_n, ab_s, g) for g in grid]
        assert all(lam2 * (1 - 1e-12) <= v <= top * (1 + 1e-12) for v in values)
        assert all(a >= b for a, b in zip(values, values[1:]))  # non-increasing in Gamma
        # Gamma >= 1 (the model overestimates its moment): the lower bound, DDPM's posterior variance
        for g in (1.0, 1.01, 10.0):
            assert analytic_variance(ab_n, ab_s, g) == pytest.approx(lam2, rel=1e-12)
        # Gamma <= 0: the tighter of the two upper bounds
        for g in (0.0, -1.0):
            assert analytic_variance(ab_n, ab_s, g) == pytest.approx(top, rel=1e-12)
        # data on [-2, 2]: the bounded-data bound scales with ((b - a) / 2)^2
        assert analytic_variance(ab_n, ab_s, 0.0, half_range=2.0) == pytest.approx(
            min(upper, _paper_terms(ab_n, ab_s, 2.0)[2]), rel=1e-12)
    assert data_bound_active  # the high-noise steps of this schedule exercise the [-1, 1] bound


def test_last_noisy_step_variance_is_capped_to_pixels():
    cap = last_step_variance_cap(2.0)
    assert PIXEL == 2 / 255
    assert math.sqrt(cap) * math.sqrt(2 / math.pi) == pytest.approx(2 * PIXEL)  # E|sigma z| = 2 grey levels
    assert last_step_variance_cap(1.0) == pytest.approx(cap / 4)
    ts = ddim_timesteps(_SCHEDULE.steps, 10)
    ab = _SCHEDULE.alphas_bar
    for gamma in (0.0, 0.5):
        moments = {t: gamma for t in ts}
        raw = analytic_variances(_SCHEDULE, ts, moments, clip_pixels=None)
        assert len(raw) == len(ts) - 1
        assert raw == [analytic_variance(ab[t].item(), ab[s].item(), gamma) for t, s in zip(ts[:-1], ts[1:])]
        assert raw[-1] > cap  # a bad moment estimate would add several grey levels of noise at the end
        clipped = analytic_variances(_SCHEDULE, ts, moments)  # default: 2 pixels, as in the paper
        assert clipped[:-1] == raw[:-1] and clipped[-1] == cap
        assert analytic_variances(_SCHEDULE, ts, moments, clip_pixels=1.0)[-1] == pytest.approx(cap / 4)
        assert analytic_variances(_SCHEDULE, ts, moments, clip_pixels=1e6) == raw
    # the cap applies to the whole variance, even below lambda^2 (here beta_1 = 1e-3), as in the official code
    assert analytic_variances(_SCHEDULE, ts, {t: 1.0 for t in ts})[-1] == cap
    # a last-step variance already under the cap (DDPM's schedule, Gamma = 1: its posterior variance) is left alone
    ddpm, ts20 = Schedule(), ddim_timesteps(1000, 20)
    exact = analytic_variances(ddpm, ts20, {t: 1.0 for t in ts20})
    assert exact[-1] < cap and exact == analytic_variances(ddpm, ts20, {t: 1.0 for t in ts20}, clip_pixels=None)
    assert analytic_variances(_SCHEDULE, [0], {0: 0.5}) == []  # one step: no noisy transition


def test_analytic_sampling_applies_the_last_step_cap():
    ts = ddim_timesteps(_SCHEDULE.steps, 10)
    moments = {t: 0.0 for t in ts}  # maximal variance everywhere: the cap matters
    denoiser = lambda x, t: 0.3 * x  # noqa: E731

    def run(**kw):
        return sample(denoiser, (3, 1, 8, 8), _SCHEDULE, "analytic", 10, seed=1,
                      eps_moment=moments, **kw)

    default, uncapped = run(), run(analytic_clip_pixels=None)
    assert torch.equal(default, run())  # deterministic under a seed
    assert torch.equal(run(analytic_clip_pixels=2.0), default)
    assert not torch.equal(default, uncapped)
    assert torch.equal(run(analytic_clip_pixels=1e6), uncapped)
