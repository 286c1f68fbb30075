"""Sample quality of digits: the Fréchet Digits Distance (FDD), snc's stand-in for FID.

FID compares Inception-v3 features of generated and real images; Inception
cannot run on 8x8 digits and no weights may be downloaded here. FDD keeps
FID's formula and swaps the feature network for a small MLP classifier trained
on the digits training split (shipped as ``checkpoints/digits-classifier.pt``):

    FDD = |mu_s - mu_r|^2 + Tr(S_s + S_r - 2 (S_s S_r)^(1/2))

over the classifier's penultimate-layer features (64 values, after ReLU) of
the samples (s) and of the 1500 training digits (r). Like FID it is biased
upward for small sample counts, so every score is printed beside two
reference points computed with the same number of images:

- ``heldout``: real digits the generator never saw (a good generator's level);
- ``noise``: Gaussian noise clipped to [-1, 1] (a useless generator's level).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from scipy import linalg
from torch import nn

from snc.errors import CheckpointError

from .checkpoint import check_finite, load_state_dict_strict, read_raw, shipped_checkpoint
from .data import digits

CLASSIFIER_FORMAT = "snc-digits-classifier"
NOISE_SEED = 7


class DigitsClassifier(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 64), nn.ReLU())
        self.head = nn.Linear(64, 10)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


def train_classifier(seed: int = 0, epochs: int = 60,
                     make: Callable[[], nn.Module] = DigitsClassifier) -> tuple[nn.Module, float]:
    """Train ``make()`` (default: the FDD feature network) on the training split; returns the model and its
    held-out accuracy."""
    generator = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = make()
    images, labels = digits("train")
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, weight_decay=1e-4)
    for _ in range(epochs):
        for idx in torch.randperm(len(images), generator=generator).split(64):
            # light noise keeps features meaningful on imperfect samples
            x = images[idx] + 0.1 * torch.randn(images[idx].shape, generator=generator)
            loss = nn.functional.cross_entropy(model(x), labels[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()
    test_x, test_y = digits("heldout")
    with torch.no_grad():
        accuracy = float((model(test_x).argmax(1) == test_y).float().mean())
    return model, accuracy


def save_classifier(path: str | Path, model: DigitsClassifier, meta: dict) -> None:
    torch.save({"format": CLASSIFIER_FORMAT, "state_dict": model.state_dict(), "meta": meta}, path)


def load_classifier(path: str | Path | None = None) -> DigitsClassifier:
    path = path or shipped_checkpoint("digits-classifier")
    raw = read_raw(path)
    if not isinstance(raw, dict) or raw.get("format") != CLASSIFIER_FORMAT:
        raise CheckpointError(f"{path}: not an snc digits classifier")
    model = DigitsClassifier()
    check_finite(raw["state_dict"], str(path))
    load_state_dict_strict(model, raw["state_dict"], str(path))
    return model.eval()


@torch.no_grad()
def _features(model: DigitsClassifier, images: torch.Tensor) -> np.ndarray:
    return model.features(images.float()).double().numpy()


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    # Tr((S_a S_b)^(1/2)) = Tr((S_a^(1/2) S_b S_a^(1/2))^(1/2)): a symmetric PSD form
    # whose eigenvalues stay real even when a covariance is singular (few samples).
    w, v = linalg.eigh(cov_a)
    sqrt_a = (v * np.sqrt(w.clip(min=0))) @ v.T
    tr_covmean = np.sqrt(linalg.eigvalsh(sqrt_a @ cov_b @ sqrt_a).clip(min=0)).sum()
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a) + np.trace(cov_b) - 2 * tr_covmean)


@dataclass
class QualityReport:
    n: int
    fdd: float
    heldout: float
    noise: float
    heldout_n: int

    @property
    def noise_ratio(self) -> float:
        return self.fdd / self.noise

    def as_dict(self) -> dict:
        return {
            "metric": "FDD (Frechet Digits Distance, classifier features)",
            "n": self.n,
            "fdd": round(self.fdd, 4),
            "reference_heldout_vs_train": round(self.heldout, 4),
            "reference_heldout_n": self.heldout_n,
            "reference_noise_vs_train": round(self.noise, 4),
            "fdd_over_noise": round(self.noise_ratio, 4),
        }


def evaluate_samples(samples: torch.Tensor, classifier: DigitsClassifier | None = None) -> QualityReport:
    """FDD of samples [N, 1, 8, 8] in [-1, 1] against the training digits, with references."""
    if samples.dim() != 4 or tuple(samples.shape[1:]) != (1, 8, 8):
        raise ValueError(f"expected digits samples shaped [N, 1, 8, 8], got {list(samples.shape)}")
    if len(samples) < 2:
        raise ValueError("need at least 2 samples for a Fréchet distance")
    if not torch.isfinite(samples).all():
        raise ValueError("samples contain NaN or inf")
    classifier = classifier or load_classifier()
    train, _ = digits("train")
    heldout, _ = digits("heldout")
    n = len(samples)
    ref = _features(classifier, train)
    heldout_n = min(n, len(heldout))
    noise = torch.randn((n, 1, 8, 8), generator=torch.Generator().manual_seed(NOISE_SEED)).clamp(-1, 1)
    return QualityReport(
        n=n,
        fdd=frechet_distance(_features(classifier, samples), ref),
        heldout=frechet_distance(_features(classifier, heldout[:heldout_n]), ref),
        noise=frechet_distance(_features(classifier, noise), ref),
        heldout_n=heldout_n,
    )
