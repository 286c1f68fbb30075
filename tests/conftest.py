"""Shared fixtures: small models with non-trivial BatchNorm statistics."""

from __future__ import annotations

import multiprocessing
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import snc.models as m

REPO = Path(__file__).resolve().parents[1]
DATA = Path(__file__).resolve().parent / "data"


def randomize_batchnorm(model: torch.nn.Module, seed: int = 0) -> None:
    """Give every BatchNorm non-trivial statistics so folding is really tested."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for mod in model.modules():
            if isinstance(mod, torch.nn.BatchNorm2d):
                c = mod.num_features
                mod.running_mean.copy_(torch.rand(c, generator=g) * 0.4 - 0.2)
                mod.running_var.copy_(torch.rand(c, generator=g) * 1.5 + 0.5)
                mod.weight.copy_(torch.rand(c, generator=g) + 0.5)
                mod.bias.copy_(torch.rand(c, generator=g) * 0.2 - 0.1)


def make_model(preset: str, seed: int = 0, **overrides) -> torch.nn.Module:
    import dataclasses

    arch, config = m.preset(preset)
    config = dataclasses.replace(config, **overrides)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = m.build_model(arch, config)
    randomize_batchnorm(model, seed)
    return model.eval()


class HostilePickle:
    """Unpickling this object would create the file ``marker``: a checkpoint loader must refuse it."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def run_snc(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    """Run the installed ``snc`` console script."""
    exe = Path(sys.executable).with_name("snc")
    return subprocess.run([str(exe), *args], capture_output=True, text=True, timeout=timeout, cwd=REPO)


@pytest.fixture
def tmp(tmp_path: Path) -> Path:
    return tmp_path


@pytest.fixture(autouse=True)
def no_lava_process_left():
    """Every test, Lava's included, must stop every process it started."""
    yield
    assert not multiprocessing.active_children()
