"""The Spiking-Diffusion family (paper 003): its three spiking cores, each one graph.

- ``sdid``: the SDID denoiser. Input ``input``: the token map and the time map
  (raw ids and raw t, ``[x_t, t]`` on the channels), the same every step; its
  conv-BN-LIF stages; the output conv reads the last stage's spikes and the
  first's (the public skip concatenation, split by input channel into
  ``.main`` / ``.skip``, summed in a junction); Output ``output``: the logits
  of each step. The host averages them over the T steps.
- ``vq-svae-decoder``: the adaptive spike generator and the decoder. Input
  ``input``: the codebook rows of the tokens (the host's lookup), the same
  every step; ConvTranspose2d as zero insertion (``snc.ZeroInsert2d``) then a
  stride-1 conv of the flipped, transposed kernel; the last conv's output
  into a non-spiking LI of decay ``membrane_decay`` whose value at the last
  step is the public membrane output; the host takes its tanh.
- ``vq-svae-encoder``: the encoder (tokenizing on chip). Input ``input``: the
  image, the same every step; Output: the last stage's spikes; the host mixes
  membrane output and rate into features and takes the nearest codebook row.

The whole model (``spiking-diffusion-vq``) compiles as a pipeline of the three
cores (``PIPELINE``; ``runtime/pipelines.py`` runs them), a VQ-SVAE alone as
one of its encoder and decoder (``AUTOENCODER``).

Every neuron is SpikingJelly's LIF (``nir_builder.lif_node``). A stage's model
is the part itself or the whole ``spiking-diffusion-vq`` model; with the whole
model the node names carry the part's path (``sdid.``, ``vqsvae.``), so that
every population names its module, and calibration draws realistic tokens
through the VQ-SVAE.
"""

from __future__ import annotations

from typing import Any, Callable, Optional, Sequence

import nir
import numpy as np
import torch
from torch import nn

from snc.errors import SncError
from snc.models.data import digits
from snc.models.absorbing import q_sample
from snc.models.spiking_diffusion import SDID, VQSVAE, MembraneOutput, SpikingDiffusionVQ, repeat_steps

from ..gates import Gates, GateTable
from ..nir_io import NIR_DT, ZeroInsert2d
from .base import Family, HostProgram, PipelineFamily
from .nir_builder import GraphBuilder, as_array, builder_for, conv_out, fold_batchnorm

SDID_ARCH, DECODER_ARCH, ENCODER_ARCH = "sdid", "vq-svae-decoder", "vq-svae-encoder"
SPLIT_SUFFIXES = (".main", ".skip")
INPUTS = {SDID_ARCH: "input: token ids and the diffusion step t as a map (raw values), the same every spiking step",
          DECODER_ARCH: "input: the codebook rows of the tokens, the same every spiking step",
          ENCODER_ARCH: "input: the image in the VQ-SVAE's range, the same every spiking step"}


def part_of(model: nn.Module, arch: str) -> tuple[nn.Module, str]:
    """The stage's module of ``model`` (the part or the whole model) and the prefix of its module paths."""
    whole = isinstance(model, SpikingDiffusionVQ)
    if arch == SDID_ARCH:
        part, prefix, cls = (model.sdid, "sdid.", SDID) if whole else (model, "", SDID)
    else:
        part, prefix, cls = (model.vqsvae, "vqsvae.", VQSVAE) if whole else (model, "", VQSVAE)
    if not isinstance(part, cls):
        raise SncError(f"a {arch} core comes from a {cls.__name__} or a spiking-diffusion-vq model, "
                       f"not a {type(model).__name__}")
    return part, prefix


def _conv_bn_lif(b: GraphBuilder, path: str, layers: nn.Sequential, start: int, shape: tuple[int, int, int],
                 source: str) -> tuple[str, tuple[int, int, int]]:
    """The (Conv2d | ConvTranspose2d, BatchNorm2d, LIF) stage at ``layers[start:start + 3]`` of the Sequential
    at module path ``path``: the conv node ``<path>.<start>`` with the BatchNorm folded in, the neurons
    ``<path>.<start + 2>``; returns the neurons and their shape."""
    conv, bn, neuron = layers[start:start + 3]
    node, out_shape = _conv(b, f"{path}.{start}", conv, bn, shape, source)
    return b.neuron(f"{path}.{start + 2}", neuron, out_shape, node), out_shape


