"""ANN-to-SNN conversion (issue 16): a ReLU ANN exported by torch's own exporter, converted by ``snc convert``,
compiled and run. The quantized ANN is onnxruntime's run of the ONNX file snc writes; for a constant input
the first layer's spike counts are its integer activations exactly (float NIR reference, Lava floating_pt)."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from conftest import run_snc
from onnx_files import conv_ann, export, frames_ann
from snc import api
from snc.compiler.ann_to_snn import calibrate, quantized_model
from snc.compiler.frontends.onnx_ann import read_onnx
from snc.compiler.nir_io import SubtractiveIF, read_graph
from snc.errors import GraphError

BITS = 3
T = 2 ** BITS - 1


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    work = tmp_path_factory.mktemp("convert")
    ann = export(conv_ann(), work / "ann.onnx")
    np.save(work / "examples.npy", np.random.default_rng(0).normal(size=(64, 1, 8, 8)).astype(np.float32))
    result = run_snc("convert", str(ann), "--bits", str(BITS), "-o", str(work / "snn.nir"), "--calibrate",
                     str(work / "examples.npy"), "--json")
    assert result.returncode == 0, result.stderr
    return work, json.loads(result.stdout)


def test_the_quantized_ann_is_eq_21_as_onnxruntime_runs_it(tmp_path):
    path = export(conv_ann(), tmp_path / "ann.onnx")
    ann = read_onnx(path)
    x = np.random.default_rng(0).normal(size=(32, 1, 8, 8)).astype(np.float32)
    thresholds = calibrate(ann, x)
    onnx.save(quantized_model(ann.model, thresholds, BITS), str(tmp_path / "q.onnx"))
    model = conv_ann()
    s1, s2 = thresholds.values()

    def q(v: torch.Tensor, s: float) -> torch.Tensor:  # eq. 21, round half up
        return s / T * torch.clamp(torch.floor(T * v / s + 0.5), 0, T)

    with torch.no_grad():  # the same network by hand in torch, its activations quantized
        h = q(model.bn(model.conv1(torch.from_numpy(x))), s1)
        h2 = q(torch.clamp(model.conv2(h), 0, 1.5), s2)
        h = torch.cat([h + h2, h2], 1)
        pooled = torch.nn.functional.adaptive_avg_pool2d(h, 1).flatten(1)
        expected = model.fc(torch.cat([model.pool(model.up(h)).flatten(1), pooled], 1)).numpy()
    got = ort.InferenceSession(str(tmp_path / "q.onnx"), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)


def test_convert_writes_the_snn_and_measures_it(converted):
    work, report = converted
    graph = read_graph(work / "snn.nir")
    neurons = [n for n in graph.nodes.values() if isinstance(n, SubtractiveIF)]
    assert len(neurons) == 2 and report["steps"] == T and graph.metadata["snc.timestep"] == T
    for node in neurons:  # threshold s, membrane s / 2 at every call
        assert np.allclose(node.v_initial, node.v_threshold / 2)
    assert sorted(np.unique(n.v_threshold).item() for n in neurons) == sorted(report["thresholds"].values())
    first = next(iter(report["count_agreement"]))
    assert report["count_agreement"][first] == 1.0  # a constant current: exactly the quantized activation
    assert all(v > 0.9 for v in report["count_agreement"].values())
    assert report["output_rel_error"]["snn_vs_quantized_ann"] < 0.2
    assert np.load(work / "snn.inputs.npy").shape == (T, 16, 1, 8, 8)
    assert (work / "snn.quantized.onnx").is_file()


def test_the_compiled_snn_runs_on_the_emulator(converted):
    work, report = converted
    inputs = str(work / "snn.inputs.npy")
    assert run_snc("compile", str(work / "snn.nir"), "--calibrate", inputs, "-o", str(work / "build")).returncode == 0
    reference = api.run(work / "build", np.load(inputs), backend="reference")
    emu = api.run(work / "build", np.load(inputs), backend="emu")
    for name in reference.spikes:  # fixed point: 8-bit weights move a few currents across a level
        assert (emu.counts()[name] == reference.counts()[name]).mean() > 0.99


@pytest.mark.lava
def test_lava_floating_pt_equals_the_reference_and_fixed_pt_the_emulator(converted):
    work, _ = converted
    inputs = np.load(work / "snn.inputs.npy")[:, :4]
    build = work / "build"
    if not build.exists():
        api.compile(work / "snn.nir", graph=api.GraphOptions(calibration=inputs), output=build)
    reference, emu = api.run(build, inputs, backend="reference"), api.run(build, inputs, backend="emu")
    lava_float, lava_fixed = (api.run(build, inputs, backend="lava", mode=m) for m in ("float", "fixed"))
    for name, spikes in reference.spikes.items():
        assert np.array_equal(lava_float.spikes[name], spikes), name
        assert np.array_equal(lava_fixed.spikes[name], emu.spikes[name]), name
    assert np.array_equal(lava_fixed.output, emu.output)


def test_an_unsupported_op_is_one_error_listing_every_such_node(tmp_path):
    class Net(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = torch.nn.Linear(64, 10)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.sigmoid(self.fc(torch.tanh(x.flatten(1))))

    path = export(Net(), tmp_path / "bad.onnx")
    np.save(tmp_path / "x.npy", np.zeros((4, 1, 8, 8), np.float32))
    result = run_snc("convert", str(path), "--bits", "2", "-o", str(tmp_path / "snn.nir"), "--calibrate",
                     str(tmp_path / "x.npy"))
    assert result.returncode == 1 and "Traceback" not in result.stderr and result.stderr.count("error:") == 1
    assert "/Tanh (Tanh)" in result.stderr and "/Sigmoid (Sigmoid)" in result.stderr
    assert not (tmp_path / "snn.nir").exists()
    as_pt = run_snc("convert", str(path), "--bits", "2", "-o", str(tmp_path / "snn.pt"), "--calibrate",
                    str(tmp_path / "x.npy"))  # the output is a NIR graph, said before anything is read
    assert as_pt.returncode == 1 and as_pt.stderr.count("error:") == 1 and "-o must name a .nir" in as_pt.stderr


def test_what_the_conversion_cannot_map_is_listed(tmp_path):
    class Net(torch.nn.Module):  # a Clip from -1 is no ReLU; an Add of a constant that no layer's bias can take
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.clamp(x + 1.0, -1, 1)

    path = export(Net(), tmp_path / "n.onnx")
    with pytest.raises(GraphError, match="only a ReLU's floor 0 is quantized"):
        api.convert(path, bits=2, calibration=np.zeros((2, 1, 8, 8), np.float32))
    with pytest.raises(GraphError, match="--bits must be in 1..8"):
        api.convert(path, bits=9, calibration=np.zeros((2, 1, 8, 8), np.float32))


def test_a_dynamic_batch_export_with_shape_computations_and_a_frames_layout_converts(tmp_path):
    """Reshapes whose shapes torch computes from the batch (Shape, Gather, Concat, ...) are folded at batch 1;
    the [T = 1, B, C, H, W] tensors are the image's channels, the concat on axis 2 a channel concat; the conv's
    BatchNorm folds across the reshapes: the SNN is the one of the same network written on [B, C, H, W]."""
    path = export(frames_ann(), tmp_path / "frames.onnx")
    plain = export(frames_ann(frames=False), tmp_path / "plain.onnx")
    file_ops = [n.op_type for n in onnx.load(str(path)).graph.node]
    assert {"Shape", "Gather", "Concat", "Reshape"} <= set(file_ops)
    ann = read_onnx(path)
    assert "Shape" not in ann.ops.values() and len(ann.ops) < len(file_ops) // 2
    x = np.random.default_rng(1).normal(size=(48, 1, 8, 8)).astype(np.float32)
    expected = frames_ann()(torch.from_numpy(x)).detach().numpy()
    np.testing.assert_allclose(ann.module(torch.from_numpy(x)).detach().numpy(), expected, rtol=1e-5, atol=1e-5)
    got, want = (api.convert(p, bits=4, calibration=x, examples=48) for p in (path, plain))
    assert "BatchNormalization" not in {type(n).__name__ for n in got.graph.nodes.values()}
    assert sorted(type(n).__name__ for n in got.graph.nodes.values()) == \
        sorted(type(n).__name__ for n in want.graph.nodes.values())
    assert list(got.thresholds.values()) == pytest.approx(list(want.thresholds.values()), rel=1e-6)
    assert list(got.count_agreement.values()) == list(want.count_agreement.values())
    assert list(got.count_agreement.values())[0] == 1.0  # the first layer sees a constant current: exact
    assert got.output_rel_error == pytest.approx(want.output_rel_error, rel=1e-6, abs=1e-9)


def test_finetuning_trains_the_converted_snn_on_the_tasks_loss(tmp_path):
    """SDM's 'w ft': the converted SNN of an untrained ANN, fine-tuned on digit labels (cross-entropy through the
    surrogate gradient), classifies better; the file holds the trained weights, compiles and runs on the
    emulator; the executor with the weights given as parameters computes what it computes without them."""
    from snc.compiler.nir_reference import NIRReference
    from snc.compiler.snn_finetune import TRAINED, surrogate_spike
    from snc.models.data import digits

    images, labels = digits("train")
    np.savez(tmp_path / "digits.npz", x=images[:512].numpy().astype(np.float32), target=labels[:512].numpy())
    ann = export(conv_ann(), tmp_path / "ann.onnx")
    result = run_snc("convert", str(ann), "--bits", str(BITS), "-o", str(tmp_path / "snn.nir"), "--calibrate",
                     str(tmp_path / "digits.npz"), "--finetune", "60", "--finetune-lr", "1e-3", "--json")
    assert result.returncode == 0, result.stderr
    tuned = json.loads(result.stdout)["finetuned"]
    assert tuned["loss"] == "cross-entropy" and tuned["steps"] == 60
    assert tuned["loss_after"] < 0.6 * tuned["loss_before"]
    graph = read_graph(tmp_path / "snn.nir")
    plain = api.convert(ann, bits=BITS, calibration={"x": images[:512].numpy().astype(np.float32)}).graph
    trained = [n for n, node in graph.nodes.items() if type(node) in TRAINED]
    assert trained and all(not np.array_equal(graph.nodes[n].weight, plain.nodes[n].weight) for n in trained)
    for name, node in plain.nodes.items():  # thresholds and initial membranes as converted
        if isinstance(node, SubtractiveIF):
            assert np.array_equal(graph.nodes[name].v_threshold, node.v_threshold)
            assert np.array_equal(graph.nodes[name].v_initial, node.v_initial)
    x = torch.from_numpy(np.repeat(images[None, :8].numpy(), T, axis=0)).double()
    as_parameters = {f"{n}.{f}": torch.from_numpy(np.asarray(getattr(node, f), np.float64))
                     for n, node in graph.nodes.items() for f in TRAINED.get(type(node), ())}
    given = NIRReference(graph, parameters=as_parameters, spike=surrogate_spike).run({"input": x}, record=True)
    for name, values in NIRReference(graph).run({"input": x}, record=True).items():
        assert torch.equal(given[name], values), name
    inputs = np.repeat(images[None, :16].numpy().astype(np.float32), T, axis=0)
    build = api.compile(tmp_path / "snn.nir", graph=api.GraphOptions(calibration=inputs), output=tmp_path / "build")
    reference, emu = api.run(build.build, inputs, backend="reference"), api.run(build.build, inputs, backend="emu")
    for name in reference.spikes:
        assert (emu.counts()[name] == reference.counts()[name]).mean() > 0.99, name
    np.save(tmp_path / "examples.npy", images[:64].numpy().astype(np.float32))  # inputs without targets
    no_target = run_snc("convert", str(ann), "--bits", str(BITS), "-o", str(tmp_path / "b.nir"), "--calibrate",
                        str(tmp_path / "examples.npy"), "--finetune", "5")
    assert no_target.returncode != 0 and no_target.stderr.count("error:") == 1
    assert "'target'" in no_target.stderr and "Traceback" not in no_target.stderr
