"""One denoiser call on the same inputs through torch and chip backends; compare spikes and outputs.

Backends: ``lava`` (Lava floating_pt and fixed_pt) and ``emu`` (the
emulator of fixed_pt). With both, emu is compared with Lava fixed_pt, where
they must agree exactly: every spike of every population (relays included)
and the readout of every call.

The torch side is the checkpoint's model in float64; its spikes are read with
forward hooks on every spiking neuron module and spike AND (a neuron in front
of a skip concatenation is split by channel into the ``.main`` / ``.skip``
populations, as export splits it; token sequences are laid out as the
exporter's (D, h, w) grids). A population that the compiled gates switch off
in a call (an expert the selection does not use at that diffusion step) is
left out of that call's comparison with torch, which computes every expert:
the count of such neuron-steps is reported. Lava spikes are read at each population's
pipeline depth, so logical step k of every population is compared.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import nir
import numpy as np
import torch
from torch import nn

from snc.compiler.build import Build
from snc.compiler.ir import Graph, Population
from snc.errors import SncError
from snc.models.neurons import IFNeuron, SpikeAnd

from .chip import CallResult
from .compiled import ChipDenoiser, load_host_model, noisy_inputs
from .host import to_grid, token_layout

SPLIT_SUFFIXES = (".main", ".skip")


def torch_spikes(model: nn.Module, graph: Graph, nir_graph: nir.NIRGraph, x: torch.Tensor,
                 t: torch.Tensor) -> tuple[torch.Tensor, dict]:
    """eps and {population of ``graph``: spikes [T, B, *shape]} of the torch model (``nir_graph``: its export)."""
    recorded: dict[str, torch.Tensor] = {}
    hooks = []
    for name, module in model.named_modules():
        if isinstance(module, (IFNeuron, SpikeAnd)):
            hooks.append(module.register_forward_hook(lambda m, i, out, name=name: recorded.__setitem__(name, out)))
    try:
        with torch.no_grad():
            eps = model(x, t)
    finally:
        for h in hooks:
            h.remove()
    spikes = {}
    for p in graph.of_type(Population):
        if p.role == "relay":
            continue
        module = p.name
        for suffix in SPLIT_SUFFIXES:
            if p.name.endswith(suffix):
                module = p.name[: -len(suffix)]
        out = recorded[module]
        if module != p.name:
            main = graph.nodes[module + ".main"].shape[0]
            out = out[:, :, :main] if p.name.endswith(".main") else out[:, :, main:]
        if token_layout(nir_graph) and out.dim() == 4:  # [T, B, tokens, C] -> [T, B, C, h, w]
            out = to_grid(out, p.shape)
        spikes[p.name] = out.reshape(out.shape[0], out.shape[1], *p.shape).numpy() != 0
    return eps, spikes


def switched_off(graph: Graph, step: int) -> set[str]:
    """Populations every spike path into which passes a gate that is 0 for the whole diffusion step (their
    host inputs, an expert's bias, are scaled by the same gate)."""
    off = graph.gates_off(step)
    if not off:
        return set()
    inputs: dict[str, list[str]] = {}
    for _, dst, gate in graph.spike_paths():
        inputs.setdefault(dst, []).append(gate)
    return {p for p, passed in inputs.items() if isinstance(graph.nodes[p], Population) and all(g in off for g in passed)}


@dataclass
class VerifyReport:
    n: int
    timesteps: list[int]
    layers: list[dict[str, Any]] = field(default_factory=list)
    output_rel_error: dict[str, float] = field(default_factory=dict)
    agreement: dict[str, float] = field(default_factory=dict)
    readout_identical: dict[str, bool] = field(default_factory=dict)  # emu_vs_lava_fixed: every call's readout
    switched_off: int = 0  # neuron-steps left out of the comparisons with torch (experts the gates switched off)

    def as_dict(self) -> dict[str, Any]:
        return {"n": self.n, "timesteps": self.timesteps, "agreement": self.agreement,
                "output_rel_error": self.output_rel_error, "readout_identical": self.readout_identical,
                "switched_off_neuron_steps": self.switched_off, "layers": self.layers}


RUNS = {"float": ("lava", "float"), "fixed": ("lava", "fixed"), "emu": ("emu", "fixed")}
COMPARISONS = {  # name: (run, reference run or None for torch, backends it needs)
    "float_vs_torch": ("float", None, {"lava"}), "fixed_vs_float": ("fixed", "float", {"lava"}),
    "fixed_vs_torch": ("fixed", None, {"lava"}), "emu_vs_lava_fixed": ("emu", "fixed", {"lava", "emu"}),
    "emu_vs_torch": ("emu", None, {"emu"}),
}


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm().clamp_min(1e-300))