def _conv(b: GraphBuilder, name: str, conv: nn.Module, bn: Optional[nn.BatchNorm2d], shape: tuple[int, int, int],
          *sources: str, channels: slice = slice(None), with_bias: bool = True) -> tuple[str, tuple[int, int, int]]:
    """A Conv2d, or a ConvTranspose2d as zero insertion and a stride-1 conv, on ``channels`` of its input."""
    weight, bias = conv.weight, conv.bias
    if isinstance(conv, nn.ConvTranspose2d):
        k, s, p = conv.kernel_size[0], conv.stride[0], conv.padding[0]
        square = all(len(set(pair)) == 1 for pair in (conv.kernel_size, conv.stride, conv.padding,
                                                      conv.output_padding, conv.dilation))
        if not square or conv.output_padding[0] != s - 1 or conv.groups != 1 or conv.dilation[0] != 1:
            raise SncError(f"{name}: snc lowers square ConvTranspose2d with output_padding = stride - 1, groups 1 "
                           "and dilation 1")
        weight = conv.weight.flip(-1, -2).transpose(0, 1)
        if s > 1:
            up = ZeroInsert2d(input_shape=np.array(shape), scale=s)
            sources = (b.add(f"{name}.insert", up, *sources),)
            shape = tuple(int(v) for v in up.output_type["output"])
        geometry = nn.Conv2d(weight.shape[1], weight.shape[0], k, 1, k - 1 - p, bias=False)
    else:
        geometry = conv
    if bn is not None:
        w, bias_folded = fold_batchnorm(weight, bias, bn)
    else:
        w = as_array(weight)
        bias_folded = as_array(bias) if bias is not None else np.zeros(w.shape[0], dtype=w.dtype)
    w = w[:, channels].copy()
    if not with_bias:
        bias_folded = np.zeros_like(bias_folded)
    node = b.conv(name, w, bias_folded, geometry, shape, *sources)
    return node, conv_out(geometry, (w.shape[1], *shape[1:]))


def _begin(model: nn.Module, arch: str, input_shape: Callable[[Any], tuple[int, int, int]]):
    """The core's module, its path prefix, a builder and the graph's Input ``input`` of ``input_shape(config)``."""
    part, prefix = part_of(model, arch)
    b = builder_for(part)
    shape = input_shape(part.config)
    return part, prefix, b, b.add("input", nir.Input(input_type=np.array(shape))), shape


@torch.no_grad()
def export_sdid(model: nn.Module, arch: str) -> nir.NIRGraph:
    sdid, prefix, b, prev, shape = _begin(model, arch, lambda c: (2 * c.n_channel, c.latent_size, c.latent_size))
    first = None
    for i in range(1, sdid.stages + 1):
        prev, shape = _conv_bn_lif(b, f"{prefix}conv{i}", getattr(sdid, f"conv{i}"), 0, shape, prev)
        first = first or (prev, shape)
    out = getattr(sdid, f"conv{sdid.stages + 1}")[0]
    name = f"{prefix}conv{sdid.stages + 1}.0"
    last_c = shape[0]
    main, out_shape = _conv(b, name + SPLIT_SUFFIXES[0], out, None, (out.in_channels, *shape[1:]), prev,
                            channels=slice(0, last_c))
    skip, _ = _conv(b, name + SPLIT_SUFFIXES[1], out, None, (out.in_channels, *shape[1:]), first[0],
                    channels=slice(last_c, None), with_bias=False)
    total = b.junction(name, out_shape, main, skip)
    b.add("output", nir.Output(output_type=np.array(out_shape)), total)
    return b.graph(arch, sdid.config.timestep, INPUTS[arch], **{"snc.layout": "tensor"})


@torch.no_grad()
def export_decoder(model: nn.Module, arch: str) -> nir.NIRGraph:
    vq, prefix, b, prev, shape = _begin(model, arch, lambda c: (c.embedding_dim, c.latent_size, c.latent_size))
    prev, shape = _conv_bn_lif(b, f"{prefix}vq_layer.poisson", vq.vq_layer.poisson, 0, shape, prev)
    layers = vq.decoder.snn_convs
    path = f"{prefix}decoder.snn_convs"
    for start in range(0, len(layers) - 1, 3):
        prev, shape = _conv_bn_lif(b, path, layers, start, shape, prev)
    last, shape = _conv(b, f"{path}.{len(layers) - 1}", layers[-1], None, shape, prev)
    readout = b.add(f"{prefix}memout", _membrane_readout(vq.memout, shape, b.dtype), last)
    b.add("output", nir.Output(output_type=np.array(shape)), readout)
    return b.graph(arch, vq.config.timestep, INPUTS[arch], **{"snc.layout": "tensor"})


