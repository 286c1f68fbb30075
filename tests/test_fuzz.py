"""Fuzzing (issue 15): hypothesis mutates valid checkpoints, NIR files, netx files and build directories, and
ONNX files; draws sampler option values through the API and option values of every command through the
CLI's own entry point; every case must load / compile / run correctly or raise one SncError (what the CLI
prints as one ``error:`` line) or a usage error, never another exception, and leave no process behind."""

from __future__ import annotations

import json
import multiprocessing
import shutil
import tempfile
from pathlib import Path

import h5py
import nir
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from netx_files import networks, write_netx
from onnx_files import conv_ann, export
from snc import api
from snc.compiler.frontends import GraphOptions
from snc.errors import SncError
from snc.models.checkpoint import load_checkpoint, save_checkpoint
from snc.models.presets import build_model, preset

pytestmark = pytest.mark.slow  # 560 cases, about 40 s
SETTINGS = settings(max_examples=80, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
WORK = Path(tempfile.mkdtemp(prefix="snc-fuzz-"))


def _ends_well(action) -> None:
    """``action()`` succeeds or raises SncError; nothing else, and no process is left."""
    try:
        action()
    except SncError as exc:
        assert str(exc).strip(), "an empty error message"
    assert not multiprocessing.active_children()


# --- values a mutation puts somewhere ------------------------------------------------------------------
ODD_SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(allow_nan=True),
                        st.text(max_size=8), st.binary(max_size=8))
ODD_VALUES = st.one_of(ODD_SCALARS, st.lists(ODD_SCALARS, max_size=4), st.dictionaries(st.text(max_size=4),
                                                                                          ODD_SCALARS, max_size=3))


def _odd_tensor(draw, like: torch.Tensor) -> torch.Tensor:
    kind = draw(st.sampled_from(["nan", "int", "shape", "empty", "huge"]))
    if kind == "nan":
        t = like.clone().float()
        t.view(-1)[0] = float("nan")
        return t
    if kind == "int":
        return like.long()
    if kind == "shape":
        return torch.zeros(*(s + 1 for s in like.shape)) if like.dim() else torch.zeros(2)
    if kind == "empty":
        return torch.zeros(0)
    return torch.full_like(like.float(), 1e38)


@pytest.fixture(scope="module")
def checkpoint() -> Path:
    path = WORK / "mlp.pt"
    arch, config = preset("digits-mlp")
    torch.manual_seed(0)
    save_checkpoint(path, arch, build_model(arch, config), {})
    return path


@SETTINGS
@given(data=st.data())
def test_mutated_checkpoints(checkpoint, data):
    raw = torch.load(checkpoint, weights_only=True)
    where = data.draw(st.sampled_from(["top", "config", "state", "bytes"]))
    path = WORK / "mutated.pt"
    if where == "bytes":
        blob = bytearray(checkpoint.read_bytes())
        for _ in range(data.draw(st.integers(1, 8))):
            blob[data.draw(st.integers(0, len(blob) - 1))] = data.draw(st.integers(0, 255))
        cut = data.draw(st.integers(0, len(blob)))
        path.write_bytes(bytes(blob[:cut] if data.draw(st.booleans()) else blob))
    else:
        if where == "top":
            key = data.draw(st.sampled_from(sorted(raw)))
            if data.draw(st.booleans()):
                raw[key] = data.draw(ODD_VALUES)
            else:
                del raw[key]
        elif where == "config":
            key = data.draw(st.sampled_from(sorted(raw["config"]) + ["unknown"]))
            raw["config"][key] = data.draw(ODD_VALUES)
        else:
            key = data.draw(st.sampled_from(sorted(raw["state_dict"])))
            raw["state_dict"][key] = _odd_tensor(data.draw, raw["state_dict"][key])
        torch.save(raw, path)
    _ends_well(lambda: load_checkpoint(path))


def _graph() -> nir.NIRGraph:
    rng = np.random.default_rng(0)
    lif = nir.LIF(tau=np.full(6, 5e-4), r=np.full(6, 5.0), v_leak=np.zeros(6), v_threshold=np.ones(6),
                  v_reset=np.zeros(6))
    return nir.NIRGraph(nodes={"input": nir.Input(np.array([4])), "fc": nir.Affine(rng.normal(size=(6, 4)),
                                                                                     np.zeros(6)),
                               "lif": lif, "delay": nir.Delay(np.full(6, 1e-4)),
                               "rec": nir.Linear(-0.5 * np.eye(6)), "output": nir.Output(np.array([6]))},
                        edges=[("input", "fc"), ("fc", "lif"), ("lif", "delay"), ("delay", "rec"), ("rec", "lif"),
                               ("lif", "output")], metadata={"snc.dt": 1e-4})


