"""The shipped digits U-Net makes recognisable digits (the acceptance bar of the foundation issue)."""

import torch

from snc.models.checkpoint import load_checkpoint, shipped_checkpoint
from snc.models.diffusion import Schedule
from snc.models.quality import evaluate_samples
from snc.runtime.samplers import sample


def test_shipped_checkpoint_provenance():
    ckpt = load_checkpoint(shipped_checkpoint("digits-unet"))
    assert ckpt.arch == "spiking-unet" and ckpt.config.timestep == 4
    assert ckpt.meta["preset"] == "digits-unet" and "snc train" in ckpt.meta["command"]
    assert shipped_checkpoint("digits-unet").stat().st_size <= 5 * 2**20


def test_shipped_unet_samples_score_below_a_quarter_of_noise():
    ckpt = load_checkpoint(shipped_checkpoint("digits-unet"))
    images = sample(ckpt.model, (64, 1, 8, 8), Schedule(), "ddim", 50, seed=0)
    report = evaluate_samples(images)
    assert report.fdd < 0.25 * report.noise, report.as_dict()
