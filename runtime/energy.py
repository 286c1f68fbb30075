"""Energy, SOP and resource reports of a compiled denoiser, per layer, for any hardware profile.

Counting (per image and denoiser call; per sample multiplies by the sampler's steps):

- **spike counts** per neuron of every population, from calls on calibration
  inputs (digits noised at diffusion steps spread over t) run by a backend:
  ``torch`` (the checkpoint's model; relays repeat their source), ``lava``
  or ``emu`` (every population, relays included);
- **exact SOPs**: each spike times the fan-out of its neuron in the lowered
  graph: the re-associated, delayed, sign-split synapses with their quantized
  weights, border-aware (``LinearOp.fan_out``), relays and the identity
  synapses into them included;
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
- **neuron updates**: every neuron updates every step of a call, ``depth + T``
  steps in the pipelined lowering; the T steps that carry its data are
  "active", the pipeline-fill steps "idle" (Loihi prices them differently);
- **the ANN twin** (same config, ReLU, one step): the NIR graph's layers at
  FLOPs MACs each plus its own host parts.

Energy = operations x the profile's pJ per operation (``hw_profiles/NAME.toml``,
``[energy]``); the formulas are returned with the numbers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import nir
import numpy as np
import torch
from torch import nn

from snc.compiler.build import Build
from snc.compiler.ir import Graph, HostInput, Linear, Population, Readout
from snc.compiler.nir_io import StepScale
from snc.compiler.passes import import_nir, map_cores, partition_host
from snc.errors import SncError
from snc.models import ann_twin, build_model

from .compiled import ChipDenoiser, load_host_model, noisy_inputs
from .verify import torch_spikes

BACKENDS = ("torch", "lava", "emu")
ENERGY_KEYS = ("sop_pj", "mac_pj", "host_mac_pj", "neuron_update_pj", "neuron_idle_pj", "spike_pj")
PJ_PER_MJ = 1e9
CALIBRATION_FRACTIONS = (0.1, 0.3, 0.5, 0.7, 0.9)
READS_LABEL = {"spikes": "spikes", "host": "analog, host", "real": "real-valued"}


@dataclass
class SpikeCounts:
    """Mean spikes per neuron per (image, denoiser call), summed over the T steps."""

    backend: str
    images: int
    timesteps: list[int]
    per_neuron: dict[str, np.ndarray]  # population -> [n_neurons] float64

    def total(self, population: str) -> float:
        return float(self.per_neuron[population].sum())


def count_spikes(build: Build, backend: str, n: int = 4, seed: int = 0, mode: str = "fixed",
                 fractions: tuple[float, ...] = CALIBRATION_FRACTIONS) -> SpikeCounts:
    """Spike counts of every population from calls at diffusion steps ``fraction * steps``."""
    if backend not in BACKENDS:
        raise SncError(f"unknown backend {backend!r}; use {' or '.join(BACKENDS)}")
    model = load_host_model(build)
    graph = build.graph
    timesteps = [int(model.config.diffusion_steps * f) for f in fractions]
    pairs = noisy_inputs(model, n, timesteps, seed)
    sums = {p.name: np.zeros(int(np.prod(p.shape))) for p in graph.of_type(Population)}

    def add(spikes: dict[str, np.ndarray]) -> None:
        for name, s in spikes.items():
            sums[name] += s.reshape(s.shape[0], s.shape[1], -1).sum(axis=(0, 1))

    if backend == "torch":
        for x, t in pairs:
            add(torch_spikes(model, build, x.double(), t)[1])
        for p in graph.of_type(Population):  # a relay repeats its source's spikes, delayed
            if p.role == "relay":
                sums[p.name] = sums[_relay_source(graph, p.name)]
    else:
        with ChipDenoiser(build, mode, batch=len(pairs[0][0]), record=True, backend=backend) as chip:
            for x, t in pairs:
                chip(x.double(), t)
                add(chip.last.spikes)
    calls = len(pairs) * len(pairs[0][0])
    return SpikeCounts(backend, len(pairs[0][0]), timesteps, {k: v / calls for k, v in sums.items()})


def _relay_source(graph: Graph, relay: str) -> str:
    source = graph.into(relay)[0].src
    while graph.nodes[source].role == "relay":
        source = graph.into(source)[0].src
    return source


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


def host_parts_macs(model: nn.Module, graph: Graph) -> dict[str, dict[str, tuple[str, int]]]:
    """MACs per image of the host parts around the core: the time embedding and the tail."""
    cfg = model.config
    t = torch.full((1,), cfg.diffusion_steps // 2, dtype=torch.long)
    h = torch.zeros((cfg.timestep, 1, *graph.readout.shape), dtype=next(model.parameters()).dtype)
    return {"time embedding": module_macs(model, lambda: model.time_biases(t), 1),
            "tail": module_macs(model, lambda: model.decode(h), 1)}


# --- the NIR graph's layers (the papers' method and the ANN twin) -------------------------------
@dataclass
class NirLayer:
    name: str  # the NIR node (torch module, BatchNorm folded)
    kind: str  # e.g. "conv3x3/s1", "conv3x3/s1 after nearest x2", "dense"
    flops: int  # MACs of one evaluation, as an ANN counts them
    reads: str  # "spikes" | "host" (constant over a call) | "real" (real-valued, every step)
    source: str = ""  # the population whose spikes it reads (reads == "spikes")


def nir_layers(nir_graph: nir.NIRGraph, timestep: int) -> list[NirLayer]:
    """The arithmetic layers of the build's NIR graph and the kind of values each reads.

    Values are followed through ops that only move data (reshapes, nearest
    upsampling): a conv after an upsampling of spikes reads spikes. A layer
    reading a sum of several streams reads real (graded) values.
    """
    graph = partition_host.run(import_nir.run(nir_graph, timestep))
    value: dict[str, tuple[str, str, str]] = {}  # node -> (reads, source population, note on the way)
    layers = []
    for name in graph.topological():
        node = graph.nodes[name]
        # a delay (lag) is ordered before its sources, which are populations: it reads spikes
        inputs = [value.get(e.src, ("spikes", e.src, "")) for e in graph.into(name)]
        if isinstance(node, Population):
            value[name] = ("spikes", name, "")
        elif isinstance(node, HostInput):
            value[name] = ("host", "", "")
        elif isinstance(node, Linear):
            if len(inputs) == 1:
                reads, source, note = inputs[0]
            else:
                reads, source, note = ("host" if all(v[0] == "host" for v in inputs) else "real"), "", ""
            if node.op.moves_only:
                if node.op.kind == "conv" and node.op.upsample > 1:
                    note = f" after nearest x{node.op.upsample}"
                value[name] = (reads, source, note)
                continue
            layers.append(NirLayer(name, node.op.describe() + note, node.op.dense_macs(), reads, source))
            value[name] = ("host" if reads == "host" else "real", "", "")
    return layers


def tsm_papers_macs(nir_graph: nir.NIRGraph, timestep: int) -> dict[str, int]:
    """The papers' count of TSM work per call, on chip and on the host: every output of every scaled conv,
    every step."""
    graph = partition_host.run(import_nir.run(nir_graph, timestep))
    return {place: sum(n.op.n_out * timestep for n in graph.of_type(Linear) if n.gain is not None and n.placement == place)
            for place in ("chip", "host")}


def fan_outs(graph: Graph) -> dict[str, np.ndarray]:
    """Synapses leaving each neuron of every population over all its lowered (quantized) synapses."""
    out = {p.name: np.zeros(int(np.prod(p.shape)), dtype=np.int64) for p in graph.of_type(Population)}
    for e in graph.edges:
        if e.src in out:
            out[e.src] += e.lowered_op().fan_out()
    return out


def exact_sops(fan_out: dict[str, np.ndarray], per_neuron: dict[str, np.ndarray]) -> dict[str, float]:
    """SOPs per source population: each neuron's spikes times its fan-out."""
    return {name: float(per_neuron[name] @ f) for name, f in fan_out.items()}


