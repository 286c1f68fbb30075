"""Export the spiking core of an snc denoiser to a NIR graph.

What the graph holds, per spiking step (the host runs it T times per call):

- Input ``input``: the analog image (direct encoding: the same image every
  step). Inputs ``temb.<block>``: the host-computed time-embedding bias of
  each block, broadcast over the block's pixels, constant over steps.
- BatchNorm (eval statistics) folded into the preceding conv / affine.
- Neurons as NIR IF (decay 1) or LIF with full-shape parameter arrays and dt
  baked in (see ``nir_io``); ``v >= thr`` neurons get the largest threshold
  below thr in their dtype, so NIR's strict ``v > thr`` is the same test.
- Residual sums as an explicit junction node: a ``Scale`` of ones named
  ``<block>.out`` (NIR sums the edges into a node; the Scale makes the real-
  valued stream a single node the next blocks read).
- Skip concatenation expressed NIR-natively: the consumer's weights are split
  by input channel into one node per concatenated part (``.main`` for the
  running stream, ``.skip`` for the skip), the parts' outputs summed by NIR's
  edge semantics; the IF neurons in front of a concat split the same way.
- Nearest upsampling as the extension node ``snc.NearestUpsample2d``.
- Output ``output``: the U-Net's last real-valued stream (the tail is host-side),
  or the MLP's readout currents.

- SDM's TSM (``TSMConv2d``, p[t] times the conv output, bias included,
  before BatchNorm): ``BN(p[t] (W x + b)) = p[t] (s W x + s b) + c`` with the
  BatchNorm's scale s and shift c, so the conv node ``<conv>`` holds ``s W``
  and ``s b`` and the extension node ``<conv>.tsm`` (``snc.StepScale``)
  multiplies by p[t] and adds c.

- The lateral transformer (paper 000): tokens as a (D, h, w) grid (token n
  at row n // w, column n % w), so every per-token Linear is a 1x1 conv
  (BatchNorm folded). Spike-driven attention's spike products are ``.kv_and``
  and ``.q_and`` populations: memoryless LIFs (decay 0) of threshold 1.5 on
  two unit inputs, a faithful AND; the token sum is a depthwise Conv2d of
  ones over the grid into the ``kv_neuron`` population (D, 1, 1), broadcast back by
  ``snc.NearestUpsample2d``. Each expert's fc1 passes the gate
  ``<expert>.active`` (0 when the expert is idle for the whole call) and its
  fc2 the gate ``<expert>.weight`` (h[t], eq. 13), both ``snc.Gate``; the
  biases of gated ops are host inputs (``bias.<expert>.fc1``: the gate times
  the fc1 bias; ``bias.<block>.experts``: sum of h[t] times the fc2 biases).
  Residual sums are ``<block>.in`` / ``.mid`` / ``.out`` junctions. The
  output is the last stream; the head and the mean over steps are host work.

Node names follow the torch module paths, so every node traces to its module.
"""

from __future__ import annotations

from dataclasses import dataclass

import nir
import numpy as np
import torch
from torch import nn

from snc.errors import SncError
from snc.models.lateral import LinearBN, SpikingLateralTransformer
from snc.models.mlp import SpikingMLP
from snc.models.neurons import IFNeuron, NeuronConfig, SpikeAnd
from snc.models.unet import ResBlock, SpikingUNet, SpikingUNetTSM, TSMConv2d, UpSample, conv_weights

from .nir_io import NIR_DT, Gate, NearestUpsample2d, StepScale, fix_grouped_conv_type

FORMAT = "snc-nir"
# a spike AND as a neuron: no memory (decay 0), fires on two unit inputs (2 > 1.5), not on one
AND_NEURON = NeuronConfig(threshold=1.5, decay=0.0)
FORMAT_VERSION = 1


def _np(t: torch.Tensor) -> np.ndarray:
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
    return _np(w.to(dtype)), _np(b.to(dtype))


