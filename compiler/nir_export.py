"""snc's plain NIR graphs written for other readers: ``snc export --nir-convention norse|snntorch``.

NIR leaves dt, the meaning of ``r`` and the number of inputs to each reader,
and the readers disagree (norse 1.1's ``from_nir``, snnTorch 1.0's
``import_from_nir``). snc's own convention (``snc``) is NIR's: Euler steps of
dt (``snc.dt`` in the metadata), ``r`` as written. For the others:

- **one Input.** Both readers build a module with one input tensor (norse's
  executor hands the data to the first module only), so a graph with several
  Input nodes needs the values of all but one, the same every step: snc's MLP
  denoiser is written at one diffusion step (``--at-step``), its time-embedding
  biases added to the biases of the Affine layers beside them;
- **Flatten**: both readers hand NIR's dims (which do not count the batch)
  to ``torch.nn.Flatten`` (which does), so a NIR Flatten would flatten the
  batch too. An Input that only a Flatten reads is written flat instead (feed
  it ``x.reshape(batch, -1)``); any other Flatten is written with its dims
  counted from the end (``start_dim - rank``: the same flatten for NIR's
  types, and one that leaves the batch alone in ``torch.nn.Flatten``);
- **norse** (``from_nir(graph, dt=snc.dt)``): it has no pooling module (it
  maps SumPool2d / AvgPool2d to nothing and then starts the graph there), so
  pools are written as the Conv2d they are; its IF adds the input as it is
  (``v += x``) and its LIF ignores ``r``, so snc writes ``r = 1`` and divides
  each neuron's threshold and ``v_leak`` by its input gain (``dt * r`` for IF,
  ``r`` for LIF); CubaLIF is read as NIR defines it;
- **snnTorch** (``import_from_nir``): it assumes dt = 1e-4, requires
  ``r * dt / tau = 1`` (LIF) and ``w_in * dt / tau_syn = 1`` (CubaLIF), one
  threshold per layer, ``v_leak = 0``, and reads IF as a leaky neuron of
  beta 0.9; snc writes every neuron with snnTorch's dt, its per-step decays
  kept (an IF as a LIF whose decay is exactly 1 in float32) and the input
  gain divided into the threshold.

A neuron a reader cannot express (per-neuron gains for snnTorch, v_leak for
snnTorch, non-spiking outputs) is refused, naming it.
"""

from __future__ import annotations

import copy
from typing import Optional

import nir
import numpy as np

from snc.errors import GraphError

from .nir_io import NIR_DT, EXTENSIONS

READERS = ("snc", "norse", "snntorch")
SNNTORCH_DT = 1e-4
IF_AS_LIF_STEPS = 1e12  # tau / dt of a LIF that stands for an IF: 1 - 1e-12 is 1.0 in float32


