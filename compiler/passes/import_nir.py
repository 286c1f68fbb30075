"""Import a NIR graph (with snc extension nodes) into the IR.

Requires: a flat, typed NIR graph of one spiking step (snc's exports, or
``nir_normalise`` of a foreign graph) and its step dt (``ctx.dt``).
Guarantees: one IR node per NIR node (same names; a spiking node's input
scale or parts are nodes of their own, named after it); NIR edges become identity
edges (a node's inputs are summed, as in NIR); ``snc.StepScale`` becomes a
Linear identity with a per-step ``gain`` (its length must be T), a ``Delay``
of k whole steps (the same for every element) a Linear identity with
``lag`` k, ``snc.Gate`` a Linear identity with its ``gate`` key and a gain of ones (a gated synapse is a gained one whose
gain the host re-programs per call), a depthwise Conv2d that sums
each channel's whole image (attention's token sum) a k x k conv on the
channels stacked as one image; other convs (any padding form, stride,
dilation, groups; Conv1d) a conv with a full kernel where one exists, else
their exact matrix; SumPool2d / AvgPool2d a per-channel conv. Spiking neurons
(IF, LIF, CubaLIF, Threshold) become Populations with one threshold in units of
their input (the Euler gain ``dt*r`` (IF), ``dt*r/tau`` (LIF), ``dt/tau_mem *
r * dt/tau_syn * w_in`` (CubaLIF) is divided into it; per-neuron thresholds
and gains become a Linear ``<name>.input_scale`` on the inputs),
``decay = 1 - dt/tau(_mem)``, ``current_decay = 1 - dt/tau_syn`` and a bias
from ``v_leak``; ``snc.SubtractiveIF`` a population with ``subtractive_reset`` whose
``v_initial`` is a bias of logical step 0 (v starts every call from it); neurons whose time constants differ become one population
per distinct set (``<name>.part<k>``, ``_split``); a non-spiking LI / I / CubaLI that the Output alone reads
becomes an identity and the Readout's host filters. Every unsupported node or
parameter is reported at once.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Optional

import nir
import numpy as np
import torch
import torch.nn.functional as F

from snc.errors import GraphError

from ..ir import Edge, Graph, HostInput, Linear, Node, Population, Readout
from ..linear import MAX_DENSE_ENTRIES, LinearOp, upsample_op
from ..nir_io import NIR_DT, Gate, StepScale, SubtractiveIF, Upsample2d, ZeroInsert2d, check_finite, digest
from ..nir_normalise import NEURON_PARAMS, NON_SPIKING, SPIKING, conv_padding, pairs
from ..pass_manager import CompileContext, Pass
from ..readout import ReadoutFilter

MAX_SCALED_NEURONS = 4096  # per-neuron input factors (or a split population's gather) as dense maps up to this
MAX_SPLIT = 64  # populations one NIR neuron node may be split into (one per distinct set of time constants)


def _uniform(values: np.ndarray, what: str, node: str, problems: list[str]) -> float:
    values = np.asarray(values, dtype=np.float64)
    if values.size == 0 or not np.all(values == values.flat[0]):
        problems.append(f"{node}: {what} differs between neurons ({np.unique(values).size} values; Lava's LIF "
                        "takes one per population)")
        return float("nan")
    return float(values.flat[0])


def _decay(per_step: np.ndarray, what: str, name: str, problems: list[str]) -> float:
    """``1 - dt/tau`` as one number for the population, inside [0, 1]."""
    decay = _uniform(1.0 - per_step, what, name, problems)
    if -1e-6 < decay < 0:  # tau = dt (no memory) stored in float32 rounds to just below dt
        decay = 0.0
    if np.isfinite(decay) and not 0.0 <= decay <= 1.0:
        problems.append(f"{name}: {what} gives a per-step decay {decay:g} outside [0, 1] (tau < dt: is dt right? "
                        "norse's to_nir writes dt*tau: --nir-convention norse)")
    return decay


def _neuron(name: str, node: nir.NIRNode, dt: float, timestep: int,
            problems: list[str]) -> tuple[Population, np.ndarray | None]:
    """The population of a spiking NIR neuron and the per-neuron factor on its inputs (None: all 1).

    In NIR units a neuron computes ``v = decay * v + g * u + b`` (u: its input, through the synaptic
    current for CubaLIF) and spikes when ``v > v_threshold``. snc divides every neuron's v by its own
    ``v_threshold / theta`` (theta: the first neuron's ``v_threshold / g``), which keeps its spikes: the
    population gets the one threshold theta, and each neuron's input is scaled by ``theta * g / v_threshold``
    (1 when the parameters are uniform) and its bias is ``theta * b / v_threshold``."""
    f = lambda key: np.asarray(getattr(node, key), dtype=np.float64)  # noqa: E731
    current_decay = 0.0
    if isinstance(node, nir.Threshold):
        thr, gain, leak, decay = f("threshold"), 1.0, 0.0, 0.0
    elif isinstance(node, nir.IF):
        thr, gain, leak, decay = f("v_threshold"), dt * f("r"), 0.0, 1.0
    elif isinstance(node, nir.LIF):
        tau = f("tau")
        thr, gain, leak = f("v_threshold"), dt * f("r") / tau, dt * f("v_leak") / tau
        decay = _decay(dt / tau, "tau", name, problems)
    else:  # CubaLIF: u = (1 - dt/tau_syn) u + w_in dt/tau_syn x; v = (1 - dt/tau_mem) v + dt/tau_mem (v_leak + r u)
        tau_mem, tau_syn = f("tau_mem"), f("tau_syn")
        thr = f("v_threshold")
        gain = dt / tau_mem * f("r") * dt / tau_syn * f("w_in")
        leak = dt * f("v_leak") / tau_mem
        decay = _decay(dt / tau_mem, "tau_mem", name, problems)
        current_decay = _decay(dt / tau_syn, "tau_syn", name, problems)
    shape = tuple(int(v) for v in np.shape(thr))
    gain, leak = np.broadcast_to(gain, shape), np.broadcast_to(leak, shape)
    if not isinstance(node, nir.Threshold) and np.any(f("v_reset") != 0):
        problems.append(f"{name}: v_reset != 0 is not supported (Lava resets to 0 and starts from 0)")
    if not np.all(gain > 0):
        problems.append(f"{name}: the input gain (dt * r / tau, w_in) must be positive")
        return Population(name, shape, threshold=1.0, decay=1.0, bias=np.zeros(shape)), None
    theta = float(thr.flat[0] / gain.flat[0])
    if np.all(thr == thr.flat[0]) and np.all(gain == gain.flat[0]):
        bias, factor = leak / gain.flat[0], None
    elif not np.all(thr > 0):
        problems.append(f"{name}: thresholds that differ between neurons must be positive")
        return Population(name, shape, threshold=1.0, decay=1.0, bias=np.zeros(shape)), None
    else:
        factor = theta * gain / thr
        bias = theta * leak / thr
    bias = np.array(bias, dtype=np.float64)
    if isinstance(node, SubtractiveIF):  # v starts every call at v_initial: a bias of its first logical step
        start = f("v_initial") / gain.flat[0] if factor is None else theta * f("v_initial") / thr
        bias = np.stack([np.broadcast_to(bias, shape) + start, *[np.broadcast_to(bias, shape)] * (timestep - 1)])
    population = Population(name, shape, threshold=theta, decay=decay, bias=bias, current_decay=current_decay,
                            subtractive_reset=isinstance(node, SubtractiveIF))
    return population, factor


@dataclass
class _Imported:
    """The IR of one NIR node: ``node`` (named as the NIR node: what its successors read), ``into`` (where
    its NIR inputs go, when not ``node`` itself) and the further nodes and edges between them."""
    node: Node
    into: Optional[Linear] = None
    parts: list[Node] = field(default_factory=list)
    edges: list[Edge] = field(default_factory=list)


def _time_constants(node: nir.NIRNode) -> list[np.ndarray]:
    """The per-neuron parameters that set a spiking node's decays (Lava takes one per process)."""
    if isinstance(node, nir.LIF):
        return [np.asarray(node.tau, dtype=np.float64)]
    if isinstance(node, nir.CubaLIF):
        return [np.asarray(node.tau_mem, dtype=np.float64), np.asarray(node.tau_syn, dtype=np.float64)]
    return []


def _spiking(name: str, node: nir.NIRNode, dt: float, timestep: int, problems: list[str]) -> _Imported | None:
    """A spiking NIR neuron: one population, or one per distinct set of time constants (``_split``)."""
    taus = _time_constants(node)
    keys = np.stack([t.reshape(-1) for t in taus], axis=1) if taus else np.zeros((0, 0))
    if taus and len(np.unique(keys, axis=0)) > 1:
        return _split(name, node, keys, dt, timestep, problems)
    population, factor = _neuron(name, node, dt, timestep, problems)
    if (getattr(node, "metadata", None) or {}).get("snc.role") == "and":
        population.role = "and"  # snc's export of a spike AND (threshold 1.5 on two unit inputs)
    if factor is None:
        return _Imported(population)
    scale = _input_scale(name, factor, problems)
    if scale is None:
        return None
    return _Imported(population, scale, edges=[Edge(scale.name, name, LinearOp.identity(population.shape))])


def _split(name: str, node: nir.NIRNode, keys: np.ndarray, dt: float, timestep: int,
           problems: list[str]) -> _Imported | None:
    """Neurons whose time constants differ: one population per distinct set (``<name>.part<k>``; Lava's LIF
    takes one du and dv per process), exact. Their inputs are gathered from ``<name>.input`` (times each
    neuron's input factor) and their spikes scattered back into ``<name>``, an identity that the node's
    successors read: re-association composes both into the synapses."""
    shape = tuple(int(v) for v in np.shape(node.v_threshold))
    n = int(np.prod(shape))
    sets, which = np.unique(keys, axis=0, return_inverse=True)
    which = which.reshape(-1)
    if n > MAX_SCALED_NEURONS or len(sets) > MAX_SPLIT:
        problems.append(f"{name}: its time constants take {len(sets)} values over {n} neurons; snc splits a "
                        f"population by time constant up to {MAX_SPLIT} values and {MAX_SCALED_NEURONS} neurons")
        return None
    into = Linear(f"{name}.input", LinearOp.identity(shape), np.zeros(shape))
    out = Linear(name, LinearOp.identity(shape), np.zeros(shape))
    parts, edges = [], []
    for k in range(len(sets)):
        members = np.flatnonzero(which == k)
        part = copy.copy(node)
        for key in NEURON_PARAMS[type(node)]:
            value = getattr(node, key, None)
            if value is not None:
                setattr(part, key, np.asarray(value, dtype=np.float64).reshape(-1)[members])
        population, factor = _neuron(f"{name}.part{k}", part, dt, timestep, problems)
        gather = np.zeros((members.size, n))
        gather[np.arange(members.size), members] = 1.0 if factor is None else factor
        scatter = np.zeros((n, members.size))
        scatter[members, np.arange(members.size)] = 1.0
        parts.append(population)
        edges += [Edge(into.name, population.name, LinearOp.dense(gather, shape, population.shape)),
                  Edge(population.name, name, LinearOp.dense(scatter, population.shape, shape))]
    return _Imported(out, into, parts, edges)


def _input_scale(name: str, factor: np.ndarray, problems: list[str]) -> Linear | None:
    """A Linear node multiplying each neuron's input by its factor (a per-channel 1x1 conv when it is one)."""
    shape = factor.shape
    if len(shape) == 3 and np.all(factor == factor[:, :1, :1]):
        op = LinearOp.conv(np.diag(factor[:, 0, 0]).reshape(shape[0], shape[0], 1, 1), shape, 1, 0)
    elif factor.size <= MAX_SCALED_NEURONS:
        op = LinearOp.dense(np.diag(factor.reshape(-1)), shape, shape)
    else:
        problems.append(f"{name}: thresholds or gains differ between its {factor.size} neurons; snc maps that "
                        f"exactly up to {MAX_SCALED_NEURONS} neurons (or per channel)")
        return None
    return Linear(f"{name}.input_scale", op, np.zeros(shape))


def _readout_filters(name: str, node: nir.NIRNode, dt: float) -> tuple[ReadoutFilter, ...]:
    """The host integration of a non-spiking output neuron (``readout.py``)."""
    f = lambda key: np.asarray(getattr(node, key), dtype=np.float64)  # noqa: E731
    if isinstance(node, nir.I):
        return (ReadoutFilter(np.ones_like(f("r")), dt * f("r"), np.zeros_like(f("r"))),)
    if isinstance(node, nir.LI):
        tau = f("tau")
        return (ReadoutFilter(1 - dt / tau, dt * f("r") / tau, dt * f("v_leak") / tau),)
    tau_syn, tau_mem = f("tau_syn"), f("tau_mem")
    return (ReadoutFilter(1 - dt / tau_syn, dt * f("w_in") / tau_syn, np.zeros_like(tau_syn)),
            ReadoutFilter(1 - dt / tau_mem, dt * f("r") / tau_mem, dt * f("v_leak") / tau_mem))


def _dense_of(name: str, apply, in_shape: tuple, problems: list[str]) -> LinearOp | None:
    """The exact matrix of a linear map given as a torch function on [B, *in_shape] (float64)."""
    n_in = int(np.prod(in_shape))
    with torch.no_grad():
        basis = torch.eye(n_in, dtype=torch.float64).reshape(n_in, *in_shape)
        y = apply(basis)
    n_out = int(np.prod(y.shape[1:]))
    if n_in * n_out > MAX_DENSE_ENTRIES:
        problems.append(f"{name}: this {n_in} -> {n_out} map has no structured form in snc and its matrix would "
                        f"have {n_in * n_out} entries (limit {MAX_DENSE_ENTRIES})")
        return None
    return LinearOp.dense(y.reshape(n_in, n_out).T.numpy(), in_shape, tuple(y.shape[1:]))


def _conv(name: str, node: nir.NIRNode, in_shape: tuple, problems: list[str]) -> Linear | None:
    """Conv1d / Conv2d with any padding form, stride, dilation and groups.

    A square conv with one stride and symmetric padding stays a structured conv (groups and dilation
    become zeros of a full kernel); any other becomes its exact matrix."""
    spatial = 1 if isinstance(node, nir.Conv1d) else 2
    weight = np.asarray(node.weight, dtype=np.float64)
    groups = int(node.groups)
    stride, dilation = pairs(node.stride, spatial), pairs(node.dilation, spatial)
    padding = conv_padding(node, spatial)
    bias = np.asarray(node.bias, dtype=np.float64).reshape(-1)
    cout = weight.shape[0]
    if bias.size not in (1, cout):
        problems.append(f"{name}: a bias of {bias.size} values for {cout} output channels")
        return None
    bias = np.broadcast_to(bias, (cout,))
    square = spatial == 2 and weight.shape[2] == weight.shape[3] and stride[0] == stride[1] \
        and dilation[0] == dilation[1] and len({p for pair in padding for p in pair}) == 1
    if square:
        k, d = weight.shape[2], dilation[0]
        kd = d * (k - 1) + 1
        cin_g, cout_g = weight.shape[1], cout // groups
        full = np.zeros((cout, cin_g * groups, kd, kd))
        for gi in range(groups):
            full[gi * cout_g:(gi + 1) * cout_g, gi * cin_g:(gi + 1) * cin_g, ::d, ::d] = \
                weight[gi * cout_g:(gi + 1) * cout_g]
        op = LinearOp.conv(full, in_shape, int(stride[0]), int(padding[0][0]))
    else:
        w = torch.as_tensor(weight)
        pads = [p for pair in reversed(padding) for p in pair]  # F.pad: last axis first

        def apply(x: torch.Tensor) -> torch.Tensor:
            conv = F.conv1d if spatial == 1 else F.conv2d
            return conv(F.pad(x, pads), w, stride=tuple(stride), dilation=tuple(dilation), groups=groups)

        op = _dense_of(name, apply, in_shape, problems)
        if op is None:
            return None
    out_bias = np.broadcast_to(bias.reshape(cout, *([1] * spatial)), op.out_shape).copy()
    return Linear(name, op, out_bias.reshape(op.out_shape))


def _pool(name: str, node: nir.NIRNode, in_shape: tuple, problems: list[str]) -> Linear | None:
    """SumPool2d / AvgPool2d (NIR's AvgPool2d divides by the kernel's area, padding included) per channel."""
    k, s, p = (pairs(a, 2) for a in (node.kernel_size, node.stride, node.padding))
    c = in_shape[0]
    area = 1.0 if isinstance(node, nir.SumPool2d) else float(k[0] * k[1])
    if k[0] == k[1] and s[0] == s[1] and p[0] == p[1]:
        kernel = np.eye(c)[:, :, None, None] * np.ones((1, 1, *k)) / area
        op = LinearOp.conv(kernel, in_shape, s[0], p[0])
    else:
        op = _dense_of(name, lambda x: F.avg_pool2d(x, k, s, p, count_include_pad=True) * (k[0] * k[1] / area),
                       in_shape, problems)
        if op is None:
            return None
    return Linear(name, op, np.zeros(op.out_shape))


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
            and _pair(node.stride, name, "stride", problems) == k and not isinstance(node.padding, str)
            and _pair(node.padding, name, "padding", problems) == 0 and _pair(node.dilation, name, "dilation",
                                                                              problems) == 1
            and np.all(weight == weight[:1])):
        return None
    op = LinearOp.conv(weight[:1], (1, c * k, k), k, 0)  # out (1, C, 1): one sum per channel
    return Linear(name, op, np.asarray(node.bias, dtype=np.float64).reshape(op.out_shape).copy())


