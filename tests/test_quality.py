import numpy as np
import pytest
import torch

from snc.errors import SncError
from snc.models.data import HELD_OUT, digits
from snc.models.quality import evaluate_samples, frechet_distance, load_classifier
from snc.runtime.images import load_grid, load_samples, save_grid


def test_digits_split_is_fixed_and_disjoint():
    train, ytrain = digits("train")
    held, _ = digits("heldout")
    assert train.shape == (1797 - HELD_OUT, 1, 8, 8) and held.shape == (HELD_OUT, 1, 8, 8)
    assert train.min() == -1 and train.max() == 1
    assert torch.equal(digits("train")[0], train)  # the split is fixed, not drawn per call
    assert set(ytrain.tolist()) == set(range(10))


def test_shipped_classifier_is_accurate():
    model = load_classifier()
    x, y = digits("heldout")
    with torch.no_grad():
        assert (model(x).argmax(1) == y).float().mean() > 0.95


def test_frechet_distance_properties():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(500, 4))
    assert frechet_distance(a, a) == pytest.approx(0, abs=1e-8)
    shifted = a + np.array([3.0, 0, 0, 0])
    assert frechet_distance(shifted, a) == pytest.approx(9.0, rel=1e-6)


def test_references_bracket_real_and_noise():
    held, _ = digits("heldout")
    report = evaluate_samples(held[:64])
    assert report.fdd == pytest.approx(report.heldout)
    assert report.heldout < 0.1 * report.noise
    noise = torch.randn((64, 1, 8, 8), generator=torch.Generator().manual_seed(3)).clamp(-1, 1)
    assert evaluate_samples(noise).noise_ratio > 0.5


def test_png_grid_round_trip(tmp):
    x = digits("heldout")[0][:10]
    save_grid(x, tmp / "g.png")
    back = load_grid(tmp / "g.png")
    # 17 grey levels survive 8-bit quantisation to within half a step
    assert back.shape == x.shape and (back - x).abs().max() <= 1 / 127.5


def test_bad_sample_files(tmp):
    (tmp / "a.txt").write_text("x")
    with pytest.raises(SncError):
        load_samples(tmp / "a.txt")
    np.save(tmp / "obj.npy", np.array([{"a": 1}], dtype=object))
    with pytest.raises(SncError):
        load_samples(tmp / "obj.npy")
    from PIL import Image

    Image.new("L", (8, 8)).save(tmp / "plain.png")
    with pytest.raises(SncError, match="not an snc sample grid"):
        load_samples(tmp / "plain.png")
