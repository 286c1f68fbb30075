"""ANN-to-SNN conversion (SDM section VI, after Fast-SNN): a ReLU ANN read from ONNX becomes a NIR graph of IF
neurons that reset by subtraction, whose spike counts are the quantized ANN's integer activations.

Quantization (eq. 21): every activation (Relu, or Clip from 0) is replaced by
``Q = s/T * clip(floor(T * x / s + 1/2), 0, T)`` with ``T = 2^b - 1`` steps and a clipping threshold ``s`` per
activation (``calibrate``): a Clip's ceiling is the model's own (learned, as QCFS training does:
``models/relu_cnn.py``'s ``QuantizedReLU`` exports as one); a ReLU's is a percentile of its positive values on
example inputs. ``quantized_model`` writes that ANN as ONNX (Mul, Add, Floor, Clip), for onnxruntime or
onnx2torch to run: the quantized ANN the SNN is measured against.

Conversion (eqs. 22-24): each activation becomes an ``snc.SubtractiveIF`` population with threshold ``s`` and
membrane ``s/2`` at the start of every call (floor becomes round), so that over T steps of a constant current
I it fires ``clip(round(T * I / s), 0, T)`` times: the quantized activation, exactly, in the first layer
(deeper layers see spike trains, not constant currents: their agreement is measured, not promised). A spike
of that population is worth ``s``: the weights of every layer it feeds are multiplied by ``s`` (eq. 24).
The ANN's input enters the first layers as a current every step (its MACs are host work); the output, when
not an activation, is read through an integrator (``nir.I`` with ``r = 1 / (T dt)``) whose value after the
last step is the mean over the call: the quantized ANN's output.

How the graph is built: every tensor of the ANN is a ``Value``, a sum of ``Term``s (a NIR node's output, the
factor its spikes are worth, and which rows of the tensor's first axis it covers). A linear op (Conv, Gemm,
MatMul, the pools, Resize, Flatten) makes one NIR node per term, weights sliced to the rows the term covers
and scaled by its factor, and NIR sums their outputs where they meet; so residual Adds are more edges and a
channel Concat followed by a conv is the conv's weights split by input channel (the U-Net's skips).
BatchNormalization is folded into the conv before it; an Add of a constant into the bias of the layer before
it. Whatever else the conversion cannot map is listed in one error.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Union

import nir
import numpy as np
import torch

from snc.errors import GraphError

from .frontends.onnx_ann import OnnxAnn, torch_module
from .nir_io import NIR_DT, NearestUpsample2d, SubtractiveIF
from .nir_reference import NIRReference

ACTIVATIONS = ("Relu", "Clip")
PASS_THROUGH = ("Identity", "Cast", "Dropout")
MAX_BITS = 8  # T = 255 steps per call
DEFAULT_PERCENTILE = 99.9


def steps_of(bits: int) -> int:
    """T = 2^b - 1 spiking steps per call for b bits (eq. 21's number of quantized levels)."""
    if not 1 <= bits <= MAX_BITS:
        raise GraphError(f"--bits must be in 1..{MAX_BITS} (T = 2^bits - 1 steps per call), not {bits}")
    return 2 ** bits - 1


# --- quantization (eq. 21) -----------------------------------------------------------------------------------

def _constants(model) -> dict[str, np.ndarray]:
    from onnx import numpy_helper

    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}


def _attrs(node) -> dict[str, Any]:
    from onnx import helper

    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def activations(model) -> dict[str, Optional[float]]:
    """Output tensor -> ceiling (a Clip's max, else None) of every activation, in graph order; refuses a Clip
    whose floor is not 0 (eq. 21 quantizes a ReLU)."""
    consts = _constants(model)
    found: dict[str, Optional[float]] = {}
    problems = []
    for i, node in enumerate(model.graph.node):
        if node.op_type not in ACTIVATIONS:
            continue
        ceiling = None
        if node.op_type == "Clip":
            bounds = [float(consts[n]) if n in consts else None for n in list(node.input[1:3]) + [""] * 2][:2]
            floor, ceiling = bounds
            if floor != 0:
                problems.append(f"{node.name or f'#{i}'} (Clip from {floor}): only a ReLU's floor 0 is quantized")
            if ceiling is not None and not ceiling > 0:
                problems.append(f"{node.name or f'#{i}'} (Clip to {ceiling}): the ceiling must be positive")
        found[node.output[0]] = ceiling
    if problems:
        raise GraphError("; ".join(problems))
    if not found:
        raise GraphError("the ANN has no ReLU (or Clip from 0): nothing becomes a spiking neuron")
    return found