def for_reader(graph: nir.NIRGraph, reader: str, constants: Optional[dict[str, np.ndarray]] = None) -> nir.NIRGraph:
    """``graph`` (snc's NIR semantics, dt in ``snc.dt``) as ``reader`` reads it (see the module docstring);
    ``constants``: Inputs whose value is the same every step, folded into biases."""
    if reader not in READERS:
        raise GraphError(f"unknown NIR convention {reader!r} for export; use one of {', '.join(READERS)}")
    if reader == "snc":
        return graph
    extensions = sorted(n for n, node in graph.nodes.items() if getattr(node, "TYPE", "") in EXTENSIONS)
    if extensions:
        raise GraphError(f"{reader} reads plain NIR; this graph has snc extension nodes: {', '.join(extensions)}")
    dt = float(graph.metadata.get("snc.dt", NIR_DT))
    nodes = {name: copy.copy(node) for name, node in graph.nodes.items()}
    edges = list(graph.edges)
    problems: list[str] = []
    for name, node in nodes.items():
        if isinstance(node, (nir.IF, nir.LIF, nir.CubaLIF)):
            nodes[name] = (_norse_neuron if reader == "norse" else _snntorch_neuron)(name, node, dt, problems)
        elif isinstance(node, (nir.SumPool2d, nir.AvgPool2d)) and reader == "norse":
            nodes[name] = _pool_as_conv(node)
        elif isinstance(node, (nir.LI, nir.CubaLI, nir.I, nir.Threshold, nir.Delay)):
            problems.append(f"{name}: {reader}'s reader has no {type(node).__name__}")
    if problems:
        raise GraphError(f"cannot write the graph for {reader}:\n  " + "\n  ".join(problems))
    _fold_constants(nodes, edges, dict(constants or {}), problems)
    _flat_inputs(nodes, edges)
    _batch_flatten(nodes)
    inputs = [n for n, node in nodes.items() if isinstance(node, nir.Input)]
    if len(inputs) != 1:
        problems.append(f"{reader}'s reader takes one input tensor; the graph has {len(inputs)} ({', '.join(inputs)}): "
                        "give the others' values (a denoiser: --at-step, its time embedding)")
    if problems:
        raise GraphError(f"cannot write the graph for {reader}:\n  " + "\n  ".join(problems))
    meta = {k: v for k, v in graph.metadata.items() if isinstance(v, (str, int, float))}
    meta["snc.nir_convention"] = reader
    if reader == "snntorch":
        meta["snc.dt"] = SNNTORCH_DT
    return nir.NIRGraph(nodes=nodes, edges=edges, metadata=meta, type_check=False)


def _f(node: nir.NIRNode, key: str) -> np.ndarray:
    return np.asarray(getattr(node, key), dtype=np.float64)


def _norse_neuron(name: str, node: nir.NIRNode, dt: float, problems: list[str]) -> nir.NIRNode:
    if isinstance(node, nir.CubaLIF):
        return node
    gain = dt * _f(node, "r") if isinstance(node, nir.IF) else _f(node, "r")
    if isinstance(node, nir.IF):
        return nir.IF(r=np.ones_like(gain), v_threshold=_f(node, "v_threshold") / gain, v_reset=_f(node, "v_reset"))
    return nir.LIF(tau=_f(node, "tau"), r=np.ones_like(gain), v_leak=_f(node, "v_leak") / gain,
                   v_threshold=_f(node, "v_threshold") / gain, v_reset=_f(node, "v_reset"))


def _snntorch_neuron(name: str, node: nir.NIRNode, dt: float, problems: list[str]) -> nir.NIRNode:
    thr = _f(node, "v_threshold")
    if isinstance(node, nir.IF):
        gain, decay = dt * _f(node, "r"), np.ones_like(thr)
    elif isinstance(node, nir.LIF):
        gain, decay = dt * _f(node, "r") / _f(node, "tau"), 1 - dt / _f(node, "tau")
    else:
        gain = dt / _f(node, "tau_mem") * _f(node, "r") * dt / _f(node, "tau_syn") * _f(node, "w_in")
        decay = 1 - dt / _f(node, "tau_mem")
    threshold = thr / gain
    if not np.allclose(threshold, threshold.flat[0], rtol=1e-6, atol=0):
        problems.append(f"{name}: snnTorch takes one threshold per layer; this one has different thresholds / "
                        "gains per neuron")
    if not isinstance(node, nir.IF) and np.any(_f(node, "v_leak") != 0):
        problems.append(f"{name}: snnTorch's reader refuses v_leak != 0")
    if np.any(_f(node, "v_reset") != 0):
        problems.append(f"{name}: snnTorch resets to 0")

    def tau(per_step_decay: np.ndarray) -> np.ndarray:
        steps = np.where(per_step_decay >= 1, IF_AS_LIF_STEPS, 1 / np.maximum(1 - per_step_decay, 1e-300))
        return SNNTORCH_DT * steps

    tau_mem = tau(decay)
    if isinstance(node, nir.CubaLIF):
        tau_syn = tau(1 - dt / _f(node, "tau_syn"))
        return nir.CubaLIF(tau_syn=tau_syn, tau_mem=tau_mem, r=tau_mem / SNNTORCH_DT, v_leak=np.zeros_like(thr),
                           v_threshold=threshold, v_reset=np.zeros_like(thr), w_in=tau_syn / SNNTORCH_DT)
    return nir.LIF(tau=tau_mem, r=tau_mem / SNNTORCH_DT, v_leak=np.zeros_like(thr), v_threshold=threshold,
                   v_reset=np.zeros_like(thr))


