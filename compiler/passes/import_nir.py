"""Import a NIR graph (with snc extension nodes) into the IR.

Requires: a NIR graph of one spiking step, discretised with ``NIR_DT``.
Guarantees: one IR node per NIR node (same names); NIR edges become identity
edges (a node's inputs are summed, as in NIR); ``snc.StepScale`` becomes a
Linear identity with a per-step ``gain`` (its length must be T), a ``Delay``
of one step a Linear identity with ``lag`` 1, ``snc.Gate`` a Linear identity with
its ``gate`` key and a gain of ones (a gated synapse is a gained one whose
gain the host re-programs per call), a depthwise Conv2d that sums
each channel's whole image (attention's token sum) a k x k conv on the
channels stacked as one image; neurons become Populations with
a scalar threshold in units of their input (the Euler gain ``dt*r`` (IF) or
``dt*r/tau`` (LIF) is divided into the threshold) and ``decay = 1 - dt/tau``.
Every unsupported node or parameter is reported at once.
"""

from __future__ import annotations

import nir
import numpy as np

from snc.errors import GraphError

from ..ir import Edge, Graph, HostInput, Linear, Population, Readout
from ..linear import LinearOp, upsample_op
from ..nir_io import NIR_DT, Gate, NearestUpsample2d, StepScale, check_finite, digest
from ..pass_manager import CompileContext, Pass


def _uniform(values: np.ndarray, what: str, node: str, problems: list[str]) -> float:
    values = np.asarray(values, dtype=np.float64)
    if values.size == 0 or not np.all(values == values.flat[0]):
        problems.append(f"{node}: {what} differs between neurons (Lava's LIF takes one value per population)")
        return float("nan")
    return float(values.flat[0])


def _neuron(name: str, node: nir.NIRNode, problems: list[str]) -> Population:
    shape = tuple(int(v) for v in np.shape(node.v_threshold))
    if isinstance(node, nir.IF):
        gain = np.asarray(node.r, dtype=np.float64) * NIR_DT
        decay = 1.0
    else:
        if np.any(np.asarray(node.v_leak) != 0):
            problems.append(f"{name}: LIF with v_leak != 0 is not supported")
        tau = np.asarray(node.tau, dtype=np.float64)
        gain = NIR_DT * np.asarray(node.r, dtype=np.float64) / tau
        decay = _uniform(1.0 - NIR_DT / tau, "decay (tau)", name, problems)
        if -1e-6 < decay < 0:  # tau = dt (no memory) stored in float32 rounds to just below dt
            decay = 0.0
    if np.any(np.asarray(node.v_reset) != 0):
        problems.append(f"{name}: v_reset != 0 is not supported (Lava resets to 0)")
    g = _uniform(gain, "input gain (r)", name, problems)
    thr = _uniform(node.v_threshold, "threshold", name, problems)
    if g <= 0 and np.isfinite(g):
        problems.append(f"{name}: input gain must be positive")
    if np.isfinite(g) and g > 0 and not 0.0 <= decay <= 1.0:
        problems.append(f"{name}: per-step decay {decay} is outside [0, 1]")
    return Population(name, shape, threshold=thr / g if g else thr, decay=decay, bias=np.zeros(shape))


def _pair(v, name: str, what: str, problems: list[str]) -> int:
    arr = np.atleast_1d(np.asarray(v))
    if arr.size and not np.all(arr == arr.flat[0]):
        problems.append(f"{name}: non-square {what} {arr.tolist()} is not supported")
    return int(arr.flat[0]) if arr.size else 0


def _channel_pool(name: str, node: nir.Conv2d, in_shape: tuple, problems: list[str]) -> Linear | None:
    """A depthwise conv that sums each channel's whole (k x k) image with one kernel shared by all channels
    (the token sum of spike-driven attention): on the channels stacked as one (1, C*k, k) image it is a
    k x k conv of stride k, whose kernel is k*k numbers instead of a C x C x k x k diagonal one."""
    weight = np.asarray(node.weight, dtype=np.float64)
    c, h, w = in_shape
    k = weight.shape[-1]
    if not (int(node.groups) == c == weight.shape[0] and weight.shape[1] == 1 and h == w == k
            and _pair(node.stride, name, "stride", problems) == k and _pair(node.padding, name, "padding", problems) == 0
            and np.all(weight == weight[:1])):
        problems.append(f"{name}: grouped Conv2d is supported only as a sum over each channel's whole image "
                        "(groups = channels, one kernel the size of the image, stride = kernel)")
        return None
    op = LinearOp.conv(weight[:1], (1, c * k, k), k, 0)  # out (1, C, 1): one sum per channel
    return Linear(name, op, np.asarray(node.bias, dtype=np.float64).reshape(op.out_shape).copy())


