"""The host side of a denoiser call: what feeds the exported spiking core.

The NIR graph's inputs are ``input`` (the analog image, the same every
spiking step; for the lateral transformer its patch tokens + positions as a
(D, h, w) grid), ``temb.<block>`` (each block's time-embedding bias,
computed once per call on the host and broadcast over the block's pixels),
``lateral.<block>`` (a lateral circuit's drive ``A_agg l`` from its router)
and ``bias.<...>`` (the biases of gated ops, scaled by the call's gates).

Gates (``snc.Gate`` keys) of the lateral transformer: ``<expert>.weight``
is the expert's h[t] of eq. 13 from the model's selection, ``<expert>.active``
is 1 (the model runs every expert; ``specialise_selection`` switches the
idle ones off per diffusion step).
"""

from __future__ import annotations

import nir
import numpy as np
import torch
from torch import nn

from snc.errors import GraphError, SncError

Gates = dict[str, np.ndarray]  # key -> [T] values of one call


def token_layout(graph: nir.NIRGraph) -> bool:
    """True when the graph holds token sequences as (D, h, w) grids (the lateral transformer)."""
    return graph.metadata.get("snc.layout") == "token-grid"


def to_grid(tokens: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """[..., tokens, D] -> [..., D, h, w] (token n at row n // w, column n % w)."""
    return tokens.transpose(-1, -2).reshape(*tokens.shape[:-2], *shape)


def from_grid(grid: torch.Tensor) -> torch.Tensor:
    """[..., D, h, w] -> [..., tokens, D]."""
    return grid.flatten(-2).transpose(-1, -2)


@torch.no_grad()
def gate_values(model: nn.Module, t: torch.Tensor) -> dict[str, torch.Tensor]:
    """The model's value of every gate for diffusion steps t: key -> [len(t), T]."""
    if not hasattr(model, "selection"):
        return {}
    h, _ = model.selection(t)  # [depth, T, B, N]
    gates = {}
    for r in range(h.shape[0]):
        for i in range(h.shape[-1]):
            gates[f"blocks.{r}.experts.{i}.weight"] = h[r, :, :, i].T
            gates[f"blocks.{r}.experts.{i}.active"] = torch.ones_like(h[r, :, :, i].T)
    return gates


@torch.no_grad()
def core_inputs(model: nn.Module, graph: nir.NIRGraph, x: torch.Tensor, t: torch.Tensor,
                gates: Gates | None = None) -> dict[str, torch.Tensor]:
    """Per-step inputs [T, B, ...] of every graph Input node for images x, steps t and the call's gates."""
    x_seq = model.encode(x)
    steps, batch = x_seq.shape[:2]
    biases = model.time_biases(t)
    inputs = {}
    for name, node in graph.inputs.items():
        shape = tuple(int(v) for v in node.input_type["input"])
        if name == "input":
            inputs[name] = to_grid(x_seq, shape) if token_layout(graph) else x_seq
        elif name.startswith("lateral.") and hasattr(model, "blocks"):  # a lateral circuit's drive A_agg l
            drive = model.get_submodule(name[len("lateral."):]).selection.drive(model.time_embedding(t))
            inputs[name] = drive.unsqueeze(0).expand(steps, *drive.shape)
        elif name.startswith("temb.") and name[len("temb."):] in biases:
            inputs[name] = _broadcast(biases[name[len("temb."):]].unsqueeze(0).expand(steps, -1, -1), shape)
        elif name.startswith("bias.") and hasattr(model, "blocks"):
            inputs[name] = _broadcast(_gated_bias(model, name[len("bias."):], gates, x_seq), shape)
        else:
            raise GraphError(f"graph input {name!r} has no host-side source in this model")
    return inputs


def _broadcast(per_channel: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """[T, B, C] -> [T, B, *shape] (the same value over a channel's pixels)."""
    steps, batch, c = per_channel.shape
    return per_channel.view(steps, batch, c, *([1] * (len(shape) - 1))).expand(steps, batch, *shape)


def _gated_bias(model: nn.Module, target: str, gates: Gates | None, like: torch.Tensor) -> torch.Tensor:
    """[T, B, C]: an expert's fc1 bias times its ``.active`` gate (``<expert>.fc1``), or the sum over a
    block's experts of h[t] times the fc2 bias (``<block>.experts``)."""
    if gates is None:
        raise SncError(f"the host input bias.{target} needs the call's gate values")
    steps, batch = like.shape[:2]

    def scaled(module: nn.Module, key: str) -> torch.Tensor:
        bias = module(torch.zeros(1, module.fc.in_features, dtype=like.dtype))[0]  # BN(fc(0)): the folded bias
        g = torch.as_tensor(gates[key], dtype=like.dtype)
        return g[:, None, None] * bias.expand(batch, -1)

    if target.endswith(".fc1"):
        expert = target[: -len(".fc1")]
        return scaled(model.get_submodule(expert).fc1, f"{expert}.active")
    if not target.endswith(".experts"):
        raise GraphError(f"graph input bias.{target} has no host-side source in this model")
    block = target[: -len(".experts")]
    experts = model.get_submodule(block).experts
    return sum(scaled(e.fc2, f"{block}.experts.{i}.weight") for i, e in enumerate(experts))
