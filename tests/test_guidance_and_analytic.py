"""Threshold guidance and Analytic-DPM from the command line, on torch and the emulator."""

from __future__ import annotations

import json

import numpy as np

from snc.compiler.build import read_build
from snc.models.neurons import IFNeuron
from snc.runtime.compiled import load_host_model

from conftest import run_snc
from test_cli import _clean_error, _ok


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
    host = load_host_model(read_build(build))
    assert {m.config.threshold for m in host.modules() if isinstance(m, IFNeuron)} == {0.997}
    _clean_error(run_snc("sample", str(build), "--threshold-scale", "nan", "-o", str(tmp / "x.png")),
                 "positive finite")
    _ok(run_snc("compile", str(ckpt), "-o", str(build)))
    assert not (build / "moments.json").exists()  # a new build's model: the cached moments are gone
