"""Denoiser calls on the same inputs through any backends; compare spikes and outputs.

Runs: the torch model in float64 (the reference, always first) and each
requested backend in each of its modes (``lava`` means ``lava:float`` and
``lava:fixed``; ``backend:mode`` picks one). Every pair of runs is compared:
spike agreement per population of the model (the populations the torch
reference has: relays excluded) and the relative error of the outputs.
Two runs of the same arithmetic (``Backend.semantics``: the emulator and Lava
fixed_pt) must agree exactly: every spike of every population, relays
included, and the readout of every call (``VerifyReport.exact``).

A population that the compiled gates switch off in a call (an expert the
selection does not use at that diffusion step) is left out of that call's
comparison with torch, which computes every expert: the count of such
neuron-steps is reported. Chip spikes are read at each population's
pipeline depth, so logical step k of every population is compared.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

import numpy as np
import torch

from snc.compiler.build import Build
from snc.compiler.netlist import Netlist
from snc.errors import SncError
from snc.memory import available_mb

from .backends import BACKENDS, check_device, get_backend
from .backends.base import CallResult

REFERENCE = "torch"


@dataclass
class VerifyReport:
    n: int
    timesteps: list[int]
    runs: list[str]
    layers: list[dict[str, Any]] = field(default_factory=list)
    output_rel_error: dict[str, float] = field(default_factory=dict)
    agreement: dict[str, float] = field(default_factory=dict)
    readout_identical: dict[str, bool] = field(default_factory=dict)  # pairs of the same arithmetic
    switched_off: int = 0  # neuron-steps left out of the comparisons with torch (experts the gates switched off)
    batches: dict[str, int] = field(default_factory=dict)  # images per call of each run (Lava: what fits memory)

    @property
    def exact(self) -> bool:
        """Every pair of runs of the same arithmetic agreed bit for bit."""
        return all(self.readout_identical.values()) and all(self.agreement[k] == 1.0 for k in self.readout_identical)

    def as_dict(self) -> dict[str, Any]:
        return {"n": self.n, "timesteps": self.timesteps, "runs": self.runs, "agreement": self.agreement,
                "output_rel_error": self.output_rel_error, "readout_identical": self.readout_identical,
                "switched_off_neuron_steps": self.switched_off, "exact": self.exact, "batches": self.batches,
                "layers": self.layers}


@dataclass
class PipelineVerifyReport:
    """The reports of every core of a pipeline build, by stage."""

    stages: dict[str, VerifyReport]

    @property
    def exact(self) -> bool:
        return all(r.exact for r in self.stages.values())

    def as_dict(self) -> dict[str, Any]:
        return {"exact": self.exact, "stages": {name: r.as_dict() for name, r in self.stages.items()}}


def parse_runs(backends: Sequence[str]) -> list[tuple[str, str, str]]:
    """(label, backend, mode) of every run: the torch reference, then each backend in each of its modes
    (or the ``backend:mode`` given)."""
    runs = [(REFERENCE, REFERENCE, "float64")]
    for spec in backends:
        name, _, mode = spec.partition(":")
        if name not in BACKENDS:
            raise SncError(f"--backends takes {', '.join(BACKENDS)} (optionally backend:mode), got {spec!r}")
        if name == REFERENCE:
            continue  # always the reference
        backend = get_backend(name)
        modes = [backend.check_mode(mode)] if mode else list(backend.modes)
        for m in modes:
            label = name if len(backend.modes) == 1 else f"{name}_{m}"
            if any(label == r[0] for r in runs):
                raise SncError(f"--backends names {label} twice")
            runs.append((label, name, m))
    if len(runs) < 2:
        raise SncError("--backends: give at least one backend to compare with the torch model")
    return runs


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm().clamp_min(1e-300))


def _agreement(a: dict[str, np.ndarray], b: dict[str, np.ndarray], names) -> tuple[int, int]:
    same = sum(int((a[n] == b[n]).sum()) for n in names)
    return same, sum(a[n].size for n in names)


def _check_records_fit(net: Netlist, n: int, records: int) -> None:
    """Refuse an ``n`` whose recorded spikes (a bool per neuron, logical step and image, for each of ``records``
    runs of a call) exceed the memory available, before anything runs."""
    need = records * n * net.timestep * sum(g.n for g in net.groups.values()) / 2**20
    available = available_mb()
    if available is not None and need > available:
        raise SncError(f"-n {n}: the spikes verify records alone need about {need / 1024:.1f} GB, "
                       f"{max(available, 0) / 1024:.1f} GB is available; verify fewer images")


def verify_build(build: Build, n: int = 8, fractions: tuple[float, ...] = (0.1, 0.5, 0.9), seed: int = 0,
                 backends: Sequence[str] = ("lava",), batch: Optional[int] = None,
                 timeout: Optional[float] = None, device: Optional[str] = None) -> VerifyReport:
    """Calls at diffusion steps ``fraction * steps`` (100, 500, 900 for 1000 steps) on ``n`` images each,
    ``batch`` images per chip call (default n); ``timeout``: seconds a supervised backend's call may take;
    ``device``: of the backends that run on one (the emulator)."""
    if batch is not None and not 1 <= batch <= n:
        raise SncError(f"--batch must be in 1..{n} (-n)")
    runs_spec = parse_runs(backends)
    on_device = check_device(device, [name for _, name, _ in runs_spec])
    net = build.netlist()
    _check_records_fit(net, n, len(fractions) * len(runs_spec))
    host = build.host
    pairs = host.call_pairs(n, fractions, seed)
    timesteps = [int(t[0]) for _, t in pairs]
    results: dict[str, list[tuple[torch.Tensor, CallResult]]] = {}
    semantics: dict[str, str] = {}
    batches: dict[str, int] = {}
    for label, name, mode in runs_spec:
        backend = get_backend(name)
        semantics[label] = backend.semantics(mode)
        with backend.open(build, mode, batch=batch or n, record=True, auto_batch=batch is None,
                          **backend.call_options(timeout, on_device)) as runner:
            results[label] = [(runner(x.double(), t), runner.last) for x, t in pairs]
            batches[label] = getattr(runner, "batch", n)  # the torch model takes all n at once
    labels = [r[0] for r in runs_spec]
    comparisons = {f"{a}_vs_{b}": (a, b) for j, a in enumerate(labels) for b in labels[:j]}
    exact = {k for k, (a, b) in comparisons.items() if semantics[a] == semantics[b]}
    report = VerifyReport(n=len(pairs[0][0]), timesteps=list(timesteps), runs=labels, batches=batches)
    off = [net.switched_off(int(t[0])) for _, t in pairs]
    torch_spikes = [r.spikes for _, r in results[REFERENCE]]
    totals = {k: [0, 0] for k in comparisons}
    for name in (g for g in net.groups if g in torch_spikes[0]):  # the model's populations, in netlist order
        row: dict[str, Any] = {"population": name, "neurons": net.groups[name].n}
        row["torch_rate"] = float(np.mean([s[name].mean() for s in torch_spikes]))
        report.switched_off += sum(s[name].size for s, o in zip(torch_spikes, off) if name in o)
        for key, (a, b) in comparisons.items():
            same = total = 0
            for i in range(len(pairs)):
                if REFERENCE in (a, b) and name in off[i]:
                    continue
                counts = _agreement(results[a][i][1].spikes, results[b][i][1].spikes, [name])
                same, total = same + counts[0], total + counts[1]
            row[key] = same / total if total else None
            totals[key][0] += same
            totals[key][1] += total
        report.layers.append(row)
    report.agreement = {k: s / t for k, (s, t) in totals.items()}
    for key in sorted(exact):  # exact: relays too, and the readout itself
        a, b = comparisons[key]
        counts = [_agreement(ra.spikes, rb.spikes, rb.spikes) for (_, ra), (_, rb) in zip(results[a], results[b])]
        report.agreement[key] = sum(c[0] for c in counts) / sum(c[1] for c in counts)
        report.readout_identical[key] = all(np.array_equal(ra.readout, rb.readout)
                                            for (_, ra), (_, rb) in zip(results[a], results[b]))
    eps = {label: torch.cat([e for e, _ in r]) for label, r in results.items()}
    report.output_rel_error = {k: _rel(eps[a], eps[b]) for k, (a, b) in comparisons.items()}
    return report