def _datasets(f: h5py.File) -> list[str]:
    names: list[str] = []
    f.visititems(lambda name, obj: names.append(name) if isinstance(obj, h5py.Dataset) else None)
    return sorted(names)


def _odd_array(draw) -> np.ndarray:
    return draw(st.one_of(
        st.just(np.array([np.nan, 1.0])), st.just(np.array([], dtype=np.float64)), st.just(np.array(-1)),
        st.just(np.zeros((2, 3, 4))), st.just(np.array([b"spline"])), st.just(np.array(1e300)),
        st.lists(st.floats(allow_nan=True, width=32), min_size=1, max_size=5).map(np.array),
        st.lists(st.integers(-5, 5), min_size=1, max_size=5).map(np.array)))


@SETTINGS
@given(data=st.data())
def test_mutated_nir_files(data):
    path = WORK / "mutated.nir"
    nir.write(str(path), _graph())
    with h5py.File(path, "r+") as f:
        names = _datasets(f)
        for _ in range(data.draw(st.integers(1, 3))):
            name = data.draw(st.sampled_from(names))
            if name not in f:
                continue
            del f[name]
            if data.draw(st.booleans()):
                f[name] = _odd_array(data.draw)
    x = np.random.default_rng(1).random((8, 2, 4)) * 2

    def compile_and_run() -> None:
        build = api.compile(path, graph=GraphOptions(calibration=x)).build
        api.run(build, x, backend="emu")

    _ends_well(compile_and_run)


@SETTINGS
@given(data=st.data())
def test_mutated_netx_files(data):
    layers = [dict(layer) for layer in networks()[data.draw(st.sampled_from(["mlp", "conv"]))]]
    for _ in range(data.draw(st.integers(1, 3))):
        i = data.draw(st.integers(0, len(layers) - 1))
        key = data.draw(st.sampled_from(sorted(layers[i]) + ["neuron", "weight", "delay"]))
        if key == "neuron":
            field = data.draw(st.sampled_from(["type", "vThMant", "iDecay", "vDecay"]))
            neuron = dict(layers[i].get("neuron", {}))
            neuron[field] = data.draw(st.one_of(st.integers(-2**40, 2**40), st.sampled_from(["SDNN", "X", ""])))
            layers[i]["neuron"] = neuron
        elif data.draw(st.booleans()):
            layers[i].pop(key, None)
        else:
            layers[i][key] = _odd_array(data.draw)
    path = WORK / "mutated.net"
    try:
        write_netx(path, layers)
    except (TypeError, ValueError, SncError):
        return  # h5py cannot store this value: not a file anyone can hand snc

    def compile_and_run() -> None:
        build = api.compile(path).build
        shape = tuple(int(v) for v in build.nir_graph.nodes["input"].input_type["input"])
        api.run(build, np.ones((6, *shape)), backend="emu")

    _ends_well(compile_and_run)


@pytest.fixture(scope="module")
def onnx_file() -> Path:
    return export(conv_ann(), WORK / "ann.onnx")


