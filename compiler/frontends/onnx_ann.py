"""ANNs held as ONNX files: read, checked, and made a torch module (the source of an ANN-to-SNN conversion).

Reading is the ``onnx`` package's (parse, ``checker``, strict shape inference); the torch module is
``onnx2torch``'s (a ``torch.fx.GraphModule`` of ordinary torch layers: Conv2d, Linear, ReLU, AvgPool2d, ...).
onnx2torch is used because the conversion needs the ANN as torch: activation statistics for the clipping
thresholds, QCFS training and fine-tuning all run it with gradients; a second hand-written interpreter of
the same ops would be a copy. Before onnx2torch sees a file, snc checks what it may contain, listing every
problem in one error:

- ops: ``ANN_OPS`` (what the conversion maps: convs, affine layers, BatchNorm folded, ReLU / Clip as the
  quantized activation, residual Add, channel Concat, nearest Resize, average pools, reshapes, constants,
  casts to float); every other node is named with its op. They are checked in the model at batch 1
  (``fixed``), where everything computable from constants and static shapes is folded (torch's exporter
  with a dynamic batch writes a ``view(x.size(0), -1)`` as Shape, Gather, Unsqueeze, Concat and Reshape):
  what the conversion reads;
- attributes that change an op's meaning beyond what the conversion maps (a non-nearest Resize, a Cast to a
  non-float type);
- one float input of fixed size but for its batch dimension;
- weights: stored in the file (external data files are never opened: a file could point anywhere), finite.

``onnxruntime`` (the format's own runtime) is what the tests compare the module with.
"""

from __future__ import annotations

import copy
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from snc.errors import GraphError
from snc.memory import available_mb

# op -> what the conversion makes of it
ANN_OPS = {
    "Conv": "convolution", "Gemm": "affine", "MatMul": "affine (with a following Add: its bias)",
    "BatchNormalization": "folded into the layer before it", "Relu": "quantized activation (IF neurons)",
    "Clip": "quantized activation with its own ceiling (IF neurons)", "Add": "residual sum (or a bias)",
    "Concat": "channel concatenation", "Resize": "nearest upsampling", "Upsample": "nearest upsampling",
    "AveragePool": "average pooling (a per-channel convolution)", "GlobalAveragePool": "average pooling",
    "Flatten": "reshape", "Reshape": "reshape", "Unsqueeze": "reshape", "Squeeze": "reshape",
    "Tile": "reshape (repeating nothing)", "Expand": "reshape (repeating nothing)",
    "Gather": "reshape (keeping every value)", "Slice": "reshape (keeping every value)", "Identity": "nothing",
    "Constant": "a constant",
    "Cast": "nothing (to float)",
}
FLOAT_TYPES = {1, 10, 11, 16}  # TensorProto FLOAT, FLOAT16, DOUBLE, BFLOAT16
RANDOM_OPS = ("RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Multinomial", "Bernoulli")
LOAD_FACTOR = 4  # memory to parse a file and build its module, per byte of the file (measured: about 3)


@dataclass
class HostParts:
    """The parts of an ANN that stay on the host around its spiking core (a diffusion model's time embedding and
    tail). The core is what depends on the image input (the first float input) up to ``core_output``; the
    tensors it reads that are computed from the other inputs alone (``host_tensors``: a time-embedding bias)
    are the head's outputs, fed to the core as currents; the tail maps the core output (and the inputs) to the
    model's output. Head and tail are ONNX models (serialized) cut from the file by onnx's Extractor, run by
    onnx2torch at any batch (one example at a time when the file's batch is fixed)."""
    inputs: dict[str, dict[str, Any]]  # every graph input: {"dtype": numpy dtype, "shape": [batch, ...]}
    core_input: str
    core_output: str
    output: str  # the model's output (the tail's)
    host_tensors: list[str]
    head: Optional[bytes]  # graph inputs -> host tensors
    tail: Optional[bytes]  # core output and graph inputs -> output
    full_shapes: dict[str, list[int]]  # host tensors, the core output and the Adds they enter: shapes at batch 1
    batch_axes: dict[str, int]  # host tensors and the core output: the axis that is the batch in the model
    static_batch: Optional[int]  # the file's batch when it is fixed (then host parts run one example at a time)

    def as_meta(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k not in ("head", "tail")}