def _agreement(a: dict[str, np.ndarray], b: dict[str, np.ndarray], names) -> tuple[int, int]:
    same = sum(int((a[n] == b[n]).sum()) for n in names)
    return same, sum(a[n].size for n in names)


def verify_build(build: Build, n: int = 8, fractions: tuple[float, ...] = (0.1, 0.5, 0.9), seed: int = 0,
                 backends: tuple[str, ...] = ("lava",), batch: int | None = None) -> VerifyReport:
    """Calls at diffusion steps ``fraction * steps`` (100, 500, 900 for 1000 steps) on ``n`` images each,
    ``batch`` images per chip call (default n)."""
    if batch is not None and not 1 <= batch <= n:
        raise SncError(f"--batch must be in 1..{n} (-n)")
    unknown = sorted(set(backends) - {"lava", "emu"})
    if unknown or not backends:
        raise SncError(f"unknown verify backend(s) {', '.join(unknown) or '(none)'}; use lava, emu or lava,emu")
    model = load_host_model(build)
    timesteps = [int(model.config.diffusion_steps * f) for f in fractions]
    pairs = noisy_inputs(model, n, timesteps, seed)
    torch_runs = [torch_spikes(model, build.graph, build.nir_graph, x.double(), t) for x, t in pairs]
    runs: dict[str, list[tuple[torch.Tensor, CallResult]]] = {}
    for label, (backend, mode) in RUNS.items():
        if backend not in backends:
            continue
        with ChipDenoiser(build, mode, batch=batch or n, record=True, backend=backend) as chip:
            runs[label] = [(chip(x.double(), t), chip.last) for x, t in pairs]
    comparisons = {k: (a, b) for k, (a, b, needs) in COMPARISONS.items() if needs <= set(backends)}
    report = VerifyReport(n=len(pairs[0][0]), timesteps=list(timesteps))
    totals = {k: [0, 0] for k in comparisons}
    off = [switched_off(build.graph, int(t[0])) for _, t in pairs]
    for name in torch_runs[0][1]:
        row: dict[str, Any] = {"population": name, "neurons": int(np.prod(build.graph.nodes[name].shape))}
        row["torch_rate"] = float(np.mean([r[1][name].mean() for r in torch_runs]))
        for i in range(len(pairs)):
            report.switched_off += torch_runs[i][1][name].size if name in off[i] else 0
        for key, (a, b) in comparisons.items():
            same = total = 0
            for i in range(len(pairs)):
                if b is None and name in off[i]:
                    continue
                reference = torch_runs[i][1] if b is None else runs[b][i][1].spikes
                counts = _agreement(runs[a][i][1].spikes, reference, [name])
                same, total = same + counts[0], total + counts[1]
            row[key] = same / total if total else None
            totals[key][0] += same
            totals[key][1] += total
        report.layers.append(row)
    report.agreement = {k: s / t for k, (s, t) in totals.items()}
    if "emu_vs_lava_fixed" in comparisons:  # exact: relays too, and the readout itself
        counts = [_agreement(e.spikes, f.spikes, f.spikes) for (_, e), (_, f) in zip(runs["emu"], runs["fixed"])]
        report.agreement["emu_vs_lava_fixed"] = sum(c[0] for c in counts) / sum(c[1] for c in counts)
        report.readout_identical["emu_vs_lava_fixed"] = all(
            np.array_equal(e.readout, f.readout) for (_, e), (_, f) in zip(runs["emu"], runs["fixed"]))
    eps = {label: torch.cat([e for e, _ in r]) for label, r in runs.items()}
    ref = torch.cat([e for e, _ in torch_runs])
    report.output_rel_error = {k: _rel(eps[a], ref if b is None else eps[b]) for k, (a, b) in comparisons.items()}
    return report
