"""Bad input found by hand against the CLI (issue 15): each gives one error line and a non-zero exit, never a
traceback or a silently wrong result; builds are written whole and refused when their files were changed."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import h5py
import nir
import numpy as np
import pytest
import torch

from conftest import run_snc
from snc import api
from snc.compiler import build as build_module
from snc.errors import SncError
from snc.models.checkpoint import save_checkpoint
from snc.models.presets import build_model, config_to_dict, preset

SHIPPED = "models/checkpoints/digits-unet.pt"


def _one_error(result, code: int = 1, text: str = "") -> None:
    assert result.returncode == code, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr and result.stderr.lower().count("error:") == 1, result.stderr
    assert text in result.stderr, result.stderr


@pytest.fixture(scope="module")
def mlp_checkpoint(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("rel") / "mlp.pt"
    arch, config = preset("digits-mlp")
    torch.manual_seed(0)
    save_checkpoint(path, arch, build_model(arch, config), {})
    return path


def _edited_checkpoint(source: Path, target: Path, config=None, state=None) -> Path:
    raw = torch.load(source, weights_only=True)
    raw["config"] = {**raw["config"], **(config or {})}
    if state is not None:
        raw["state_dict"] = {k: state(v) for k, v in raw["state_dict"].items()}
    torch.save(raw, target)
    return target


@pytest.mark.parametrize("args,text", [
    (("--eta", "nan"), "--eta must be a number in [0, 1]"),
    (("--eta", "-1"), "--eta must be a number in [0, 1]"),
    (("--eta", "2"), "--eta must be a number in [0, 1]"),
    (("--steps", "0"), "--steps must be at least 1"),
    (("-n", "100000000"), "the sampler's images alone need about"),
])
def test_sampler_options_are_validated(args, text, tmp_path):
    _one_error(run_snc("sample", SHIPPED, *args, "-o", str(tmp_path / "s.png")), text=text)


def test_a_seed_out_of_range_is_a_usage_error(tmp_path):
    result = run_snc("sample", SHIPPED, "--seed", str(2**70), "-o", str(tmp_path / "s.png"))
    assert result.returncode == 2 and "Traceback" not in result.stderr and "not in the range" in result.stderr


@pytest.mark.parametrize("config,text", [
    ({"output_decay": float("nan")}, "output_decay must be a finite number in (0, 1]"),
    ({"timestep": 0}, "timestep must be an integer in 1..4096, not 0"),
    ({"timestep": -2}, "timestep must be an integer in 1..4096, not -2"),
    ({"timestep": 2.5}, "not 2.5"),
    ({"timestep": "4"}, "not '4'"),
    ({"diffusion_steps": 0}, "diffusion_steps must be an integer"),
    ({"ch": 0}, "ch must be a positive integer, not 0"),
])
def test_checkpoint_configs_are_validated(config, text, tmp_path):
    bad = _edited_checkpoint(Path(SHIPPED), tmp_path / "bad.pt", config=config)
    _one_error(run_snc("compile", str(bad), "-o", str(tmp_path / "b")), text=text)
    assert not (tmp_path / "b").exists()


def test_an_mlp_without_hidden_layers_a_config_string_and_an_integer_state_dict_are_refused(mlp_checkpoint,
                                                                                             tmp_path):
    raw = torch.load(mlp_checkpoint, weights_only=True)
    raw["config"] = "config"
    torch.save(raw, tmp_path / "string.pt")
    _one_error(run_snc("compile", str(tmp_path / "string.pt"), "-o", str(tmp_path / "b")),
               text="is a mapping of keys to values, not a str")
    empty = _edited_checkpoint(mlp_checkpoint, tmp_path / "empty.pt", config={"hidden": []})
    _one_error(run_snc("compile", str(empty), "-o", str(tmp_path / "b")), text="hidden must list one or more")
    ints = _edited_checkpoint(mlp_checkpoint, tmp_path / "int.pt", state=lambda v: (v * 100).long())
    _one_error(run_snc("compile", str(ints), "-o", str(tmp_path / "b")), text="not floating point")


def test_training_options_and_output_are_checked_before_training(tmp_path):
    _one_error(run_snc("train", "--preset", "digits-mlp", "--lr", "inf", "-o", str(tmp_path / "m.pt")),
               text="--lr must be a positive finite number")
    _one_error(run_snc("train", "--preset", "digits-mlp", "-o", str(tmp_path / "no" / "m.pt")),
               text="no such directory")
    _one_error(run_snc("train", "--preset", "digits-mlp", "-o", str(tmp_path)), text="is a directory")


def test_training_that_diverges_writes_no_checkpoint(monkeypatch):
    from snc.models import train as train_module

    real = train_module.train_denoiser

    def diverging(*args, **kwargs):
        model, meta = real(*args, **kwargs)
        with torch.no_grad():
            next(model.parameters()).fill_(float("nan"))
        return model, meta

    monkeypatch.setattr(train_module, "train_denoiser", diverging)
    with pytest.raises(SncError, match="training diverged"):
        api.train("digits-mlp", steps=2)


def test_output_paths_are_checked(tmp_path):
    (tmp_path / "file").write_text("x")
    _one_error(run_snc("sample", SHIPPED, "-n", "1", "-o", str(tmp_path)), text="is a directory")
    _one_error(run_snc("sample", SHIPPED, "-n", "1", "-o", str(tmp_path / "file" / "s.png")),
               text="is not a directory")
    _one_error(run_snc("export", "--preset", "digits-mlp", "-o", str(tmp_path / "none" / "g.nir")),
               text="no such directory")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    _one_error(run_snc("compile", "--preset", "digits-mlp", "-o", str(tmp_path / "other")),
               text="neither empty nor an snc build directory")
    assert (tmp_path / "other" / "notes.txt").read_text() == "mine"


def test_eval_refuses_values_outside_the_image_range(tmp_path):
    np.save(tmp_path / "big.npy", np.full((4, 1, 8, 8), 7.0, np.float32))
    _one_error(run_snc("eval", str(tmp_path / "big.npy")), text="samples must be finite values in [-1, 1]")


def test_unreadable_checkpoints_say_what_they_are(tmp_path):
    (tmp_path / "random.pt").write_bytes(np.random.default_rng(0).bytes(1000))
    _one_error(run_snc("compile", str(tmp_path / "random.pt"), "-o", str(tmp_path / "b")),
               text="not a torch checkpoint")
    _one_error(run_snc("compile", str(tmp_path), "-o", str(tmp_path / "b")), text="a directory, not a checkpoint")


def _graph(metadata=None) -> nir.NIRGraph:
    n = 3
    return nir.NIRGraph(nodes={"input": nir.Input(np.array([2])), "fc": nir.Affine(np.ones((n, 2)), np.zeros(n)),
                               "lif": nir.LIF(tau=np.full(n, 1e-3), r=np.full(n, 10.0), v_leak=np.zeros(n),
                                              v_threshold=np.ones(n), v_reset=np.zeros(n)),
                               "output": nir.Output(np.array([n]))},
                        edges=[("input", "fc"), ("fc", "lif"), ("lif", "output")], metadata=metadata or {})


@pytest.mark.parametrize("timestep", [0, 10**6])
def test_a_nir_timestep_out_of_range_is_refused(timestep, tmp_path):
    nir.write(str(tmp_path / "t.nir"), _graph({"snc.timestep": timestep, "snc.dt": 1e-4}))
    _one_error(run_snc("compile", str(tmp_path / "t.nir"), "-o", str(tmp_path / "b")),
               text="T must be a whole number of spiking steps in 1..4096")


def test_nir_files_with_bad_edges_or_huge_declared_weights_are_refused(tmp_path):
    path = tmp_path / "edges.nir"
    nir.write(str(path), _graph({"snc.dt": 1e-4}))
    with h5py.File(path, "r+") as f:
        del f["node/edges"]
        f["node/edges"] = np.array([["input", "fc", "x"], ["fc", "lif", "y"]], dtype="S")
    _one_error(run_snc("compile", str(path), "-o", str(tmp_path / "b")), text="edges must be pairs")
    path = tmp_path / "huge.nir"
    nir.write(str(path), _graph({"snc.dt": 1e-4}))
    with h5py.File(path, "r+") as f:  # a small compressed file declaring a 372 GiB weight
        del f["node/nodes/fc/weight"]
        f.create_dataset("node/nodes/fc/weight", shape=(10**6, 10**5), dtype="f4", chunks=(1000, 1000),
                         compression="gzip")
    assert path.stat().st_size < 1 << 20
    _one_error(run_snc("compile", str(path), "-o", str(tmp_path / "b")), text="its arrays declare 372.5 GiB")


@pytest.fixture
def mlp_build(tmp_path) -> Path:
    api.compile(preset="digits-mlp", output=tmp_path / "b")
    return tmp_path / "b"


def test_a_build_whose_files_changed_is_refused_naming_the_file(mlp_build, tmp_path):
    api.compile(preset="digits-mlp", seed=1, output=tmp_path / "other")
    (mlp_build / "model.pt").write_bytes((tmp_path / "other" / "model.pt").read_bytes())  # another model
    _one_error(run_snc("verify", str(mlp_build), "--backends", "emu", "-n", "2"),
               text="model.pt is not the file this build was compiled with")
    api.compile(preset="digits-mlp", output=mlp_build)  # recompiling replaces the build whole
    with np.load(mlp_build / "netlist-fixed.npz") as z:
        arrays = {k: z[k] for k in z.files}
    key = next(k for k, v in arrays.items() if v.dtype.kind == "i" and v.size)
    arrays[key] = arrays[key].copy()
    arrays[key].flat[0] += 1  # one tampered integer weight
    np.savez(mlp_build / "netlist-fixed.npz", **arrays)
    _one_error(run_snc("sample", str(mlp_build), "--backend", "emu", "-n", "1", "-o", str(tmp_path / "s.png")),
               text="netlist-fixed.npz is not the file")
    (mlp_build / "build.json").write_text(json.dumps([1, 2]))
    _one_error(run_snc("sample", str(mlp_build), "--backend", "emu", "-n", "1", "-o", str(tmp_path / "s.png")),
               text="build.json holds a list")


def test_an_interrupted_compile_leaves_the_old_build_as_it_was(mlp_build, monkeypatch):
    before = {p.name: p.read_bytes() for p in mlp_build.iterdir()}

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(build_module, "save_netlist", interrupted)
    with pytest.raises(KeyboardInterrupt):
        api.compile(preset="digits-mlp", seed=1, output=mlp_build)
    assert {p.name: p.read_bytes() for p in mlp_build.iterdir()} == before
    assert [p.name for p in mlp_build.parent.iterdir() if p.name.startswith(".")] == []  # no staging left
    assert api.read_build(mlp_build).netlist("fixed").groups  # and it still loads, its digests intact


def test_a_killed_compile_leaves_no_staging_directory_behind_the_next_one(mlp_build):
    gone = subprocess.Popen(["true"])
    gone.wait()  # a pid no process has now
    stale = mlp_build.parent / f".{mlp_build.name}.partial-{gone.pid}"
    stale.mkdir()
    (stale / "graph.nir").write_bytes(b"half")
    api.compile(preset="digits-mlp", seed=1, output=mlp_build)
    assert [p.name for p in mlp_build.parent.iterdir() if p.name.startswith(".")] == []
