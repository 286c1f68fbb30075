"""NIR as the frameworks write it, made into the flat, fully typed graph snc compiles.

NIR graphs from norse, snnTorch, SpikingJelly and nirtorch are valid NIR in
spirit but rarely in letter. ``normalise`` accepts them and says, in one
warning each, what it had to read generously:

- **nested subgraphs** (recurrent cells: snnTorch's ``RLeaky`` / ``RSynaptic``
  write ``Input -> neuron <-> recurrent weights -> Output`` as a NIRGraph node)
  are inlined, their nodes named ``outer.inner``;
- **cycles without a Delay** (those cells close their loop with plain edges,
  meaning "the spikes of the previous step", as the frameworks simulate it)
  get a one-step ``Delay`` after the loop's spiking neuron; a loop without a
  spiking neuron is refused (an algebraic loop);
- **batch dimensions**: an Input / Output type with a leading 1 that its
  neighbours do not have (nirtorch traces with a batch of one) is dropped;
- **shapes**: every node's input and output type is inferred from its
  predecessors (exporters leave them empty or 0-d); neuron parameters given
  as 0-d or one-element arrays are broadcast to the population's shape,
  a pool's kernel, stride and padding given as one int (nirtorch) to pairs;
  torch tensors become numpy arrays;
- **time**: NIR is continuous-time and stores no dt. dt is taken from
  ``dt=`` (the CLI's ``--dt``), else from the graph metadata (``dt`` or
  ``snc.dt``), else it is assumed to be 1e-4 s (snnTorch's and
  SpikingJelly's exporters, and snc's) with a warning;
- **conventions** (``convention``): ``nir`` reads the parameters as NIR
  defines them (snnTorch's ``r = tau/dt`` and SpikingJelly's ``tau = tau_steps
  * dt`` are NIR-conformant at their dt). ``norse`` reads what norse 1.1's
  ``to_nir`` writes: its time constants hold ``dt * tau`` (it stores
  ``dt / tau_inv``: the true tau is the value / dt), its CubaLIF adds the
  input to the synaptic current unscaled (``i += x``: NIR's ``w_in`` is
  ``tau_syn / dt``) and its IF adds the input to v unscaled (NIR's ``r`` is
  ``1 / dt``). With these, norse's ``LIFCell`` (v driven by the current of
  the same step, then the current decays), ``LIFBoxCell`` and ``IAFCell`` are
  NIR's CubaLIF, LIF and IF step for step.

Every node type snc cannot read, and every malformed node, is listed in one
``GraphError``.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Any, Optional

import networkx as nx
import nir
import numpy as np

from snc.errors import GraphError

from .nir_io import NIR_DT, Gate, StepScale, SubtractiveIF, Upsample2d

CONVENTIONS = ("nir", "norse")
SPIKING = (nir.IF, nir.LIF, nir.CubaLIF, nir.Threshold)
NON_SPIKING = (nir.LI, nir.CubaLI, nir.I)
NEURONS = SPIKING + NON_SPIKING
SAME_SHAPE = NEURONS + (nir.Scale, nir.Delay, Gate, StepScale)
LINEAR = (nir.Affine, nir.Linear, nir.Scale, nir.Conv1d, nir.Conv2d, nir.SumPool2d, nir.AvgPool2d, nir.Flatten,
          nir.Delay, Gate, StepScale, Upsample2d)
SUPPORTED = NEURONS + LINEAR + (nir.Input, nir.Output)
# the parameters of each neuron kind that have one value per neuron
NEURON_PARAMS = {
    nir.IF: ("r", "v_threshold", "v_reset"),
    SubtractiveIF: ("r", "v_threshold", "v_reset", "v_initial"),
    nir.LIF: ("tau", "r", "v_leak", "v_threshold", "v_reset"),
    nir.CubaLIF: ("tau_syn", "tau_mem", "r", "v_leak", "v_threshold", "v_reset", "w_in"),
    nir.LI: ("tau", "r", "v_leak"),
    nir.CubaLI: ("tau_syn", "tau_mem", "r", "v_leak", "w_in"),
    nir.I: ("r",),
    nir.Threshold: ("threshold",),
}
TIMED = (nir.IF, nir.LIF, nir.CubaLIF, nir.LI, nir.CubaLI, nir.I, nir.Delay)  # their meaning depends on dt


@dataclass
class Normalised:
    graph: nir.NIRGraph  # flat, every node typed, neuron parameters per neuron, numpy arrays
    dt: float  # seconds per step
    warnings: list[str] = field(default_factory=list)


def normalise(graph: nir.NIRGraph, dt: Optional[float] = None, convention: str = "nir") -> Normalised:
    """The graph snc compiles from ``graph`` (left unchanged) read under ``convention`` with step ``dt``."""
    if convention not in CONVENTIONS:
        raise GraphError(f"unknown NIR convention {convention!r}; use one of {', '.join(CONVENTIONS)}")
    warnings: list[str] = []
    problems: list[str] = []
    nodes, edges = _flatten(graph, "", problems, warnings)
    unknown = sorted(f"{name} ({type(node).__name__})" if node is not None
                     else f"{name} (None: the exporter wrote no node for this module)"
                     for name, node in nodes.items() if not isinstance(node, SUPPORTED))
    if unknown:
        problems.append(f"node type(s) snc cannot read: {', '.join(unknown)}")
    if problems:
        raise GraphError("cannot read the NIR graph:\n  " + "\n  ".join(problems))
    step = _resolve_dt(graph, nodes, dt, warnings)
    back = _back_edges(nodes, edges, problems)
    if problems:
        raise GraphError("cannot read the NIR graph:\n  " + "\n  ".join(problems))
    shapes = _infer_shapes(nodes, edges, back, problems, warnings)
    if problems:
        raise GraphError("cannot read the NIR graph:\n  " + "\n  ".join(problems))
    for src, dst in back:
        name = _unique(f"{src}.recurrent_delay", nodes)
        shape = shapes[src]
        nodes[name] = nir.Delay(np.full(shape, step))
        _set_types(nodes[name], shape, shape)
        edges = [e for e in edges if e != (src, dst)] + [(src, name), (name, dst)]
        warnings.append(f"the loop {src} -> {dst} has no Delay: read as the previous step's spikes (as the "
                        "frameworks simulate recurrent cells); a one-step Delay was inserted")
    if convention == "norse":
        _norse(nodes, step)
    meta = dict(getattr(graph, "metadata", None) or {})
    meta["snc.dt"] = step
    out = nir.NIRGraph(nodes=nodes, edges=edges, metadata=meta, type_check=False)
    return Normalised(out, step, warnings)


# --- flattening ---------------------------------------------------------------------------------------
def _flatten(graph: nir.NIRGraph, prefix: str, problems: list[str], warnings: list[str]):
    """Nodes (copied, numpy parameters) and edges of ``graph`` with every subgraph inlined."""
    nodes: dict[str, Any] = {}
    edges: list[tuple[str, str]] = []
    inner_io: dict[str, tuple[list[str], list[str]]] = {}  # subgraph -> (its input names, its output names)
    for name, node in graph.nodes.items():
        full = prefix + str(name)
        if isinstance(node, nir.NIRGraph):
            sub_nodes, sub_edges = _flatten(node, full + ".", problems, warnings)
            ins = [n for n, v in node.nodes.items() if isinstance(v, nir.Input)]
            outs = [n for n, v in node.nodes.items() if isinstance(v, nir.Output)]
            inner_io[full] = ([f"{full}.{n}" for n in ins], [f"{full}.{n}" for n in outs])
            nodes.update(sub_nodes)
            edges += sub_edges
            warnings.append(f"{full}: nested NIR subgraph inlined ({len(node.nodes)} nodes)")
        else:
            nodes[full] = _numpy_copy(node) if node is not None else None
    def port(end: str, side: int, what: str, edge: str) -> Optional[str]:
        """The inner Input (side 0) / Output (side 1) an edge to / from a subgraph means; None if ambiguous."""
        if end not in inner_io:
            return end
        found = inner_io[end][side]
        if len(found) != 1:
            problems.append(f"edge {edge}: subgraph {end} has {len(found)} {what}s; name one ({end}.<{what}>)")
            return None
        return found[0]

    for a, b in graph.edges:
        a, b = prefix + str(a), prefix + str(b)
        src, dst = port(a, 1, "output", f"{a}->{b}"), port(b, 0, "input", f"{a}->{b}")
        if src is not None and dst is not None:
            edges.append((src, dst))
    # a subgraph's Input and Output nodes are junctions: connect what enters them to what leaves them
    for sub, (ins, outs) in inner_io.items():
        for junction in ins + outs:
            preds = [a for a, b in edges if b == junction]
            succs = [b for a, b in edges if a == junction]
            edges = [e for e in edges if junction not in e] + [(p, s) for p in preds for s in succs]
            nodes.pop(junction, None)
    missing = sorted({n for e in edges for n in e if n not in nodes})
    if missing:
        problems.append(f"edges name nodes the graph does not have: {', '.join(missing)}")
    return nodes, edges


def _numpy_copy(node: nir.NIRNode) -> nir.NIRNode:
    """A shallow copy whose tensors are numpy arrays (norse and snnTorch hand torch tensors)."""
    node = copy.copy(node)
    for key, value in list(vars(node).items()):
        if hasattr(value, "detach") and hasattr(value, "numpy"):
            setattr(node, key, value.detach().cpu().numpy())
        elif isinstance(value, np.ndarray) and value.dtype == object and value.size == 1:
            setattr(node, key, value.item())  # nirtorch 2 wraps norse's type dicts in 0-d object arrays
    if not isinstance(getattr(node, "metadata", {}), dict):
        node.metadata = {}
    return node


def _unique(name: str, nodes: dict) -> str:
    k, out = 1, name
    while out in nodes:
        k, out = k + 1, f"{name}{k}"
    return out


# --- time ---------------------------------------------------------------------------------------------
def _resolve_dt(graph: nir.NIRGraph, nodes: dict, dt: Optional[float], warnings: list[str]) -> float:
    meta = dict(getattr(graph, "metadata", None) or {})
    found = next((meta[k] for k in ("dt", "snc.dt") if k in meta), None)
    if dt is not None:
        if found is not None and not math.isclose(float(np.asarray(found)), dt):
            warnings.append(f"--dt {dt:g} overrides the graph metadata's dt {float(np.asarray(found)):g}")
        step = float(dt)
    elif found is not None:
        step = float(np.asarray(found))
    else:
        step = NIR_DT
        if any(isinstance(n, TIMED) for n in nodes.values()):
            warnings.append(f"no dt in the graph metadata and no --dt: assuming dt = {NIR_DT:g} s "
                            "(snnTorch's, SpikingJelly's and snc's exporters; norse's is 1e-3)")
    if not (np.isfinite(step) and step > 0):
        raise GraphError(f"dt must be a positive number of seconds, not {step}")
    return step


def _norse(nodes: dict, dt: float) -> None:
    """norse 1.1's ``to_nir`` parameters as NIR means them (see the module docstring)."""
    for node in nodes.values():
        if isinstance(node, (nir.LIF, nir.LI)):
            node.tau = node.tau / dt
        elif isinstance(node, (nir.CubaLIF, nir.CubaLI)):
            node.tau_mem = node.tau_mem / dt
            node.tau_syn = node.tau_syn / dt
            node.w_in = node.w_in * node.tau_syn / dt
        elif isinstance(node, (nir.IF, nir.I)):
            node.r = node.r / dt


