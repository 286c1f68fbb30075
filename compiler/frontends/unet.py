"""The SDDPM / SDM spiking U-Net family (``spiking-unet``, ``spiking-unet-tsm``): export and host program.

The graph, per spiking step (the host runs it T times per call):

- Input ``input``: the analog image (direct encoding: the same image every
  step). Inputs ``temb.<block>``: the host-computed time-embedding bias of
  each residual block, broadcast over the block's pixels, constant over steps.
- Residual sums as junctions ``<block>.out``. Skip concatenation expressed
  NIR-natively: the consumer's weights are split by input channel into one
  node per concatenated part (``.main`` for the running stream, ``.skip``
  for the skip), the parts' outputs summed by NIR's edge semantics; the IF
  neurons in front of a concat split the same way (``<block>.neuron1.main``
  / ``.skip``: the host program maps them back to the module's channels).
- Nearest upsampling as the extension node ``snc.NearestUpsample2d``.
- SDM's TSM (``TSMConv2d``, p[t] times the conv output, bias included,
  before BatchNorm): ``BN(p[t] (W x + b)) = p[t] (s W x + s b) + c`` with the
  BatchNorm's scale s and shift c, so the conv node ``<conv>`` holds ``s W``
  and ``s b`` and the extension node ``<conv>.tsm`` (``snc.StepScale``)
  multiplies by p[t] and adds c.
- Output ``output``: the U-Net's last real-valued stream; the tail (BN,
  Swish, conv, the Conv3d over time, the 0.8-weighted sum) is host work.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import nir
import numpy as np
import torch
from torch import nn

from snc.errors import SncError
from snc.models.neurons import clips_for_export
from snc.models.unet import ResBlock, SpikingUNet, TSMConv2d, UpSample, conv_weights

from ..nir_io import NearestUpsample2d, StepScale
from .base import Family, HostProgram
from .nir_builder import GraphBuilder, as_array, bn_scale, builder_for, conv_out, fold_batchnorm

ARCHS = ("spiking-unet", "spiking-unet-tsm")
SPLIT_SUFFIXES = (".main", ".skip")
INPUTS = ("input: analog image, the same every spiking step; temb.<block>: host-computed time-embedding bias, "
          "constant over the spiking steps")


@dataclass
class _Stream:
    """A real-valued tensor of the network: the node that produces it and its shape."""

    node: str
    shape: tuple[int, int, int]  # (C, H, W)


def _conv_layer(b: GraphBuilder, name: str, layer: nn.Module, bn: Optional[nn.BatchNorm2d], shape, *sources: str,
                channels: slice = slice(None), with_bias: bool = True) -> str:
    """A conv (``nn.Conv2d`` or ``TSMConv2d``) on ``channels`` of its input, with ``bn`` folded in.

    Returns the node holding the result: the conv, or for TSM its ``.tsm`` StepScale.
    ``with_bias=False`` drops the constant terms (the other parts of a split concat carry them).
    """
    conv = conv_weights(layer)
    tsm = isinstance(layer, TSMConv2d)
    if bn is None:
        weight, bias = as_array(conv.weight), as_array(conv.bias)
        shift = np.zeros(conv.out_channels, dtype=weight.dtype)
    elif not tsm:  # the BatchNorm's shift folds into the conv's bias
        weight, bias = fold_batchnorm(conv.weight, conv.bias, bn)
    else:  # p[t] sits between the conv (bias included) and the shift: BN(p (Wx + b)) = p (sWx + sb) + c
        weight, shift = fold_batchnorm(conv.weight, None, bn)
        bias = as_array((conv.bias.double() * bn_scale(bn)).to(conv.bias.dtype))
    w = weight[:, channels].copy()
    bias_used = bias if with_bias else np.zeros(w.shape[0], dtype=w.dtype)
    node = b.conv(name, w, bias_used, conv, shape, *sources)
    if not tsm:
        return node
    out_shape = conv_out(conv, tuple(shape))
    c = shift if with_bias else np.zeros(w.shape[0], dtype=w.dtype)
    step = StepScale(input_shape=np.array(out_shape), scale=as_array(layer.tsmp).reshape(-1),
                     bias=np.broadcast_to(c[:, None, None], out_shape).copy())
    return b.add(f"{name}.tsm", step, node)


def _export_resblock(b: GraphBuilder, name: str, block: ResBlock, parts: list[_Stream]) -> _Stream:
    """IF -> conv1 -> BN -> +temb -> IF -> conv2 -> BN -> +shortcut, concat parts split."""
    suffixes = [""] if len(parts) == 1 else list(SPLIT_SUFFIXES)
    out_shape = conv_out(conv_weights(block.conv1), parts[0].shape)
    conv1_nodes, shortcut_nodes = [], []
    start = 0
    for part, suffix in zip(parts, suffixes):
        c = part.shape[0]
        sl = slice(start, start + c)
        spikes = b.neuron(f"{name}.neuron1{suffix}", block.neuron1, part.shape, part.node)
        # the biases enter once, with the first part
        conv1_nodes.append(_conv_layer(b, f"{name}.conv1{suffix}", block.conv1, block.bn1, part.shape, spikes,
                                       channels=sl, with_bias=start == 0))
        if isinstance(block.shortcut, nn.Identity):
            shortcut_nodes.append(part.node)  # identity shortcut: the stream itself
        else:
            shortcut_nodes.append(_conv_layer(b, f"{name}.shortcut{suffix}", block.shortcut, None, part.shape,
                                              part.node, channels=sl, with_bias=start == 0))
        start += c
    temb = b.add(f"temb.{name}", nir.Input(input_type=np.array(out_shape)))
    spikes2 = b.neuron(f"{name}.neuron2", block.neuron2, out_shape, *conv1_nodes, temb)
    conv2 = _conv_layer(b, f"{name}.conv2", block.conv2, block.bn2, out_shape, spikes2)
    return _Stream(b.junction(f"{name}.out", out_shape, conv2, *shortcut_nodes), out_shape)


def _export_resample(b: GraphBuilder, name: str, layer: nn.Module, stream: _Stream) -> _Stream:
    """DownSample: IF -> stride-2 conv + BN. UpSample: IF -> nearest x2 -> conv + BN."""
    spikes = b.neuron(f"{name}.neuron", layer.neuron, stream.shape, stream.node)
    shape = stream.shape
    if isinstance(layer, UpSample):
        up = NearestUpsample2d(input_shape=np.array(shape), scale=2)
        spikes = b.add(f"{name}.upsample", up, spikes)
        shape = tuple(int(v) for v in up.output_type["output"])
    node = _conv_layer(b, f"{name}.conv", layer.conv, layer.bn, shape, spikes)
    return _Stream(node, conv_out(conv_weights(layer.conv), shape))


@torch.no_grad()
def export(model: SpikingUNet, arch: str) -> nir.NIRGraph:
    """NIR graph of one spiking step of the U-Net's core (model in eval mode)."""
    b = builder_for(model)
    cfg = model.config
    shape = (cfg.img_ch, cfg.img_size, cfg.img_size)
    x = b.add("input", nir.Input(input_type=np.array(shape)))
    h = _conv_layer(b, "conv", model.conv, model.bn, shape, x)
    shape = conv_out(conv_weights(model.conv), shape)
    s = b.neuron("neuron", model.neuron, shape, h)
    stream = _Stream(_conv_layer(b, "conv_identity", model.conv_identity, model.bn_identity, shape, s), shape)
    skips = [stream]
    for i, layer in enumerate(model.downblocks):
        name = f"downblocks.{i}"
        if isinstance(layer, ResBlock):
            stream = _export_resblock(b, name, layer, [stream])
        else:
            stream = _export_resample(b, name, layer, stream)
        skips.append(stream)
    for i, layer in enumerate(model.middleblocks):
        stream = _export_resblock(b, f"middleblocks.{i}", layer, [stream])
    for i, layer in enumerate(model.upblocks):
        name = f"upblocks.{i}"
        if isinstance(layer, ResBlock):
            stream = _export_resblock(b, name, layer, [stream, skips.pop()])
        else:
            stream = _export_resample(b, name, layer, stream)
    b.add("output", nir.Output(output_type=np.array(stream.shape)), stream.node)
    return b.graph(arch, cfg.timestep, INPUTS, **{"snc.layout": "tensor"})