def _membrane_readout(memout: MembraneOutput, shape: tuple[int, ...], dtype: np.dtype) -> nir.LI:
    """The public membrane output, ``sum_t x[t] decay^(T-1-t)``, as a non-spiking LI read at the last step:
    ``y[t] = decay y[t-1] + x[t]``, i.e. ``1 - dt/tau = decay`` and ``dt r / tau = 1``."""
    coef = memout.coef.reshape(-1).double()
    decay = float(coef[-2] / coef[-1]) if coef.numel() > 1 else 0.0
    tau = NIR_DT / (1.0 - decay)
    full = lambda v: np.full(shape, v, dtype=dtype)  # noqa: E731
    return nir.LI(tau=full(tau), r=full(tau / NIR_DT), v_leak=full(0.0))


@torch.no_grad()
def export_encoder(model: nn.Module, arch: str) -> nir.NIRGraph:
    vq, prefix, b, prev, shape = _begin(model, arch, lambda c: (c.in_dim, c.img_size, c.img_size))
    layers = vq.encoder.snn_convs
    for start in range(0, len(layers), 3):
        prev, shape = _conv_bn_lif(b, f"{prefix}encoder.snn_convs", layers, start, shape, prev)
    b.add("output", nir.Output(output_type=np.array(shape)), prev)
    return b.graph(arch, vq.config.timestep, INPUTS[arch], **{"snc.layout": "tensor"})


def export(model: nn.Module, arch: str) -> nir.NIRGraph:
    """One spiking step of the ``arch`` core of ``model`` (eval mode)."""
    return {SDID_ARCH: export_sdid, DECODER_ARCH: export_decoder, ENCODER_ARCH: export_encoder}[arch](model, arch)


def _heldout_images(n: int, seed: int) -> torch.Tensor:
    """``n`` held-out digits in [-1, 1], drawn under ``seed``."""
    pool, _ = digits("heldout")
    g = torch.Generator().manual_seed(seed)
    return pool[torch.randperm(len(pool), generator=g)[:n]]


class _StageHost(HostProgram):
    """What the three cores' host programs share: the stage's module of the model (``part``), and token grids
    of held-out digits to run on (the whole model's VQ-SVAE makes them; an SDID alone gets uniform tokens)."""

    def __init__(self, model: nn.Module, nir_graph: nir.NIRGraph, arch: str) -> None:
        self.part, _ = part_of(model, arch)
        super().__init__(model, nir_graph, arch)
        self.config = self.part.config

    def gate_table(self) -> GateTable:
        return {}

    def ann_twin(self) -> HostProgram:
        """The host parts of the ANN twin are these (lookups, maps, the tanh, the time mean: none is a
        spiking layer); its layers are the graph's, counted at their FLOPs by the energy report."""
        return self

    def tokens(self, n: int, seed: int) -> torch.Tensor:
        """Token grids ``[n, 1, h, w]`` (float ids) of held-out digits (seeded)."""
        vq = self.model.vqsvae if isinstance(self.model, SpikingDiffusionVQ) else \
            self.part if isinstance(self.part, VQSVAE) else None
        dtype = next(self.model.parameters()).dtype
        if vq is None:  # an SDID alone: no codebook to tokenize with
            g = torch.Generator().manual_seed(seed)
            size = self.config.latent_size
            return torch.randint(0, self.config.num_embeddings, (n, 1, size, size), generator=g).to(dtype)
        size = vq.config.latent_size
        # a VQ-SVAE alone takes the public code's [-0.5, 0.5], which is snc's [-1, 1] times 0.5
        scale = self.model.config.pixel_scale if isinstance(self.model, SpikingDiffusionVQ) else 0.5
        with torch.no_grad():
            _, indices, _ = vq.quantize(vq.encode(_heldout_images(n, seed).to(dtype) * scale))
        return indices.reshape(n, 1, size, size).to(dtype)


