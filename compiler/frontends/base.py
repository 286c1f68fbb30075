"""The frontend contract: a ``Deployable`` and the ``HostProgram`` of a model family.

A frontend turns a source (an snc checkpoint, a preset, a checkpoint of the
public SDDPM / SDM code, a plain ``.nir`` file) into a ``Deployable``:

- ``nir_graph``: one spiking step of the core, what the compiler imports;
- ``host``: the ``HostProgram`` around it (None for a bare graph): the host
  inputs of every call (encoding, time-embedding biases, gated biases, by
  the names its exporter gave the graph's Input nodes), the decoding of the
  readout, the torch model's spikes under the graph's population names (the
  map verification compares with), calibration data, the gate table of a
  gated model, the host work for energy reports and the ANN twin;
- what a build needs to keep the host parts (``checkpoint`` / ``meta``).

A model family is one module (``frontends/unet.py``, ``mlp.py``,
``lateral.py``) with its exporter and its ``HostProgram`` subclass, so the
names it writes into the graph and the names its host program reads are
in one place; the runtime and the compiler never parse them.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import nir
import numpy as np
import torch
from torch import nn

from snc.errors import SncError
from snc.models import ann_twin, build_model
from snc.models.data import digits
from snc.models.diffusion import Schedule, q_sample
from snc.models.neurons import IFNeuron, LIFNeuron, SpikeAnd, scale_thresholds

from ..gates import Gates, GateTable
from ..nir_io import NIR_DT
from ..pass_manager import CalibrationCall
CALIBRATION_FRACTIONS = (0.05, 0.35, 0.65, 0.95)  # of the diffusion steps: the compile-time calibration calls


class HostProgram:
    """The host side of a denoiser's calls, for a model whose core was exported as ``nir_graph``.

    Computations run in the model's dtype (the chip backends' host keeps
    float64). A family overrides what its export does differently from the
    defaults: the graph's inputs, decoding, the module behind each
    population, gates, host work.
    """

    kept_in_graph = False  # True: the host parts travel in the graph's metadata (a build saves no checkpoint)

    def __init__(self, model: nn.Module, nir_graph: nir.NIRGraph, arch: str) -> None:
        self.model = model
        self.nir_graph = nir_graph
        self.arch = arch
        self.config = model.config

    # --- what a family defines (defaults: snc's direct-encoding denoisers) ---------------------------
    def core_inputs(self, x: torch.Tensor, t: torch.Tensor, gates: Optional[Gates]) -> dict[str, torch.Tensor]:
        """Per-step inputs [T, B, ...] of every Input node of the graph for images x at steps t: by default
        ``input`` (``model.encode``: the image repeated over T) and ``temb.<block>`` (each block's
        time-embedding bias, broadcast over the block's neurons)."""
        x_seq = self.model.encode(x)
        steps = x_seq.shape[0]
        inputs = {"input": x_seq}
        for block, bias in self.model.time_biases(t).items():
            name = f"temb.{block}"
            inputs[name] = broadcast(bias.unsqueeze(0).expand(steps, -1, -1), self.input_shape(name))
        return inputs

    def decode(self, readout: torch.Tensor, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """eps [B, C, H, W] from the graph's output per logical step [T, B, *output shape] of the call on images x
        at steps t (a converted model's tail may read them; snc's families do not)."""
        return self.model.decode(readout)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """What the torch model computes for a call (the chip's decoded output): by default ``model(x, t)``."""
        return self.model(x, t)

    def population_spikes(self, name: str, recorded: dict[str, torch.Tensor]) -> torch.Tensor:
        """The spikes [T, B, ...] of the NIR neuron node ``name`` among the model's recorded neuron outputs
        (by module path): by default the module of the same name."""
        return recorded[name]

    def gate_values(self, t: torch.Tensor) -> dict[str, torch.Tensor]:
        """The model's value of every snc.Gate for diffusion steps t: key -> [len(t), T] (none by default)."""
        return {}

    def host_work(self, specialised: bool = True) -> dict[str, Callable[[], Any]]:
        """The host's computations of a call by part, each a closure on dummy inputs (for MAC counts)."""
        cfg = self.config
        dtype = next(self.model.parameters()).dtype
        t = torch.full((1,), cfg.diffusion_steps // 2, dtype=torch.long)
        x = torch.zeros((1, cfg.img_ch, cfg.img_size, cfg.img_size), dtype=dtype)
        h = torch.zeros((cfg.timestep, 1, *self.output_shape), dtype=dtype)
        return {"stem": lambda: self.model.encode(x), "time embedding": lambda: self.model.time_biases(t),
                "tail": lambda: self.decode(h, x, t)}

    @property
    def calls_per_sample(self) -> int:
        """This core's calls per generated sample by default (a denoiser: one per diffusion step)."""
        return self.config.diffusion_steps

    # --- shared -------------------------------------------------------------------------------------
    @property
    def output_shape(self) -> tuple[int, ...]:
        return tuple(int(v) for v in next(iter(self.nir_graph.outputs.values())).output_type["output"])

    def input_shape(self, name: str) -> tuple[int, ...]:
        return tuple(int(v) for v in self.nir_graph.nodes[name].input_type["input"])

    @torch.no_grad()
    def call_inputs(self, x: torch.Tensor, t: torch.Tensor, gates: Optional[Gates] = None) -> dict[str, torch.Tensor]:
        """The core's inputs for one call in float64: [B, *shape] when constant over the spiking steps,
        else [T, B, *shape]."""
        inputs = {}
        x = x.to(next(self.model.parameters()).dtype)
        for name, value in self.core_inputs(x, t, gates).items():
            inputs[name] = (value[0] if bool((value == value[:1]).all()) else value).to(torch.float64)
        return inputs

    @torch.no_grad()
    def reference(self, x: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, dict[str, np.ndarray]]:
        """eps of the torch model and the spikes [T, B, *shape] (bool) of every population of the graph."""
        recorded: dict[str, torch.Tensor] = {}
        hooks = [module.register_forward_hook(lambda m, i, out, name=name: recorded.__setitem__(name, out))
                 for name, module in self.model.named_modules() if isinstance(module, (IFNeuron, LIFNeuron, SpikeAnd))]
        try:
            eps = self.forward(x, t)
        finally:
            for h in hooks:
                h.remove()
        spikes = {}
        for name, node in self.nir_graph.nodes.items():
            if isinstance(node, (nir.IF, nir.LIF)):
                shape = np.shape(node.v_threshold)
                out = self.population_spikes(name, recorded)
                spikes[name] = out.reshape(out.shape[0], out.shape[1], *shape).numpy() != 0
        return eps, spikes

    @torch.no_grad()
    def gate_table(self) -> GateTable:
        """Every gate's model value for every diffusion step, key -> [steps, T] (empty for ungated models)."""
        steps = torch.arange(self.config.diffusion_steps)
        return {k: v.double().numpy() for k, v in self.gate_values(steps).items()}

    def noisy_inputs(self, n: int, timesteps: list[int], seed: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """(x_t, t) pairs: held-out digits (N(0,1) images for non-digits configs) noised at each t."""
        cfg = self.config
        g = torch.Generator().manual_seed(seed)
        shape = (cfg.img_ch, cfg.img_size, cfg.img_size)
        if shape == (1, 8, 8):
            pool, _ = digits("heldout")
            x0 = pool[torch.randperm(len(pool), generator=g)[:n]]
        else:
            x0 = torch.randn((n, *shape), generator=g).clamp(-1, 1)
        schedule = Schedule(steps=cfg.diffusion_steps)
        pairs = []
        for step in timesteps:
            tt = torch.full((len(x0),), step, dtype=torch.long)
            pairs.append((q_sample(schedule, x0, tt, torch.randn(x0.shape, generator=g)), tt))
        return pairs

    def call_pairs(self, n: int, fractions: Sequence[float], seed: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """The (x, t) of the calls calibration, verification and energy counts run: ``n`` inputs at each
        fraction of the diffusion steps (by default ``noisy_inputs``)."""
        steps = self.config.diffusion_steps
        return self.noisy_inputs(n, [int(steps * f) for f in fractions], seed)

    def calibration(self, n: int = 4, seed: int = 0) -> list[CalibrationCall]:
        """Calls on ``n`` images at diffusion steps spread over the schedule, for threshold folding."""
        pairs = self.call_pairs(n, CALIBRATION_FRACTIONS, seed)
        return [CalibrationCall(int(t[0]), lambda gates, x=x, t=t: self.call_inputs(x, t, gates)) for x, t in pairs]

    def with_model(self, model: nn.Module) -> "HostProgram":
        """The same program around another model of the family (another dtype, guided, the ANN twin)."""
        return type(self)(model, self.nir_graph, self.arch)

    def guided(self, factor: float) -> "HostProgram":
        """A copy whose model's spiking thresholds are times ``factor`` (threshold guidance)."""
        return self.with_model(scale_thresholds(copy.deepcopy(self.model), factor))

    def ann_twin(self) -> "HostProgram":
        """The program around the model's ANN twin (same config, ReLU, one step; random weights: for
        counting its MACs)."""
        return self.with_model(build_model(self.arch, ann_twin(self.config)).to(next(self.model.parameters()).dtype)
                               .eval())


def broadcast(per_channel: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """[T, B, C] -> [T, B, *shape] (the same value over a channel's pixels)."""
    steps, batch, c = per_channel.shape
    return per_channel.view(steps, batch, c, *([1] * (len(shape) - 1))).expand(steps, batch, *shape)


@dataclass(frozen=True)
class Family:
    """A model family's frontend: the archs it handles, its exporter and its host program."""

    archs: tuple[str, ...]
    export: Callable[[nn.Module, str], nir.NIRGraph]  # (model in eval mode, arch) -> one spiking step
    host: type[HostProgram]
    # (an ANN twin: config.spiking False, the ONNX path to write) -> that path: what snc convert reads
    ann_onnx: Optional[Callable[[nn.Module, Path], Path]] = None


@dataclass(frozen=True)
class PipelineFamily:
    """A model that runs as several cores one after another, each its own graph, build and host program (the
    Spiking-Diffusion VQ model: encoder, SDID, decoder): the archs it handles and its stages, (stage name,
    the core's arch) in the order a process runs them. Each core's arch is a ``Family`` of its own."""

    archs: tuple[str, ...]
    stages: tuple[tuple[str, str], ...]


@dataclass
class Deployable:
    """A source made ready to compile and run: one spiking step as NIR and, for a model, its host program."""

    arch: str
    nir_graph: nir.NIRGraph
    timestep: int
    host: Optional[HostProgram]  # None: a bare graph, no host parts
    source: str  # what it was made from, for reports
    checkpoint: Optional[Path] = None  # an snc checkpoint file holding the host parts as they are
    meta: dict[str, Any] = field(default_factory=dict)  # saved with the model when there is no such file
    dt: float = NIR_DT  # seconds per step of the graph's discretisation (a foreign graph's, see nir_normalise)
    warnings: list[str] = field(default_factory=list)  # what reading the source had to interpret
    calibration_calls: Optional[list[CalibrationCall]] = None  # a bare graph's: the user's sample input
    netlists: Optional[dict[str, Any]] = None  # mode -> Netlist: a source already lowered (netx), adopted as is

    @property
    def random_init(self) -> bool:
        return bool(self.meta.get("random_init"))

    def calibration(self, n: int, seed: int) -> Optional[list[CalibrationCall]]:
        if self.host is None:
            return self.calibration_calls
        return self.host.calibration(n, seed) if n > 0 else None

    def gate_table(self) -> Optional[GateTable]:
        return self.host.gate_table() if self.host is not None else None


@dataclass
class Pipeline:
    """A source made ready to compile and run as several cores: a ``Deployable`` per stage."""

    arch: str
    stages: dict[str, Deployable]
    source: str
    checkpoint: Optional[Path] = None
    meta: dict[str, Any] = field(default_factory=dict)

    def stage(self, name: str) -> Deployable:
        if name not in self.stages:
            raise SncError(f"a {self.arch} model has no stage {name!r} (stages: {', '.join(self.stages)})")
        return self.stages[name]