# --- cycles -------------------------------------------------------------------------------------------
def _back_edges(nodes: dict, edges: list, problems: list[str]) -> list[tuple[str, str]]:
    """One edge per loop without a Delay, leaving the loop's spiking neuron (read one step late)."""
    g = nx.DiGraph()
    g.add_nodes_from(nodes)
    g.add_edges_from(e for e in edges if not isinstance(nodes[e[1]], nir.Delay))
    back = []
    while True:
        try:
            cycle = nx.find_cycle(g)
        except nx.NetworkXNoCycle:
            return back
        leaving = next(((a, b) for a, b in cycle if isinstance(nodes[a], SPIKING)), None)
        if leaving is None:
            problems.append("a loop without a spiking neuron or Delay (an algebraic loop): "
                            + " -> ".join(a for a, _ in cycle))
            return back
        g.remove_edge(*leaving)
        back.append(leaving)


# --- shapes -------------------------------------------------------------------------------------------
def _shape(value: Any) -> Optional[tuple[int, ...]]:
    if value is None:
        return None
    arr = np.asarray(value)
    if arr.dtype == object or arr.size == 0:
        return None
    return tuple(int(v) for v in arr.reshape(-1))


def _declared(types: Optional[dict], key: str) -> Optional[tuple[int, ...]]:
    if not types:
        return None
    return _shape(types.get(key, next(iter(types.values()), None)))


