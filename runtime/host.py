"""The host side of a denoiser call: what feeds the exported spiking core.

The NIR graph's inputs are ``input`` (the analog image, the same every
spiking step), ``temb.<block>`` (each block's time-embedding bias,
computed once per call on the host and broadcast over the block's pixels)
and ``lateral.<block>`` (a lateral circuit's drive ``A_agg l`` from its router).
"""

from __future__ import annotations

import nir
import torch
from torch import nn

from snc.errors import GraphError


@torch.no_grad()
def core_inputs(model: nn.Module, graph: nir.NIRGraph, x: torch.Tensor, t: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-step inputs [T, B, ...] of every graph Input node for images x and steps t."""
    x_seq = model.encode(x)
    steps, batch = x_seq.shape[:2]
    biases = model.time_biases(t)
    inputs = {}
    for name, node in graph.inputs.items():
        shape = tuple(int(v) for v in node.input_type["input"])
        if name == "input":
            inputs[name] = x_seq
        elif name.startswith("lateral.") and hasattr(model, "blocks"):  # a lateral circuit's drive A_agg l
            drive = model.get_submodule(name[len("lateral."):]).selection.drive(model.time_embedding(t))
            inputs[name] = drive.unsqueeze(0).expand(steps, *drive.shape)
        elif name.startswith("temb.") and name[len("temb."):] in biases:
            bias = biases[name[len("temb."):]]  # [B, C]
            view = bias.view(batch, bias.shape[1], *([1] * (len(shape) - 1)))
            inputs[name] = view.expand(batch, *shape).unsqueeze(0).expand(steps, *([-1] * (len(shape) + 1)))
        else:
            raise GraphError(f"graph input {name!r} has no host-side source in this model")
    return inputs
