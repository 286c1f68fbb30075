import pytest
import torch

from snc.errors import SncError
from snc.models import image_noise
from snc.models.diffusion import Schedule, q_sample
from snc.runtime.samplers import ddim_timesteps, logsnr_timesteps, sample


def _point_mass_denoiser(target: torch.Tensor, schedule: Schedule):
    """The exact epsilon-predictor for data that is always ``target``."""
    ab = schedule.alphas_bar

    def denoiser(x, t):
        a = ab[t].view(-1, 1, 1, 1)
        return ((x.double() - a.sqrt() * target) / (1 - a).sqrt()).float()

    return denoiser


@pytest.mark.parametrize("sampler,steps,eta", [("ddpm", None, 0.0), ("ddim", 20, 0.0), ("ddim", 50, 1.0)])
def test_samplers_recover_a_point_mass(sampler, steps, eta):
    schedule = Schedule()
    target = torch.linspace(-0.9, 0.9, 64, dtype=torch.float64).view(1, 1, 8, 8)
    out = sample(_point_mass_denoiser(target, schedule), (4, 1, 8, 8), schedule, sampler, steps, eta,
                 seed=0)
    assert torch.allclose(out.double(), target.expand(4, -1, -1, -1), atol=1e-3)


def test_image_streams_are_seeded_by_seed_and_index_alone():
    assert image_noise.image_seed(0, 0) == image_noise.image_seed(0, 0)
    seeds = {image_noise.image_seed(s, i) for s in (0, 1, 2**64 - 1) for i in range(100)}
    assert len(seeds) == 300 and all(0 <= v < 2**64 for v in seeds)
    whole = image_noise.randn(image_noise.image_generators(7, 0, 10), (1, 8, 8))
    assert torch.equal(image_noise.randn(image_noise.image_generators(7, 4, 3), (1, 8, 8)), whole[4:7])
    with pytest.raises(SncError, match="0..2"):
        image_noise.image_seed(-1, 0)


@pytest.mark.parametrize("sampler,steps,eta", [("ddpm", None, 0.0), ("ddim", 10, 1.0), ("analytic", 10, 0.0),
                                               ("dpm-solver", 10, 0.0)])
def test_a_shard_of_a_run_holds_the_same_images_as_the_whole_run(sampler, steps, eta):
    """Per-image streams: images first .. first + k - 1 drawn alone equal those of the whole run, bit for bit
    (every noise draw of an image comes from its own generator; the denoiser here treats images alone)."""
    schedule = Schedule()
    denoiser = lambda x, t: 0.3 * x  # noqa: E731
    moments = {t: 0.5 for t in range(1000)}
    whole = sample(denoiser, (9, 1, 8, 8), schedule, sampler, steps, eta, seed=11, eps_moment=moments)
    for first, k in ((0, 4), (4, 5), (8, 1)):
        shard = sample(denoiser, (k, 1, 8, 8), schedule, sampler, steps, eta, seed=11, first=first, eps_moment=moments)
        assert torch.equal(shard, whole[first:first + k]), (first, k)
    assert not torch.equal(whole[0], whole[1])  # and the images differ


def test_sampling_is_deterministic_under_a_seed():
    schedule = Schedule()
    denoiser = lambda x, t: 0.1 * x  # noqa: E731
    runs = [sample(denoiser, (2, 1, 8, 8), schedule, "ddim", 10, 1.0, seed=5) for _ in range(2)]
    assert torch.equal(*runs)
    other = sample(denoiser, (2, 1, 8, 8), schedule, "ddim", 10, 1.0, seed=6)
    assert not torch.equal(runs[0], other)


def test_ddim_timesteps():
    assert ddim_timesteps(1000, 1) == [0]
    ts = ddim_timesteps(1000, 20)
    assert len(ts) == 20 and ts[0] == 999 and ts[-1] == 0 and ts == sorted(ts, reverse=True)
    with pytest.raises(SncError):
        ddim_timesteps(1000, 0)


def test_bad_sampler_arguments():
    with pytest.raises(SncError, match="unknown sampler"):
        sample(lambda x, t: x, (1, 1, 8, 8), Schedule(), "euler")
    with pytest.raises(SncError, match="ddpm runs all"):
        sample(lambda x, t: x, (1, 1, 8, 8), Schedule(), "ddpm", steps=20)


def test_q_sample_marginal_statistics():
    schedule = Schedule()
    x0 = torch.ones(20000, 1, 1, 1)
    t = torch.full((20000,), 500)
    xt = q_sample(schedule, x0, t, torch.randn(x0.shape, generator=torch.Generator().manual_seed(0)))
    ab = schedule.alphas_bar[500].item()
    assert xt.mean().item() == pytest.approx(ab**0.5, abs=0.02)
    assert xt.var().item() == pytest.approx(1 - ab, abs=0.02)