def _expected_input(node: nir.NIRNode) -> Optional[tuple[int, ...]]:
    """The input shape a node's parameters imply, where they imply one."""
    if isinstance(node, (nir.Affine, nir.Linear)):
        return (int(np.shape(node.weight)[1]),)
    if isinstance(node, NEURONS):
        shapes = {np.shape(getattr(node, k)) for k in NEURON_PARAMS[type(node)]}
        big = [s for s in shapes if int(np.prod(s)) > 1]
        return tuple(big[0]) if len(big) == 1 else None
    if isinstance(node, (Gate, StepScale, Upsample2d)):
        return _declared(node.input_type, "input")
    return None


def pairs(v: Any, n: int) -> tuple[int, ...]:
    arr = np.atleast_1d(np.asarray(v)).astype(np.int64)
    return tuple(int(x) for x in (np.repeat(arr, n) if arr.size == 1 else arr))


def conv_padding(node: nir.NIRNode, spatial: int) -> tuple[tuple[int, int], ...]:
    """(before, after) padding per spatial axis of a Conv1d / Conv2d, for any NIR padding form."""
    k = np.shape(node.weight)[2:]
    dil = pairs(node.dilation, spatial)
    if isinstance(node.padding, str):
        if node.padding == "valid":
            return tuple((0, 0) for _ in range(spatial))
        if node.padding == "same":  # torch's rule: the extra padding goes after
            total = [d * (kk - 1) for d, kk in zip(dil, k)]
            return tuple((t // 2, t - t // 2) for t in total)
        raise GraphError(f"padding {node.padding!r} is not 'same', 'valid' or numbers")
    pad = pairs(node.padding, spatial)
    return tuple((p, p) for p in pad)


def _out_shape(name: str, node: nir.NIRNode, shape: tuple[int, ...]) -> tuple[int, ...]:
    if isinstance(node, (nir.Affine, nir.Linear)):
        w = np.shape(node.weight)
        if int(np.prod(shape)) != w[1]:
            raise GraphError(f"{name}: input of shape {shape} into a weight of shape {w}")
        return (int(w[0]),)
    if isinstance(node, (nir.Conv1d, nir.Conv2d)):
        spatial = 1 if isinstance(node, nir.Conv1d) else 2
        w = np.shape(node.weight)
        groups = int(node.groups)
        if len(shape) != spatial + 1 or shape[0] != w[1] * groups:
            raise GraphError(f"{name}: input of shape {shape} into a {type(node).__name__} of weight {w} and "
                             f"{groups} group(s)")
        stride, dil = pairs(node.stride, spatial), pairs(node.dilation, spatial)
        out = [w[0]]
        for size, k, s, d, (a, b) in zip(shape[1:], w[2:], stride, dil, conv_padding(node, spatial)):
            out.append((size + a + b - d * (k - 1) - 1) // s + 1)
        return tuple(int(v) for v in out)
    if isinstance(node, (nir.SumPool2d, nir.AvgPool2d)):
        if len(shape) != 3:
            raise GraphError(f"{name}: a 2-d pool needs a (C, H, W) input, not {shape}")
        k, s, p = (pairs(v, 2) for v in (node.kernel_size, node.stride, node.padding))
        return (shape[0], *((size + 2 * pp - kk) // ss + 1 for size, kk, ss, pp in zip(shape[1:], k, s, p)))
    if isinstance(node, nir.Flatten):
        rank = len(shape)
        start = int(node.start_dim) % rank
        end = int(node.end_dim) % rank
        return (*shape[:start], int(np.prod(shape[start:end + 1])), *shape[end + 1:])
    if isinstance(node, Upsample2d):
        return _declared(node.output_type, "output")
    return shape


def _set_types(node: nir.NIRNode, shape: tuple, out: tuple) -> None:
    node.input_type = {"input": np.array(shape, dtype=np.int64)}
    node.output_type = {"output": np.array(out, dtype=np.int64)}


def _infer_shapes(nodes: dict, edges: list, back: list, problems: list[str], warnings: list[str]) -> dict:
    """Every node's output shape (and its input / output types set), neuron parameters broadcast.

    A node waits for all its predecessors; when nothing can proceed (a loop), the first waiting node
    that has some known input goes ahead with those (NIR sums a node's inputs: they have one shape)."""
    g = nx.DiGraph()
    g.add_nodes_from(nodes)
    g.add_edges_from(e for e in edges if e not in back and not isinstance(nodes[e[1]], nir.Delay))
    preds = {n: [a for a, b in edges if b == n] for n in nodes}
    succs = {n: [b for a, b in edges if a == n] for n in nodes}
    out: dict[str, tuple] = {}
    waiting = list(nx.topological_sort(g))
    failed: set[str] = set()
    while waiting:
        ready = [n for n in waiting if all(p in out or p in failed for p in preds[n])]
        if not ready:
            ready = [next((n for n in waiting if any(p in out for p in preds[n])), waiting[0])]
        for name in ready:
            waiting.remove(name)
            try:
                out[name] = _infer_node(name, nodes[name], [out[p] for p in preds[name] if p in out],
                                        [nodes[s] for s in succs[name]], warnings)
            except (GraphError, ValueError, TypeError, IndexError, ArithmeticError) as exc:
                message = str(exc)
                problems.append(message if message.startswith(name)
                                else f"{name}: malformed {type(nodes[name]).__name__} ({message})")
                failed.add(name)
    _fix_zero_d(nodes)
    return out


def _infer_node(name: str, node: nir.NIRNode, known: list, successors: list, warnings: list[str]) -> tuple:
    if isinstance(node, nir.Input):
        shape = _input_shape(name, node, successors, warnings)
    elif known:
        sizes = {int(np.prod(s)) for s in known}
        if len(sizes) > 1:
            raise GraphError(f"{name}: its inputs have different sizes {sorted(map(tuple, known))}")
        shape = known[0]
        want = _expected_input(node)
        if want is not None and int(np.prod(want)) == int(np.prod(shape)) and len(want) != len(shape) \
                and isinstance(node, SAME_SHAPE):
            shape = want  # e.g. a neuron whose parameters carry the shape of a reshaped input
    else:
        shape = _expected_input(node) or _declared(node.input_type, "input")
        if shape is None:
            raise GraphError(f"{name}: no input reaches it and it declares no input shape")
    if isinstance(node, NEURONS):
        _broadcast_params(name, node, shape, warnings)
    elif isinstance(node, (nir.Conv1d, nir.Conv2d)) and getattr(node, "input_shape", None) is None:
        node.input_shape = shape[1:] if isinstance(node, nir.Conv2d) else shape[1]  # NIR's spatial input shape
    elif isinstance(node, (nir.SumPool2d, nir.AvgPool2d)):  # nirtorch writes torch's int for a square pool
        for key in ("kernel_size", "stride", "padding"):
            setattr(node, key, np.array(pairs(getattr(node, key), 2), dtype=np.int64))
    elif isinstance(node, nir.Scale):
        node.scale = np.broadcast_to(np.asarray(node.scale, dtype=np.float64), shape).copy()
    elif isinstance(node, nir.Delay):
        node.delay = np.broadcast_to(np.asarray(node.delay, dtype=np.float64), shape).copy()
    result = shape if isinstance(node, nir.Output) else _out_shape(name, node, shape)
    if isinstance(node, nir.Output):
        declared = _declared(node.output_type, "output")
        if declared is not None and declared != shape and declared == (1, *shape):
            warnings.append(f"{name}: output type {declared} has a batch dimension; read as {shape}")
    _set_types(node, shape, result)
    return result


def _accepts(node: nir.NIRNode, shape: tuple[int, ...]) -> Optional[bool]:
    """Whether a node's parameters take an input of ``shape`` (None: they do not say)."""
    if isinstance(node, (nir.Affine, nir.Linear)):
        return tuple(shape) == (int(np.shape(node.weight)[1]),)
    if isinstance(node, (nir.Conv1d, nir.Conv2d)):
        w = np.shape(node.weight)
        return len(shape) == len(w) - 1 and shape[0] == w[1] * int(node.groups)
    if isinstance(node, (nir.SumPool2d, nir.AvgPool2d)):
        return len(shape) == 3
    want = _expected_input(node)
    return None if want is None else tuple(want) == tuple(shape)


def _input_shape(name: str, node: nir.Input, successors: list, warnings: list[str]) -> tuple[int, ...]:
    shape = _declared(node.input_type, "input")
    if shape is None:
        wants = [w for w in (_expected_input(s) for s in successors) if w is not None]
        if not wants:
            raise GraphError(f"{name}: an Input without a shape, and its successors imply none")
        return wants[0]
    if len(shape) >= 2 and shape[0] == 1:
        full = [_accepts(s, shape) for s in successors]
        rest = [_accepts(s, shape[1:]) for s in successors]
        if not any(full) and (any(rest) or all(r is None for r in rest)):
            warnings.append(f"{name}: input type {shape} has a batch dimension (nirtorch traces a batch of one); "
                            f"read as {shape[1:]}")
            return shape[1:]
    return shape


def _broadcast_params(name: str, node: nir.NIRNode, shape: tuple, warnings: list[str]) -> None:
    widened = []
    for key in NEURON_PARAMS[type(node)]:
        value = getattr(node, key, None)
        if value is None:
            continue
        arr = np.asarray(value, dtype=np.float64)
        if arr.shape == tuple(shape):
            setattr(node, key, arr)
            continue
        if arr.size == 1 or np.broadcast_shapes(arr.shape, shape) == tuple(shape):
            setattr(node, key, np.broadcast_to(arr.reshape(()) if arr.size == 1 else arr, shape).copy())
            widened.append(key)
        elif arr.size == int(np.prod(shape)):
            setattr(node, key, arr.reshape(shape))
        else:
            raise GraphError(f"{name}: parameter {key} of shape {arr.shape} does not fit the {shape} neurons")
    if widened:
        warnings.append(f"{name}: {', '.join(widened)} given as one value, broadcast to the {shape} neurons")


def _fix_zero_d(nodes: dict) -> None:
    """0-d numpy arrays (which ``nir.write`` cannot store) as one-element arrays or plain numbers."""
    for node in nodes.values():
        for key, value in list(vars(node).items()):
            if isinstance(value, np.ndarray) and value.ndim == 0:
                setattr(node, key, value.item() if value.dtype.kind in "iub" else value.reshape(1))


__all__ = ["CONVENTIONS", "Normalised", "conv_padding", "normalise", "pairs"]