@SETTINGS
@given(data=st.data())
def test_mutated_onnx_files(onnx_file, data):
    """Read, the module must equal onnxruntime's run of the same file (where onnxruntime runs it)."""
    import onnx
    import onnxruntime as ort
    from onnx import numpy_helper

    from snc.compiler.frontends.onnx_ann import read_onnx

    path = WORK / "mutated.onnx"
    if data.draw(st.booleans()):  # bytes
        blob = bytearray(onnx_file.read_bytes())
        for _ in range(data.draw(st.integers(1, 8))):
            blob[data.draw(st.integers(0, len(blob) - 1))] = data.draw(st.integers(0, 255))
        path.write_bytes(bytes(blob[:data.draw(st.integers(0, len(blob)))] if data.draw(st.booleans()) else blob))
    else:  # structure: a node's op or attribute, an initializer, the input's shape
        model = onnx.load(str(onnx_file))
        graph = model.graph
        what = data.draw(st.sampled_from(["op", "attribute", "initializer", "input", "delete"]))
        if what == "op":
            node = graph.node[data.draw(st.integers(0, len(graph.node) - 1))]
            node.op_type = data.draw(st.sampled_from(["Sigmoid", "MaxPool", "Relu", "Conv", "Gemm", "Add", "Loop",
                                                      "Resize", "Flatten", "Identity", "Nope"]))
        elif what == "attribute":
            nodes = [n for n in graph.node if n.attribute]
            node = nodes[data.draw(st.integers(0, len(nodes) - 1))]
            attr = node.attribute[data.draw(st.integers(0, len(node.attribute) - 1))]
            if attr.ints:
                attr.ints[data.draw(st.integers(0, len(attr.ints) - 1))] = data.draw(st.integers(-3, 2**40))
            elif attr.s:
                attr.s = data.draw(st.sampled_from([b"linear", b"cubic", b"", b"nearest", b"\xff"]))
            else:
                attr.i = data.draw(st.integers(-3, 2**40))
        elif what == "initializer":
            index = data.draw(st.integers(0, len(graph.initializer) - 1))
            old = graph.initializer[index]
            value = _odd_array(data.draw)
            if value.dtype.kind == "S":
                value = np.array([np.inf], np.float32)
            elif data.draw(st.booleans()):
                value = value.astype(np.float32)
            graph.initializer[index].CopyFrom(numpy_helper.from_array(value, old.name))
        elif what == "input":
            dim = graph.input[0].type.tensor_type.shape.dim[data.draw(st.integers(0, 3))]
            dim.dim_value = data.draw(st.integers(-2, 10**7))
        else:
            del graph.node[data.draw(st.integers(0, len(graph.node) - 1))]
        path.write_bytes(model.SerializeToString())

    def read_and_compare() -> None:
        ann = read_onnx(path)
        event("read")
        x = np.random.default_rng(0).normal(size=(2, *ann.input_shape)).astype(np.float32)
        try:
            session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
            expected = session.run(None, {session.get_inputs()[0].name: x})[0]
        except Exception:  # noqa: BLE001 - onnxruntime refuses a file onnx's checker passed: nothing to compare
            event("onnxruntime refused what snc read")
            return
        with torch.no_grad():
            got = ann.module(torch.from_numpy(x)).numpy()
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4 * max(1.0, float(np.abs(expected).max())))

    _ends_well(read_and_compare)


@pytest.fixture(scope="module")
def build_dir() -> Path:
    path = WORK / "build"
    api.compile(preset="digits-mlp", output=path)
    return path


@SETTINGS
@given(data=st.data())
def test_mutated_build_directories(build_dir, data):
    copy = WORK / "mutated-build"
    shutil.rmtree(copy, ignore_errors=True)
    shutil.copytree(build_dir, copy)
    files = sorted(p.name for p in copy.iterdir())
    target = copy / data.draw(st.sampled_from(files))
    how = data.draw(st.sampled_from(["delete", "truncate", "flip", "json"]))
    if how == "delete":
        target.unlink()
    elif how == "truncate":
        target.write_bytes(target.read_bytes()[:data.draw(st.integers(0, 64))])
    elif how == "flip":
        blob = bytearray(target.read_bytes())
        blob[data.draw(st.integers(0, len(blob) - 1))] ^= 0xFF
        target.write_bytes(bytes(blob))
    else:
        meta = json.loads((copy / "build.json").read_text())
        key = data.draw(st.sampled_from(sorted(meta)))
        meta[key] = data.draw(ODD_VALUES)
        (copy / "build.json").write_text(json.dumps(meta, default=str))

    def use() -> None:
        build = api.read_build(copy)
        api.sample(build, backend="emu", n=2, steps=2, seed=0)

    _ends_well(use)


@SETTINGS
@given(eta=st.one_of(st.floats(allow_nan=True), st.integers(-3, 3)), steps=st.one_of(st.none(), st.integers(-5, 2000)),
       n=st.integers(-2, 4), batch=st.one_of(st.none(), st.integers(-1, 5)),
       threshold_scale=st.floats(allow_nan=True), sampler=st.sampled_from(["ddim", "ddpm", "x"]))
