"""Denoisers over a compiled build: the host side around a chip backend.

A denoiser call on a chip backend is: host computes the core's inputs
(direct encoding of x_t, the time-embedding biases: ``model.encode`` and
``model.time_biases``), the host-partitioned ops turn them into per-population
currents (``host_currents``), the chip runs ``depth + T`` steps, the host adds
the readout's bias and decodes the readout (``model.decode``: the tail).
The host works in float64.
"""

from __future__ import annotations

from typing import Callable, Optional

import nir
import numpy as np
import torch
from torch import nn

from snc.compiler.build import Build
from snc.compiler.ir import Graph, step_bias
from snc.errors import SncError
from snc.models.checkpoint import load_checkpoint
from snc.models.data import digits
from snc.models.diffusion import Schedule, q_sample
from snc.models.neurons import scale_thresholds

from .chip import CallResult, open_network
from .host import Gates, core_inputs, from_grid, gate_values, token_layout
from .ir_executor import host_currents, run_ir


def host_inputs(model: nn.Module, graph: nir.NIRGraph, x: torch.Tensor, t: torch.Tensor,
                gates: Optional[Gates] = None) -> dict[str, torch.Tensor]:
    """The core's inputs for one call: [B, *shape] when constant over the spiking steps, else [T, B, *shape]."""
    inputs = {}
    x = x.to(next(model.parameters()).dtype)
    for name, value in core_inputs(model, graph, x, t, gates).items():
        inputs[name] = (value[0] if bool((value == value[:1]).all()) else value).to(torch.float64)
    return inputs


def gate_table(model: nn.Module) -> dict[str, np.ndarray]:
    """Every gate's model value for every diffusion step, key -> [steps, T] (empty for ungated models)."""
    steps = torch.arange(model.config.diffusion_steps)
    return {k: v.double().numpy() for k, v in gate_values(model, steps).items()}


def call_gates(graph: Graph, t: torch.Tensor, specialised: bool = True) -> Optional[Gates]:
    """The compiled gate values [T] of a call at diffusion steps t (one step per call), None without gates."""
    if not graph.gates:
        return None
    steps = torch.unique(t)
    if len(steps) > 1:
        raise SncError("a gated model's call needs one diffusion step for the whole batch")
    return graph.gates_at(int(steps[0]), specialised)


def noisy_inputs(model: nn.Module, n: int, timesteps: list[int], seed: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(x_t, t) pairs: digits (or N(0,1) images for non-digits configs) noised at each t."""
    cfg = model.config
    g = torch.Generator().manual_seed(seed)
    shape = (cfg.img_ch, cfg.img_size, cfg.img_size)
    if shape == (1, 8, 8):
        pool, _ = digits("heldout")
        x0 = pool[torch.randperm(len(pool), generator=g)[:n]]
    else:
        x0 = torch.randn((n, *shape), generator=g).clamp(-1, 1)
    schedule = Schedule(steps=cfg.diffusion_steps)
    pairs = []
    for t in timesteps:
        tt = torch.full((len(x0),), t, dtype=torch.long)
        pairs.append((q_sample(schedule, x0, tt, torch.randn(x0.shape, generator=g)), tt))
    return pairs


def calibrator(model: nn.Module, graph: nir.NIRGraph, n: int = 4, seed: int = 0) -> Callable[[Graph], dict[str, float]]:
    """Peaks of |v| and |input| per population over calls at t spread over the schedule (float32)."""
    steps = model.config.diffusion_steps
    pairs = noisy_inputs(model, n, [int(steps * f) for f in (0.05, 0.35, 0.65, 0.95)], seed)

    def peaks(ir: Graph) -> dict[str, float]:
        found: dict[str, float] = {}
        for x, t in pairs:
            gates = call_gates(ir, t)
            run = run_ir(ir, host_inputs(model, graph, x, t, gates), dtype=torch.float32, gates=gates)
            for table in (run.peak_v, run.peak_input):
                for name, value in table.items():
                    found[name] = max(found.get(name, 0.0), value)
        return found

    return peaks


def load_host_model(build: Build) -> nn.Module:
    if build.model_path is None:
        raise SncError(f"{build.path} was compiled from a NIR file: it has no host-side parts "
                       "(time embedding, stem, tail); compile the checkpoint to sample or verify")
    model = load_checkpoint(build.model_path).model.double().eval()
    # the torch side of a guided build is the guided model (the chip's vth were guided at compile time)
    return scale_thresholds(model, float(build.meta.get("threshold_scale", 1.0)))


class ChipDenoiser:
    """``eps = denoiser(x_t, t)`` with the spiking core on a chip backend; host parts in float64.

    ``backend``: ``lava`` (Lava's CPU simulator, ``mode`` fixed or float) or
    ``emu`` (the bit-exact emulator of Lava's fixed_pt, ``runtime/emulator.py``;
    ``every_step`` makes it integrate every step instead of only the logical
    windows, for the same results). ``last`` is the ``CallResult`` of the
    last images denoised, all of them (spikes when ``record``). A gated build (the lateral transformer) runs
    each call with the compiled gates of its diffusion step; ``specialised``
    False runs the model's gates (every expert on) instead.
    """

    def __init__(self, build: Build, mode: str = "fixed", batch: int = 1, record: bool = False, *,
                 backend: str = "lava", every_step: bool = False, specialised: bool = True) -> None:
        self.build = build
        self.specialised = specialised
        self.batch = batch
        self.backend = backend
        self.model = load_host_model(build)
        self.network = open_network(build.graph, backend, mode, batch, record, every_step)
        self.last: Optional[CallResult] = None

    @torch.no_grad()
    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """epsilon for images x [N, C, H, W] at steps t [N], in calls of ``batch`` images (the last one
        padded with copies of its first image); ``last`` holds the CallResult of all N images."""
        b = self.batch
        eps, results = [], []
        for i in range(0, len(x), b):
            xs, ts = x[i:i + b], t[i:i + b]
            real, pad = len(xs), b - len(xs)
            xs, ts = torch.cat([xs, xs[:1].expand(pad, *xs.shape[1:])]), torch.cat([ts, ts[:1].expand(pad)])
            e, result = self._call(xs, ts)
            eps.append(e[:real])
            results.append(CallResult(result.readout[:, :real], {k: v[:, :real] for k, v in result.spikes.items()}))
        self.last = results[0] if len(results) == 1 else CallResult(
            np.concatenate([r.readout for r in results], axis=1),
            {k: np.concatenate([r.spikes[k] for r in results], axis=1) for k in results[0].spikes})
        return torch.cat(eps)

    def _call(self, x: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, CallResult]:
        graph = self.build.graph
        gates = call_gates(graph, t, self.specialised)
        inputs = host_inputs(self.model, self.build.nir_graph, x.to(torch.float64), t, gates)
        currents = {k: v.numpy() for k, v in host_currents(graph, inputs).items()}
        result = self.network.call(currents, gates)
        readout = torch.from_numpy(result.readout)
        bias = step_bias(graph.readout, graph.timestep)  # [T, *shape]
        readout = readout + torch.from_numpy(np.ascontiguousarray(bias)).unsqueeze(1)  # a copy: step_bias may be a view
        if graph.readout.name in currents:  # host terms of the output are host work
            readout = readout + torch.from_numpy(currents[graph.readout.name])
        if token_layout(self.build.nir_graph):
            readout = from_grid(readout)
        return self.model.decode(readout).to(x.dtype), result

    def close(self) -> None:
        self.network.close()

    def __enter__(self) -> "ChipDenoiser":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
