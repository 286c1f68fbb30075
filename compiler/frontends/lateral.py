"""The lateral-selection spiking transformer (paper 000, ``lateral-transformer``): export and host program.

The whole denoiser's graph: tokens as a (D, h, w) grid (token n at row
n // w, column n % w), so every per-token Linear is a 1x1 conv (BatchNorm
folded). Spike-driven attention's spike products are ``.kv_and`` and
``.q_and`` populations: memoryless LIFs (decay 0) of threshold 1.5 on two
unit inputs, a faithful AND; the token sum is a depthwise Conv2d of ones
over the grid into the ``kv_neuron`` population (D, 1, 1), broadcast back by
``snc.NearestUpsample2d``. Each expert's fc1 passes the gate
``<expert>.active`` (0 when the expert is idle for the whole call) and its
fc2 the gate ``<expert>.weight`` (h[t], eq. 13), both ``snc.Gate``; the
biases of gated ops are host inputs (``bias.<expert>.fc1``: the gate times
the fc1 bias; ``bias.<block>.experts``: sum of h[t] times the fc2 biases).
Residual sums are ``<block>.in`` / ``.mid`` / ``.out`` junctions. The
output is the last stream; the head and the mean over steps are host work.

``export_selection`` writes the lateral circuits alone (the family
``lateral-selection``): every block's Omega and its recurrent loop, driven by
``lateral.blocks.<r>``.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

import nir
import numpy as np
import torch

from snc.errors import SncError
from snc.models.lateral import LinearBN, SpikingLateralTransformer

from ..nir_io import NIR_DT, Gate, NearestUpsample2d, fix_grouped_conv_type
from .base import Family, Gates, HostProgram, broadcast
from .nir_builder import GraphBuilder, as_array, builder_for, fold_batchnorm, neuron_node

ARCHS = ("lateral-transformer",)
INPUTS = ("input: patch tokens + positions as a (D, h, w) grid, the same every inner step; temb.<block>: "
          "host-computed time-embedding bias; bias.<...>: the biases of gated ops, gate values times the op's "
          "bias (per step); gates (snc.Gate keys): the host's per-call values")


def to_grid(tokens: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """[..., tokens, D] -> [..., D, h, w] (token n at row n // w, column n % w)."""
    return tokens.transpose(-1, -2).reshape(*tokens.shape[:-2], *shape)


def from_grid(grid: torch.Tensor) -> torch.Tensor:
    """[..., D, h, w] -> [..., tokens, D]."""
    return grid.flatten(-2).transpose(-1, -2)


def _linear_bn(b: GraphBuilder, name: str, layer: LinearBN, shape, *sources: str, with_bias: bool = True) -> str:
    """A per-token Linear + BatchNorm on a (C, h, w) token grid: a 1x1 conv with the BN folded."""
    weight, bias = fold_batchnorm(layer.fc.weight, layer.fc.bias, layer.bn)
    if not with_bias:
        bias = np.zeros_like(bias)
    return b.add(name, nir.Conv2d(input_shape=tuple(shape[1:]), weight=weight[:, :, None, None], stride=1,
                                  padding=0, dilation=1, groups=1, bias=bias), *sources)


@torch.no_grad()
def export(model: SpikingLateralTransformer, arch: str) -> nir.NIRGraph:
    b = builder_for(model)
    cfg = model.config
    side = cfg.img_size // cfg.patch
    grid = (cfg.hidden, side, side)
    stream = b.add("input", nir.Input(input_type=np.array(grid)))
    for r, block in enumerate(model.blocks):
        name, att = f"blocks.{r}", block.attention
        x = b.junction(f"{name}.in", grid, stream, b.add(f"temb.{name}", nir.Input(input_type=np.array(grid))))
        s1 = b.neuron(f"{name}.neuron1", block.neuron1, grid, x)
        q, k, v = (b.neuron(f"{name}.attention.{p}_neuron", getattr(att, f"{p}_neuron"), grid,
                            _linear_bn(b, f"{name}.attention.{p}", getattr(att, p), grid, s1)) for p in "qkv")
        kv_and = b.spike_and(f"{name}.attention.kv_and", grid, k, v)
        token_sum = b.add(f"{name}.attention.token_sum", fix_grouped_conv_type(nir.Conv2d(  # ones on each channel
            input_shape=(side, side), weight=np.ones((cfg.hidden, 1, side, side), b.dtype), stride=side, padding=0,
            dilation=1, groups=cfg.hidden, bias=np.zeros(cfg.hidden, b.dtype))), kv_and)
        kv = b.neuron(f"{name}.attention.kv_neuron", att.kv_neuron, (cfg.hidden, 1, 1), token_sum)
        broadcast_kv = b.add(f"{name}.attention.broadcast",
                             NearestUpsample2d(input_shape=np.array([cfg.hidden, 1, 1]), scale=side), kv)
        q_and = b.spike_and(f"{name}.attention.q_and", grid, q, broadcast_kv)
        mid = b.junction(f"{name}.mid", grid, x, _linear_bn(b, f"{name}.attention.proj", att.proj, grid, q_and))
        s2 = b.neuron(f"{name}.neuron2", block.neuron2, grid, mid)
        outs = [mid]
        for i, expert in enumerate(block.experts):
            e = f"{name}.experts.{i}"
            hidden = (expert.fc1.fc.out_features, side, side)
            fc1 = _linear_bn(b, f"{e}.fc1", expert.fc1, grid, s2, with_bias=False)
            active = b.add(f"{e}.active", Gate(input_shape=np.array(hidden), key=f"{e}.active"), fc1)
            fc1_bias = b.add(f"bias.{e}.fc1", nir.Input(input_type=np.array(hidden)))
            spikes = b.neuron(f"{e}.neuron", expert.neuron, hidden, active, fc1_bias)
            fc2 = _linear_bn(b, f"{e}.fc2", expert.fc2, hidden, spikes, with_bias=False)
            outs.append(b.add(f"{e}.weight", Gate(input_shape=np.array(grid), key=f"{e}.weight"), fc2))
        outs.append(b.add(f"bias.{name}.experts", nir.Input(input_type=np.array(grid))))
        stream = b.junction(f"{name}.out", grid, *outs)
    b.add("output", nir.Output(output_type=np.array(grid)), stream)
    return b.graph(arch, cfg.timestep, INPUTS, **{"snc.layout": "token-grid"})


class LateralHost(HostProgram):
    """Inputs: the token grid, time-embedding biases and the gated biases of the experts; gates: the
    model's selection (``<expert>.weight`` = h[t], ``<expert>.active`` = 1: the model runs every expert;
    ``specialise_selection`` switches the idle ones off per diffusion step)."""

    def core_inputs(self, x: torch.Tensor, t: torch.Tensor, gates: Optional[Gates]) -> dict[str, torch.Tensor]:
        x_seq = self.model.encode(x)
        steps = x_seq.shape[0]
        biases = self.model.time_biases(t)
        inputs = {"input": to_grid(x_seq, self.input_shape("input"))}
        for r, block in enumerate(self.model.blocks):
            name = f"blocks.{r}"
            inputs[f"temb.{name}"] = broadcast(biases[name].unsqueeze(0).expand(steps, -1, -1),
                                               self.input_shape(f"temb.{name}"))
            experts = [(f"{name}.experts.{i}", expert) for i, expert in enumerate(block.experts)]
            for e, expert in experts:  # an expert's fc1 bias times its on/off gate
                inputs[f"bias.{e}.fc1"] = broadcast(_gated_bias(expert.fc1, f"{e}.active", gates, x_seq),
                                                    self.input_shape(f"bias.{e}.fc1"))
            # the experts' fc2 biases, each times its weight h[t]
            inputs[f"bias.{name}.experts"] = broadcast(sum(_gated_bias(expert.fc2, f"{e}.weight", gates, x_seq)
                                                           for e, expert in experts),
                                                       self.input_shape(f"bias.{name}.experts"))
        return inputs

    def decode(self, readout: torch.Tensor, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.model.decode(from_grid(readout))

    def population_spikes(self, name: str, recorded: dict[str, torch.Tensor]) -> torch.Tensor:
        out = recorded[name]
        if out.dim() == 4:  # [T, B, tokens, C] -> [T, B, C, h, w]
            out = to_grid(out, tuple(np.shape(self.nir_graph.nodes[name].v_threshold)))
        return out

    def gate_values(self, t: torch.Tensor) -> dict[str, torch.Tensor]:
        with torch.no_grad():
            h, _ = self.model.selection(t)  # [depth, T, B, N]
        gates = {}
        for r in range(h.shape[0]):
            for i in range(h.shape[-1]):
                gates[f"blocks.{r}.experts.{i}.weight"] = h[r, :, :, i].T
                gates[f"blocks.{r}.experts.{i}.active"] = torch.ones_like(h[r, :, :, i].T)
        return gates

    def host_work(self, specialised: bool = True) -> dict[str, Callable[[], Any]]:
        """The base parts, and the router per call when the selection is not specialised (else a table read)."""
        parts = super().host_work(specialised)
        if not specialised:
            t = torch.full((1,), self.config.diffusion_steps // 2, dtype=torch.long)
            with torch.no_grad():
                temb = self.model.time_embedding(t)
            parts["router"] = lambda: [b.selection.logits(temb) for b in self.model.blocks]
        return parts


def _gated_bias(layer: LinearBN, key: str, gates: Optional[Gates], like: torch.Tensor) -> torch.Tensor:
    """[T, B, C]: the gate ``key``'s values times the layer's folded bias ``BN(fc(0))``."""
    if gates is None:
        raise SncError(f"the host input for gate {key} needs the call's gate values")
    bias = layer(torch.zeros(1, layer.fc.in_features, dtype=like.dtype))[0]
    g = torch.as_tensor(gates[key], dtype=like.dtype)
    return g[:, None, None] * bias.expand(like.shape[1], -1)


# --- the lateral circuits alone ---------------------------------------------------------------------
@torch.no_grad()
def export_selection(model: SpikingLateralTransformer) -> nir.NIRGraph:
    """NIR graph of the lateral circuits of every block of a lateral transformer (paper 000, eqs. 10-11).

    Per block r: input ``lateral.blocks.r`` (the host's ``A_agg l``, constant
    over the inner steps) into the LIF population ``blocks.r.selection.omega``
    (N neurons), whose spikes return through a ``Delay`` of one step and an
    ``Affine`` of ``gamma A_agg`` (``.lateral``): Omega integrates
    ``A_agg l + gamma A_agg delta[t-1]``, the model's update order. The output
    is every block's spikes delta, concatenated: the host turns them into the
    selection (``selection_from_spikes``). The experts and attention of the
    blocks are not in this graph.
    """
    b = builder_for(model)
    cfg, dtype = model.config, b.dtype
    n, outs = cfg.experts, []
    for r, block in enumerate(model.blocks):
        sel, name = block.selection, f"blocks.{r}.selection"
        drive = b.add(f"lateral.blocks.{r}", nir.Input(input_type=np.array([n])))
        omega = b.add(f"{name}.omega", neuron_node(sel.omega, (n,), dtype), drive)
        delay = b.add(f"{name}.delay", nir.Delay(delay=np.full(n, NIR_DT)), omega)
        lateral = b.add(f"{name}.lateral", nir.Affine(weight=as_array(sel.recurrent_weights()),
                                                       bias=np.zeros(n, dtype)), delay)
        b.edges.append((lateral, omega))  # the loop: Omega reads its own spikes of the previous step
        place = np.zeros((cfg.depth * n, n), dtype)
        place[r * n:(r + 1) * n] = np.eye(n)
        outs.append(b.add(f"{name}.read", nir.Affine(weight=place, bias=np.zeros(cfg.depth * n, dtype)), omega))
    b.add("output", nir.Output(output_type=np.array([cfg.depth * n])), *outs)
    return b.graph("lateral-selection", cfg.timestep,
                   "lateral.blocks.<r>: A_agg l of block r's router, constant over the inner steps")


def _export_selection(model: SpikingLateralTransformer, arch: str) -> nir.NIRGraph:
    return export_selection(model)


class SelectionHost(HostProgram):
    """The lateral circuits' inputs: each block's drive ``A_agg l`` from its router, over the inner steps."""

    def core_inputs(self, x: torch.Tensor, t: torch.Tensor, gates: Optional[Gates]) -> dict[str, torch.Tensor]:
        steps = self.config.timestep
        inputs = {}
        for r, block in enumerate(self.model.blocks):
            drive = block.selection.drive(self.model.time_embedding(t))
            inputs[f"lateral.blocks.{r}"] = drive.unsqueeze(0).expand(steps, *drive.shape)
        return inputs


FAMILY = Family(ARCHS, export, LateralHost)
# the lateral circuits alone: ``frontends.deployable(model, "lateral-selection")``
SELECTION = Family(("lateral-selection",), _export_selection, SelectionHost)