def test_analytic_dpm_variance_sits_between_its_bounds():
    schedule = Schedule()
    target = torch.linspace(-0.9, 0.9, 64, dtype=torch.float64).view(1, 1, 8, 8)
    steps = ddim_timesteps(1000, 20)
    # point-mass data: the true eps is the noise itself, so Gamma_t = 1
    out = sample(_point_mass_denoiser(target, schedule), (4, 1, 8, 8), schedule, "analytic", 20,
                 seed=0, eps_moment={t: 1.0 for t in steps})
    assert torch.allclose(out.double(), target.expand(4, -1, -1, -1), atol=1e-3)
    # any Gamma_t >= 1 is clipped to the lower bound: the variance is DDPM's posterior, i.e. DDIM with eta = 1
    ab = schedule.alphas_bar
    lower = {t: 1 / (1 - ab[t].item()) for t in steps}
    denoiser = lambda x, t: 0.3 * x  # noqa: E731
    analytic = sample(denoiser, (2, 1, 8, 8), schedule, "analytic", 20, seed=3,
                      eps_moment=lower)
    ddim = sample(denoiser, (2, 1, 8, 8), schedule, "ddim", 20, 1.0, seed=3)
    assert torch.allclose(analytic, ddim, atol=1e-6)
    with pytest.raises(SncError, match="epsilon moments"):
        sample(denoiser, (1, 1, 8, 8), schedule, "analytic", 20)


def _gaussian_data_denoiser(mean: float, std: float, schedule: Schedule):
    """The exact epsilon-predictor for data drawn from N(mean, std^2) per pixel."""
    ab = schedule.alphas_bar

    def denoiser(x, t):
        a = ab[t].view(-1, 1, 1, 1)
        return ((1 - a).sqrt() * (x.double() - a.sqrt() * mean) / (a * std**2 + 1 - a)).float()

    return denoiser


@pytest.mark.parametrize("spacing", ["time", "logsnr"])
def test_dpm_solver_of_order_1_is_ddim_on_the_same_steps(spacing):
    schedule = Schedule()
    denoiser = _gaussian_data_denoiser(0.2, 0.3, schedule)
    for steps in (1, 7, 20):
        runs = [sample(denoiser, (3, 1, 8, 8), schedule, sampler, steps, seed=2,
                       order=1, spacing=spacing) for sampler in ("ddim", "dpm-solver")]
        assert torch.allclose(runs[0], runs[1], atol=1e-6), steps


def test_logsnr_steps_are_distinct_descending_and_even_in_logsnr():
    schedule = Schedule()
    for steps in (1, 10, 100, 1000):
        ts = logsnr_timesteps(schedule, steps)
        assert len(ts) == steps and ts[-1] == 0 and all(a > b for a, b in zip(ts, ts[1:]))
    ab = schedule.alphas_bar.double()
    lam = 0.5 * (torch.log(ab[logsnr_timesteps(schedule, 10)]) - torch.log1p(-ab[logsnr_timesteps(schedule, 10)]))
    gaps = lam[1:] - lam[:-1]
    assert float(gaps.max() / gaps.min()) < 1.5  # time-uniform steps differ by a factor of ~30 here


@pytest.mark.parametrize("steps", [10, 20])
def test_dpm_solver_solves_the_probability_flow_ode_to_its_order(steps):
    """Gaussian data: the ODE maps x_T to mean + std * (x_T - sqrt(abar_T) mean) / sqrt(abar_T std^2 + 1 - abar_T).
    Higher orders land closer with the same number of model calls."""
    schedule, mean, std = Schedule(), 0.1, 0.2  # samples stay inside [-1, 1], where the sampler clips
    ab_T = schedule.alphas_bar[-1].double()
    x_T = image_noise.randn(image_noise.image_generators(3, 0, 64), (1, 8, 8))  # the sampler's x_T
    exact = mean + std * (x_T - ab_T.sqrt() * mean) / (ab_T * std**2 + 1 - ab_T).sqrt()
    errors = [float((sample(_gaussian_data_denoiser(mean, std, schedule), (64, 1, 8, 8), schedule, "dpm-solver",
                            steps, seed=3, order=order).double() - exact)
                    .abs().mean()) for order in (1, 2, 3)]
    assert errors[2] < errors[1] < errors[0] / 3, errors


def test_dpm_solver_recovers_a_point_mass_and_refuses_other_orders():
    schedule = Schedule()
    target = torch.linspace(-0.9, 0.9, 64, dtype=torch.float64).view(1, 1, 8, 8)
    for order in (2, 3):
        out = sample(_point_mass_denoiser(target, schedule), (2, 1, 8, 8), schedule, "dpm-solver", 10,
                     seed=0, order=order)
        assert torch.allclose(out.double(), target.expand(2, -1, -1, -1), atol=1e-3)
    with pytest.raises(SncError, match="--order must be 1, 2 or 3"):
        sample(lambda x, t: x, (1, 1, 8, 8), schedule, "dpm-solver", 10, order=4)
