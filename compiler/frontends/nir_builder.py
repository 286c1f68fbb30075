"""What every model family's exporter shares: writing one spiking step of a model as a NIR graph.

- BatchNorm (eval statistics) folded into the preceding conv / affine
  (``fold_batchnorm``, float64 arithmetic).
- Neurons as NIR IF (decay 1) or LIF with full-shape parameter arrays and dt
  baked in (``neuron_node``, see ``nir_io``); ``v >= thr`` neurons get the
  largest threshold below thr in their dtype, so NIR's strict ``v > thr`` is
  the same test. A spike AND is a memoryless LIF of threshold 1.5 on two
  unit inputs, marked ``snc.role = and``.
- Real-valued sums as an explicit junction node: a ``Scale`` of ones (NIR
  sums the edges into a node; the Scale makes a real-valued stream a single
  node later layers read).

Node names follow the torch module paths, so every node traces to its module.
"""

from __future__ import annotations

import nir
import numpy as np
import torch
from torch import nn

from snc.errors import SncError
from snc.models.neurons import IFNeuron, LIFNeuron, NeuronConfig

from ..nir_io import NIR_DT

FORMAT = "snc-nir"
FORMAT_VERSION = 1
# a spike AND as a neuron: no memory (decay 0), fires on two unit inputs (2 > 1.5), not on one
AND_NEURON = NeuronConfig(threshold=1.5, decay=0.0)


def as_array(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().numpy().copy()


def bn_scale(bn: nn.BatchNorm2d) -> torch.Tensor:
    """An eval-mode BatchNorm's per-channel factor (float64): BN(z) = scale * z + shift."""
    return bn.weight.double() / torch.sqrt(bn.running_var.double() + bn.eps)


def fold_batchnorm(weight: torch.Tensor, bias: torch.Tensor | None, bn: nn.BatchNorm2d) -> tuple[np.ndarray, np.ndarray]:
    """Conv/affine weights with an eval-mode BatchNorm after them folded in (float64 math)."""
    dtype = weight.dtype
    scale = bn_scale(bn)
    w = weight.double() * scale.view(-1, *([1] * (weight.dim() - 1)))
    b = bias.double() if bias is not None else torch.zeros_like(scale)
    b = (b - bn.running_mean.double()) * scale + bn.bias.double()
    return as_array(w.to(dtype)), as_array(b.to(dtype))


def _threshold(config: NeuronConfig, dtype: np.dtype) -> np.ndarray:
    """NIR's threshold (it fires at ``v > thr``) for ``config``'s test: ``v >= thr`` neurons get the largest
    value below their threshold in ``dtype``."""
    thr = np.array(config.threshold, dtype=dtype)
    return np.nextafter(thr, np.array(-np.inf, dtype=dtype)) if config.fire_at_threshold else thr


def neuron_node(config: NeuronConfig, shape: tuple[int, ...], dtype: np.dtype) -> nir.NIRNode:
    """NIR IF / LIF equal, under Euler steps of NIR_DT, to ``IFNeuron(config)``."""
    thr = _threshold(config, dtype)
    full = lambda v: np.full(shape, v, dtype=dtype)  # noqa: E731
    if config.decay == 1.0:
        return nir.IF(r=full(1.0 / NIR_DT), v_threshold=full(thr), v_reset=full(0.0))
    tau = NIR_DT / (1.0 - config.decay)
    return nir.LIF(tau=full(tau), r=full(tau / NIR_DT), v_leak=full(0.0), v_threshold=full(thr), v_reset=full(0.0))


def lif_node(neuron: LIFNeuron, shape: tuple[int, ...], dtype: np.dtype) -> nir.LIF:
    """SpikingJelly's LIF (``H = V + (X - V) / tau``, a spike at ``H >= thr``, hard reset to 0) as NIR's LIF:
    under Euler steps of NIR_DT, ``v += dt/tau' (v_leak - v + r x)`` is that charge with ``tau' = tau dt``,
    ``r = 1``, ``v_leak = 0``."""
    full = lambda v: np.full(shape, v, dtype=dtype)  # noqa: E731
    return nir.LIF(tau=full(neuron.tau * NIR_DT), r=full(1.0), v_leak=full(0.0),
                   v_threshold=full(_threshold(neuron.config, dtype)), v_reset=full(0.0))


def conv_out(conv: nn.Conv2d, shape: tuple[int, int, int]) -> tuple[int, int, int]:
    """(C, H, W) after ``conv`` of a (C_in, H, W) input."""
    _, h, w = shape
    k, s, p = conv.kernel_size[0], conv.stride[0], conv.padding[0]
    return conv.out_channels, (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1


class GraphBuilder:
    """Nodes and edges of a NIR graph under construction, with the node kinds every exporter writes."""

    def __init__(self, dtype: np.dtype) -> None:
        self.nodes: dict[str, nir.NIRNode] = {}
        self.edges: list[tuple[str, str]] = []
        self.dtype = dtype

    def add(self, name: str, node: nir.NIRNode, *sources: str) -> str:
        if name in self.nodes:
            raise AssertionError(f"duplicate NIR node name {name}")
        self.nodes[name] = node
        self.edges.extend((s, name) for s in sources)
        return name

    def conv(self, name: str, weight: np.ndarray, bias: np.ndarray, conv: nn.Conv2d, shape, *sources: str) -> str:
        """A NIR Conv2d with ``conv``'s geometry and the given (folded) weights, on a (C, H, W) input."""
        return self.add(name, nir.Conv2d(input_shape=tuple(shape[1:]), weight=weight, stride=conv.stride,
                                         padding=conv.padding, dilation=conv.dilation, groups=conv.groups,
                                         bias=bias), *sources)

    def neuron(self, name: str, module: nn.Module, shape, *sources: str) -> str:
        if isinstance(module, LIFNeuron):
            return self.add(name, lif_node(module, tuple(shape), self.dtype), *sources)
        if not isinstance(module, IFNeuron):
            raise SncError("only spiking models export to NIR (this one is an ANN twin)")
        return self.add(name, neuron_node(module.config, tuple(shape), self.dtype), *sources)

    def spike_and(self, name: str, shape, a: str, b: str) -> str:
        node = neuron_node(AND_NEURON, tuple(shape), self.dtype)
        node.metadata = {"snc.role": "and"}  # a logic gate: threshold guidance must leave it alone
        return self.add(name, node, a, b)

    def junction(self, name: str, shape, *sources: str) -> str:
        """A real-valued sum of ``sources`` as one node (a Scale of ones: NIR sums a node's inputs)."""
        return self.add(name, nir.Scale(scale=np.ones(shape, dtype=self.dtype)), *sources)

    def graph(self, arch: str, timestep: int, inputs: str, **extra: object) -> nir.NIRGraph:
        metadata = {"snc.format": FORMAT, "snc.format_version": FORMAT_VERSION, "snc.arch": arch, "snc.dt": NIR_DT,
                    "snc.timestep": timestep, "snc.inputs": inputs, **extra}
        return nir.NIRGraph(nodes=self.nodes, edges=self.edges, metadata=metadata)


def builder_for(model: nn.Module) -> GraphBuilder:
    """A builder in the model's parameter dtype; the model must be in eval mode (BatchNorm statistics)."""
    if model.training:
        raise SncError("export needs the model in eval mode (BatchNorm running statistics)")
    return GraphBuilder(next(model.parameters()).detach().numpy().dtype)