def _linear(name: str, node: nir.NIRNode, in_shape: tuple, timestep: int, dt: float,
            problems: list[str]) -> Linear | None:
    if isinstance(node, nir.Conv2d) and int(node.groups) > 1 and len(in_shape) == 3:
        pooled = _channel_pool(name, node, in_shape, problems)
        if pooled is not None:
            return pooled
    if isinstance(node, (nir.Conv1d, nir.Conv2d)):
        return _conv(name, node, in_shape, problems)
    if isinstance(node, (nir.SumPool2d, nir.AvgPool2d)):
        return _pool(name, node, in_shape, problems)
    if isinstance(node, (nir.Affine, nir.Linear)):
        w = np.asarray(node.weight, dtype=np.float64)
        op = LinearOp.dense(w, in_shape, (w.shape[0],))
        bias = np.asarray(node.bias, dtype=np.float64) if isinstance(node, nir.Affine) else np.zeros(w.shape[0])
        if bias.size not in (1, w.shape[0]):
            problems.append(f"{name}: a bias of {bias.size} values for {w.shape[0]} outputs")
            return None
        return Linear(name, op, np.broadcast_to(bias.reshape(-1), (w.shape[0],)).copy())
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
        out = tuple(int(v) for v in np.asarray(node.output_type["output"])) \
            if node.output_type.get("output") is not None else (int(np.prod(in_shape)),)
        return Linear(name, LinearOp.identity(in_shape, out), np.zeros(out))
    if isinstance(node, Gate):
        return Linear(name, LinearOp.identity(in_shape), np.zeros(in_shape), gain=np.ones(timestep), gate=node.key)
    if isinstance(node, Upsample2d):
        op = upsample_op(in_shape, node.scale, zeros=isinstance(node, ZeroInsert2d))
        return Linear(name, op, np.zeros(op.out_shape))
    if isinstance(node, nir.Delay):
        steps = np.asarray(node.delay, dtype=np.float64) / dt
        lag = int(np.rint(steps.flat[0])) if steps.size else 0
        if not np.allclose(steps, steps.flat[0], rtol=0, atol=1e-6):
            problems.append(f"{name}: a Delay whose elements differ ({np.unique(np.rint(steps)).size} values) is "
                            "not supported (snc delays a population's spikes by one number of steps)")
            return None
        if lag < 1 or not np.allclose(steps, lag, rtol=0, atol=1e-6):
            problems.append(f"{name}: a Delay of {steps.flat[0]:g} steps: it must be a whole number >= 1 of steps "
                            f"dt = {dt:g} s")
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


