"""Reference float executor of a NIR graph (with snc extension nodes), in torch.

Discrete time with Euler steps of ``dt`` (snc exports with ``NIR_DT``).
At each step every node reads the sum of its predecessors' outputs *of the
same step* (NIR edges carry no delay) and the nodes run in topological order,
so every cycle must pass a Delay. Neurons (forward Euler, then spike test):

- IF:  ``v += dt * r * I``; spike if ``v > v_threshold``; then ``v = v_reset``
- snc.SubtractiveIF: IF from ``v = v_initial``; a spike subtracts ``v_threshold``
- LIF: ``v += dt / tau * (v_leak - v + r * I)``; same spike and reset
- CubaLIF: ``i += dt / tau_syn * (w_in * I - i)``, then LIF on i with tau_mem
  (the current of the same step drives v: NIR's and Lava's order)
- LI / I / CubaLI: as LIF / IF / CubaLIF without spiking; output v
- Threshold: ``I > threshold``
- snc.StepScale: ``scale[t] * I + bias`` at step t
- snc.Gate: ``g[key][t] * I`` with the call's gate values (``run(gates=...)``)
- Delay (whole steps of dt): its input of ``delay / dt`` steps before (0 at first)

Cycles are allowed when each passes a Delay (the recurrent connections).

It computes in the dtype of the inputs; run it in float64 to compare with a
float64 torch model without rounding noise. For training (``compiler/snn_finetune``),
``parameters`` replaces node fields by tensors (``"<node>.weight"``) and ``spike``
gives the spike function a surrogate gradient; neither changes the forward values.
"""

from __future__ import annotations

from typing import Callable, Mapping, Optional

import networkx as nx
import nir
import numpy as np
import torch
import torch.nn.functional as F

from snc.compiler.linear import zero_insert
from snc.compiler.nir_io import NIR_DT, Gate, NearestUpsample2d, StepScale, SubtractiveIF, ZeroInsert2d
from snc.compiler.nir_normalise import conv_padding, pairs
from snc.errors import GraphError

State = dict


def _t(a: np.ndarray, like: torch.Tensor) -> torch.Tensor:
    return torch.as_tensor(np.asarray(a), dtype=like.dtype, device=like.device)


Field = Callable[[str, torch.Tensor], torch.Tensor]  # a node's field as a tensor like the input
Spike = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (v, threshold) -> spikes as v's dtype


def _stateless(node: nir.NIRNode, field: Optional[Field] = None) -> Callable[[torch.Tensor], torch.Tensor] | None:
    field = field or (lambda name, x: _t(getattr(node, name), x))
    if isinstance(node, nir.Affine):
        return lambda x: F.linear(x, field("weight", x), field("bias", x))
    if isinstance(node, nir.Linear):
        return lambda x: F.linear(x, field("weight", x))
    if isinstance(node, nir.Scale):
        return lambda x: x * _t(node.scale, x)
    if isinstance(node, (nir.Conv1d, nir.Conv2d)):
        spatial = 1 if isinstance(node, nir.Conv1d) else 2
        pads = [p for pair in reversed(conv_padding(node, spatial)) for p in pair]  # F.pad: last axis first
        conv = F.conv1d if spatial == 1 else F.conv2d
        return lambda x: conv(F.pad(x, pads), field("weight", x), field("bias", x).reshape(-1),
                              pairs(node.stride, spatial), 0, pairs(node.dilation, spatial), int(node.groups))
    if isinstance(node, nir.Flatten):
        end = node.end_dim + 1 if node.end_dim >= 0 else node.end_dim
        return lambda x: x.flatten(node.start_dim + 1, end)  # +1: batch dimension first
    if isinstance(node, nir.SumPool2d):
        k, s, p = (pairs(v, 2) for v in (node.kernel_size, node.stride, node.padding))
        return lambda x: F.avg_pool2d(x, k, s, p, divisor_override=1)
    if isinstance(node, nir.AvgPool2d):
        k, s, p = (pairs(v, 2) for v in (node.kernel_size, node.stride, node.padding))
        return lambda x: F.avg_pool2d(x, k, s, p, count_include_pad=True)
    if isinstance(node, nir.Threshold):
        return lambda x: (x > _t(node.threshold, x)).to(x.dtype)
    if isinstance(node, NearestUpsample2d):
        return lambda x: F.interpolate(x, scale_factor=node.scale, mode="nearest")
    if isinstance(node, ZeroInsert2d):
        return lambda x: zero_insert(x, node.scale)
    return None


NEURONS = (nir.IF, nir.LIF, nir.LI, nir.I, nir.CubaLIF, nir.CubaLI)


def heaviside(v: torch.Tensor, threshold: torch.Tensor) -> torch.Tensor:
    """The spike function: 1 where ``v > threshold``."""
    return (v > threshold).to(v.dtype)


def _neuron_step(node: nir.NIRNode, state: tuple, x: torch.Tensor, dt: float,
                 spike: Spike = heaviside) -> tuple[torch.Tensor, tuple]:
    """One Euler step from state (v, synaptic current); returns (output, new state)."""
    v, i = state
    if isinstance(node, (nir.CubaLIF, nir.CubaLI)):  # the current of this step drives v (Lava's, NIR's order)
        i = i + dt / _t(node.tau_syn, x) * (_t(node.w_in, x) * x - i)
        x = i
        tau = _t(node.tau_mem, x)
    elif isinstance(node, (nir.LIF, nir.LI)):
        tau = _t(node.tau, x)
    if isinstance(node, (nir.IF, nir.I)):
        v = v + dt * _t(node.r, x) * x
    else:
        v = v + dt / tau * (_t(node.v_leak, x) - v + _t(node.r, x) * x)
    if isinstance(node, (nir.LI, nir.I, nir.CubaLI)):
        return v, (v, i)
    threshold = _t(node.v_threshold, x)
    spikes = spike(v, threshold)
    if isinstance(node, SubtractiveIF):
        return spikes, (v - spikes * threshold, i)
    return spikes, (torch.where(spikes > 0, _t(node.v_reset, x), v), i)