class UNetHost(HostProgram):
    """The default inputs (the image repeated over T, each block's time-embedding bias ``temb.<block>``);
    the populations of a split concatenation mapped back to their neurons' channels."""

    def population_spikes(self, name: str, recorded: dict[str, torch.Tensor]) -> torch.Tensor:
        """A neuron in front of a skip concatenation was split by channel into ``.main`` / ``.skip``."""
        for suffix in SPLIT_SUFFIXES:
            if name.endswith(suffix):
                module = name[: -len(suffix)]
                main = int(np.shape(self.nir_graph.nodes[module + ".main"].v_threshold)[0])
                out = recorded[module]
                return out[:, :, :main] if suffix == ".main" else out[:, :, main:]
        return recorded[name]


class _WithCore(nn.Module):
    """The model's output and, as a second output, its core's: the cut ``snc convert`` reads (``core_output``)."""

    def __init__(self, model: SpikingUNet) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        core = self.model.core(self.model.encode(x), self.model.time_biases(t))
        return self.model.decode(core), core


CORE_OUTPUT = "core"


@torch.no_grad()
def ann_to_onnx(model: SpikingUNet, path: Path, opset: int = 17) -> Path:
    """The U-Net's ANN twin (``spiking=False``; its QuantizedReLUs written as the Clips they are) as an ONNX file
    of torch's exporter with a dynamic batch: inputs ``x`` [B, C, H, W] and ``t`` [B], outputs ``eps`` and
    ``core`` (the core's output, where the host's tail starts; named in the metadata ``snc.core_output``, with
    ``snc.diffusion_steps``): what ``snc convert`` takes, its time embedding and tail kept for the host."""
    import onnx

    if model.config.spiking:
        raise SncError("an ONNX file holds the ANN twin (spiking=False), not the spiking U-Net")
    ann = clips_for_export(copy.deepcopy(model).float().eval())
    cfg = model.config
    x = torch.zeros(2, cfg.img_ch, cfg.img_size, cfg.img_size)
    t = torch.zeros(2, dtype=torch.long)
    path = Path(path)
    torch.onnx.export(_WithCore(ann), (x, t), str(path), input_names=["x", "t"], output_names=["eps", CORE_OUTPUT],
                      dynamic_axes={"x": {0: "batch"}, "t": {0: "batch"}, "eps": {0: "batch"}, CORE_OUTPUT: {1: "batch"}},
                      opset_version=opset)
    written = onnx.load(str(path))
    onnx.helper.set_model_props(written, {"snc.core_output": CORE_OUTPUT,
                                          "snc.diffusion_steps": str(cfg.diffusion_steps)})
    onnx.save(written, str(path))
    return path


FAMILY = Family(ARCHS, export, UNetHost, ann_to_onnx)
