"""The snc command line end to end, as a user runs it (subprocesses)."""

import json

import numpy as np
import pytest
import torch

from snc.models.checkpoint import shipped_checkpoint

from conftest import run_snc


def _ok(result):
    assert result.returncode == 0, result.stderr
    return result


def _clean_error(result, needle):
    assert result.returncode == 1
    assert "Traceback" not in result.stderr and "Traceback" not in result.stdout
    assert needle in result.stderr
    assert result.stderr.count("error:") == 1


def test_train_sample_eval_export_pipeline(tmp):
    ckpt = tmp / "mlp.pt"
    _ok(run_snc("train", "--preset", "digits-mlp", "--steps", "3", "--seed", "1", "-o", str(ckpt)))
    raw = torch.load(ckpt, weights_only=True)
    assert raw["meta"]["train_steps"] == 3 and raw["meta"]["preset"] == "digits-mlp"
    out = json.loads(_ok(run_snc("sample", str(ckpt), "--sampler", "ddim", "--steps", "3", "-n", "5",
                                 "-o", str(tmp / "s.png"), "--json")).stdout)
    assert out["n"] == 5 and (tmp / "s.png").is_file()
    samples = np.load(tmp / "s.npy")
    assert samples.shape == (5, 1, 8, 8) and np.abs(samples).max() <= 1
    ev = json.loads(_ok(run_snc("eval", str(tmp / "s.png"), "--json")).stdout)
    assert ev["n"] == 5 and ev["fdd"] > 0
    nir_out = json.loads(_ok(run_snc("export", str(ckpt), "-o", str(tmp / "m.nir"), "--json")).stdout)
    assert nir_out["extension_nodes"] == 0 and nir_out["node_types"]["IF"] == 2


def test_same_seed_same_samples(tmp):
    ckpt = str(shipped_checkpoint("digits-unet"))
    for name in ("a", "b"):
        _ok(run_snc("sample", ckpt, "--steps", "4", "-n", "3", "--seed", "11", "-o", str(tmp / f"{name}.png")))
    assert np.array_equal(np.load(tmp / "a.npy"), np.load(tmp / "b.npy"))


def test_export_of_the_shipped_unet(tmp):
    res = json.loads(_ok(run_snc("export", str(shipped_checkpoint("digits-unet")), "-o", str(tmp / "u.nir"), "--json")).stdout)
    assert res["node_types"]["snc.NearestUpsample2d"] == 1 and res["nodes"] > 50


@pytest.mark.parametrize("content", [b"garbage", b""])
def test_bad_checkpoint_is_one_line_error(tmp, content):
    (tmp / "bad.pt").write_bytes(content)
    _clean_error(run_snc("sample", str(tmp / "bad.pt"), "-o", str(tmp / "x.png")), "bad.pt")
    _clean_error(run_snc("export", str(tmp / "bad.pt"), "-o", str(tmp / "x.nir")), "bad.pt")


def test_hostile_checkpoint_via_cli(tmp):
    marker = tmp / "pwned"

    class Hostile:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    torch.save({"x": Hostile()}, tmp / "evil.pt")
    _clean_error(run_snc("export", str(tmp / "evil.pt"), "-o", str(tmp / "x.nir")), "refused to load")
    assert not marker.exists()


def test_usage_errors(tmp):
    _clean_error(run_snc("train", "--preset", "nope", "-o", str(tmp / "m.pt")), "unknown preset")
    _clean_error(run_snc("train", "--preset", "cifar10-sddpm", "-o", str(tmp / "m.pt")), "not a digits model")
    ckpt = str(shipped_checkpoint("digits-unet"))
    _clean_error(run_snc("sample", ckpt, "--sampler", "euler", "-o", str(tmp / "x.png")), "unknown sampler")
    _clean_error(run_snc("sample", ckpt, "-o", str(tmp / "x.npy")), "ending in .png")
    _clean_error(run_snc("sample", ckpt, "--temperature", "0.5", "-o", str(tmp / "x.png")), "token sampler")
    vq = str(shipped_checkpoint("digits-vq"))  # its own sampling process reads no DDIM / DPM-Solver options
    _clean_error(run_snc("sample", vq, "--eta", "0.5", "--spacing", "time", "-o", str(tmp / "x.png")),
                 "--eta, --spacing: a spiking-diffusion-vq model samples with its own process")
    _clean_error(run_snc("sample", ckpt, "--sampler", "ddpm", "--steps", "20", "-o", str(tmp / "x.png")), "ddpm runs all")
    _clean_error(run_snc("eval", str(tmp / "missing.npy")), "no such file")
    res = run_snc("sample")
    assert res.returncode == 2 and "Traceback" not in res.stderr