def papers_sops(layers: list[NirLayer], per_neuron: dict[str, np.ndarray], timestep: int) -> dict[str, float]:
    """``fr x T x FLOPs`` summed per source population over the layers reading its spikes."""
    sops: dict[str, float] = {}
    for layer in layers:
        if layer.reads == "spikes":
            sops[layer.source] = sops.get(layer.source, 0.0) + _layer_sops(layer, per_neuron, timestep)
    return sops


def _layer_sops(layer: NirLayer, per_neuron: dict[str, np.ndarray], timestep: int) -> float:
    counts = per_neuron[layer.source]
    rate = counts.sum() / (counts.size * timestep)
    return float(rate * timestep * layer.flops)


# --- the report -----------------------------------------------------------------------------
def energy_model(profile: dict[str, Any]) -> dict[str, float]:
    energy = profile.get("energy")
    if energy is None:
        raise SncError(f"profile {profile.get('name')} has no [energy] section")
    missing = [k for k in ENERGY_KEYS if k not in energy]
    if missing:
        raise SncError(f"profile {profile.get('name')}: [energy] lacks {', '.join(missing)}")
    return {k: float(energy[k]) for k in ENERGY_KEYS}


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

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def energy_report(build: Build, profile: dict[str, Any], counts: list[SpikeCounts],
                  steps_per_sample: Optional[int] = None) -> EnergyReport:
    """Per-layer and total operations and energy; ``counts[0]`` prices, the others are compared."""
    pj = energy_model(profile)
    graph, T = build.graph, build.graph.timestep
    call_steps = graph.depth + T
    model = load_host_model(build)
    steps = steps_per_sample or model.config.diffusion_steps
    main = counts[0]
    report = EnergyReport(profile["name"], bool(profile["energy"].get("estimate", True)),
                          str(profile["energy"].get("basis", "")), [c.backend for c in counts], main.timesteps,
                          main.images, steps, call_steps)
    layers = nir_layers(build.nir_graph, T)
    papers = papers_sops(layers, main.per_neuron, T)
    fan_out = fan_outs(graph)
    exact = {c.backend: exact_sops(fan_out, c.per_neuron) for c in counts}
    rows = report.layers
    order = sorted((n for n in graph.nodes.values() if isinstance(n, (Population, Readout))),
                   key=lambda n: (isinstance(n, Readout), n.depth, n.name))
    for node in order:
        neurons = int(np.prod(node.shape))
        row: dict[str, Any] = {"layer": node.name, "role": getattr(node, "role", "readout"), "neurons": neurons,
                               "updates_active": neurons * T, "updates_idle": neurons * (call_steps - T)}
        if isinstance(node, Population):
            row["synapses_out"] = int(fan_out[node.name].sum())
            for c in counts:
                row[f"spikes[{c.backend}]"] = c.total(node.name)
                row[f"rate[{c.backend}]"] = c.total(node.name) / (neurons * T)
                row[f"sops_exact[{c.backend}]"] = exact[c.backend][node.name]
            row["sops_papers"] = papers.get(node.name, 0.0)
            spikes_main = row[f"spikes[{main.backend}]"]
            row["sops_exact"] = row[f"sops_exact[{main.backend}]"]
        else:
            spikes_main = 0.0
            row.update(synapses_out=0, sops_exact=0.0, sops_papers=0.0)
        row["macs_exact"] = row["macs_papers"] = 0
        row["energy_exact_pj"] = (row["sops_exact"] * pj["sop_pj"] + row["updates_active"] * pj["neuron_update_pj"]
                                  + row["updates_idle"] * pj["neuron_idle_pj"] + spikes_main * pj["spike_pj"])
        row["energy_papers_pj"] = row["sops_papers"] * pj["sop_pj"]
        rows.append(row)

    def work_row(name: str, role: str, macs_exact: float, macs_papers: float, price: float) -> None:
        rows.append({"layer": name, "role": role, "neurons": 0, "updates_active": 0, "updates_idle": 0,
                     "synapses_out": 0, "sops_exact": 0.0, "sops_papers": 0.0, "macs_exact": macs_exact,
                     "macs_papers": macs_papers, "energy_exact_pj": macs_exact * price,
                     "energy_papers_pj": macs_papers * price})

    # real-valued layers: on chip they are folded into the synapses by re-association
    for layer in layers:
        if layer.reads == "real":
            work_row(layer.name, "real-valued (MACs; folded into synapses on chip)", 0, layer.flops * T, pj["mac_pj"])
    # host-partitioned ops: the host evaluates each host-input edge once per call
    scales = {n for n, node in build.nir_graph.nodes.items() if isinstance(node, StepScale)}
    host_edges: dict[str, int] = {}
    for e in graph.edges:
        if isinstance(graph.nodes[e.src], HostInput) and e.op.dense_macs():
            key = "+".join(o for o in e.origin if o not in scales) or e.src
            host_edges[key] = host_edges.get(key, 0) + e.op.dense_macs()
    papers_host = {layer.name: layer.flops for layer in layers if layer.reads == "host"}
    for key in sorted(set(host_edges) | set(papers_host)):
        work_row(key, "host (analog input, once per call)", host_edges.get(key, 0), papers_host.get(key, 0),
                 pj["host_mac_pj"])
    papers_gains = tsm_papers_macs(build.nir_graph, T)
    for place, price in (("chip", pj["mac_pj"]), ("host", pj["host_mac_pj"])):
        gains = sum(e.op.n_out * T for e in graph.edges
                    if e.gain is not None and isinstance(graph.nodes[e.src], Population) == (place == "chip"))
        if gains or papers_gains[place]:
            work_row(f"TSM per-step gains ({place})", f"{place} (MACs: a multiply per gained output and step)",
                     gains, papers_gains[place], price)
    host_parts = host_parts_macs(model, graph)
    for part, modules in host_parts.items():
        macs = sum(m for _, m in modules.values())
        if macs:
            work_row(f"host: {part}", "host", macs, macs, pj["host_mac_pj"])

    report.kinds = _kinds(build, model, layers, main, host_parts, pj)
    report.totals = _totals(rows, report.kinds, steps, pj)
    report.resources = map_cores.map_to_cores(graph, profile)
    report.formulas = [
        f"exact = SOPs x {pj['sop_pj']} pJ + active neuron updates x {pj['neuron_update_pj']} pJ + idle updates x "
        f"{pj['neuron_idle_pj']} pJ + spikes x {pj['spike_pj']} pJ + host MACs x {pj['host_mac_pj']} pJ",
        f"papers = fr x T x FLOPs x {pj['sop_pj']} pJ + real-valued MACs x {pj['mac_pj']} pJ "
        f"+ host MACs x {pj['host_mac_pj']} pJ",
        f"ANN twin = MACs x {pj['mac_pj']} pJ (host parts x {pj['host_mac_pj']} pJ)",
        f"per sample = per call x {steps} sampler steps; a call is {call_steps} steps (pipeline depth "
        f"{graph.depth} + T={T}); spike counts: {main.backend}, {main.images} image(s) x diffusion steps "
        f"{main.timesteps}",
    ]
    return report


