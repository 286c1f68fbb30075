"""ONNX files read as ANNs (issue 16's reader): the module equals onnxruntime's run of the same file; every
op or attribute snc does not convert is named in one error; hostile and broken files are refused."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import helper, numpy_helper

from onnx_files import conv_ann, export
from snc.compiler.frontends.onnx_ann import read_onnx
from snc.errors import GraphError


def _runtime(path, x: np.ndarray) -> np.ndarray:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


def test_a_torch_export_reads_as_the_module_onnxruntime_runs(tmp_path):
    path = export(conv_ann(), tmp_path / "ann.onnx")
    ann = read_onnx(path)
    assert ann.input_shape == (1, 8, 8)
    assert {"Conv", "Relu", "Clip", "Add", "Concat", "Resize", "AveragePool", "Gemm"} <= set(ann.ops.values())
    x = np.random.default_rng(0).normal(size=(5, 1, 8, 8)).astype(np.float32)
    with torch.no_grad():
        got = ann.module(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(got, _runtime(path, x), rtol=1e-5, atol=1e-5)


def test_batchnorm_nodes_read_as_onnxruntime_runs_them(tmp_path):
    model = conv_ann()
    path = export(model, tmp_path / "bn.onnx", training=torch.onnx.TrainingMode.PRESERVE,
                  do_constant_folding=False)
    assert "BatchNormalization" in {n.op_type for n in onnx.load(str(path)).graph.node}
    x = np.random.default_rng(1).normal(size=(3, 1, 8, 8)).astype(np.float32)
    with torch.no_grad():
        got = read_onnx(path).module(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(got, _runtime(path, x), rtol=1e-5, atol=1e-5)


class _Unconvertible(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 2, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.sigmoid(self.conv(x))
        return torch.softmax(torch.nn.functional.max_pool2d(h, 2).flatten(1), -1) * 2


def test_every_node_snc_does_not_convert_is_named_in_one_error(tmp_path):
    path = export(_Unconvertible(), tmp_path / "bad.onnx")
    with pytest.raises(GraphError) as info:
        read_onnx(path)
    message = str(info.value)
    assert "4 node(s) of ops snc does not convert" in message
    for node in ("/Sigmoid (Sigmoid)", "/MaxPool (MaxPool)", "/Softmax (Softmax)", "/Mul (Mul)"):
        assert node in message


def _graph(nodes, initializers, input_dims=("batch", 4)) -> onnx.ModelProto:
    x = helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, list(input_dims))
    y = helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [f"out{i}" for i in range(len(input_dims))])
    return helper.make_model(helper.make_graph(nodes, "g", [x], [y], initializers),
                             opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def _gemm(weight: np.ndarray) -> onnx.ModelProto:
    return _graph([helper.make_node("Gemm", ["x", "w"], ["h"], name="fc", transB=1),
                   helper.make_node("Relu", ["h"], ["y"], name="relu")],
                  [numpy_helper.from_array(weight.astype(np.float32), "w")])


def test_broken_and_hostile_files_are_refused(tmp_path):
    (tmp_path / "random.onnx").write_bytes(np.random.default_rng(0).bytes(500))
    with pytest.raises(GraphError, match="not an ONNX model"):
        read_onnx(tmp_path / "random.onnx")
    with pytest.raises(GraphError, match="is a directory"):
        read_onnx(tmp_path)
    weight = np.ones((3, 4))
    weight[1, 2] = np.nan
    onnx.save(_gemm(weight), str(tmp_path / "nan.onnx"))
    with pytest.raises(GraphError, match="non-finite .* weights: w"):
        read_onnx(tmp_path / "nan.onnx")
    model = _gemm(np.ones((3, 4)))  # weights in a file elsewhere: never opened
    onnx.save(model, str(tmp_path / "external.onnx"), save_as_external_data=True, location="w.bin",
              size_threshold=0)
    model = onnx.load(str(tmp_path / "external.onnx"), load_external_data=False)
    next(e for e in model.graph.initializer[0].external_data if e.key == "location").value = "../../etc/passwd"
    onnx.save(model, str(tmp_path / "external.onnx"))
    with pytest.raises(GraphError, match="weights stored outside the file are not read: w"):
        read_onnx(tmp_path / "external.onnx")
    onnx.save(_graph([helper.make_node("Relu", ["x"], ["y"])], [], input_dims=("batch", "n")),
              str(tmp_path / "open.onnx"))
    with pytest.raises(GraphError, match=r"must be \[batch, \*fixed sizes\], not \[batch\?|not \[\?, \?\]"):
        read_onnx(tmp_path / "open.onnx")
    onnx.save(_graph([helper.make_node("Relu", ["x"], ["y"])], [], input_dims=("batch", 10**6, 10**6)),
              str(tmp_path / "huge.onnx"))
    with pytest.raises(GraphError, match="activations of one call at the declared input shapes need about"):
        read_onnx(tmp_path / "huge.onnx")
    # a small net declared at a batch of 10**7 (found by the ONNX fuzzing: its check call took all memory)
    onnx.save(_graph([helper.make_node("Relu", ["x"], ["y"])], [], input_dims=(10**7, 64, 64)),
              str(tmp_path / "huge-batch.onnx"))
    with pytest.raises(GraphError, match="activations of one call at the declared input shapes need about"):
        read_onnx(tmp_path / "huge-batch.onnx")
    resize = _graph([helper.make_node("Resize", ["x", "", "s"], ["y"], name="up", mode="linear")],
                    [numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "s")], ("batch", 1, 4, 4))
    onnx.save(resize, str(tmp_path / "linear.onnx"))
    with pytest.raises(GraphError, match="up \\(Resize\\) mode 'linear': only nearest upsampling"):
        read_onnx(tmp_path / "linear.onnx")


def _resize(scale: float, **attributes) -> onnx.ModelProto:
    return _graph([helper.make_node("Resize", ["x", "", "s"], ["y"], name="up", mode="nearest", **attributes)],
                  [numpy_helper.from_array(np.array([1, 1, scale, scale], np.float32), "s")], ("batch", 2, 5, 5))


@pytest.mark.parametrize("attributes,scale", [
    ({}, 2), ({}, 3),  # ONNX's defaults: half_pixel, round_prefer_floor
    ({"coordinate_transformation_mode": "half_pixel", "nearest_mode": "round_prefer_ceil"}, 3),
    ({"coordinate_transformation_mode": "pytorch_half_pixel", "nearest_mode": "round_prefer_ceil"}, 2),
    ({"coordinate_transformation_mode": "asymmetric", "nearest_mode": "floor"}, 4),
])
def test_nearest_resizes_by_whole_factors_read_as_onnxruntime_runs_them(attributes, scale, tmp_path):
    onnx.save(_resize(scale, **attributes), str(tmp_path / "r.onnx"))
    x = np.random.default_rng(2).normal(size=(2, 2, 5, 5)).astype(np.float32)
    with torch.no_grad():
        got = read_onnx(tmp_path / "r.onnx").module(torch.from_numpy(x)).numpy()
    np.testing.assert_array_equal(got, _runtime(tmp_path / "r.onnx", x))


@pytest.mark.parametrize("attributes,scale", [
    ({"coordinate_transformation_mode": "asymmetric", "nearest_mode": "round_prefer_floor"}, 2),
    ({"coordinate_transformation_mode": "align_corners"}, 2),
    ({"coordinate_transformation_mode": "half_pixel", "nearest_mode": "ceil"}, 2),
    ({}, 1.5),
])
def test_other_resizes_are_refused_naming_the_node(attributes, scale, tmp_path):
    onnx.save(_resize(scale, **attributes), str(tmp_path / "r.onnx"))
    with pytest.raises(GraphError, match="not: up \\(Resize: "):
        read_onnx(tmp_path / "r.onnx")


def test_an_opset_9_upsample_reads_as_onnxruntime_runs_it(tmp_path):
    x_info = helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["batch", 2, 3, 3])
    y_info = helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["batch", 2, 6, 6])
    graph = helper.make_graph([helper.make_node("Upsample", ["x", "s"], ["y"], name="up", mode="nearest")], "g",
                              [x_info], [y_info], [numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "s")])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 9)], ir_version=8), str(tmp_path / "u.onnx"))
    x = np.random.default_rng(3).normal(size=(1, 2, 3, 3)).astype(np.float32)
    with torch.no_grad():
        got = read_onnx(tmp_path / "u.onnx").module(torch.from_numpy(x)).numpy()
    np.testing.assert_array_equal(got, _runtime(tmp_path / "u.onnx", x))
