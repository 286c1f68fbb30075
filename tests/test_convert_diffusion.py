"""ANN-to-SNN conversion of diffusion denoisers (issue 16, part 2): the spiking core is cut from the ONNX model
(what depends on the image, up to ``snc.core_output``); the time embedding and the tail stay on the host,
carried in the NIR graph; the converted model compiles, samples and verifies as any build."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import onnx
import pytest
import torch

from conftest import run_snc
from onnx_files import TinyDenoiser, export_denoiser
from snc import api
from snc.compiler.frontends import onnx_host
from snc.compiler.frontends.onnx_ann import read_onnx
from snc.compiler.frontends.unet import ann_to_onnx
from snc.compiler.nir_io import read_graph, write_graph
from snc.errors import GraphError
from snc.models.presets import ann_twin, build_model, preset

BITS = 2
T = 2 ** BITS - 1


def examples(n: int = 16, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"x": rng.normal(size=(n, 1, 8, 8)).astype(np.float32), "t": rng.integers(0, 1000, n)}


def tiny(seed: int = 0) -> TinyDenoiser:
    torch.manual_seed(seed)
    return TinyDenoiser().eval()


@pytest.mark.parametrize("dynamic", [True, False], ids=["dynamic-batch", "batch-1"])
def test_the_host_parts_are_cut_and_the_converted_model_is_the_quantized_ann(tmp_path, dynamic):
    path = export_denoiser(tiny(), tmp_path / "tiny.onnx", dynamic=dynamic)
    ann = read_onnx(path)
    assert ann.host.core_output == "core" and ann.host.output == "eps" and len(ann.host.host_tensors) == 1
    assert {ann.fixed.graph.node[i].op_type for i in ann.core_nodes} == {"Conv", "Add", "Clip"}
    result = api.convert(path, bits=BITS, calibration=examples())
    graph = result.graph
    assert sorted(graph.inputs) == ["host.Add", "input"]
    assert {"snc.host", "snc.host.head", "snc.host.tail"} <= set(graph.metadata)
    assert list(result.count_agreement.values()) == [1.0]  # a constant current: the quantized levels exactly
    assert result.output_rel_error["snn_vs_quantized_ann"] < 1e-5, result.output_rel_error
    # by hand: eq. 21 on the first layer, with the host's bias, then the core and the tail
    data = examples(4, seed=1)
    model = tiny()
    with torch.no_grad():
        x, t = torch.from_numpy(data["x"]), torch.from_numpy(data["t"])
        bias = model.proj(torch.nn.functional.silu(model.embedding(t)))[:, :, None, None]
        level = torch.clamp(torch.floor(T * (model.conv1(x) + bias) + 0.5), 0, T) / T
        expected = torch.tanh(model.tail(model.conv2(level))).double()
        got = onnx_host.program(graph).model(x.double(), t)
    assert torch.allclose(got, expected, atol=1e-5), float((got - expected).abs().max())


def test_a_host_tensor_the_core_reads_other_than_added_is_named(tmp_path):
    class Scaled(TinyDenoiser):
        def forward(self, x, t):  # FiLM-like: the time embedding multiplies the stream
            scale = self.proj(self.embedding(t))[:, :, None, None]
            core = self.conv2(torch.clamp(self.conv1(x) * scale, 0, 1.0))
            return self.tail(core), core

    path = export_denoiser(Scaled(), tmp_path / "scaled.onnx")
    with pytest.raises(GraphError, match=r"/Mul \(Mul\)"):
        api.convert(path, bits=BITS, calibration=examples())


def test_bad_cuts_and_examples_are_one_error(tmp_path):
    path = export_denoiser(tiny(), tmp_path / "tiny.onnx")
    with pytest.raises(GraphError, match="no tensor the model computes"):
        read_onnx(path, core_output="nope")
    with pytest.raises(GraphError, match="missing t"):
        api.convert(path, bits=BITS, calibration={"x": examples()["x"]})
    with pytest.raises(GraphError, match="give examples of each"):
        api.convert(path, bits=BITS, calibration=examples()["x"])
    np.savez(tmp_path / "ex.npz", x=examples()["x"], t=examples()["t"][:3])
    result = run_snc("convert", str(path), "--bits", "2", "--calibrate", str(tmp_path / "ex.npz"), "-o",
                     str(tmp_path / "snn.nir"))
    assert result.returncode == 1 and result.stderr.count("error:") == 1 and "differ in number" in result.stderr
    assert "Traceback" not in result.stderr


def unet_twin() -> torch.nn.Module:
    arch, config = preset("digits-unet")
    twin = ann_twin(config)
    twin = dataclasses.replace(twin, ch=8, neuron=dataclasses.replace(twin.neuron, ann_bits=BITS))
    torch.manual_seed(0)
    return build_model(arch, twin).eval()


@pytest.fixture(scope="module")
def unet_build(tmp_path_factory):
    """The digits U-Net's ANN twin (QuantizedReLU at 2 bits, random init, 8 channels), exported by snc's U-Net
    frontend with torch's exporter, converted, compiled by the CLI."""
    work = tmp_path_factory.mktemp("unet")
    path = ann_to_onnx(unet_twin(), work / "unet.onnx")
    np.savez(work / "ex.npz", **examples(32))
    result = run_snc("convert", str(path), "--bits", str(BITS), "--calibrate", str(work / "ex.npz"), "-o",
                     str(work / "snn.nir"), "--json")
    assert result.returncode == 0, result.stderr
    converted = json.loads(result.stdout)
    result = run_snc("compile", str(work / "snn.nir"), "-o", str(work / "build"))
    assert result.returncode == 0, result.stderr
    return work, converted