def example_data(ann: OnnxAnn, data: Union[np.ndarray, dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Example inputs by input name, checked: an array is the image input's ([N, *input_shape]); a model with more
    inputs (a diffusion step) takes a mapping of every input to N examples."""
    names = ann.input_names
    if not isinstance(data, dict):
        if len(names) != 1:
            raise GraphError(f"the ANN takes {', '.join(names)}: give examples of each (an .npz of arrays by input "
                             "name)")
        data = {names[0]: data}
    missing, unknown = [n for n in names if n not in data], [n for n in data if n not in names]
    if missing or unknown:
        raise GraphError(f"examples must give the ANN's inputs {', '.join(names)}"
                         + (f"; missing {', '.join(missing)}" if missing else "")
                         + (f"; not inputs: {', '.join(unknown)}" if unknown else ""))
    declared = {i.name: i for i in ann.model.graph.input}
    found, sizes = {}, set()
    for name in names:
        array = np.asarray(data[name])
        tensor = declared[name].type.tensor_type
        dims = [d.dim_value for d in tensor.shape.dim][1:]
        from onnx import helper
        dtype = helper.tensor_dtype_to_np_dtype(tensor.elem_type)
        if array.ndim != len(dims) + 1 or list(array.shape[1:]) != dims or len(array) == 0 or \
                array.dtype.kind not in "biuf" or (dtype.kind in "iu" and array.dtype.kind == "f"):
            raise GraphError(f"examples of {name} must be [N, {', '.join(map(str, dims))}] {dtype.name} values, not "
                             f"{list(array.shape)} {array.dtype}")
        if array.dtype.kind == "f" and not np.isfinite(array).all():
            raise GraphError(f"examples of {name} hold NaN or inf")
        found[name] = array.astype(dtype)
        sizes.add(len(array))
    if len(sizes) != 1:
        raise GraphError(f"the examples of {', '.join(names)} differ in number: {sorted(sizes)}")
    return found


def calibrate(ann: OnnxAnn, data: Union[np.ndarray, dict[str, np.ndarray]], percentile: float = DEFAULT_PERCENTILE,
              batch: int = 256) -> dict[str, float]:
    """The clipping threshold s of every activation: a Clip's ceiling (the model's own threshold, e.g.
    learned by QCFS training), else the ``percentile`` of the ReLU's positive values over ``data``
    (``example_data``; 1 for a ReLU that never fires there)."""
    import onnx

    if not 0 < percentile <= 100:
        raise GraphError(f"--percentile must be in (0, 100], not {percentile}")
    data = example_data(ann, data)
    ceilings = activations(ann.model)
    probe = copy.deepcopy(ann.model)
    del probe.graph.output[:]
    probe.graph.output.extend(onnx.helper.make_empty_tensor_value_info(name) for name in ceilings)
    module = torch_module(probe, ann.source)
    values: dict[str, list[np.ndarray]] = {name: [] for name in ceilings}
    count = len(next(iter(data.values())))
    with torch.no_grad():
        for start in range(0, count, batch):
            outs = module(*ann.examples({k: v[start:start + batch] for k, v in data.items()}))
            outs = outs if isinstance(outs, (tuple, list)) else (outs,)
            for name, out in zip(ceilings, outs):
                positive = out.numpy().reshape(-1)
                values[name].append(positive[positive > 0])
    thresholds = {}
    for name, ceiling in ceilings.items():
        seen = np.concatenate(values[name])
        thresholds[name] = ceiling if ceiling is not None else \
            float(np.percentile(seen, percentile)) if seen.size else 1.0
    return thresholds


def quantized_model(model, thresholds: dict[str, float], bits: int):
    """A copy of ``model`` whose activations are eq. 21's quantizers (Mul, Add, Floor, Clip, Mul in ONNX)."""
    from onnx import helper, numpy_helper

    T = steps_of(bits)
    q = copy.deepcopy(model)
    nodes = []
    for node in q.graph.node:
        if node.output[0] not in thresholds:
            nodes.append(node)
            continue
        s, x, y = thresholds[node.output[0]], node.input[0], node.output[0]
        k = f"{y}/q"
        q.graph.initializer.extend([numpy_helper.from_array(np.array(v, np.float32), f"{k}/{n}") for n, v in
                                    (("in", T / s), ("half", 0.5), ("zero", 0.0), ("top", float(T)), ("out", s / T))])
        nodes += [helper.make_node("Mul", [x, f"{k}/in"], [f"{k}/scaled"], name=f"{k}/scale"),
                  helper.make_node("Add", [f"{k}/scaled", f"{k}/half"], [f"{k}/shifted"], name=f"{k}/shift"),
                  helper.make_node("Floor", [f"{k}/shifted"], [f"{k}/level"], name=f"{k}/floor"),
                  helper.make_node("Clip", [f"{k}/level", f"{k}/zero", f"{k}/top"], [f"{k}/clipped"], name=f"{k}/clip"),
                  helper.make_node("Mul", [f"{k}/clipped", f"{k}/out"], [y], name=f"{k}/value")]
    del q.graph.node[:]
    q.graph.node.extend(nodes)
    return q


def ann_macs(model) -> dict[str, int]:
    """Multiply-accumulates of one example per Conv, Gemm and MatMul node (the layers the papers' energy model
    counts; pools, adds and resizes are left out, as there)."""
    shapes, _ = _shapes(model)
    consts = _constants(model)
    macs = {}
    for i, node in enumerate(model.graph.node):
        name = node.name or f"{node.op_type}_{i}"
        if node.op_type == "Conv":
            w = consts[node.input[1]]
            macs[name] = int(np.prod(shapes[node.output[0]])) * int(np.prod(w.shape[1:]))
        elif node.op_type in ("Gemm", "MatMul"):
            macs[name] = int(np.prod(shapes[node.output[0]])) * int(shapes[node.input[0]][-1])
    return macs


# --- conversion (eqs. 22-24) -----------------------------------------------------------------------------------

@dataclass
class Term:
    node: str  # the NIR node whose output this is
    factor: float  # what one unit of its output is worth (s for the spikes of an activation)
    start: int  # the rows of the value's first axis it covers
    stop: int


@dataclass
class Value:
    shape: tuple[int, ...]  # without the batch
    terms: list[Term]
    made: list[str] = field(default_factory=list)  # the nodes a linear op just made (a BatchNorm / bias folds in)


class _Builder:
    def __init__(self, model, thresholds: dict[str, float], bits: int, dt: float) -> None:
        self.model, self.thresholds, self.T, self.dt = model, thresholds, steps_of(bits), dt
        self.consts = _constants(model)
        self.shapes, self.ranks = _shapes(model)
        self.nodes: dict[str, nir.NIRNode] = {}
        self.edges: list[tuple[str, str]] = []
        self.values: dict[str, Value] = {}
        self.problems: list[str] = []
        self.users = _users(model)
        self.host: set[str] = set()  # tensors the host computes (HostParts.host_tensors)
        self.host_inputs: dict[str, dict[str, str]] = {}  # Input node -> the host tensor and the sum it enters

    def add(self, name: str, node: nir.NIRNode, inputs: list[str]) -> str:
        key = name.replace("/", ".").strip(".") or "node"
        while key in self.nodes:
            key += "_"
        self.nodes[key] = node
        self.edges += [(i, key) for i in inputs]
        return key

    def per_term(self, name: str, value: Value, make: Callable[[Term, int], nir.NIRNode],
                 out_rows: Callable[[Term], tuple[int, int]], shape: tuple[int, ...], weighted: bool) -> Value:
        """One node per term (``make(term, index)``); the new terms cover ``out_rows(term)``. A ``weighted``
        op took each term's factor into its weights; any other (a pool, a resize) passes it on."""
        terms = []
        for i, term in enumerate(value.terms):
            node = self.add(f"{name}.{i}" if len(value.terms) > 1 else name, make(term, i), [term.node])
            terms.append(Term(node, 1.0 if weighted else term.factor, *out_rows(term)))
        return Value(shape, terms, [t.node for t in terms] if weighted else [])

    def into_one(self, name: str, value: Value, node: nir.NIRNode) -> str:
        """``node`` fed by the whole value: each term's factor through an nir.Scale where it is not 1."""
        target = self.add(name, node, [])
        for term in value.terms:
            if (term.start, term.stop) != (0, value.shape[0]):
                raise _Refused("a Concat that feeds an activation or the output directly (snc splits a concat "
                               "into the weights of the layer it feeds)")
            source = term.node
            if term.factor != 1.0:
                source = self.add(f"{term.node}.worth", nir.Scale(np.full(value.shape, term.factor)), [term.node])
            self.edges.append((source, target))
        return target


class _Refused(Exception):
    pass


def canonical(shape: tuple[int, ...]) -> tuple[int, ...]:
    """A tensor's shape at batch 1 as the conversion sees it: without the batch, and without further leading unit
    axes beyond three (a [T = 1, B, C, H, W] layout, as snc's own ANN twins write, is the image's C, H, W)."""
    shape = tuple(shape[1:])
    while len(shape) > 3 and shape[0] == 1:
        shape = shape[1:]
    return shape


def _value_axis(b: "_Builder", tensor: str, axis: int, value: "Value") -> int:
    """The axis of ``value`` (canonical) that ONNX's ``axis`` of the batch-1 tensor ``tensor`` is."""
    rank = b.ranks[tensor]
    return (axis % rank) - (rank - len(value.shape))


def _shapes(model) -> tuple[dict[str, tuple[int, ...]], dict[str, int]]:
    """Every tensor's canonical shape and its rank at batch 1 (onnx's shape inference at batch 1)."""
    import onnx

    m = copy.deepcopy(model)
    for value in [*m.graph.input, *m.graph.output]:
        dims = value.type.tensor_type.shape.dim
        if dims:
            dims[0].Clear()
            dims[0].dim_value = 1
    del m.graph.value_info[:]
    m = onnx.shape_inference.infer_shapes(m, strict_mode=True)
    found, ranks = {}, {}
    for value in [*m.graph.input, *m.graph.value_info, *m.graph.output]:
        dims = [d.dim_value for d in value.type.tensor_type.shape.dim]
        if dims:
            found[value.name] = canonical(tuple(int(d) for d in dims))
            ranks[value.name] = len(dims)
    return found, ranks


def _users(model) -> dict[str, int]:
    count: dict[str, int] = {}
    for node in model.graph.node:
        for name in node.input:
            count[name] = count.get(name, 0) + 1
    for out in model.graph.output:
        count[out.name] = count.get(out.name, 0) + 1
    return count


def _pads(attrs: dict, node_name: str, spatial: int = 2) -> tuple[int, ...]:
    if attrs.get("auto_pad", b"NOTSET") not in (b"NOTSET", b"VALID"):
        raise _Refused(f"auto_pad {attrs['auto_pad'].decode()} (give explicit pads)")
    pads = list(attrs.get("pads", [0] * 2 * spatial))
    if pads[:spatial] != pads[spatial:]:
        raise _Refused(f"asymmetric pads {pads} (NIR's convolutions pad both sides alike)")
    return tuple(int(p) for p in pads[:spatial])


def convert(ann: OnnxAnn, thresholds: dict[str, float], bits: int, dt: float = NIR_DT) -> nir.NIRGraph:
    """The SNN of ``ann`` quantized at ``bits`` with ``thresholds`` (``calibrate``): a NIR graph of T = 2^b - 1
    steps per call (metadata ``snc.timestep``, ``snc.dt``)."""
    b = _Builder(ann.fixed, thresholds, bits, dt)
    graph_input = ann.host.core_input if ann.host else next(i.name for i in ann.fixed.graph.input
                                                             if i.name not in b.consts)
    b.host = set(ann.host.host_tensors) if ann.host else set()
    entry = b.add("input", nir.Input(input_type={"input": np.array(ann.input_shape)}), [])
    b.values[graph_input] = Value(ann.input_shape, [Term(entry, 1.0, 0, ann.input_shape[0])])
    handlers = {"Conv": _conv, "Gemm": _gemm, "MatMul": _matmul, "BatchNormalization": _batchnorm, "Add": _add,
                "Concat": _concat, "Resize": _resize, "Upsample": _resize, "AveragePool": _avgpool,
                "GlobalAveragePool": _global_avgpool, "Flatten": _view, "Reshape": _view, "Unsqueeze": _view,
                "Squeeze": _view, "Tile": _view, "Expand": _view, "Gather": _view, "Slice": _view, "Relu": _activation, "Clip": _activation}
    for i, node in enumerate(ann.fixed.graph.node):
        if ann.core_nodes is not None and i not in ann.core_nodes:
            continue  # a host part
        name = node.name or f"{node.op_type}_{i}"
        try:
            if node.op_type in PASS_THROUGH:
                b.values[node.output[0]] = b.values[node.input[0]]
            elif node.op_type in handlers:
                b.values[node.output[0]] = handlers[node.op_type](b, node, name)
            else:
                raise _Refused("not an op the conversion maps")
        except _Refused as exc:
            b.problems.append(f"{name} ({node.op_type}): {exc}")
        except KeyError as exc:  # an input that an earlier refused node should have made
            if exc.args and exc.args[0] in b.host:
                b.problems.append(f"{name} ({node.op_type}): reads the host-computed {exc.args[0]} (host tensors "
                                  "enter the core only added to it, as currents)")
            elif not b.problems:
                b.problems.append(f"{name} ({node.op_type}): input {exc} is neither a constant nor computed")
    if b.problems:
        raise GraphError(f"{ann.source}: the conversion cannot map {len(b.problems)} node(s): "
                         + "; ".join(b.problems))
    out_name = ann.host.core_output if ann.host else ann.fixed.graph.output[0].name
    result = b.values[out_name]
    spikes_out = len(result.terms) == 1 and result.terms[0].node in b.nodes and \
        isinstance(b.nodes[result.terms[0].node], SubtractiveIF)
    if spikes_out:
        source = result.terms[0].node
    else:  # a linear output: its mean over the call, integrated on the host (eq. 24's average)
        source = b.into_one("readout", result, nir.I(r=np.full(result.shape, 1.0 / (b.T * dt))))
    b.add("output", nir.Output(output_type={"output": np.array(result.shape)}), [source])
    meta = {"snc.dt": dt, "snc.timestep": b.T, "snc.conversion": f"ANN-to-SNN at {bits} bits (T = {b.T}) of "
            f"{ann.source}", "snc.output": "spike counts" if spikes_out else "mean of the linear output"}
    if ann.host is not None:
        meta.update(host_metadata(ann, b.host_inputs))
    return nir.NIRGraph(nodes=b.nodes, edges=b.edges, metadata=meta)


def readout(graph: nir.NIRGraph, run: dict[str, torch.Tensor]) -> torch.Tensor:
    """The converted SNN's output [B, ...] from its run (``NIRReference.run``): the integrator's value after the
    last step (the linear output's mean over the call), or, for a graph whose output is the last activation's
    spikes (metadata ``snc.output``), their count times what a spike is worth (the threshold s) over T."""
    out = run["output"]
    if graph.metadata.get("snc.output") != "spike counts":
        return out[-1]
    last = next(a for a, b in graph.edges if b == "output")
    worth = torch.as_tensor(np.asarray(graph.nodes[last].v_threshold), dtype=out.dtype)
    return out.sum(0) * worth / len(out)


def snn_forward(graph: nir.NIRGraph, core: Optional[NIRReference] = None, dtype: torch.dtype = torch.float64
                ) -> Callable[..., tuple[torch.Tensor, dict[str, torch.Tensor]]]:
    """``f(inputs, record=False) -> (output, run)``: the converted SNN on the model's inputs (the image first,
    then a diffusion step for a model with host parts, which run around the core in ``dtype``); ``core``: the
    executor of the graph (default: the graph as it is)."""
    from .frontends import onnx_host

    core = core or NIRReference(graph)
    if onnx_host.has_host(graph):
        model = onnx_host.program(graph).model.to(dtype)

        def with_host(inputs: list[torch.Tensor], record: bool = False) -> tuple[torch.Tensor, dict]:
            x, *rest = inputs
            t = rest[0] if rest else torch.zeros(len(x), dtype=torch.long)
            return model.run(x.to(dtype), t, record=record, core=core)
        return with_host
    steps = int(np.asarray(graph.metadata["snc.timestep"]).item())

    def bare(inputs: list[torch.Tensor], record: bool = False) -> tuple[torch.Tensor, dict]:
        x = inputs[0].to(dtype)
        run = core.run({"input": x.unsqueeze(0).expand(steps, *x.shape)}, record=record)
        return readout(graph, run), run
    return bare


def host_metadata(ann: OnnxAnn, host_inputs: dict[str, dict[str, str]]) -> dict[str, Any]:
    """What the host program of a converted ANN with host parts needs, as graph metadata (so that the NIR file
    and a build's graph.nir carry it): the cut (``HostParts``) and the graph input fed by each host tensor as
    JSON, the head and tail ONNX models as bytes, the diffusion steps (the file's ``snc.diffusion_steps``)."""
    meta = {p.key: p.value for p in ann.model.metadata_props}
    info = ann.host.as_meta() | {"host_inputs": host_inputs, "source": ann.source}
    found = {"snc.host": json.dumps(info)}
    for part in ("head", "tail"):
        blob = getattr(ann.host, part)
        if blob is not None:
            found[f"snc.host.{part}"] = np.frombuffer(blob, dtype=np.uint8).copy()
    if "snc.diffusion_steps" in meta:
        found["snc.diffusion_steps"] = int(meta["snc.diffusion_steps"])
    return found


# --- the ops ---------------------------------------------------------------------------------------------------

def _const(b: _Builder, name: str, what: str) -> np.ndarray:
    if name not in b.consts:
        raise _Refused(f"its {what} must be a constant (an initializer)")
    return b.consts[name].astype(np.float64)


def _conv(b: _Builder, node, name: str) -> Value:
    x, attrs = b.values[node.input[0]], _attrs(node)
    w = _const(b, node.input[1], "weight")
    bias = _const(b, node.input[2], "bias") if len(node.input) > 2 and node.input[2] else np.zeros(w.shape[0])
    if w.ndim != 4:
        raise _Refused(f"a {w.ndim - 2}-d convolution (snc converts 2-d ones)")
    groups = int(attrs.get("group", 1))
    stride = tuple(int(v) for v in attrs.get("strides", (1, 1)))
    dilation = tuple(int(v) for v in attrs.get("dilations", (1, 1)))
    padding = _pads(attrs, name)
    if groups != 1 and any((t.start, t.stop) != (0, x.shape[0]) for t in x.terms):
        raise _Refused("a grouped convolution of a concatenation")
    out = b.shapes[node.output[0]]

    def make(term: Term, i: int) -> nir.NIRNode:
        weight = w if groups != 1 else w[:, term.start:term.stop]
        return nir.Conv2d(input_shape=x.shape[1:], weight=weight * term.factor, stride=stride, padding=padding,
                          dilation=dilation, groups=groups, bias=bias if i == 0 else np.zeros_like(bias))

    return b.per_term(name, x, make, lambda t: (0, out[0]), out, weighted=True)


def _affine(b: _Builder, name: str, x: Value, weight: np.ndarray, bias: np.ndarray) -> Value:
    if len(x.shape) != 1:
        raise _Refused(f"an input of shape {list(x.shape)} (flatten it first)")

    def make(term: Term, i: int) -> nir.NIRNode:
        return nir.Affine(weight=weight[:, term.start:term.stop] * term.factor,
                          bias=bias if i == 0 else np.zeros_like(bias))

    return b.per_term(name, x, make, lambda t: (0, weight.shape[0]), (weight.shape[0],), weighted=True)


def _gemm(b: _Builder, node, name: str) -> Value:
    attrs = _attrs(node)
    if attrs.get("transA", 0):
        raise _Refused("transA (the input must be the left operand as is)")
    w = _const(b, node.input[1], "weight") * float(attrs.get("alpha", 1.0))
    w = w if attrs.get("transB", 0) else w.T
    bias = np.zeros(w.shape[0])
    if len(node.input) > 2 and node.input[2]:
        c = _const(b, node.input[2], "bias") * float(attrs.get("beta", 1.0))
        bias = np.broadcast_to(c.reshape(-1) if c.size == w.shape[0] else c, (w.shape[0],)).astype(np.float64)
    return _affine(b, name, b.values[node.input[0]], w, bias)


def _matmul(b: _Builder, node, name: str) -> Value:
    w = _const(b, node.input[1], "right operand")
    if w.ndim != 2:
        raise _Refused("a right operand that is not a matrix")
    return _affine(b, name, b.values[node.input[0]], w.T, np.zeros(w.shape[1]))


def _fold_into_made(b: _Builder, value: Value, weight_scale: Optional[np.ndarray], shift: np.ndarray) -> None:
    """y = weight_scale * y + shift per output channel, folded into the nodes that just made ``value``."""
    for i, key in enumerate(value.made):
        node = b.nodes[key]
        if weight_scale is not None:
            node.weight = node.weight * weight_scale.reshape((-1,) + (1,) * (node.weight.ndim - 1))
            node.bias = node.bias * weight_scale
        if i == 0:
            node.bias = node.bias + shift


def _foldable(b: _Builder, tensor: str, value: Value) -> bool:
    """``value`` (the tensor ``tensor``) was just made by convs or affine layers and feeds one node only."""
    return bool(value.made) and b.users.get(tensor, 0) == 1 and \
        all(isinstance(b.nodes[k], (nir.Conv2d, nir.Affine)) for k in value.made)


def _batchnorm(b: _Builder, node, name: str) -> Value:
    x = b.values[node.input[0]]
    if not _foldable(b, node.input[0], x) or not isinstance(b.nodes[x.made[0]], nir.Conv2d):
        raise _Refused("it must follow a convolution that feeds nothing else (snc folds it into it)")
    gamma, beta, mean, var = (_const(b, n, "statistics") for n in node.input[1:5])
    scale = gamma / np.sqrt(var + float(_attrs(node).get("epsilon", 1e-5)))
    _fold_into_made(b, x, scale, beta - mean * scale)
    return Value(x.shape, x.terms, [])


def _add(b: _Builder, node, name: str) -> Value:
    left, right = node.input[0], node.input[1]
    if left in b.host or right in b.host:  # a host-computed bias (a time embedding): a current every step
        tensor, signal = (left, right) if left in b.host else (right, left)
        if signal in b.host:
            raise _Refused("a sum of two host tensors inside the core")
        x = b.values[signal]
        entry = b.add(f"host{name if name.startswith('/') else '/' + name}",
                      nir.Input(input_type={"input": np.array(x.shape)}), [])
        b.host_inputs[entry] = {"tensor": tensor, "sum": node.output[0]}
        return Value(x.shape, x.terms + [Term(entry, 1.0, 0, x.shape[0])])
    if left in b.consts or right in b.consts:
        signal, const = (right, left) if left in b.consts else (left, right)
        x = b.values[signal]
        c = b.consts[const].astype(np.float64)
        channels = x.shape[0]
        if not _foldable(b, signal, x) or c.size != channels:
            raise _Refused("an added constant is converted as the bias of the layer before it (one value per "
                           "output channel, that layer feeding nothing else)")
        _fold_into_made(b, x, None, c.reshape(-1))
        return Value(x.shape, x.terms, [])
    a, c = b.values[left], b.values[right]
    if a.shape != c.shape:
        raise _Refused(f"operands of shapes {list(a.shape)} and {list(c.shape)} (no broadcasting)")
    return Value(a.shape, a.terms + c.terms)


def _concat(b: _Builder, node, name: str) -> Value:
    axis = int(_attrs(node).get("axis", 1))
    parts = [b.values[n] for n in node.input]
    if _value_axis(b, node.output[0], axis, parts[0]) != 0:
        raise _Refused(f"axis {axis} (snc converts concatenations of channels, axis 1 of a [batch, C, ...] tensor)")
    if any(p.shape[1:] != parts[0].shape[1:] for p in parts):
        raise _Refused("parts of different sizes")
    terms, offset = [], 0
    for p in parts:
        terms += [Term(t.node, t.factor, t.start + offset, t.stop + offset) for t in p.terms]
        offset += p.shape[0]
    return Value((offset, *parts[0].shape[1:]), terms)


def _resize(b: _Builder, node, name: str) -> Value:
    x = b.values[node.input[0]]
    out = b.shapes[node.output[0]]
    if len(x.shape) != 3 or out[1] % x.shape[1] or out[2] % x.shape[2] or out[1] // x.shape[1] != out[2] // x.shape[2]:
        raise _Refused(f"from {list(x.shape)} to {list(out)}: snc upsamples images by one whole factor")
    factor = out[1] // x.shape[1]
    return b.per_term(name, x, lambda t, i: NearestUpsample2d(input_shape=(t.stop - t.start, *x.shape[1:]),
                                                               scale=factor),
                      lambda t: (t.start, t.stop), out, weighted=False)


def _avgpool(b: _Builder, node, name: str) -> Value:
    x, attrs = b.values[node.input[0]], _attrs(node)
    kernel = tuple(int(v) for v in attrs["kernel_shape"])
    stride = tuple(int(v) for v in attrs.get("strides", kernel))
    padding = _pads(attrs, name)
    if any(padding) and not attrs.get("count_include_pad", 0):
        raise _Refused("padding without count_include_pad (NIR's AvgPool2d divides by the kernel's size)")
    if attrs.get("ceil_mode", 0):
        raise _Refused("ceil_mode")
    out = b.shapes[node.output[0]]
    return b.per_term(name, x, lambda t, i: nir.AvgPool2d(kernel_size=np.array(kernel), stride=np.array(stride),
                                                          padding=np.array(padding)),
                      lambda t: (t.start, t.stop), out, weighted=False)


def _global_avgpool(b: _Builder, node, name: str) -> Value:
    x = b.values[node.input[0]]
    kernel = np.array(x.shape[1:])
    return b.per_term(name, x, lambda t, i: nir.AvgPool2d(kernel_size=kernel, stride=kernel, padding=np.zeros(2)),
                      lambda t: (t.start, t.stop), (x.shape[0], 1, 1), weighted=False)


def _flat(b: _Builder, name: str, x: Value) -> Value:
    inner = int(np.prod(x.shape[1:], dtype=np.int64))
    return b.per_term(name, x, lambda t, i: nir.Flatten(input_type={"input": np.array((t.stop - t.start,
                                                                                         *x.shape[1:]))},
                                                        start_dim=0, end_dim=-1),
                      lambda t: (t.start * inner, t.stop * inner), (int(np.prod(x.shape)),), weighted=False)


def _view(b: _Builder, node, name: str) -> Value:
    """Flatten, Reshape, Unsqueeze, Squeeze, a Tile or Expand that repeats nothing, and a Gather or Slice that
    keeps everything (``x[0]`` of a [1, B, ...] tensor): the same values in the same order; a shape change other
    than to one flat vector is refused."""
    x, out = b.values[node.input[0]], b.shapes[node.output[0]]
    if any(name and name not in b.consts for name in node.input[1:]):
        raise _Refused("its indices, shape or repeats must be constants")
    if int(np.prod(out)) != int(np.prod(x.shape)):
        raise _Refused(f"from {list(x.shape)} to {list(out)}: it repeats or drops values (snc converts views)")
    if out == x.shape:  # the conv or affine layer that made x may still take a BatchNorm after the view
        return Value(x.shape, x.terms, x.made if b.users.get(node.input[0], 0) == 1 else [])
    if len(out) == 1:
        return _flat(b, name, x)
    raise _Refused(f"from {list(x.shape)} to {list(out)} (snc converts a flatten)")


def _activation(b: _Builder, node, name: str) -> Value:
    """One population of threshold s; of a concatenation, one per part (``<name>.<k>``, the rows it covers in
    its metadata ``snc.rows``), so that the layers it feeds split their weights as for the concatenation."""
    x = b.values[node.input[0]]
    s = b.thresholds[node.output[0]]
    ranges = sorted({(t.start, t.stop) for t in x.terms})
    if [r[0] for r in ranges] != [0] + [r[1] for r in ranges[:-1]] or ranges[-1][1] != x.shape[0]:
        raise _Refused("an activation of a concatenation summed with another tensor")
    terms = []
    for k, (start, stop) in enumerate(ranges):
        shape = (stop - start, *x.shape[1:])
        part = Value(shape, [Term(t.node, t.factor, 0, stop - start) for t in x.terms if (t.start, t.stop) == (start, stop)])
        theta = np.full(shape, s)
        population = SubtractiveIF(r=np.full(shape, 1.0 / b.dt), v_threshold=theta, v_initial=theta / 2,
                                   metadata={"snc.activation": node.output[0], "snc.rows": np.array([start, stop])})
        key = b.into_one(name if len(ranges) == 1 else f"{name}.{k}", part, population)
        terms.append(Term(key, s, start, stop))
    return Value(x.shape, terms)
