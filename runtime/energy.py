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
  FLOPs MACs each plus its own host parts;
- **selection gates** (paper 000's expert weights, ``snc.Gate``): SOPs and
  layers are counted call by call; with the selection specialised a synapse
  or layer whose gate is 0 for the whole call does no work (``StepGainSparse``
  skips a step whose gain is 0; on Loihi 2 the gated cores receive no spikes)
  and the ANN twin skips the same experts; ``--all-experts`` counts every
  expert, weighted by its gate, and the router as per-call host work; the
  gates' multiplies are MACs on chip;
- **NIR level** (``nir_energy_report``, ``snc energy --nir-level``): a model
  too large to compile here is counted on its imported NIR graph with torch
  spikes: the papers' method, T neuron updates per call, host parts, the ANN
  twin; what only the lowered graph has (exact SOPs over re-associated
  synapses, relays, pipeline fill, cores) is not.

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
from snc.compiler.nir_io import Gate, StepScale
from snc.compiler.passes import import_nir, map_cores, partition_host, specialise_selection
from snc.errors import SncError
from snc.models import ann_twin, build_model

from .compiled import ChipDenoiser, gate_table, load_host_model, noisy_inputs
from .host import from_grid, token_layout
from .verify import switched_off, torch_spikes

BACKENDS = ("torch", "lava", "emu")
ENERGY_KEYS = ("sop_pj", "mac_pj", "host_mac_pj", "neuron_update_pj", "neuron_idle_pj", "spike_pj")
PJ_PER_MJ = 1e9
CALIBRATION_FRACTIONS = (0.1, 0.3, 0.5, 0.7, 0.9)
READS_LABEL = {"spikes": "spikes", "host": "analog, host", "real": "real-valued"}


@dataclass
class SpikeCounts:
    """Mean spikes per neuron per (image, denoiser call), summed over the T steps, and the SOPs they cost.

    SOPs are counted call by call: a gated synapse (or NIR layer) whose gate
    is 0 for a whole call is not evaluated in that call (the selection
    switched its expert off; on a chip its axons are not routed).
    """

    backend: str
    images: int
    timesteps: list[int]
    per_neuron: dict[str, np.ndarray]  # population -> [n_neurons] float64
    sops_exact: dict[str, float] = field(default_factory=dict)  # per source population
    layer_sops: dict[str, float] = field(default_factory=dict)  # the papers' fr x T x FLOPs per NIR layer
    specialised: bool = True
    layer_active: dict[str, float] = field(default_factory=dict)  # fraction of calls a gated layer ran
    gate_macs: dict[str, float] = field(default_factory=dict)  # "exact" / "papers": gate multiplies per call

    def total(self, population: str) -> float:
        return float(self.per_neuron[population].sum())


def count_spikes(build: Build, backend: str, n: int = 4, seed: int = 0, mode: str = "fixed",
                 fractions: tuple[float, ...] = CALIBRATION_FRACTIONS, specialised: bool = True,
                 batch: Optional[int] = None) -> SpikeCounts:
    """Spike counts and SOPs of every population from calls at diffusion steps ``fraction * steps``
    (chip backends: ``batch`` images per call, default all n).

    ``specialised`` False runs a gated build with the model's gates (every
    expert on, as ``specialise_selection`` had not run).
    """
    if backend not in BACKENDS:
        raise SncError(f"unknown backend {backend!r}; use {' or '.join(BACKENDS)}")
    model = load_host_model(build)
    pairs = calibration_pairs(model, n, seed, fractions)
    if backend == "torch":
        return tally_calls(model, build.graph, build.nir_graph, pairs, specialised)
    with ChipDenoiser(build, mode, batch=batch or n, record=True, backend=backend, specialised=specialised) as chip:
        return tally_calls(model, build.graph, build.nir_graph, pairs, specialised, chip)


def calibration_pairs(model: nn.Module, n: int, seed: int,
                      fractions: tuple[float, ...] = CALIBRATION_FRACTIONS) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return noisy_inputs(model, n, [int(model.config.diffusion_steps * f) for f in fractions], seed)


def tally_calls(model: nn.Module, graph: Graph, nir_graph: nir.NIRGraph, pairs: list, specialised: bool,
                chip: Optional[ChipDenoiser] = None) -> SpikeCounts:
    """Run every (x, t) call on ``chip`` (None: the torch model) and count spikes and SOPs per call.

    ``graph`` is a compiled graph (exact SOPs over its lowered synapses) or,
    for the NIR-level count, an imported one (papers' SOPs only).
    """
    T = graph.timestep
    lowered = graph.depth >= 0
    layers = [layer for layer in nir_layers(nir_graph, T) if layer.reads == "spikes"]
    sums = {p.name: np.zeros(int(np.prod(p.shape))) for p in graph.of_type(Population)}
    sops = {name: 0.0 for name in sums}
    by_layer = {layer.name: 0.0 for layer in layers}
    active = {layer.name: 0.0 for layer in layers if layer.gate}
    gate_macs = {"exact": 0.0, "papers": 0.0}
    fans: dict[frozenset, dict[str, np.ndarray]] = {}  # fan-outs per set of gates off
    gated_outputs = [(g.key, int(np.prod(g.input_shape))) for g in nir_graph.nodes.values() if isinstance(g, Gate)]
    for x, t in pairs:
        step = int(t[0])
        if chip is not None:
            chip(x.double(), t)
            spikes = chip.last.spikes
        else:
            spikes = torch_spikes(model, graph, nir_graph, x.double(), t)[1]
        call = {name: s.reshape(s.shape[0], s.shape[1], -1).sum(axis=(0, 1)) for name, s in spikes.items()}
        if chip is None:
            for name in switched_off(graph, step) if specialised else ():
                call[name] = np.zeros_like(call[name])  # the chip does not run it
            for p in graph.of_type(Population):  # a relay repeats its source's spikes, delayed
                if p.role == "relay":
                    call[p.name] = call[_relay_source(graph, p.name)]
        off = frozenset(graph.gates_off(step) if specialised else ())  # without: every expert runs, weighted
        if off not in fans:
            fans[off] = fan_outs(graph, off) if lowered else {}
        for name, value in call.items():
            sums[name] += value
        if lowered:
            for name, value in exact_sops(fans[off], call).items():
                sops[name] += value
        for layer in layers:
            if layer.gate not in off:
                by_layer[layer.name] += layer_sops(layer, call, T)
                if layer.gate:
                    active[layer.name] += 1 / len(pairs)
        # a gated output is multiplied by its gate every step (per image), in the calls it runs
        gate_macs["exact"] += sum(e.op.n_out * T for e in graph.edges if e.gate and e.gate not in off) / len(pairs)
        gate_macs["papers"] += sum(size * T for key, size in gated_outputs if key not in off) / len(pairs)
    calls = len(pairs) * len(pairs[0][0])
    return SpikeCounts("torch" if chip is None else chip.backend, len(pairs[0][0]), [int(t[0]) for _, t in pairs],
                       {k: v / calls for k, v in sums.items()},
                       {k: v / calls for k, v in sops.items()} if lowered else {},
                       {k: v / calls for k, v in by_layer.items()}, specialised, active, gate_macs)


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


def host_parts_macs(model: nn.Module, graph: Graph, token_grid: bool = False,
                    specialised: bool = True) -> dict[str, dict[str, tuple[str, int]]]:
    """MACs per image of the host parts around the core: the stem (a lateral transformer's patchify), the
    time embedding, the router (per call unless the selection is specialised: then a table read) and the tail."""
    cfg = model.config
    dtype = next(model.parameters()).dtype
    t = torch.full((1,), cfg.diffusion_steps // 2, dtype=torch.long)
    x = torch.zeros((1, cfg.img_ch, cfg.img_size, cfg.img_size), dtype=dtype)
    h = torch.zeros((cfg.timestep, 1, *graph.readout.shape), dtype=dtype)
    parts = {"stem": module_macs(model, lambda: model.encode(x), 1),
             "time embedding": module_macs(model, lambda: model.time_biases(t), 1),
             "tail": module_macs(model, lambda: model.decode(from_grid(h) if token_grid else h), 1)}
    if hasattr(model, "selection") and not specialised:
        temb = model.time_embedding(t)
        parts["router"] = module_macs(model, lambda: [b.selection.logits(temb) for b in model.blocks], 1)
    return parts


# --- the NIR graph's layers (the papers' method and the ANN twin) -------------------------------
@dataclass
class NirLayer:
    name: str  # the NIR node (torch module, BatchNorm folded)
    kind: str  # e.g. "conv3x3/s1", "conv3x3/s1 after nearest x2", "dense"
    flops: int  # MACs of one evaluation, as an ANN counts them
    reads: str  # "spikes" | "host" (constant over a call) | "real" (real-valued, every step)
    source: str = ""  # the population whose spikes it reads (reads == "spikes")
    gate: str = ""  # the snc.Gate its output passes (an expert's), if any


def nir_layers(nir_graph: nir.NIRGraph, timestep: int) -> list[NirLayer]:
    """The arithmetic layers of the build's NIR graph and the kind of values each reads.

    Values are followed through ops that only move data (reshapes, nearest
    upsampling): a conv after an upsampling of spikes reads spikes. A layer
    reading a sum of several streams reads real (graded) values.
    """
    graph = partition_host.run(import_nir.run(nir_graph, timestep))
    gate_after = {e.src: node.gate for node in graph.of_type(Linear) if node.gate for e in graph.into(node.name)}
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
            layers.append(NirLayer(name, node.op.describe() + note, node.op.dense_macs(), reads, source,
                                   gate_after.get(name, "")))
            value[name] = ("host" if reads == "host" else "real", "", "")
    return layers


def tsm_papers_macs(nir_graph: nir.NIRGraph, timestep: int) -> dict[str, int]:
    """The papers' count of TSM work per call, on chip and on the host: every output of every scaled conv,
    every step."""
    graph = partition_host.run(import_nir.run(nir_graph, timestep))
    return {place: sum(n.op.n_out * timestep for n in graph.of_type(Linear)
                       if n.gain is not None and not n.gate and n.placement == place)
            for place in ("chip", "host")}


def fan_outs(graph: Graph, gates_off: frozenset[str] | set[str] = frozenset()) -> dict[str, np.ndarray]:
    """Synapses leaving each neuron of every population over all its lowered (quantized) synapses,
    except those behind the gates in ``gates_off`` (not evaluated in a call where they are 0)."""
    out = {p.name: np.zeros(int(np.prod(p.shape)), dtype=np.int64) for p in graph.of_type(Population)}
    for e in graph.edges:
        if e.src in out and e.gate not in gates_off:
            out[e.src] += e.lowered_op().fan_out()
    return out


def exact_sops(fan_out: dict[str, np.ndarray], per_neuron: dict[str, np.ndarray]) -> dict[str, float]:
    """SOPs per source population: each neuron's spikes times its fan-out."""
    return {name: float(per_neuron[name] @ f) for name, f in fan_out.items()}


def layer_sops(layer: NirLayer, per_neuron: dict[str, np.ndarray], timestep: int) -> float:
    """The papers' ``fr x T x FLOPs`` of a layer reading spikes (``per_neuron``: its source's counts)."""
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
    level: str = "lowered"  # or "nir": counted on the NIR graph without compiling (papers' method only)

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def energy_report(build: Build, profile: dict[str, Any], counts: list[SpikeCounts],
                  steps_per_sample: Optional[int] = None) -> EnergyReport:
    """Per-layer and total operations and energy; ``counts[0]`` prices, the others are compared."""
    return _report(load_host_model(build), build.meta["arch"], build.graph, build.nir_graph, profile, counts,
                   steps_per_sample)


def nir_level_graph(model: nn.Module, arch: str, nir_graph: nir.NIRGraph) -> Graph:
    """The imported (not lowered) graph of a model's NIR export, with its gates specialised: for counting
    a model too large to compile here (``nir_energy_report``)."""
    graph = partition_host.run(import_nir.run(nir_graph, model.config.timestep, arch))
    return specialise_selection.run(graph, gate_table(model) if graph.gate_keys() else None)


def nir_energy_report(model: nn.Module, arch: str, nir_graph: nir.NIRGraph, profile: dict[str, Any], n: int = 4,
                      seed: int = 0, specialised: bool = True, steps_per_sample: Optional[int] = None) -> EnergyReport:
    """The papers' method on the NIR graph without compiling it: ``fr x T x FLOPs`` per layer from torch
    spike counts, T neuron updates per neuron and call (no pipeline), the host parts, the ANN twin.
    What only the lowered graph has (exact SOPs over re-associated synapses, relays, pipeline fill,
    cores) is not in it."""
    model = model.double().eval()
    graph = nir_level_graph(model, arch, nir_graph)
    counts = tally_calls(model, graph, nir_graph, calibration_pairs(model, n, seed), specialised)
    return _report(model, arch, graph, nir_graph, profile, [counts], steps_per_sample)


def _report(model: nn.Module, arch: str, graph: Graph, nir_graph: nir.NIRGraph, profile: dict[str, Any],
            counts: list[SpikeCounts], steps_per_sample: Optional[int]) -> EnergyReport:
    pj = energy_model(profile)
    T = graph.timestep
    lowered = graph.depth >= 0
    call_steps = graph.depth + T if lowered else T
    steps = steps_per_sample or model.config.diffusion_steps
    main = counts[0]
    report = EnergyReport(profile["name"], bool(profile["energy"].get("estimate", True)),
                          str(profile["energy"].get("basis", "")), [c.backend for c in counts], main.timesteps,
                          main.images, steps, call_steps)
    layers = nir_layers(nir_graph, T)
    papers: dict[str, float] = {}
    for layer in layers:
        if layer.reads == "spikes":
            papers[layer.source] = papers.get(layer.source, 0.0) + main.layer_sops[layer.name]
    fan_out = fan_outs(graph) if lowered else {p.name: np.zeros(0, np.int64) for p in graph.of_type(Population)}
    exact = {c.backend: c.sops_exact for c in counts}
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
                row[f"sops_exact[{c.backend}]"] = exact[c.backend].get(node.name, 0.0)
            row["sops_papers"] = papers.get(node.name, 0.0)
            spikes_main = row[f"spikes[{main.backend}]"]
            row["sops_exact"] = row[f"sops_exact[{main.backend}]"]
        else:
            spikes_main = 0.0
            row.update(synapses_out=0, sops_exact=0.0, sops_papers=0.0)
        row["macs_exact"] = row["macs_papers"] = 0
        row["energy_exact_pj"] = (row["sops_exact"] * pj["sop_pj"] + row["updates_active"] * pj["neuron_update_pj"]
                                  + row["updates_idle"] * pj["neuron_idle_pj"] + spikes_main * pj["spike_pj"]
                                  if lowered else 0.0)
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
    scales = {n for n, node in nir_graph.nodes.items() if isinstance(node, StepScale)}
    host_edges: dict[str, int] = {}
    for e in graph.edges:
        if isinstance(graph.nodes[e.src], HostInput) and e.op.dense_macs():
            key = "+".join(o for o in e.origin if o not in scales) or e.src
            host_edges[key] = host_edges.get(key, 0) + e.op.dense_macs()
    papers_host = {layer.name: layer.flops for layer in layers if layer.reads == "host"}
    for key in sorted(set(host_edges) | set(papers_host)):
        work_row(key, "host (analog input, once per call)", host_edges.get(key, 0), papers_host.get(key, 0),
                 pj["host_mac_pj"])
    papers_gains = tsm_papers_macs(nir_graph, T)
    for place, price in (("chip", pj["mac_pj"]), ("host", pj["host_mac_pj"])):
        gains = sum(e.op.n_out * T for e in graph.edges if e.gain is not None and not e.gate
                    and isinstance(graph.nodes[e.src], Population) == (place == "chip"))
        if gains or papers_gains[place]:
            work_row(f"TSM per-step gains ({place})", f"{place} (MACs: a multiply per gained output and step)",
                     gains, papers_gains[place], price)
    if graph.gate_keys():
        work_row("selection gates (chip)", "chip (MACs: a multiply per gated output and step, in calls it runs)",
                 main.gate_macs["exact"], main.gate_macs["papers"], pj["mac_pj"])
    host_parts = host_parts_macs(model, graph, token_layout(nir_graph), main.specialised)
    for part, modules in host_parts.items():
        macs = sum(m for _, m in modules.values())
        if macs:
            work_row(f"host: {part}", "host", macs if lowered else 0, macs, pj["host_mac_pj"])

    report.kinds = _kinds(model, arch, graph, nir_graph, layers, main, host_parts, pj)
    report.totals = _totals(rows, report.kinds, steps, pj)
    if lowered:
        report.resources = map_cores.map_to_cores(graph, profile)
    else:
        report.level = "nir"
        report.resources = {"neurons": sum(int(np.prod(p.shape)) for p in graph.of_type(Population)),
                            "synapses": sum(n.op.synapse_count() for n in graph.of_type(Linear)), "violations": []}
    report.formulas = [
        f"exact = SOPs x {pj['sop_pj']} pJ + active neuron updates x {pj['neuron_update_pj']} pJ + idle updates x "
        f"{pj['neuron_idle_pj']} pJ + spikes x {pj['spike_pj']} pJ + host MACs x {pj['host_mac_pj']} pJ",
        f"papers = fr x T x FLOPs x {pj['sop_pj']} pJ + real-valued MACs x {pj['mac_pj']} pJ "
        f"+ host MACs x {pj['host_mac_pj']} pJ",
        f"ANN twin = MACs x {pj['mac_pj']} pJ (host parts x {pj['host_mac_pj']} pJ)",
        f"per sample = per call x {steps} sampler steps; a call is {call_steps} steps "
        + (f"(pipeline depth {graph.depth} + T={T})" if lowered else "(T, no pipeline: the NIR graph, not lowered)")
        + f"; spike counts: {main.backend}, {main.images} image(s) x diffusion steps {main.timesteps}",
    ]
    if not lowered:
        report.formulas[0] = ("exact: not counted (NIR level: the lowered graph, with its re-associated synapses, "
                              "relays and pipeline, was not built)")
    ands = [p.name for p in graph.of_type(Population) if p.role == "and"]
    if ands:
        report.formulas.append(f"spike products (attention's K*V, Q*SN(.)): on chip, {len(ands)} AND populations "
                               "(memoryless LIF, threshold 1.5 on two unit inputs): SOPs and neuron updates, no MACs")
    if graph.gates:
        report.formulas.append(
            "selection specialisation: " + ("on: a synapse or layer whose gate is 0 for a whole call (an expert "
                                            "the selection does not use at that diffusion step) is not evaluated"
                                            if main.specialised else "off: every expert runs (--all-experts)"))
    return report


def _kinds(model: nn.Module, arch: str, graph: Graph, nir_graph: nir.NIRGraph, layers: list[NirLayer],
           main: SpikeCounts, host_parts: dict, pj: dict[str, float]) -> list[dict[str, Any]]:
    """ANN twin vs SNN (the papers' method) by layer kind, as in paper 004's Table IV."""
    T = graph.timestep
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
    twin = build_model(arch, ann_twin(model.config)).double().eval()
    twin_parts = host_parts_macs(twin, graph, token_layout(nir_graph), main.specialised)
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