def _import_node(name: str, node: nir.NIRNode, timestep: int, dt: float, readout_of: dict[str, str],
                 problems: list[str]) -> _Imported | None:
    """The IR of a NIR node (None when it cannot be imported: the reason is in ``problems``)."""
    if isinstance(node, nir.NIRGraph):
        problems.append(f"{name}: a nested NIR subgraph (snc's reader inlines them: nir_normalise)")
        return None
    if isinstance(node, nir.Input):
        return _Imported(HostInput(name, _input_shape(node)))
    if isinstance(node, nir.Output):
        shape = tuple(int(v) for v in np.asarray(node.output_type["output"]))
        return _Imported(Readout(name, shape, bias=np.zeros(shape)))
    if isinstance(node, SPIKING):
        return _spiking(name, node, dt, timestep, problems)
    if isinstance(node, NON_SPIKING):
        if name not in readout_of:
            problems.append(f"{name}: a non-spiking {type(node).__name__} is supported only as the neuron the "
                            "graph's Output reads (snc integrates it on the host); Loihi 2 passes spikes")
            return None
        shape = _input_shape(node)
        return _Imported(Linear(name, LinearOp.identity(shape), np.zeros(shape)))
    linear = _linear(name, node, _input_shape(node), timestep, dt, problems)
    return _Imported(linear) if linear is not None else None