def test_random_sampler_options(build_dir, eta, steps, n, batch, threshold_scale, sampler):
    if sampler == "ddpm" and steps in (None, 1000):
        return  # a correct DDPM run is 1000 emulator calls: its option checks are the same as DDIM's

    def run() -> None:
        result = api.sample(build_dir, backend="emu", sampler=sampler, steps=steps, eta=eta, n=n, batch=batch,
                            threshold_scale=threshold_scale, seed=0)
        images = result.images
        assert images.shape[0] == n and torch.isfinite(images).all() and images.abs().max() <= 1

    _ends_well(run)


# --- the CLI: random option values, through snc's own entry point ------------------------------------------
# mostly values an option takes, some it must refuse (out of range, not a number, beyond a C integer)
INT_VALUES = st.sampled_from(["1", "2", "3", "1", "2", "0", "-1", str(2**64), "abc", ""])
FLOAT_VALUES = st.sampled_from(["0", "0.5", "1", "0.9", "2", "-1", "nan", "inf", "-inf", "1e309", "1e-9", "x"])


def _options(draw, choices: dict) -> list[str]:
    """Some of ``choices`` (option -> strategy of its value), each with a drawn value."""
    argv: list[str] = []
    for option, values in choices.items():
        if draw(st.booleans()):
            argv += [option, draw(values)]
    return argv


@SETTINGS
@given(data=st.data())
def test_random_cli_option_values(build_dir, data, capsys, monkeypatch):
    """Exit 0 with a correct result, 1 with one ``error:`` line, or 2 (click's usage error); no traceback."""
    from snc.cli import main

    out_dir = WORK / "cli"
    shutil.rmtree(out_dir, ignore_errors=True)
    out_dir.mkdir()
    np.save(out_dir / "samples.npy", np.zeros((4, 1, 8, 8), np.float32))
    command = data.draw(st.sampled_from(["sample", "verify", "energy", "compile", "eval"]))
    if command == "sample":
        argv = [command, str(build_dir), "-o", str(out_dir / "s.png"), *_options(data.draw, {
            "--backend": st.sampled_from(["emu", "torch", "x", ""]), "--sampler": st.sampled_from(["ddim",
            "analytic", "x"]), "--steps": INT_VALUES, "--eta": FLOAT_VALUES, "-n": INT_VALUES,
            "--batch": INT_VALUES, "--threshold-scale": FLOAT_VALUES, "--seed": INT_VALUES,
            "--timeout": FLOAT_VALUES, "--mode": st.sampled_from(["fixed", "float", "x"])})]
    elif command == "verify":
        argv = [command, str(build_dir), *_options(data.draw, {
            "--backends": st.sampled_from(["emu", "torch", "emu,emu", "x", ""]), "-n": INT_VALUES,
            "--batch": INT_VALUES, "--seed": INT_VALUES})]
        if "--backends" not in argv:
            argv += ["--backends", "emu"]  # (Lava is fuzzed by the supervision tests, not here)
    elif command == "energy":
        argv = [command, str(build_dir), *_options(data.draw, {
            "--backend": st.sampled_from(["emu", "torch", "x"]), "--profile": st.sampled_from(["loihi2", "x", ""]),
            "--seed": INT_VALUES})]
    elif command == "compile":
        argv = [command, "--preset", "digits-mlp", "-o", str(out_dir / "b"), *_options(data.draw, {
            "--calibration": INT_VALUES, "--threshold-scale": FLOAT_VALUES,
            "--mode": st.sampled_from(["fixed", "float", "x"]), "--target": st.sampled_from(["loihi2", "x"])})]
    else:
        argv = [command, str(out_dir / "samples.npy")]
    monkeypatch.setattr("sys.argv", ["snc", *argv])
    capsys.readouterr()
    try:
        main()
        code = 0
    except SystemExit as exc:
        code = exc.code or 0
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err, (argv, out, err)
    event(f"{command} exit {code}")
    assert code in (0, 1, 2), (argv, code, out, err)
    if code == 1:
        assert (out + err).lower().count("error:") == 1, (argv, out, err)
    if code == 0 and command == "sample":
        images = np.load(out_dir / "s.npy")
        assert np.isfinite(images).all() and np.abs(images).max() <= 1, argv
    assert not multiprocessing.active_children()