@dataclass
class OnnxAnn:
    """An ANN read from ONNX: the model as checked (constants folded, Resizes in torch's form) for any batch,
    the same at batch 1 with everything computable from constants and shapes folded (``fixed``: what the
    conversion reads), its torch module (eval mode, float32, any batch) and what it takes."""
    model: Any  # onnx.ModelProto
    fixed: Any  # onnx.ModelProto at batch 1
    module: torch.fx.GraphModule
    input_shape: tuple[int, ...]  # one example, without the batch dimension
    source: str
    core_nodes: Optional[list[int]] = None  # indices into ``fixed``'s nodes of the spiking core (None: all)
    host: Optional[HostParts] = None

    @property
    def input_names(self) -> list[str]:
        weights = {t.name for t in self.model.graph.initializer}
        return [i.name for i in self.model.graph.input if i.name not in weights]

    def examples(self, data: dict[str, np.ndarray]) -> list[torch.Tensor]:
        """The module's positional inputs from arrays by input name."""
        return [torch.from_numpy(np.asarray(data[name])) for name in self.input_names]

    @property
    def ops(self) -> dict[str, str]:
        """Node name -> op type of the model at batch 1, in the file's order (constants folded away)."""
        return {node.name or f"#{i}": node.op_type for i, node in enumerate(self.fixed.graph.node)}


def read_onnx(path: Path, core_output: Optional[str] = None) -> OnnxAnn:
    """The ANN of an ONNX file; one GraphError naming every problem (see the module docstring). ``core_output``:
    the tensor where the spiking core ends (default: the file's metadata ``snc.core_output``, else the
    model's output); what follows it, and what the core reads computed from inputs other than the image, are
    host parts (``HostParts``)."""
    import onnx

    path = Path(path)
    if path.is_dir():
        raise GraphError(f"{path} is a directory, not an ONNX file")
    if not path.is_file():
        raise GraphError(f"{path}: no such file")
    size_mb = path.stat().st_size / 2**20
    available = available_mb()
    if available is not None and size_mb * LOAD_FACTOR > available:
        raise GraphError(f"{path}: reading a {size_mb:.0f} MB ONNX file needs about {size_mb * LOAD_FACTOR:.0f} MB; "
                         f"{max(available, 0):.0f} MB is available")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # noqa: BLE001 - protobuf's DecodeError and whatever a truncated file raises
        raise GraphError(f"{path}: not an ONNX model ({type(exc).__name__}: {exc})") from None
    _refuse(path, _weight_problems(model))
    try:
        onnx.checker.check_model(model)
        inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True, data_prop=True)
    except Exception as exc:  # noqa: BLE001 - onnx's ValidationError / InferenceError, and C++ errors as others
        raise GraphError(f"{path}: an invalid ONNX model: {_one_line(exc)}") from None
    core_input, shape, inputs = _inputs(model, path)
    _check_activations_fit(inferred, path)
    model = _current_opset(model, path)
    fixed = at_batch_one(_fold_constants(model, path, everything=True), path)
    meta = {p.key: p.value for p in model.metadata_props}
    core, host_tensors, end = _split(fixed, core_input, core_output or meta.get("snc.core_output"), path)
    _refuse(path, _op_problems(fixed, core))
    model = _nearest_as_torch(_fold_constants(model, path), path)
    fixed = _nearest_as_torch(fixed, path)
    module = torch_module(model, str(path))
    ann = OnnxAnn(model, fixed, module, shape, str(path))
    _check_runs(ann, inputs, path)
    if host_tensors or end != fixed.graph.output[0].name:
        ann.core_nodes = core
        ann.host = _host_parts(ann, inputs, core_input, host_tensors, end, path)
    return ann


def _refuse(path: Path, problems: list[str]) -> None:
    if problems:
        raise GraphError(f"{path}: {len(problems)} problem(s) for an ANN-to-SNN conversion: " + "; ".join(problems))


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:500]