def _non_spiking_outputs(graph: nir.NIRGraph, preds: dict[str, list[str]]) -> dict[str, str]:
    """Non-spiking neurons that feed the Output and nothing else, and only they: neuron -> output name."""
    found = {}
    for name, node in graph.nodes.items():
        if not isinstance(node, NON_SPIKING):
            continue
        succs = [b for a, b in graph.edges if a == name]
        if len(succs) == 1 and isinstance(graph.nodes[succs[0]], nir.Output) and preds[succs[0]] == [name]:
            found[name] = succs[0]
    return found


def import_graph(graph: nir.NIRGraph, timestep: int, arch: str = "", dt: float = NIR_DT) -> Graph:
    """The IR of a NIR graph of one spiking step (T = ``timestep``), discretised with steps of ``dt``."""
    check_finite(graph)
    problems: list[str] = []
    nodes = {}
    preds: dict[str, list[str]] = {name: [] for name in graph.nodes}
    for src, dst in graph.edges:
        if src not in graph.nodes or dst not in graph.nodes:
            problems.append(f"edge {src}->{dst} names a node the graph does not have")
            continue
        preds[dst].append(src)
    readout_of = _non_spiking_outputs(graph, preds)
    into: dict[str, str] = {}  # NIR node -> the IR node its inputs go to, where it is another
    inner: list[Edge] = []  # edges within the IR of one NIR node
    for name, node in graph.nodes.items():
        try:
            imported = _import_node(name, node, timestep, dt, readout_of, problems)
        except (ValueError, TypeError, IndexError, KeyError, ArithmeticError, GraphError) as exc:  # malformed
            problems.append(f"{name}: malformed {type(node).__name__} ({exc})")
            continue
        if imported is None:
            continue
        nodes[name] = imported.node
        for extra in ([imported.into] if imported.into is not None else []) + imported.parts:
            nodes[extra.name] = extra
        if imported.into is not None:
            into[name] = imported.into.name
        inner += imported.edges
    if problems:
        raise GraphError("cannot import the NIR graph:\n  " + "\n  ".join(problems))
    for neuron, output in readout_of.items():
        nodes[output].filters = _readout_filters(neuron, graph.nodes[neuron], dt)
    edges = []
    for dst, sources in preds.items():
        target = into.get(dst, dst)
        for src in sources:
            s, d = nodes[src], nodes[target]
            out_shape = s.op.out_shape if isinstance(s, Linear) else s.shape
            in_shape = d.op.in_shape if isinstance(d, Linear) else d.shape
            if int(np.prod(out_shape)) != int(np.prod(in_shape)):
                problems.append(f"edge {src}->{dst}: {tuple(out_shape)} does not fit {tuple(in_shape)}")
                continue
            edges.append(Edge(src, target, LinearOp.identity(out_shape, in_shape)))
    edges += inner
    if problems:
        raise GraphError("cannot import the NIR graph:\n  " + "\n  ".join(problems))
    return Graph(nodes, edges, timestep=timestep, arch=arch, source=digest(graph))


def run(_: None, ctx: CompileContext) -> Graph:
    return import_graph(ctx.nir_graph, ctx.timestep, ctx.arch, ctx.dt)


def verify(graph: Graph, ctx: CompileContext) -> None:
    graph.check()
    graph.readout  # exactly one output
    if any(p.depth >= 0 for p in graph.of_type(Population)) or any(e.fixed for e in graph.edges):
        raise GraphError("import_nir left schedules or fixed-point parameters in a fresh IR")


PASS = Pass("import_nir", run, verify, requires=(), provides=("ir",))