def neuron_node(config: NeuronConfig, shape: tuple[int, ...], dtype: np.dtype) -> nir.NIRNode:
    """NIR IF / LIF equal, under Euler steps of NIR_DT, to ``IFNeuron(config)``."""
    thr = np.array(config.threshold, dtype=dtype)
    if config.fire_at_threshold:
        thr = np.nextafter(thr, np.array(-np.inf, dtype=dtype))
    full = lambda v: np.full(shape, v, dtype=dtype)  # noqa: E731
    if config.decay == 1.0:
        return nir.IF(r=full(1.0 / NIR_DT), v_threshold=full(thr), v_reset=full(0.0))
    tau = NIR_DT / (1.0 - config.decay)
    return nir.LIF(tau=full(tau), r=full(tau / NIR_DT), v_leak=full(0.0), v_threshold=full(thr), v_reset=full(0.0))


@dataclass
class _Stream:
    """A real-valued tensor of the network: the node that produces it and its shape."""

    node: str
    shape: tuple[int, int, int]  # (C, H, W)


class _Builder:
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

    def conv_layer(self, name: str, layer: nn.Module, bn: nn.BatchNorm2d | None, shape, *sources: str,
                   channels: slice = slice(None), with_bias: bool = True) -> str:
        """A conv (``nn.Conv2d`` or ``TSMConv2d``) on ``channels`` of its input, with ``bn`` folded in.

        Returns the node holding the result: the conv, or for TSM its ``.tsm`` StepScale.
        ``with_bias=False`` drops the constant terms (the other parts of a split concat carry them).
        """
        conv = conv_weights(layer)
        tsm = isinstance(layer, TSMConv2d)
        if bn is None:
            weight, bias = _np(conv.weight), _np(conv.bias)
            shift = np.zeros(conv.out_channels, dtype=weight.dtype)
        elif not tsm:  # the BatchNorm's shift folds into the conv's bias
            weight, bias = fold_batchnorm(conv.weight, conv.bias, bn)
        else:  # p[t] sits between the conv (bias included) and the shift: BN(p (Wx + b)) = p (sWx + sb) + c
            weight, shift = fold_batchnorm(conv.weight, None, bn)
            bias = _np((conv.bias.double() * bn_scale(bn)).to(conv.bias.dtype))
        w = weight[:, channels].copy()
        b = bias if with_bias else np.zeros(w.shape[0], dtype=w.dtype)
        node = self.conv(name, w, b, conv, shape, *sources)
        if not tsm:
            return node
        out_shape = _conv_out(conv, tuple(shape))
        c = shift if with_bias else np.zeros(w.shape[0], dtype=w.dtype)
        step = StepScale(input_shape=np.array(out_shape), scale=_np(layer.tsmp).reshape(-1),
                         bias=np.broadcast_to(c[:, None, None], out_shape).copy())
        return self.add(f"{name}.tsm", step, node)

    def conv(self, name: str, weight: np.ndarray, bias: np.ndarray, conv: nn.Conv2d, shape, *sources: str) -> str:
        return self.add(
            name,
            nir.Conv2d(
                input_shape=tuple(shape[1:]),
                weight=weight,
                stride=conv.stride,
                padding=conv.padding,
                dilation=conv.dilation,
                groups=conv.groups,
                bias=bias,
            ),
            *sources,
        )

    def linear_bn(self, name: str, layer: LinearBN, shape, *sources: str, with_bias: bool = True) -> str:
        """A per-token Linear + BatchNorm on a (C, h, w) token grid: a 1x1 conv with the BN folded."""
        weight, bias = fold_batchnorm(layer.fc.weight, layer.fc.bias, layer.bn)
        if not with_bias:
            bias = np.zeros_like(bias)
        return self.add(name, nir.Conv2d(input_shape=tuple(shape[1:]), weight=weight[:, :, None, None], stride=1,
                                         padding=0, dilation=1, groups=1, bias=bias), *sources)

    def neuron(self, name: str, module: nn.Module, shape, *sources: str) -> str:
        if not isinstance(module, IFNeuron):
            raise SncError("only spiking models export to NIR (this one is an ANN twin)")
        return self.add(name, neuron_node(module.config, tuple(shape), self.dtype), *sources)

    def spike_and(self, name: str, module: SpikeAnd, shape, a: str, b: str) -> str:
        node = neuron_node(AND_NEURON, tuple(shape), self.dtype)
        node.metadata = {"snc.role": "and"}  # a logic gate: threshold guidance must leave it alone
        return self.add(name, node, a, b)

    def junction(self, name: str, shape, *sources: str) -> str:
        """A real-valued sum of ``sources`` as one node (a Scale of ones: NIR sums a node's inputs)."""
        return self.add(name, nir.Scale(scale=np.ones(shape, dtype=self.dtype)), *sources)

    def graph(self, metadata: dict) -> nir.NIRGraph:
        return nir.NIRGraph(nodes=self.nodes, edges=self.edges, metadata=metadata)