def _op_problems(model, core: list[int]) -> list[str]:
    """Every node of the core (``core``: indices) snc cannot convert and attribute it does not map."""
    problems = []
    graph = model.graph
    unknown = [f"{node.name or f'#{i}'} ({node.domain + '.' if node.domain not in ('', 'ai.onnx') else ''}"
               f"{node.op_type})" for i, node in enumerate(graph.node)
               if i in core and (node.op_type not in ANN_OPS or node.domain not in ("", "ai.onnx"))]
    if unknown:
        problems.append(f"{len(unknown)} node(s) of ops snc does not convert: {', '.join(unknown)} (it converts "
                        f"{', '.join(ANN_OPS)})")
    for i, node in enumerate(graph.node):
        if i not in core:
            continue
        attrs = {a.name: a for a in node.attribute}
        name = node.name or f"#{i}"
        if node.op_type in ("Resize", "Upsample") and "mode" in attrs and attrs["mode"].s not in (b"nearest", b""):
            problems.append(f"{name} ({node.op_type}) mode {attrs['mode'].s.decode(errors='replace')!r}: only "
                            "nearest upsampling is converted")
        if node.op_type == "Cast" and attrs.get("to") is not None and attrs["to"].i not in FLOAT_TYPES:
            problems.append(f"{name} (Cast) to a non-float type: only casts to float are converted")
    return problems


def _weight_problems(model) -> list[str]:
    """Every weight stored outside the file, unreadable or not finite."""
    from onnx import numpy_helper

    problems = []
    graph = model.graph
    external = [t.name for t in graph.initializer if t.data_location == 1]  # TensorProto.EXTERNAL
    if external:
        problems.append(f"weights stored outside the file are not read: {', '.join(external)}")
        return problems
    bad = []
    for tensor in graph.initializer:
        try:
            array = numpy_helper.to_array(tensor)
        except Exception as exc:  # noqa: BLE001 - a tensor whose bytes do not match its declared type or shape
            problems.append(f"initializer {tensor.name}: unreadable ({_one_line(exc)})")
            continue
        if array.dtype.kind == "f" and not np.isfinite(array).all():
            bad.append(tensor.name)
    if bad:
        problems.append(f"non-finite (NaN/inf) weights: {', '.join(bad)}")
    return problems


def _inputs(model, path: Path) -> tuple[str, tuple[int, ...], dict[str, dict[str, Any]]]:
    """The image input (the first float input: [batch, *fixed sizes]), its shape without the batch, and every
    input's dtype and shape (the others, a diffusion step say, feed host parts)."""
    from onnx import helper

    weights = {t.name for t in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in weights]
    found: dict[str, dict[str, Any]] = {}
    for value in inputs:
        tensor = value.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else None for d in tensor.shape.dim]
        if not value.type.HasField("tensor_type") or not dims or any(d is None or d < 1 for d in dims[1:]):
            raise GraphError(f"{path}: input {value.name} must be [batch, *fixed sizes], not "
                             f"[{', '.join('?' if d is None else str(d) for d in dims)}]")
        found[value.name] = {"dtype": str(helper.tensor_dtype_to_np_dtype(tensor.elem_type)),
                             "shape": [d if d and d > 0 else None for d in dims]}
    images = [name for name, v in found.items() if np.dtype(v["dtype"]).kind == "f" and len(v["shape"]) >= 2]
    if not images:
        raise GraphError(f"{path}: the ANN takes no float input [batch, ...] (its inputs: "
                         f"{', '.join(found) or 'none'})")
    return images[0], tuple(int(d) for d in found[images[0]]["shape"][1:]), found


def _split(fixed, core_input: str, core_output: Optional[str], path: Path) -> tuple[list[int], list[str], str]:
    """The spiking core (indices of ``fixed``'s nodes): what depends on ``core_input`` and leads to
    ``core_output`` (default: the model's first output); the tensors it reads that neither it nor a constant
    makes (the host's); and the core output."""
    graph = fixed.graph
    outputs = [o.name for o in graph.output]
    end = core_output or outputs[0]
    produced = {out: i for i, node in enumerate(graph.node) for out in node.output}
    if end != core_input and end not in produced:
        raise GraphError(f"{path}: the core output {end!r} is no tensor the model computes")
    reached = {core_input}
    for node in graph.node:  # nodes are in topological order (onnx's checker)
        if any(name in reached for name in node.input):
            reached.update(node.output)
    if end not in reached:
        raise GraphError(f"{path}: the core output {end!r} does not depend on the input {core_input}")
    core: set[int] = set()
    todo = [end]
    while todo:
        name = todo.pop()
        i = produced.get(name)
        if i is None or i in core or name not in reached:
            continue
        core.add(i)
        todo.extend(graph.node[i].input)
    constants = {t.name for t in graph.initializer}
    made = {out for i in core for out in graph.node[i].output}
    host = sorted({name for i in core for name in graph.node[i].input
                   if name and name not in made and name not in constants and name != core_input})
    return sorted(core), host, end


