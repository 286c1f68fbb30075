"""BatchNorm calibration to a trained model's firing rate (models/rates.py)."""

import pytest
import torch

from snc.models import build_model, preset
from snc.models.rates import calibrate_firing_rate, spike_rates


def untrained_unet() -> torch.nn.Module:
    """The digits U-Net as initialised (BatchNorm at its initial statistics, as in an untrained model)."""
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return build_model(*preset("digits-unet")).double().eval()


@pytest.mark.parametrize("target", [0.2])
def test_calibration_reaches_the_target_rate_changing_only_batchnorm(target):
    model = untrained_unet()
    g = torch.Generator().manual_seed(0)
    x, t = torch.randn(4, 1, 8, 8, generator=g, dtype=torch.float64), torch.tensor([50, 300, 600, 900])

    def forward(m):
        return m(x, t)

    before = {k: v.clone() for k, v in model.state_dict().items()}
    initial = spike_rates(model, forward)
    assert sum(initial.values()) / len(initial) < target / 2  # an untrained model fires rarely
    rates = calibrate_firing_rate(model, forward, target, tolerance=0.005)
    assert abs(sum(rates.values()) / len(rates) - target) <= 0.005
    assert rates == spike_rates(model, forward)  # what it reports is what the model now does
    assert not model.training
    changed = {k for k, v in model.state_dict().items() if not torch.equal(v, before[k])}
    batchnorms = {f"{name}.{key}" for name, mod in model.named_modules() if isinstance(mod, torch.nn.BatchNorm2d)
                  for key in ("bias", "running_mean", "running_var", "num_batches_tracked")}
    assert changed and changed <= batchnorms
    assert calibrate_firing_rate(untrained_unet(), forward, target) == rates  # deterministic


def test_calibration_refuses_a_target_outside_0_1():
    with pytest.raises(ValueError, match="target firing rate"):
        calibrate_firing_rate(untrained_unet(), lambda m: None, 1.5)