def test_the_unet_twin_converts_with_its_time_embedding_and_tail_on_the_host(unet_build):
    work, converted = unet_build
    assert converted["steps"] == T and "inputs" not in converted
    assert list(converted["count_agreement"].values())[0] == 1.0
    assert all(s == 1.0 for s in converted["thresholds"].values())  # the QuantizedReLUs' Clips: learned, not calibrated
    graph = read_graph(work / "snn.nir")
    assert sum(name.startswith("host.") for name in graph.inputs) == 8  # one time-embedding bias per residual block
    assert not (work / "build" / "model.pt").exists()  # the host parts travel in graph.nir
    result = run_snc("sample", str(work / "build"), "--backend", "emu", "--steps", "3", "-n", "4", "-o",
                     str(work / "s.png"))
    assert result.returncode == 0, result.stderr
    assert np.isfinite(np.load(work / "s.npy")).all()


@pytest.mark.lava
def test_a_converted_unet_on_lava_floating_pt_equals_torch_and_fixed_pt_the_emulator(unet_build):
    work, _ = unet_build
    report = api.verify(work / "build", backends=("lava", "emu"), n=1)  # one image at 3 diffusion steps
    assert report.agreement["lava_float_vs_torch"] >= 0.999, report.agreement
    assert report.agreement["emu_vs_lava_fixed"] == 1.0 and report.readout_identical["emu_vs_lava_fixed"]
    assert report.output_rel_error["lava_float_vs_torch"] < 1e-9


def test_an_snc_checkpoint_of_the_twin_converts_as_its_onnx_file(tmp_path, unet_build):
    """``snc convert twin.pt``: the family's ONNX writer, then the ONNX path; the same SNN as the ONNX file's.
    A spiking checkpoint is one error."""
    from snc.models.checkpoint import save_checkpoint

    work, _ = unet_build
    save_checkpoint(tmp_path / "twin.pt", "spiking-unet", unet_twin(), {"command": "test"})
    result = run_snc("convert", str(tmp_path / "twin.pt"), "--bits", str(BITS), "--calibrate", str(work / "ex.npz"),
                     "-o", str(tmp_path / "snn.nir"))
    assert result.returncode == 0, result.stderr
    ours, theirs = read_graph(tmp_path / "snn.nir"), read_graph(work / "snn.nir")
    assert ours.nodes.keys() == theirs.nodes.keys() and ours.edges == theirs.edges
    for name, node in ours.nodes.items():
        for field in ("weight", "bias", "v_threshold"):
            if hasattr(node, field):
                assert np.array_equal(getattr(node, field), getattr(theirs.nodes[name], field)), (name, field)
    spiking = run_snc("convert", "models/checkpoints/digits-unet.pt", "--bits", "2", "--calibrate",
                      str(work / "ex.npz"), "-o", str(tmp_path / "x.nir"))
    assert spiking.returncode != 0 and spiking.stderr.count("error:") == 1 and "a spiking model" in spiking.stderr
