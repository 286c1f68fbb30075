"""Energy, SOP and resource reports of a compiled denoiser, per layer, for any hardware profile.

Counting (per image and denoiser call; per sample multiplies by the sampler's steps):

- **spike counts** per neuron of every population, from calls on calibration
  inputs (digits noised at diffusion steps spread over t) run by a backend:
  ``torch`` (the model; relays repeat their source), ``lava`` or ``emu``
  (every population, relays included);
- **exact SOPs**: each spike times the fan-out of its neuron in the build's
  fixed-point netlist: the re-associated, delayed, sign-split synapses with
  their integer weights, border-aware (``LinearOp.fan_out``), relays and the
  identity synapses into them included;
- **the papers' SOPs**: ``fr x T x FLOPs`` per layer of the NIR graph (paper
  004, section V), where FLOPs counts a layer as an ANN does and fr is the
  firing rate of the spikes it reads; a layer whose input is real-valued (the
  analog input conv, a shortcut on the real-valued residual stream, the host
  parts) costs MACs instead: FLOPs x T per call when it runs every spiking
  step, FLOPs once when its input is constant over the call (host work);
- **TSM gains** (SDM's per-step scales p[t]), charged as MACs: on chip a
  multiply per output of every gained synapse and each of the T steps (re-association
  spreads one conv's scale over every synapse composed through it), on the
  host one per output of a gained host current and step; the papers' method
  counts one per output of every scaled conv and step;
- **host work** (time-embedding MLP, host-partitioned ops, the tail) in MACs,
  counted with forward hooks on the host model's conv/linear modules and
  labelled as host work;
- **graded ops** (``--residual graded``): each non-zero payload a sum
  population sends times its fan-out: a multiply-accumulate per synapse,
  priced at the profile's ``graded_sop_pj`` (a profile without it, hardware
  with binary spikes only, refuses such a build); the sum populations' neuron
  updates and messages count as every population's;
- **neuron updates**: every neuron updates every step of a call, ``depth + T``
  steps in the pipelined lowering; the T steps that carry its data are
  "active", the pipeline-fill steps "idle" (Loihi prices them differently);
- **the ANN twin** (same config, ReLU, one step): the NIR graph's layers at
  FLOPs MACs each plus its own host parts;
- **selection gates** (paper 000's expert weights, ``snc.Gate``): SOPs and
  layers are counted call by call; with the selection specialised a synapse
  or layer whose gate is 0 for the whole call does no work (``StepGainSparse``
  skips a step whose gain is 0; on Loihi 2 the gated cores receive no spikes)
  and the ANN twin skips the same experts; ``--all-experts`` counts every
  expert, weighted by its gate, and the router as per-call host work; the
  gates' multiplies are MACs on chip;
- **NIR level** (``NirLevelCount``, ``snc energy --nir-level``): a model
  too large to compile here is counted on its imported NIR graph with torch
  spikes: the papers' method, T neuron updates per call, host parts, the ANN
  twin; what only the netlist has (exact SOPs over re-associated synapses,
  relays, pipeline fill, cores) is not.

Energy = operations x the profile's pJ per operation (``hw_profiles/NAME.toml``,
``[energy]``); the formulas are returned with the numbers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import numpy as np
import torch
from torch import nn

from snc.compiler.frontends.base import HostProgram
from snc.errors import SncError

from .counted import NirLayer, NirModel
from .spikes import Counted, SpikeCounts

ENERGY_KEYS = ("sop_pj", "mac_pj", "host_mac_pj", "neuron_update_pj", "neuron_idle_pj", "spike_pj")
GRADED_KEY = "graded_sop_pj"  # a graded spike through one synapse: payload x weight, accumulated (a MAC)
PJ_PER_MJ = 1e9
READS_LABEL = {"spikes": "spikes", "host": "analog, host", "real": "real-valued"}


# --- host work ----------------------------------------------------------------------------
def _module_kind(module: nn.Module) -> str:
    if isinstance(module, nn.Linear):
        return "linear"
    k = "x".join(str(v) for v in module.kernel_size)
    return f"conv{k}" if isinstance(module, nn.Conv2d) else f"conv{len(module.kernel_size)}d {k}"


def module_macs(model: nn.Module, run: Callable[[], Any], batch: int) -> dict[str, tuple[str, int]]:
    """{module name: (kind, MACs per image)} of the conv/linear modules that ``run()`` calls."""
    found: dict[str, tuple[str, int]] = {}
    hooks = []
    for name, module in model.named_modules():
        if isinstance(module, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            def hook(m: nn.Module, inputs: Any, out: torch.Tensor, name: str = name) -> None:
                # MACs per output element: the inputs one output reads
                per_output = m.in_features if isinstance(m, nn.Linear) else \
                    m.in_channels // m.groups * math.prod(m.kernel_size)
                kind, before = found.get(name, (_module_kind(m), 0))
                found[name] = (kind, before + out.numel() // batch * per_output)
            hooks.append(module.register_forward_hook(hook))
    try:
        with torch.no_grad():
            run()
    finally:
        for h in hooks:
            h.remove()
    return found


def synaptic_ops(ops: float, graded: bool) -> tuple[float, float]:
    """(SOPs, graded ops) of a group's sends times their fan-out: a graded group's payload times a weight is a
    multiply-accumulate, not the binary accumulate of a SOP."""
    return (0.0, ops) if graded else (ops, 0.0)


def chip_group_pj(pj: dict[str, float], sops: float, graded_ops: float, active: float, idle: float,
                  spikes: float) -> float:
    """pJ of a chip group: its synaptic ops, its neuron updates in steps that carry data (active) and in
    pipeline-fill steps (idle), and the spikes it routes."""
    return (sops * pj["sop_pj"] + graded_ops * pj.get(GRADED_KEY, 0.0) + active * pj["neuron_update_pj"]
            + idle * pj["neuron_idle_pj"] + spikes * pj["spike_pj"])


def host_work_macs(host: HostProgram, specialised: bool = True) -> dict[str, dict[str, tuple[str, int]]]:
    """MACs per image of the host parts around the core (the host program's ``host_work``: the stem, the
    time embedding, the router when the selection is not specialised, the tail), by module."""
    return {part: module_macs(host.model, run, 1) for part, run in host.host_work(specialised).items()}


# --- the report -----------------------------------------------------------------------------
def energy_model(profile: dict[str, Any], graded: bool = False) -> dict[str, float]:
    """The profile's pJ per operation; ``graded``: the network sends graded spikes, which a profile without
    ``graded_sop_pj`` (hardware with binary spikes only) cannot price."""
    energy = profile.get("energy")
    if energy is None:
        raise SncError(f"profile {profile.get('name')} has no [energy] section")
    missing = [k for k in ENERGY_KEYS if k not in energy]
    if missing:
        raise SncError(f"profile {profile.get('name')}: [energy] lacks {', '.join(missing)}")
    if graded and GRADED_KEY not in energy:
        raise SncError(f"profile {profile.get('name')} has no graded spikes ({GRADED_KEY}): it cannot price a build "
                       "whose sum populations send them (--residual graded); use --residual reassociate")
    return {k: float(energy[k]) for k in ENERGY_KEYS + ((GRADED_KEY,) if GRADED_KEY in energy else ())}


@dataclass
class EnergyReport:
    profile: str
    estimate: bool
    basis: str
    backends: list[str]
    timesteps: list[int]
    images: int
    steps_per_sample: int
    call_steps: int  # depth + T
    layers: list[dict[str, Any]] = field(default_factory=list)
    kinds: list[dict[str, Any]] = field(default_factory=list)  # ANN twin vs SNN by layer kind
    totals: dict[str, Any] = field(default_factory=dict)
    resources: dict[str, Any] = field(default_factory=dict)
    formulas: list[str] = field(default_factory=list)
    level: str = "lowered"  # or "nir": counted on the NIR graph without compiling (papers' method only)
    random_init: bool = False  # the weights are a random init: rates and SOPs mean nothing, MACs hold

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def energy_report(host: HostProgram, counted: Counted, model: NirModel, profile: dict[str, Any],
                  counts: list[SpikeCounts], steps_per_sample: Optional[int] = None) -> EnergyReport:
    """Per-layer and total operations and energy of ``counted`` (a build's netlist, or a model's NIR graph)
    on ``profile``; ``counts[0]`` prices, the others are compared."""
    nodes = counted.nodes()
    pj = energy_model(profile, graded=any(role == "graded" for _, _, role, _ in nodes))
    T = counted.timestep
    lowered = counted.lowered
    call_steps = counted.depth + T
    steps = steps_per_sample or host.calls_per_sample
    main = counts[0]
    report = EnergyReport(profile["name"], bool(profile["energy"].get("estimate", True)),
                          str(profile["energy"].get("basis", "")), [c.backend for c in counts], main.timesteps,
                          main.images, steps, call_steps)
    layers = model.layers
    papers: dict[str, float] = {}
    for layer in layers:
        if layer.reads == "spikes":
            papers[layer.source] = papers.get(layer.source, 0.0) + main.layer_sops[layer.name]
    fan_out = counted.fan_outs() if lowered else {name: np.zeros(0, np.int64) for name, *_ in nodes}
    exact = {c.backend: c.sops_exact for c in counts}
    rows = report.layers
    for name, shape, role, _ in sorted(nodes, key=lambda n: (n[2] == "readout", n[3], n[0])):
        neurons = int(np.prod(shape))
        row: dict[str, Any] = {"layer": name, "role": role, "neurons": neurons,
                               "updates_active": neurons * T, "updates_idle": neurons * (call_steps - T)}
        if role != "readout":
            row["synapses_out"] = int(fan_out[name].sum())
            for c in counts:
                row[f"spikes[{c.backend}]"] = c.total(name)
                row[f"rate[{c.backend}]"] = c.total(name) / (neurons * T)
                row[f"sops_exact[{c.backend}]"] = exact[c.backend].get(name, 0.0)
            row["sops_papers"] = papers.get(name, 0.0)
            spikes_main = row[f"spikes[{main.backend}]"]
            row["sops_exact"] = row[f"sops_exact[{main.backend}]"]
        else:
            spikes_main = 0.0
            row.update(synapses_out=0, sops_exact=0.0, sops_papers=0.0)
        row["sops_exact"], row["graded_ops_exact"] = synaptic_ops(row["sops_exact"], role == "graded")
        row["macs_exact"] = row["macs_papers"] = 0
        row["energy_exact_pj"] = chip_group_pj(pj, row["sops_exact"], row["graded_ops_exact"], row["updates_active"],
                                               row["updates_idle"], spikes_main) if lowered else 0.0
        row["energy_papers_pj"] = row["sops_papers"] * pj["sop_pj"]
        rows.append(row)

    def work_row(name: str, role: str, macs_exact: float, macs_papers: float, price: float) -> None:
        rows.append({"layer": name, "role": role, "neurons": 0, "updates_active": 0, "updates_idle": 0,
                     "synapses_out": 0, "sops_exact": 0.0, "graded_ops_exact": 0.0, "sops_papers": 0.0,
                     "macs_exact": macs_exact,
                     "macs_papers": macs_papers, "energy_exact_pj": macs_exact * price,
                     "energy_papers_pj": macs_papers * price})

    # real-valued layers: on chip they are folded into the synapses by re-association
    for layer in layers:
        if layer.reads == "real":
            work_row(layer.name, "real-valued (MACs; folded into synapses on chip)", 0, layer.flops * T, pj["mac_pj"])
    # host-partitioned ops: the host evaluates each host op once per call
    host_edges = counted.host_macs(model.step_scales)
    papers_host = {layer.name: layer.flops for layer in layers if layer.reads == "host"}
    for key in sorted(set(host_edges) | set(papers_host)):
        work_row(key, "host (analog input, once per call)", host_edges.get(key, 0), papers_host.get(key, 0),
                 pj["host_mac_pj"])
    papers_gains = model.tsm_macs
    for place, price in (("chip", pj["mac_pj"]), ("host", pj["host_mac_pj"])):
        gains = counted.gain_macs(place)
        if gains or papers_gains[place]:
            work_row(f"TSM per-step gains ({place})", f"{place} (MACs: a multiply per gained output and step)",
                     gains, papers_gains[place], price)
    if counted.gate_keys:
        work_row("selection gates (chip)", "chip (MACs: a multiply per gated output and step, in calls it runs)",
                 main.gate_macs["exact"], main.gate_macs["papers"], pj["mac_pj"])
    host_parts = host_work_macs(host, main.specialised)
    for part, modules in host_parts.items():
        macs = sum(m for _, m in modules.values())
        if macs:
            work_row(f"host: {part}", "host", macs if lowered else 0, macs, pj["host_mac_pj"])

    report.kinds = _kinds(host, T, layers, main, host_parts, pj)
    report.totals = _totals(rows, report.kinds, steps, pj)
    report.resources = counted.resources(profile)
    if not lowered:
        report.level = "nir"
    graded_term = f" + graded ops x {pj[GRADED_KEY]} pJ" if any(r["graded_ops_exact"] for r in rows) else ""
    report.formulas = [
        f"exact = SOPs x {pj['sop_pj']} pJ{graded_term} + active neuron updates x {pj['neuron_update_pj']} pJ + "
        f"idle updates x {pj['neuron_idle_pj']} pJ + spikes x {pj['spike_pj']} pJ + host MACs x {pj['host_mac_pj']} pJ",
        f"papers = fr x T x FLOPs x {pj['sop_pj']} pJ + real-valued MACs x {pj['mac_pj']} pJ "
        f"+ host MACs x {pj['host_mac_pj']} pJ",
        f"ANN twin = MACs x {pj['mac_pj']} pJ (host parts x {pj['host_mac_pj']} pJ)",
        f"per sample = per call x {steps} sampler steps; a call is {call_steps} steps "
        + (f"(pipeline depth {counted.depth} + T={T})" if lowered else "(T, no pipeline: the NIR graph, not lowered)")
        + f"; spike counts: {main.backend}, {main.images} image(s) x diffusion steps {main.timesteps}",
    ]
    if not lowered:
        report.formulas[0] = ("exact: not counted (NIR level: the lowered graph, with its re-associated synapses, "
                              "relays and pipeline, was not built)")
    ands = [name for name, _, role, _ in nodes if role == "and"]
    if ands:
        report.formulas.append(f"spike products (attention's K*V, Q*SN(.)): on chip, {len(ands)} AND populations "
                               "(memoryless LIF, threshold 1.5 on two unit inputs): SOPs and neuron updates, no MACs")
    if counted.has_gates:
        report.formulas.append(
            "selection specialisation: " + ("on: a synapse or layer whose gate is 0 for a whole call (an expert "
                                            "the selection does not use at that diffusion step) is not evaluated"
                                            if main.specialised else "off: every expert runs (--all-experts)"))
    return report


def _kinds(host: HostProgram, T: int, layers: list[NirLayer], main: SpikeCounts, host_parts: dict,
           pj: dict[str, float]) -> list[dict[str, Any]]:
    """ANN twin vs SNN (the papers' method) by layer kind, as in paper 004's Table IV."""
    kinds: dict[str, dict[str, Any]] = {}

    def add(kind: str, layers_n: int = 0, ann_macs: float = 0, snn_sops: float = 0, snn_macs: float = 0) -> None:
        k = kinds.setdefault(kind, {"kind": kind, "layers": 0, "ann_macs": 0.0, "snn_sops": 0.0, "snn_macs": 0.0})
        k["layers"] += layers_n
        k["ann_macs"] += ann_macs
        k["snn_sops"] += snn_sops
        k["snn_macs"] += snn_macs

    for layer in layers:
        kind = f"{layer.kind} ({READS_LABEL[layer.reads]})"
        if layer.reads == "spikes":  # the ANN twin skips the experts the selection skips, as the SNN does
            add(kind, 1, layer.flops * main.layer_active.get(layer.name, 1.0), snn_sops=main.layer_sops[layer.name])
        else:
            add(kind, 1, layer.flops, snn_macs=layer.flops * (T if layer.reads == "real" else 1))
    twin_parts = host_work_macs(host.ann_twin(), main.specialised)
    for part, modules in host_parts.items():
        for name in sorted(set(modules) | set(twin_parts[part])):
            kind = (modules.get(name) or twin_parts[part][name])[0]
            add(f"{kind} (host: {part})", 1, twin_parts[part].get(name, (kind, 0))[1],
                snn_macs=modules.get(name, (kind, 0))[1])
    for k in kinds.values():
        k["ann_energy_pj"] = k["ann_macs"] * (pj["host_mac_pj"] if "host" in k["kind"] else pj["mac_pj"])
        k["snn_energy_pj"] = k["snn_sops"] * pj["sop_pj"] + k["snn_macs"] * (
            pj["host_mac_pj"] if "host" in k["kind"] else pj["mac_pj"])
    return sorted(kinds.values(), key=lambda k: -k["ann_macs"])


def _totals(rows: list[dict], kinds: list[dict], steps: int, pj: dict[str, float]) -> dict[str, Any]:
    def total(key: str) -> float:
        return float(sum(r.get(key, 0) for r in rows))

    call = {
        "sops_exact": total("sops_exact"), "graded_ops_exact": total("graded_ops_exact"),
        "sops_papers": total("sops_papers"),
        "macs_exact": total("macs_exact"), "macs_papers": total("macs_papers"),
        "neuron_updates": total("updates_active") + total("updates_idle"),
        "energy_exact_pj": total("energy_exact_pj"), "energy_papers_pj": total("energy_papers_pj"),
        "ann_macs": float(sum(k["ann_macs"] for k in kinds)),
        "ann_energy_pj": float(sum(k["ann_energy_pj"] for k in kinds)),
    }
    per_sample = {k.replace("_pj", "_mj"): v * steps / PJ_PER_MJ for k, v in call.items() if k.endswith("_pj")}
    return {"per_call": call, "per_sample": per_sample, "steps_per_sample": steps,
            "snn_vs_ann_exact": call["energy_exact_pj"] / call["ann_energy_pj"] if call["ann_energy_pj"] else None,
            "snn_vs_ann_papers": call["energy_papers_pj"] / call["ann_energy_pj"] if call["ann_energy_pj"] else None}


@dataclass
class PipelineEnergyReport:
    """One sample of a model that runs as several cores: each core's report, its ``steps_per_sample`` being
    its calls per sample (``runtime/pipelines.py``), and their sum."""

    arch: str
    stages: dict[str, EnergyReport]

    @property
    def per_sample(self) -> dict[str, float]:
        """Every per-sample total (mJ) summed over the cores."""
        keys = next(iter(self.stages.values())).totals["per_sample"]
        return {k: float(sum(r.totals["per_sample"][k] for r in self.stages.values())) for k in keys}

    def as_dict(self) -> dict[str, Any]:
        return {"arch": self.arch, "per_sample": self.per_sample,
                "calls_per_sample": {name: r.steps_per_sample for name, r in self.stages.items()},
                "stages": {name: r.as_dict() for name, r in self.stages.items()}}