def _host_parts(ann: OnnxAnn, inputs: dict[str, dict[str, Any]], core_input: str, host_tensors: list[str],
                end: str, path: Path) -> HostParts:
    """Head and tail cut from the model (for any batch), with the batch axis of every tensor that crosses
    between host and core (found by running the model at batch 1 and 2)."""
    import onnx

    output = ann.model.graph.output[0].name
    names = list(inputs)
    ranks = {name: len(shape) for name, shape in _full_shapes(ann.fixed, [end, output, *host_tensors]).items()}
    head = _cut(ann.model, names, host_tensors, ranks, path) if host_tensors else None
    tail = _cut(ann.model, [end, *names], [output], ranks, path) if end != output else None
    static = inputs[core_input]["shape"][0]
    crossing = [*host_tensors, end]
    probe = copy.deepcopy(ann.model)
    del probe.graph.output[:]
    probe.graph.output.extend(onnx.helper.make_empty_tensor_value_info(n) for n in crossing)
    module = torch_module(probe, str(path))
    shapes = []
    for batch in ([static] if static else [1, 2]):
        with torch.no_grad():
            outs = module(*example_inputs(inputs, batch))
        shapes.append([list((outs if isinstance(outs, (tuple, list)) else [outs])[i].shape)
                       for i in range(len(crossing))])
    axes = {}
    for i, name in enumerate(crossing):
        if static:
            axes[name] = 0 if len(shapes[0][i]) else -1
            continue
        differ = [a for a, (one, two) in enumerate(zip(shapes[0][i], shapes[1][i])) if one != two]
        axes[name] = differ[0] if differ else -1  # -1: the same for every example
    full = _full_shapes(ann.fixed, [*crossing, *_adds_of(ann.fixed, host_tensors)])
    return HostParts(inputs, core_input, end, output, host_tensors,
                     head.SerializeToString() if head else None, tail.SerializeToString() if tail else None,
                     full, axes, static)


def _cut(model, inputs: list[str], outputs: list[str], ranks: dict[str, int], path: Path):
    """The part of ``model`` that computes ``outputs`` from ``inputs`` (graph inputs or float tensors of the
    model) and constants, as a model of its own. (onnx's Extractor needs a shape for every cut tensor, which a
    dynamic batch leaves unknown.)"""
    import onnx
    from onnx import helper

    graph = model.graph
    produced = {out: node for node in graph.node for out in node.output}
    given = set(inputs)
    needed, todo = set(), list(outputs)
    while todo:
        name = todo.pop()
        node = produced.get(name)
        if name in given or node is None or id(node) in needed:
            continue
        needed.add(id(node))
        todo.extend(n for n in node.input if n)
    nodes = [node for node in graph.node if id(node) in needed]
    used = {n for node in nodes for n in node.input} | set(outputs)
    declared = {v.name: v for v in graph.input}
    values = [declared[n] if n in declared else helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT,
                                                                              [None] * ranks[n]) for n in inputs]
    part = helper.make_model(
        helper.make_graph(nodes, f"{graph.name}-part", values,
                          [helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, [None] * ranks[n]) for n in outputs],
                          [t for t in graph.initializer if t.name in used]),
        opset_imports=model.opset_import, ir_version=model.ir_version)
    try:
        onnx.checker.check_model(part)
    except Exception as exc:  # noqa: BLE001 - a part that reads a tensor neither given nor computed
        raise GraphError(f"{path}: the host part computing {', '.join(outputs)} cannot be cut from the model: "
                         f"{_one_line(exc)}") from None
    return part


def _adds_of(model, tensors: list[str]) -> list[str]:
    """The outputs of the nodes that read ``tensors`` (the Adds host currents enter)."""
    return [node.output[0] for node in model.graph.node if any(n in tensors for n in node.input)]


def _full_shapes(model, names: list[str]) -> dict[str, list[int]]:
    import onnx

    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    found = {}
    for value in [*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output]:
        if value.name in names:
            found[value.name] = [d.dim_value for d in value.type.tensor_type.shape.dim]
    return found


def example_inputs(inputs: dict[str, dict[str, Any]], batch: int) -> list[torch.Tensor]:
    """Zeros of every input's dtype and shape at ``batch``."""
    return [torch.zeros((batch, *v["shape"][1:]), dtype=getattr(torch, np.dtype(v["dtype"]).name))
            for v in inputs.values()]