class SDIDHost(_StageHost):
    """The SDID's calls: ``x`` token ids ``[B, 1, h, w]`` (float, mask id K) at absorbing steps ``t``; the
    output is the logits, the time mean of the per-step readout."""

    def core_inputs(self, x: torch.Tensor, t: torch.Tensor, gates: Optional[Gates]) -> dict[str, torch.Tensor]:
        return {"input": self.part.inputs(x, t)}

    def decode(self, readout: torch.Tensor, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return torch.sum(readout, dim=0) / self.config.timestep

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.part(x, t)

    def noisy_inputs(self, n: int, timesteps: list[int], seed: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Token grids of held-out digits masked at each absorbing step (1..S)."""
        x0 = self.tokens(n, seed)
        g = torch.Generator().manual_seed(seed)
        steps = self.config.diffusion_steps
        pairs = []
        for step in timesteps:
            t = torch.full((n,), min(max(step, 1), steps), dtype=torch.long)
            pairs.append((q_sample(x0, t, steps, self.config.mask_id, g)[0], t))
        return pairs

    def host_work(self, specialised: bool = True) -> dict[str, Callable[[], Any]]:
        dtype = next(self.model.parameters()).dtype
        size = self.config.latent_size
        x = torch.zeros((1, self.config.n_channel, size, size), dtype=dtype)
        t = torch.ones(1, dtype=torch.long)
        h = torch.zeros((self.config.timestep, 1, *self.output_shape), dtype=dtype)
        return {"token and time maps": lambda: self.part.inputs(x, t), "time mean": lambda: self.decode(h, x, t)}


class _VQHost(_StageHost):
    """A VQ-SVAE core's calls run on held-out digits: one call of ``n`` at ``t = 0`` (no diffusion step);
    one call per image it tokenizes or decodes."""

    calls_per_sample = 1

    def call_pairs(self, n: int, fractions: Sequence[float], seed: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        return [(self.stage_input(n, seed), torch.zeros(n, dtype=torch.long))]

    def stage_input(self, n: int, seed: int) -> torch.Tensor:
        raise NotImplementedError


class DecoderHost(_VQHost):
    """The decoder's calls: ``x`` token ids ``[B, 1, h, w]`` (float); the host looks up their codebook rows
    (the input every step) and takes the tanh of the membrane readout's last step: the VQ-SVAE's images."""

    def core_inputs(self, x: torch.Tensor, t: torch.Tensor, gates: Optional[Gates]) -> dict[str, torch.Tensor]:
        size = self.config.latent_size
        rows = self.part.vq_layer.rows(x.long(), (size, size))
        return {"input": repeat_steps(rows, self.config.timestep)}

    def decode(self, readout: torch.Tensor, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return torch.tanh(readout[-1])

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.part.decode(x.long())

    def stage_input(self, n: int, seed: int) -> torch.Tensor:
        return self.tokens(n, seed)

    def host_work(self, specialised: bool = True) -> dict[str, Callable[[], Any]]:
        dtype = next(self.model.parameters()).dtype
        size = self.config.latent_size
        x = torch.zeros((1, 1, size, size), dtype=dtype)
        h = torch.zeros((self.config.timestep, 1, *self.output_shape), dtype=dtype)
        t = torch.zeros(1, dtype=torch.long)
        return {"codebook lookup": lambda: self.core_inputs(x, t, None), "tanh": lambda: self.decode(h, x, t)}


class EncoderHost(_VQHost):
    """The encoder's calls: ``x`` images ``[B, C, H, W]`` in the VQ-SVAE's range; the host turns the last
    stage's spikes into features and their nearest codebook rows: token ids ``[B, 1, h, w]`` (float)."""

    def core_inputs(self, x: torch.Tensor, t: torch.Tensor, gates: Optional[Gates]) -> dict[str, torch.Tensor]:
        return {"input": repeat_steps(x, self.config.timestep)}

    def decode(self, readout: torch.Tensor, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        size = self.config.latent_size
        return self.part.vq_layer.nearest(self.part.vq_layer.features(readout)).reshape(-1, 1, size, size) \
            .to(readout.dtype)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        size = self.config.latent_size
        _, indices, _ = self.part.quantize(self.part.encode(x))
        return indices.reshape(-1, 1, size, size).to(x.dtype)

    def stage_input(self, n: int, seed: int) -> torch.Tensor:
        scale = self.model.config.pixel_scale if isinstance(self.model, SpikingDiffusionVQ) else 0.5
        return _heldout_images(n, seed).to(next(self.model.parameters()).dtype) * scale

    def host_work(self, specialised: bool = True) -> dict[str, Callable[[], Any]]:
        dtype = next(self.model.parameters()).dtype
        cfg = self.config
        x = torch.zeros((1, cfg.in_dim, cfg.img_size, cfg.img_size), dtype=dtype)
        h = torch.zeros((cfg.timestep, 1, *self.output_shape), dtype=dtype)
        t = torch.zeros(1, dtype=torch.long)
        return {"features and codebook argmin": lambda: self.decode(h, x, t)}


SDID_CORE = Family((SDID_ARCH,), export, SDIDHost)
DECODER_CORE = Family((DECODER_ARCH,), export, DecoderHost)
ENCODER_CORE = Family((ENCODER_ARCH,), export, EncoderHost)
# tokenizing, denoising, decoding: what a sample runs is the SDID's calls, then the decoder
PIPELINE = PipelineFamily(("spiking-diffusion-vq",), (("encoder", ENCODER_ARCH), ("sdid", SDID_ARCH),
                                                      ("decoder", DECODER_ARCH)))
# a VQ-SVAE alone (an snc vq-svae checkpoint, or the public code's model.pth): it reconstructs
AUTOENCODER = PipelineFamily(("vq-svae",), (("encoder", ENCODER_ARCH), ("decoder", DECODER_ARCH)))