def _conv_out(conv: nn.Conv2d, shape: tuple[int, int, int]) -> tuple[int, int, int]:
    _, h, w = shape
    k, s, p = conv.kernel_size[0], conv.stride[0], conv.padding[0]
    return conv.out_channels, (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1


def _export_resblock(b: _Builder, name: str, block: ResBlock, parts: list[_Stream]) -> _Stream:
    """IF -> conv1 -> BN -> +temb -> IF -> conv2 -> BN -> +shortcut, concat parts split."""
    suffixes = [""] if len(parts) == 1 else [".main", ".skip"]
    out_shape = _conv_out(conv_weights(block.conv1), parts[0].shape)
    conv1_nodes, shortcut_nodes = [], []
    start = 0
    for part, suffix in zip(parts, suffixes):
        c = part.shape[0]
        sl = slice(start, start + c)
        spikes = b.neuron(f"{name}.neuron1{suffix}", block.neuron1, part.shape, part.node)
        # the biases enter once, with the first part
        conv1_nodes.append(b.conv_layer(f"{name}.conv1{suffix}", block.conv1, block.bn1, part.shape, spikes,
                                        channels=sl, with_bias=start == 0))
        if isinstance(block.shortcut, nn.Identity):
            shortcut_nodes.append(part.node)  # identity shortcut: the stream itself
        else:
            shortcut_nodes.append(b.conv_layer(f"{name}.shortcut{suffix}", block.shortcut, None, part.shape,
                                               part.node, channels=sl, with_bias=start == 0))
        start += c
    temb = b.add(f"temb.{name}", nir.Input(input_type=np.array(out_shape)))
    spikes2 = b.neuron(f"{name}.neuron2", block.neuron2, out_shape, *conv1_nodes, temb)
    conv2 = b.conv_layer(f"{name}.conv2", block.conv2, block.bn2, out_shape, spikes2)
    return _Stream(b.junction(f"{name}.out", out_shape, conv2, *shortcut_nodes), out_shape)


def _export_resample(b: _Builder, name: str, layer: nn.Module, stream: _Stream) -> _Stream:
    """DownSample: IF -> stride-2 conv + BN. UpSample: IF -> nearest x2 -> conv + BN."""
    spikes = b.neuron(f"{name}.neuron", layer.neuron, stream.shape, stream.node)
    shape = stream.shape
    if isinstance(layer, UpSample):
        up = NearestUpsample2d(input_shape=np.array(shape), scale=2)
        spikes = b.add(f"{name}.upsample", up, spikes)
        shape = tuple(int(v) for v in up.output_type["output"])
    node = b.conv_layer(f"{name}.conv", layer.conv, layer.bn, shape, spikes)
    return _Stream(node, _conv_out(conv_weights(layer.conv), shape))


def _export_unet(model: SpikingUNet, b: _Builder) -> None:
    cfg = model.config
    shape = (cfg.img_ch, cfg.img_size, cfg.img_size)
    x = b.add("input", nir.Input(input_type=np.array(shape)))
    h = b.conv_layer("conv", model.conv, model.bn, shape, x)
    shape = _conv_out(conv_weights(model.conv), shape)
    s = b.neuron("neuron", model.neuron, shape, h)
    stream = _Stream(b.conv_layer("conv_identity", model.conv_identity, model.bn_identity, shape, s), shape)
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


def _export_mlp(model: SpikingMLP, b: _Builder) -> None:
    cfg = model.config
    shape = np.array([cfg.img_ch, cfg.img_size, cfg.img_size])
    prev = b.add("input", nir.Input(input_type=shape))
    prev = b.add("flatten", nir.Flatten(input_type={"input": shape}, start_dim=0, end_dim=-1), prev)
    for i, layer in enumerate(model.hidden):
        fc = b.add(f"hidden.{i}.fc", nir.Affine(weight=_np(layer.fc.weight), bias=_np(layer.fc.bias)), prev)
        width = layer.fc.out_features
        temb = b.add(f"temb.hidden.{i}", nir.Input(input_type=np.array([width])))
        prev = b.neuron(f"hidden.{i}.neuron", layer.neuron, (width,), fc, temb)
    out = b.add("readout", nir.Affine(weight=_np(model.readout.weight), bias=_np(model.readout.bias)), prev)
    b.add("output", nir.Output(output_type=np.array([model.readout.out_features])), out)


def _export_lateral(model: SpikingLateralTransformer, b: _Builder) -> None:
    cfg = model.config
    side = cfg.img_size // cfg.patch
    grid = (cfg.hidden, side, side)
    stream = b.add("input", nir.Input(input_type=np.array(grid)))
    for r, block in enumerate(model.blocks):
        name, att = f"blocks.{r}", block.attention
        x = b.junction(f"{name}.in", grid, stream, b.add(f"temb.{name}", nir.Input(input_type=np.array(grid))))
        s1 = b.neuron(f"{name}.neuron1", block.neuron1, grid, x)
        q, k, v = (b.neuron(f"{name}.attention.{p}_neuron", getattr(att, f"{p}_neuron"), grid,
                            b.linear_bn(f"{name}.attention.{p}", getattr(att, p), grid, s1)) for p in "qkv")
        kv_and = b.spike_and(f"{name}.attention.kv_and", att.kv_and, grid, k, v)
        token_sum = b.add(f"{name}.attention.token_sum", fix_grouped_conv_type(nir.Conv2d(  # ones on each channel
            input_shape=(side, side), weight=np.ones((cfg.hidden, 1, side, side), b.dtype), stride=side, padding=0,
            dilation=1, groups=cfg.hidden, bias=np.zeros(cfg.hidden, b.dtype))), kv_and)
        kv = b.neuron(f"{name}.attention.kv_neuron", att.kv_neuron, (cfg.hidden, 1, 1), token_sum)
        broadcast = b.add(f"{name}.attention.broadcast",
                          NearestUpsample2d(input_shape=np.array([cfg.hidden, 1, 1]), scale=side), kv)
        q_and = b.spike_and(f"{name}.attention.q_and", att.q_and, grid, q, broadcast)
        mid = b.junction(f"{name}.mid", grid, x, b.linear_bn(f"{name}.attention.proj", att.proj, grid, q_and))
        s2 = b.neuron(f"{name}.neuron2", block.neuron2, grid, mid)
        outs = [mid]
        for i, expert in enumerate(block.experts):
            e = f"{name}.experts.{i}"
            hidden = (expert.fc1.fc.out_features, side, side)
            fc1 = b.linear_bn(f"{e}.fc1", expert.fc1, grid, s2, with_bias=False)
            active = b.add(f"{e}.active", Gate(input_shape=np.array(hidden), key=f"{e}.active"), fc1)
            fc1_bias = b.add(f"bias.{e}.fc1", nir.Input(input_type=np.array(hidden)))
            spikes = b.neuron(f"{e}.neuron", expert.neuron, hidden, active, fc1_bias)
            fc2 = b.linear_bn(f"{e}.fc2", expert.fc2, hidden, spikes, with_bias=False)
            outs.append(b.add(f"{e}.weight", Gate(input_shape=np.array(grid), key=f"{e}.weight"), fc2))
        outs.append(b.add(f"bias.{name}.experts", nir.Input(input_type=np.array(grid))))
        stream = b.junction(f"{name}.out", grid, *outs)
    b.add("output", nir.Output(output_type=np.array(grid)), stream)


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
    if model.training:
        raise SncError("export needs the model in eval mode")
    cfg = model.config
    dtype = next(model.parameters()).detach().numpy().dtype
    b = _Builder(dtype)
    n, outs = cfg.experts, []
    for r, block in enumerate(model.blocks):
        sel, name = block.selection, f"blocks.{r}.selection"
        drive = b.add(f"lateral.blocks.{r}", nir.Input(input_type=np.array([n])))
        omega = b.add(f"{name}.omega", neuron_node(sel.omega, (n,), dtype), drive)
        delay = b.add(f"{name}.delay", nir.Delay(delay=np.full(n, NIR_DT)), omega)
        lateral = b.add(f"{name}.lateral", nir.Affine(weight=_np(sel.recurrent_weights()), bias=np.zeros(n, dtype)),
                        delay)
        b.edges.append((lateral, omega))  # the loop: Omega reads its own spikes of the previous step
        place = np.zeros((cfg.depth * n, n), dtype)
        place[r * n:(r + 1) * n] = np.eye(n)
        outs.append(b.add(f"{name}.read", nir.Affine(weight=place, bias=np.zeros(cfg.depth * n, dtype)), omega))
    b.add("output", nir.Output(output_type=np.array([cfg.depth * n])), *outs)
    return b.graph({"snc.format": FORMAT, "snc.format_version": FORMAT_VERSION, "snc.arch": "lateral-selection",
                    "snc.dt": NIR_DT, "snc.timestep": cfg.timestep,
                    "snc.inputs": "lateral.blocks.<r>: A_agg l of block r's router, constant over the inner steps"})


EXPORTERS = {SpikingUNet: ("spiking-unet", _export_unet), SpikingUNetTSM: ("spiking-unet-tsm", _export_unet),
             SpikingMLP: ("spiking-mlp", _export_mlp), SpikingLateralTransformer: ("lateral-transformer", _export_lateral)}
INPUTS = ("input: analog image, the same every spiking step (a token grid (D, h, w) for the lateral transformer); "
          "temb.<block>: host-computed time-embedding bias, constant over the spiking steps; "
          "bias.<...>: the biases of gated ops, gate values times the op's bias (per step); "
          "gates (snc.Gate keys): the host's per-call values")


@torch.no_grad()
def export_model(model: nn.Module) -> nir.NIRGraph:
    """NIR graph of one spiking step of ``model``'s core (model must be in eval mode)."""
    if type(model) not in EXPORTERS:
        raise SncError(f"no NIR exporter for {type(model).__name__}")
    if model.training:
        raise SncError("export needs the model in eval mode (BatchNorm running statistics)")
    arch, export = EXPORTERS[type(model)]
    dtype = next(model.parameters()).detach().numpy().dtype
    builder = _Builder(dtype)
    export(model, builder)
    metadata = {
        "snc.format": FORMAT,
        "snc.format_version": FORMAT_VERSION,
        "snc.arch": arch,
        "snc.dt": NIR_DT,
        "snc.timestep": model.config.timestep,
        "snc.inputs": INPUTS,
        "snc.layout": "token-grid" if isinstance(model, SpikingLateralTransformer) else "tensor",
    }
    return builder.graph(metadata)