def _pool_as_conv(node: nir.NIRNode) -> nir.Conv2d:
    """A SumPool2d / AvgPool2d as the Conv2d it is: each channel's kernel of ones (over its area for AvgPool2d),
    written as a full C x C kernel (``nir.read`` mis-types a grouped conv's input and refuses the file)."""
    shape = tuple(int(v) for v in np.asarray(node.input_type["input"]))
    k = tuple(int(v) for v in np.broadcast_to(np.asarray(node.kernel_size), (2,)))
    area = 1.0 if isinstance(node, nir.SumPool2d) else float(k[0] * k[1])
    weight = np.eye(shape[0])[:, :, None, None] * np.ones((1, 1, *k)) / area
    conv = nir.Conv2d(shape[1:], weight, node.stride, node.padding, 1, 1, np.zeros(shape[0]))
    conv.input_type, conv.output_type = node.input_type, node.output_type
    return conv


def _fold_constants(nodes: dict, edges: list, constants: dict[str, np.ndarray], problems: list[str]) -> None:
    """Each constant Input (a value the same every step) removed, its value added to the bias of an Affine
    that feeds the same node (NIR sums a node's inputs)."""
    for name, value in constants.items():
        if not isinstance(nodes.get(name), nir.Input):
            problems.append(f"{name}: not an Input of the graph")
            continue
        for succ in [b for a, b in edges if a == name]:
            sibling = next((a for a, b in edges if b == succ and a != name and isinstance(nodes[a], nir.Affine)),
                           None)
            if sibling is None:
                problems.append(f"{name}: no Affine beside it into {succ} to carry it as a bias")
                continue
            node = copy.copy(nodes[sibling])
            node.bias = np.asarray(node.bias, dtype=np.float64) + np.asarray(value, dtype=np.float64).reshape(-1)
            nodes[sibling] = node
        del nodes[name]
        edges[:] = [e for e in edges if name not in e]


def _flat_inputs(nodes: dict, edges: list) -> None:
    """An Input whose only reader is a Flatten of every dimension becomes a flat Input, the Flatten gone."""
    for name in [n for n, node in nodes.items() if isinstance(node, nir.Input)]:
        succs = [b for a, b in edges if a == name]
        if len(succs) != 1 or not isinstance(nodes[succs[0]], nir.Flatten):
            continue
        flatten = succs[0]
        shape = np.asarray(nodes[name].input_type["input"])
        if int(nodes[flatten].start_dim) != 0 or int(nodes[flatten].end_dim) not in (-1, len(shape) - 1):
            continue
        nodes[name] = nir.Input(input_type=np.array([int(np.prod(shape))]))
        after = [b for a, b in edges if a == flatten]
        del nodes[flatten]
        edges[:] = [e for e in edges if flatten not in e] + [(name, b) for b in after]


def _batch_flatten(nodes: dict) -> None:
    """Every Flatten with its dims counted from the end (``start_dim - rank``): NIR's type inference reads
    them as before, and the readers' ``torch.nn.Flatten`` then leaves the batch alone."""
    for name, node in nodes.items():
        if isinstance(node, nir.Flatten):
            rank = int(np.asarray(node.input_type["input"]).size)
            node = nodes[name] = copy.copy(node)
            node.start_dim = int(node.start_dim) - rank if int(node.start_dim) >= 0 else int(node.start_dim)
            node.end_dim = int(node.end_dim) - rank if int(node.end_dim) >= 0 else int(node.end_dim)