def _kinds(build: Build, model: nn.Module, layers: list[NirLayer], main: SpikeCounts, host_parts: dict,
           pj: dict[str, float]) -> list[dict[str, Any]]:
    """ANN twin vs SNN (the papers' method) by layer kind, as in paper 004's Table IV."""
    T = build.graph.timestep
    kinds: dict[str, dict[str, Any]] = {}

    def add(kind: str, layers_n: int = 0, ann_macs: float = 0, snn_sops: float = 0, snn_macs: float = 0) -> None:
        k = kinds.setdefault(kind, {"kind": kind, "layers": 0, "ann_macs": 0.0, "snn_sops": 0.0, "snn_macs": 0.0})
        k["layers"] += layers_n
        k["ann_macs"] += ann_macs
        k["snn_sops"] += snn_sops
        k["snn_macs"] += snn_macs

    for layer in layers:
        kind = f"{layer.kind} ({READS_LABEL[layer.reads]})"
        if layer.reads == "spikes":
            add(kind, 1, layer.flops, snn_sops=_layer_sops(layer, main.per_neuron, T))
        else:
            add(kind, 1, layer.flops, snn_macs=layer.flops * (T if layer.reads == "real" else 1))
    twin = build_model(build.meta["arch"], ann_twin(model.config)).double().eval()
    twin_parts = host_parts_macs(twin, build.graph)
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
        "sops_exact": total("sops_exact"), "sops_papers": total("sops_papers"),
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