def _linear(name: str, node: nir.NIRNode, in_shape: tuple, timestep: int, problems: list[str]) -> Linear | None:
    if isinstance(node, nir.Conv2d):
        if isinstance(node.padding, str):
            problems.append(f"{name}: string padding {node.padding!r} is not supported")
            return None
        if _pair(node.dilation, name, "dilation", problems) != 1:
            problems.append(f"{name}: dilated Conv2d is not supported")
            return None
        if int(node.groups) != 1:
            return _channel_pool(name, node, in_shape, problems)
        op = LinearOp.conv(np.asarray(node.weight), in_shape, _pair(node.stride, name, "stride", problems),
                           _pair(node.padding, name, "padding", problems))
        bias = np.broadcast_to(np.asarray(node.bias, dtype=np.float64)[:, None, None], op.out_shape).copy()
        return Linear(name, op, bias)
    if isinstance(node, (nir.Affine, nir.Linear)):
        w = np.asarray(node.weight, dtype=np.float64)
        op = LinearOp.dense(w, in_shape, (w.shape[0],))
        bias = np.asarray(node.bias, dtype=np.float64) if isinstance(node, nir.Affine) else np.zeros(w.shape[0])
        return Linear(name, op, bias.copy())
    if isinstance(node, nir.Scale):
        scale = np.broadcast_to(np.asarray(node.scale, dtype=np.float64), in_shape)
        if np.all(scale == 1):
            op = LinearOp.identity(in_shape)
        elif len(in_shape) == 3 and np.all(scale == scale[:, :1, :1]):
            op = LinearOp.conv(np.diag(scale[:, 0, 0]).reshape(in_shape[0], in_shape[0], 1, 1), in_shape, 1, 0)
        else:
            op = LinearOp.dense(np.diag(scale.ravel()), in_shape, in_shape)
        return Linear(name, op, np.zeros(in_shape))
    if isinstance(node, nir.Flatten):
        return Linear(name, LinearOp.identity(in_shape, (int(np.prod(in_shape)),)), np.zeros(int(np.prod(in_shape))))
    if isinstance(node, Gate):
        return Linear(name, LinearOp.identity(in_shape), np.zeros(in_shape), gain=np.ones(timestep), gate=node.key)
    if isinstance(node, NearestUpsample2d):
        op = upsample_op(in_shape, node.scale)
        return Linear(name, op, np.zeros(op.out_shape))
    if isinstance(node, nir.Delay):
        steps = np.asarray(node.delay, dtype=np.float64) / NIR_DT
        lag = int(np.rint(steps.flat[0])) if steps.size else 0
        if lag != 1 or not np.allclose(steps, lag, rtol=0, atol=1e-6):
            problems.append(f"{name}: a Delay must be one step dt = {NIR_DT} for every element "
                            "(snc lowers one-step recurrence)")
            return None
        return Linear(name, LinearOp.identity(in_shape), np.zeros(in_shape), lag=lag)
    if isinstance(node, StepScale):
        gain = np.asarray(node.scale, dtype=np.float64).reshape(-1)
        if gain.size != timestep:
            problems.append(f"{name}: {gain.size} per-step scales for T = {timestep} spiking steps")
            return None
        return Linear(name, LinearOp.identity(in_shape), np.asarray(node.bias, dtype=np.float64).copy(), gain=gain)
    problems.append(f"{name}: NIR node type {type(node).__name__} has no lowering in snc")
    return None


def _input_shape(node: nir.NIRNode) -> tuple:
    types = node.input_type
    return tuple(int(v) for v in np.asarray(types.get("input", next(iter(types.values())))))


def _import_node(name: str, node: nir.NIRNode, timestep: int, problems: list[str]):
    if isinstance(node, nir.NIRGraph):
        problems.append(f"{name}: nested NIR subgraphs are not supported; flatten the graph")
        return None
    if isinstance(node, nir.Input):
        return HostInput(name, _input_shape(node))
    if isinstance(node, nir.Output):
        shape = tuple(int(v) for v in np.asarray(node.output_type["output"]))
        return Readout(name, shape, bias=np.zeros(shape))
    if isinstance(node, (nir.IF, nir.LIF)):
        population = _neuron(name, node, problems)
        if (getattr(node, "metadata", None) or {}).get("snc.role") == "and":
            population.role = "and"  # snc's export of a spike AND (threshold 1.5 on two unit inputs)
        return population
    return _linear(name, node, _input_shape(node), timestep, problems)


def import_graph(graph: nir.NIRGraph, timestep: int, arch: str = "") -> Graph:
    """The IR of a NIR graph of one spiking step (T = ``timestep``)."""
    check_finite(graph)
    problems: list[str] = []
    nodes = {}
    preds: dict[str, list[str]] = {name: [] for name in graph.nodes}
    for src, dst in graph.edges:
        if src not in graph.nodes or dst not in graph.nodes:
            problems.append(f"edge {src}->{dst} names a node the graph does not have")
            continue
        preds[dst].append(src)
    for name, node in graph.nodes.items():
        try:
            imported = _import_node(name, node, timestep, problems)
        except (ValueError, TypeError, IndexError, KeyError, GraphError) as exc:  # malformed shapes or parameters
            problems.append(f"{name}: malformed {type(node).__name__} ({exc})")
            continue
        if imported is not None:
            nodes[name] = imported
    if problems:
        raise GraphError("cannot import the NIR graph:\n  " + "\n  ".join(problems))
    edges = []
    for dst, sources in preds.items():
        for src in sources:
            s, d = nodes[src], nodes[dst]
            out_shape = s.op.out_shape if isinstance(s, Linear) else s.shape
            in_shape = d.op.in_shape if isinstance(d, Linear) else d.shape
            if int(np.prod(out_shape)) != int(np.prod(in_shape)):
                problems.append(f"edge {src}->{dst}: {tuple(out_shape)} does not fit {tuple(in_shape)}")
                continue
            edges.append(Edge(src, dst, LinearOp.identity(out_shape, in_shape)))
    if problems:
        raise GraphError("cannot import the NIR graph:\n  " + "\n  ".join(problems))
    return Graph(nodes, edges, timestep=timestep, arch=arch, source=digest(graph))


def run(_: None, ctx: CompileContext) -> Graph:
    return import_graph(ctx.nir_graph, ctx.timestep, ctx.arch)


def verify(graph: Graph, ctx: CompileContext) -> None:
    graph.check()
    graph.readout  # exactly one output
    if any(p.depth >= 0 for p in graph.of_type(Population)) or any(e.fixed for e in graph.edges):
        raise GraphError("import_nir left schedules or fixed-point parameters in a fresh IR")


PASS = Pass("import_nir", run, verify, requires=(), provides=("ir",))