def _check_activations_fit(inferred, path: Path) -> None:
    """Refuse, before anything runs, an ANN whose activations for one call (every tensor shape inference
    knows, float32; at the batch the file declares, else 1) exceed the memory available: the checks run the
    model at its declared batch."""
    values = [*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output]
    total = 0
    for value in values:
        dims = [d.dim_value if d.HasField("dim_value") else 1 for d in value.type.tensor_type.shape.dim]
        total += int(np.prod([max(d, 1) for d in dims], dtype=object)) if dims else 1
    need = total * 4 / 2**20
    available = available_mb()
    if available is not None and need > available:
        raise GraphError(f"{path}: the activations of one call at the declared input shapes need about "
                         f"{need / 1024:.1f} GB, {max(available, 0) / 1024:.1f} GB is available")


def at_batch_one(model, path: Path):
    """A copy of ``model`` at batch 1 in which every tensor computable from constants and static shapes is an
    initializer: its inputs and outputs get batch 1 (a file exported at another fixed batch whose shapes do not
    follow is refused); then, until nothing changes, every Shape node whose input's
    whole shape inference knows becomes a constant and ``_fold_constants(everything=True)`` folds what follows
    (a Reshape whose shape was computed has a known output only once that shape is folded)."""
    import onnx
    from onnx import numpy_helper

    model = copy.deepcopy(model)
    weights = {t.name for t in model.graph.initializer}
    for value in [*model.graph.input, *model.graph.output]:
        dims = value.type.tensor_type.shape.dim
        if value.name not in weights and dims:
            dims[0].Clear()
            dims[0].dim_value = 1
    while True:
        del model.graph.value_info[:]
        try:
            inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True, data_prop=True)
        except Exception as exc:  # noqa: BLE001 - onnx's InferenceError, and C++ errors as others
            raise GraphError(f"{path}: the model at batch 1 is invalid: {_one_line(exc)}") from None
        shapes = {}
        for value in [*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output]:
            dims = value.type.tensor_type.shape.dim
            if value.type.tensor_type.HasField("shape") and all(d.HasField("dim_value") for d in dims):
                shapes[value.name] = [d.dim_value for d in dims]
        keep = []
        for node in model.graph.node:
            if node.op_type == "Shape" and node.input[0] in shapes:
                attrs = {a.name: a.i for a in node.attribute}
                shape = shapes[node.input[0]]
                value = np.array(shape[attrs.get("start", 0):attrs.get("end", len(shape))], dtype=np.int64)
                model.graph.initializer.append(numpy_helper.from_array(value, node.output[0]))
            else:
                keep.append(node)
        if len(keep) == len(model.graph.node):
            return model
        del model.graph.node[:]
        model.graph.node.extend(keep)
        model = _fold_constants(model, path, everything=True)


def _fold_constants(model, path: Path, everything: bool = False):
    """A copy of ``model`` in which every node computed from constants alone (Constant nodes, and a Cast or
    Reshape of them; with ``everything``, any op) is an initializer, computed by onnx's own reference
    evaluator: onnx2torch takes a Clip's bounds, a Reshape's shape or a Resize's scales only from initializers,
    and torch writes them as Constant nodes (and Casts of them) when it does not fold constants itself."""
    from onnx import helper, numpy_helper
    from onnx.reference import ReferenceEvaluator

    model = copy.deepcopy(model)
    known = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    keep = []
    for node in model.graph.node:
        foldable = node.op_type in ANN_OPS or (everything and node.op_type not in RANDOM_OPS)
        if not foldable or not all(name in known for name in node.input if name):
            keep.append(node)
            continue
        inputs = [name for name in node.input if name]
        single = helper.make_model(
            helper.make_graph([node], "fold", [helper.make_tensor_value_info(name, helper.np_dtype_to_tensor_dtype(
                known[name].dtype), known[name].shape) for name in inputs],
                [helper.make_empty_tensor_value_info(name) for name in node.output]),
            opset_imports=model.opset_import)
        try:
            values = ReferenceEvaluator(single).run(None, {name: known[name] for name in inputs})
        except Exception as exc:  # noqa: BLE001 - the evaluator's error for a malformed constant node
            raise GraphError(f"{path}: constant node {node.name or node.op_type} cannot be evaluated: {_one_line(exc)}") \
                from None
        for name, value in zip(node.output, values):
            known[name] = np.asarray(value)
            model.graph.initializer.append(numpy_helper.from_array(np.asarray(value), name))
    del model.graph.node[:]
    model.graph.node.extend(keep)
    return model


