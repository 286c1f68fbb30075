"""One denoiser call on the same inputs through torch, Lava floating_pt and Lava fixed_pt.

The torch side is the checkpoint's model in float64; its spikes are read with
forward hooks on every spiking neuron module (a neuron in front of a skip
concatenation is split by channel into the ``.main`` / ``.skip``
populations, as export splits it). Lava spikes are read at each population's
pipeline depth, so logical step k of every population is compared.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from snc.compiler.build import Build
from snc.compiler.ir import Population
from snc.models.neurons import IFNeuron

from .compiled import ChipDenoiser, load_host_model, noisy_inputs

SPLIT_SUFFIXES = (".main", ".skip")


def torch_spikes(model: nn.Module, build: Build, x: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, dict]:
    """eps and {population: spikes [T, B, *shape]} of the torch model."""
    recorded: dict[str, torch.Tensor] = {}
    hooks = []
    for name, module in model.named_modules():
        if isinstance(module, IFNeuron):
            hooks.append(module.register_forward_hook(lambda m, i, out, name=name: recorded.__setitem__(name, out)))
    try:
        with torch.no_grad():
            eps = model(x, t)
    finally:
        for h in hooks:
            h.remove()
    spikes = {}
    for p in build.graph.of_type(Population):
        if p.role != "neuron":
            continue
        module = p.name
        for suffix in SPLIT_SUFFIXES:
            if p.name.endswith(suffix):
                module = p.name[: -len(suffix)]
        out = recorded[module]
        if module != p.name:
            main = build.graph.nodes[module + ".main"].shape[0]
            out = out[:, :, :main] if p.name.endswith(".main") else out[:, :, main:]
        spikes[p.name] = out.reshape(out.shape[0], out.shape[1], *p.shape).numpy() != 0
    return eps, spikes


@dataclass
class VerifyReport:
    n: int
    timesteps: list[int]
    layers: list[dict[str, Any]] = field(default_factory=list)
    output_rel_error: dict[str, float] = field(default_factory=dict)
    agreement: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"n": self.n, "timesteps": self.timesteps, "agreement": self.agreement,
                "output_rel_error": self.output_rel_error, "layers": self.layers}


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm().clamp_min(1e-300))


def verify_build(build: Build, n: int = 8, fractions: tuple[float, ...] = (0.1, 0.5, 0.9), seed: int = 0) -> VerifyReport:
    """Calls at diffusion steps ``fraction * steps`` (100, 500, 900 for 1000 steps)."""
    model = load_host_model(build)
    timesteps = [int(model.config.diffusion_steps * f) for f in fractions]
    pairs = noisy_inputs(model, n, timesteps, seed)
    torch_runs = [torch_spikes(model, build, x.double(), t) for x, t in pairs]
    lava_runs = {}
    for mode in ("float", "fixed"):
        with ChipDenoiser(build, mode, batch=len(pairs[0][0]), record=True) as chip:
            runs = []
            for x, t in pairs:
                eps = chip(x.double(), t)
                runs.append((eps, chip.last.spikes))
            lava_runs[mode] = runs
    report = VerifyReport(n=len(pairs[0][0]), timesteps=list(timesteps))
    comparisons = {"float_vs_torch": ("float", None), "fixed_vs_float": ("fixed", "float"),
                   "fixed_vs_torch": ("fixed", None)}
    totals = {k: [0, 0] for k in comparisons}
    for name in torch_runs[0][1]:
        row: dict[str, Any] = {"population": name, "neurons": int(np.prod(build.graph.nodes[name].shape))}
        row["torch_rate"] = float(np.mean([r[1][name].mean() for r in torch_runs]))
        for key, (a, b) in comparisons.items():
            same = total = 0
            for i in range(len(pairs)):
                sa = lava_runs[a][i][1][name]
                sb = torch_runs[i][1][name] if b is None else lava_runs[b][i][1][name]
                same += int((sa == sb).sum())
                total += sa.size
            row[key] = same / total
            totals[key][0] += same
            totals[key][1] += total
        report.layers.append(row)
    report.agreement = {k: s / t for k, (s, t) in totals.items()}
    ref = torch.cat([eps for eps, _ in torch_runs])
    flt = torch.cat([eps for eps, _ in lava_runs["float"]])
    fix = torch.cat([eps for eps, _ in lava_runs["fixed"]])
    report.output_rel_error = {"float_vs_torch": _rel(flt, ref), "fixed_vs_float": _rel(fix, flt),
                               "fixed_vs_torch": _rel(fix, ref)}
    return report