class NIRReference:
    """``run(inputs)`` executes T steps; inputs and outputs map node names to [T, B, ...]. ``parameters``:
    tensors used instead of node fields, by ``"<node>.<field>"`` (weights being trained); ``spike``: the
    spike function (a surrogate-gradient one for training)."""

    def __init__(self, graph: nir.NIRGraph, dt: float = NIR_DT,
                 parameters: Optional[Mapping[str, torch.Tensor]] = None,
                 spike: Spike = heaviside) -> None:
        unsupported = sorted(
            {f"{n} ({type(node).__name__})" for n, node in graph.nodes.items()
             if not isinstance(node, (nir.Input, nir.Output, StepScale, Gate, nir.Delay, *NEURONS))
             and _stateless(node) is None}
        )
        if unsupported:
            raise GraphError(f"the NIR reference executor does not support: {', '.join(unsupported)}")
        delays = {n for n, node in graph.nodes.items() if isinstance(node, nir.Delay)}
        g = nx.DiGraph()
        g.add_nodes_from(graph.nodes)
        g.add_edges_from(e for e in graph.edges if e[1] not in delays)  # a delay's output is known at a step's start
        if not nx.is_directed_acyclic_graph(g):
            raise GraphError("the NIR reference executor needs every cycle to pass a Delay (edges carry no delay)")
        self.graph = graph
        self.dt = dt
        self.order = list(nx.topological_sort(g))
        every = nx.DiGraph(list(graph.edges))
        every.add_nodes_from(graph.nodes)
        self.preds = {n: list(every.predecessors(n)) for n in self.order}
        self.lags = {n: int(np.rint(np.asarray(graph.nodes[n].delay).flat[0] / dt)) for n in delays}
        bad = sorted(n for n, lag in self.lags.items()
                     if lag < 1 or not np.allclose(np.asarray(graph.nodes[n].delay) / dt, lag))
        if bad:
            raise GraphError(f"Delay nodes {', '.join(bad)} are not a whole number (>= 1) of steps dt")
        self.parameters = dict(parameters or {})
        unknown = sorted(k for k in self.parameters if k.rpartition(".")[0] not in graph.nodes)
        if unknown:
            raise GraphError(f"parameters of no node: {', '.join(unknown)}")
        self.spike = spike
        self.ops = {n: _stateless(node, self._field(n, node)) for n, node in graph.nodes.items()}

    def _field(self, name: str, node: nir.NIRNode) -> Field:
        def field(key: str, x: torch.Tensor) -> torch.Tensor:
            given = self.parameters.get(f"{name}.{key}")
            return _t(getattr(node, key), x) if given is None else given.to(x.dtype)
        return field

    def run(self, inputs: dict[str, torch.Tensor], record: bool = False,
            gates: dict[str, np.ndarray] | None = None) -> dict[str, torch.Tensor]:
        """Outputs per Output node; with ``record``, every node's output per step; ``gates``: values [T] per
        snc.Gate key."""
        missing = sorted(set(self.graph.inputs) - set(inputs))
        missing += sorted(f"gate {n.key}" for n in self.graph.nodes.values()
                          if isinstance(n, Gate) and n.key not in (gates or {}))
        if missing:
            raise GraphError(f"missing graph inputs: {', '.join(missing)}")
        steps = next(iter(inputs.values())).shape[0]
        short = sorted(n for n, node in self.graph.nodes.items() if isinstance(node, StepScale) and node.scale.size < steps)
        if short:
            raise GraphError(f"{steps} steps, but the per-step scales of {', '.join(short)} are shorter")
        state: State = {}
        trace: dict[str, list[torch.Tensor]] = {}
        delayed: dict[str, list[torch.Tensor]] = {name: [] for name in self.lags}  # each delay's inputs so far
        first = next(iter(inputs.values()))
        for t in range(steps):
            values: dict[str, torch.Tensor] = {}
            for name, lag in self.lags.items():  # fixed at the end of step t - lag
                shape = tuple(int(v) for v in self.graph.nodes[name].input_type["input"])
                values[name] = delayed[name][t - lag] if t >= lag else first.new_zeros((first.shape[1], *shape))
            for name in self.order:
                node = self.graph.nodes[name]
                if isinstance(node, nir.Input):
                    values[name] = inputs[name][t]
                    continue
                if name in self.lags:
                    continue
                x = sum(values[p] for p in self.preds[name])
                if isinstance(node, NEURONS):
                    zero = torch.zeros_like(x)
                    start = zero + _t(node.v_initial, x) if isinstance(node, SubtractiveIF) else zero
                    values[name], state[name] = _neuron_step(node, state.get(name, (start, zero)), x, self.dt,
                                                             self.spike)
                elif isinstance(node, nir.Output):
                    values[name] = x
                elif isinstance(node, StepScale):
                    values[name] = x * float(node.scale[t]) + _t(node.bias, x)
                elif isinstance(node, Gate):
                    values[name] = x * float(gates[node.key][t])
                else:
                    values[name] = self.ops[name](x)
            for name in self.lags:
                delayed[name].append(sum(values[p] for p in self.preds[name]))
            for name, value in values.items():
                if record or name in self.graph.outputs:
                    trace.setdefault(name, []).append(value)
        return {name: torch.stack(v) for name, v in trace.items()}
