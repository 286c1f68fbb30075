"""Shared fixtures and helpers: small models with non-trivial BatchNorm statistics, compiling them, the
shipped U-Net's build (once per session), and the markers' discipline.

Markers: ``lava`` (the test starts Lava processes) and ``slow``; ``make test-fast``
runs ``-m "not lava and not slow"``. A test that starts Lava without the
``lava`` marker fails (in this process: a Lava runtime is refused; through
the CLI: ``run_snc`` refuses Lava backends).
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import subprocess
import sys
from pathlib import Path
from typing import Optional

import nir
import pytest
import torch

import snc.models as m
from snc.models import arch_of
from snc.compiler import frontends
from snc.compiler.driver import CompileResult, compile_deployable
from snc.compiler.frontends.base import Deployable
from snc.compiler.pass_manager import CompileOptions

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
    arch, config = m.preset(preset)
    config = dataclasses.replace(config, **overrides)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = m.build_model(arch, config)
    randomize_batchnorm(model, seed)
    return model.eval()


def export(model: torch.nn.Module) -> nir.NIRGraph:
    """The model's NIR graph, by its family's exporter."""
    arch = arch_of(model)
    return frontends.family_of(arch).export(model, arch)


def host_of(model: torch.nn.Module, graph: nir.NIRGraph):
    """The family's host program around ``model`` (as it is) for its graph ``graph``."""
    return frontends.host_program(arch_of(model), model, graph)


def deploy(model: torch.nn.Module) -> Deployable:
    """The deployable of a test model (exported in its dtype; the host program in float64)."""
    return frontends.deployable(model, arch_of(model), source="test model")


def compile_model(model_or_deployable, calibration: int = 0, **options) -> CompileResult:
    """The loihi2 pipeline on a model or deployable (``calibration`` images per call, 0: uncalibrated)."""
    dep = model_or_deployable if isinstance(model_or_deployable, Deployable) else deploy(model_or_deployable)
    return compile_deployable(dep, calibration=calibration, options=CompileOptions(**options))


def compile_nir(graph: nir.NIRGraph, timestep: int, arch: str = "", **options) -> CompileResult:
    """The loihi2 pipeline on a bare NIR graph (no host program, uncalibrated)."""
    return compile_deployable(Deployable(arch, graph, timestep, None, "test graph"),
                              options=CompileOptions(**options))


class HostilePickle:
    """Unpickling this object would create the file ``marker``: a checkpoint loader must refuse it."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


_current: dict[str, Optional[pytest.Item]] = {"item": None}


def run_snc(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    """Run the installed ``snc`` console script (a Lava backend only from a test marked ``lava``)."""
    item = _current["item"]
    lava = any(a == "lava" or a.startswith("lava,") or ",lava" in a or a.startswith("lava:") for a in args)
    if lava and item is not None and item.get_closest_marker("lava") is None:
        pytest.fail("this test runs Lava through the CLI: mark it @pytest.mark.lava")
    exe = Path(sys.executable).with_name("snc")
    return subprocess.run([str(exe), *args], capture_output=True, text=True, timeout=timeout, cwd=REPO)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item: pytest.Item):
    """While a test runs: remember it (for ``run_snc``) and, unless it is marked ``lava``, refuse to start a
    Lava runtime in this process."""
    _current["item"] = item
    patch = None
    if item.get_closest_marker("lava") is None:
        from lava.magma.core.process.process import AbstractProcess

        def refuse(*_, **__):
            pytest.fail(f"{item.nodeid} starts Lava: mark it @pytest.mark.lava")

        patch = pytest.MonkeyPatch()
        patch.setattr(AbstractProcess, "create_runtime", refuse)
    try:
        yield
    finally:
        if patch is not None:
            patch.undo()
        _current["item"] = None


@pytest.fixture
def tmp(tmp_path: Path) -> Path:
    return tmp_path


@pytest.fixture(autouse=True)
def no_lava_process_left():
    """Every test, Lava's included, must stop every process it started."""
    yield
    assert not multiprocessing.active_children()


@pytest.fixture(scope="session")
def unet_build(tmp_path_factory):
    """The shipped digits U-Net compiled for loihi2 once per session (a build directory on disk, read
    back as a user's command would), with the IR dumped after every pass."""
    from snc import api
    from snc.compiler.build import read_build

    out = tmp_path_factory.mktemp("shipped") / "unet"
    compiled = api.compile(m.shipped_checkpoint("digits-unet"), target="loihi2", output=out,
                           dump_ir=out.parent / "ir")
    assert compiled.report.complete and compiled.report.calibrated
    return read_build(out)