def _current_opset(model, path: Path):
    """Models of opsets before 11 (Upsample, Resize v10) are brought to 13 by onnx's own version converter:
    onnx2torch has no Upsample."""
    from onnx import version_converter

    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    if opset >= 11:
        return model
    try:
        return version_converter.convert_version(model, 13)
    except Exception as exc:  # noqa: BLE001 - the converter's errors for what it cannot adapt
        raise GraphError(f"{path}: opset {opset} cannot be brought to 13 by onnx's version converter: "
                         f"{_one_line(exc)}") from None


def _nearest_as_torch(model, path: Path):
    """Every Resize must be nearest upsampling by whole factors as torch does it (``asymmetric`` coordinates,
    ``floor``). With ``half_pixel`` coordinates, whole factors and a rounding nearest mode the same pixels are
    picked (the source coordinate is within 0.5 - 0.5 / factor of the pixel's centre, so it rounds to it),
    so those are rewritten to torch's attributes; anything else is refused, naming the nodes."""
    from onnx import helper, numpy_helper

    constants = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    problems = []
    for i, node in enumerate(model.graph.node):
        if node.op_type != "Resize":
            continue
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        coordinates = attrs.get("coordinate_transformation_mode", b"half_pixel").decode(errors="replace")
        rounding = attrs.get("nearest_mode", b"round_prefer_floor").decode(errors="replace")
        scales = constants.get(node.input[2]) if len(node.input) > 2 and node.input[2] else None
        whole = scales is not None and scales.size >= 2 and np.all(scales >= 1) and np.all(scales == np.round(scales)) \
            and np.all(scales[:2] == 1)
        if (coordinates, rounding) == ("asymmetric", "floor") and whole:
            continue
        if coordinates in ("half_pixel", "pytorch_half_pixel") and rounding.startswith("round") and whole:
            del node.attribute[:]
            node.attribute.extend([helper.make_attribute("mode", "nearest"),
                                   helper.make_attribute("coordinate_transformation_mode", "asymmetric"),
                                   helper.make_attribute("nearest_mode", "floor")])
            continue
        problems.append(f"{node.name or f'#{i}'} (Resize: {coordinates} coordinates, {rounding}, scales "
                        f"{'given as sizes' if scales is None else scales.tolist()})")
    if problems:
        raise GraphError(f"{path}: snc converts Resize as nearest upsampling of the image by whole factors "
                         f"(torch's); not: {', '.join(problems)}")
    return model


def torch_module(model, source: str) -> torch.fx.GraphModule:
    """onnx2torch's module of ``model`` (float32, eval mode); refused where it converts only approximately."""
    from onnx2torch import convert

    try:
        with warnings.catch_warnings(record=True) as said:
            warnings.simplefilter("always")
            module = convert(model)
    except Exception as exc:  # noqa: BLE001 - onnx2torch raises NotImplementedError, KeyError, ...
        raise GraphError(f"{source}: onnx2torch cannot convert it: {_one_line(exc)}") from None
    approximate = sorted({" ".join(str(w.message).split()) for w in said if issubclass(w.category, UserWarning)})
    if approximate:  # onnx2torch warns where its torch module may differ from the ONNX op
        raise GraphError(f"{source}: onnx2torch converts it only approximately: {'; '.join(approximate)}")
    return module.float().eval()


def _check_runs(ann: OnnxAnn, inputs: dict[str, dict[str, Any]], path: Path) -> None:
    """One call on zeros: shapes that the checks could not see (a Reshape to an impossible size) fail here."""
    try:
        with torch.no_grad():
            out = ann.module(*example_inputs(inputs, inputs[next(iter(inputs))]["shape"][0] or 1))
    except Exception as exc:  # noqa: BLE001 - any op's shape error
        declared = ", ".join(f"{name} {value['shape']}" for name, value in inputs.items())
        raise GraphError(f"{path}: the ANN does not run on its declared inputs ({declared}): {_one_line(exc)}") \
            from None
    if isinstance(out, (tuple, list)):
        out = out[0]  # an ANN may also give its core output (the file names it in snc.core_output)
    if not isinstance(out, torch.Tensor):
        raise GraphError(f"{path}: the ANN's output is not a tensor")
