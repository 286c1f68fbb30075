"""Compile a deployable for a target: the pass manager over the target's pipeline, then a build.

``compile_deployable`` runs the target's passes with one ``CompileContext``
(the source's calibration data and gate tables, the options) and assembles
what the build and the reports hold from the IR and the netlists: the
``CompileReport`` (typed: pass times and memory, the per-population table,
the resources) and, when the pipeline ran to its end, the in-memory
``Build``. Nothing is written here (``build.write_build`` does).
"""

from __future__ import annotations

import resource
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

from snc.errors import SncError

from .build import FORMAT, FORMAT_VERSION, Build
from .frontends.base import Deployable
from .ir import Graph
from .ir_io import load_graph
from .nir_io import digest
from .pass_manager import CompileContext, CompileOptions, PassManager, PassRecord
from .targets import get_target


@dataclass
class CompileReport:
    arch: str
    target: str
    mode: str  # the build's default mode
    timestep: int
    source: str
    calibrated: bool
    threshold_scale: float
    passes: list[PassRecord]  # the passes this run executed (a resumed IR: those after it)
    complete: bool  # the pipeline ran to its end (no --stop-after before it)
    depth: Optional[int] = None  # after lowering
    call_steps: Optional[int] = None
    host_ops: list[str] = field(default_factory=list)
    host_parts: list[str] = field(default_factory=list)  # the host program's own work (time embedding, tail, ...)
    residual: str = ""  # how real-valued tensors read twice were lowered (reassociate | graded)
    graded_populations: int = 0  # sum populations sending graded spikes (--residual graded)
    weight_bits: Optional[int] = None  # mantissa bits per weight (slice_weights: 16 is a coarse + a fine synapse)
    synapses_before_reassociation: Optional[int] = None
    synapses: Optional[int] = None  # on chip, into populations (the readout's are in resources)
    rewritten_edges: int = 0
    guidance: Optional[tuple[float, float]] = None  # least and largest effective factor after vth rounding
    layers: list[dict[str, Any]] = field(default_factory=list)
    resources: dict[str, Any] = field(default_factory=dict)  # map_cores: groups, totals, violations
    compile_seconds: float = 0.0
    peak_rss_mb: float = 0.0
    dt: float = 0.0  # seconds per step of the source graph's discretisation
    warnings: list[str] = field(default_factory=list)  # what reading the source had to interpret

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["passes"] = [p.as_dict() for p in self.passes]
        return d


@dataclass
class CompileResult:
    graph: Optional[Graph]  # the IR after the last pass that ran (None: an adopted netlist, netx)
    report: CompileReport
    build: Optional[Build]  # None when the pipeline stopped early


def compile_deployable(deployable: Deployable, target: str = "loihi2", mode: Optional[str] = None,
                       options: CompileOptions = CompileOptions(), calibration: int = 4, seed: int = 0,
                       stop_after: Optional[str] = None, dump_ir: Optional[Path] = None,
                       from_ir: Optional[Path] = None,
                       observe: Optional[Callable[[str, Graph], None]] = None) -> CompileResult:
    """Run ``target``'s pipeline on ``deployable`` (``calibration`` images per calibration call, 0: none;
    ``from_ir``: resume from an IR dump of the same source; ``observe``: see ``PassManager.run``)."""
    start = time.perf_counter()
    tgt = get_target(target)
    mode = mode or tgt.modes[0]
    if mode not in (options.modes or tgt.modes):
        raise SncError(f"--mode must be one of {', '.join(options.modes or tgt.modes)} for {target}, not {mode!r}")
    if deployable.netlists is not None:
        if stop_after or dump_ir or from_ir:
            raise SncError("a netx network is already lowered: it has no passes to stop after, dump or resume")
        if options.weight_bits != CompileOptions().weight_bits:
            raise SncError("a netx network is already quantized: --weight-bits does not apply to it")
        return adopt(deployable, tgt, mode, options, start)
    calls = deployable.calibration(calibration, seed)
    ctx = CompileContext(tgt, deployable.timestep, deployable.arch, deployable.nir_graph, options, calls,
                         deployable.gate_table(), deployable.dt)
    graph = None
    if from_ir is not None:
        graph = load_graph(from_ir)
        if graph.source != digest(deployable.nir_graph) or graph.timestep != deployable.timestep:
            raise SncError(f"{from_ir}: the IR of another graph (a {graph.arch or 'bare'} graph with T = "
                           f"{graph.timestep}), not of this source ({deployable.arch or 'bare graph'}, "
                           f"T = {deployable.timestep})")
    run = PassManager(tgt.passes()).run(ctx, graph, stop_after, dump_ir, observe)
    graph = run.graph
    report = CompileReport(deployable.arch, target, mode, deployable.timestep, deployable.source, calls is not None,
                           options.threshold_scale, run.records, run.complete, dt=deployable.dt,
                           warnings=list(deployable.warnings),
                           host_parts=list(deployable.host.host_work()) if deployable.host is not None else [])
    _summarise(report, graph, tgt)
    report.compile_seconds = round(time.perf_counter() - start, 2)
    report.peak_rss_mb = round(max([resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024]
                                   + [p.peak_rss_mb for p in run.records]))
    build = None
    if graph.netlists and run.complete:
        if not any(net.groups for net in graph.netlists.values()):
            raise SncError(f"{deployable.source}: no spiking neuron is left to run on the chip (the model's every "
                           "layer runs on the host); nothing to compile for " + tgt.name)
        meta = {"format": FORMAT, "format_version": FORMAT_VERSION, "modes": list(graph.netlists), **report.as_dict(),
                "host_meta": deployable.meta, "log": graph.log}
        build = Build.in_memory(meta, deployable.nir_graph, graph.netlists, deployable.host)
    return CompileResult(graph, report, build)


def adopt(deployable: Deployable, tgt, mode: str, options: CompileOptions, start: float) -> CompileResult:
    """A source that is a netlist already (netx: Lava's integers): the target's range check and core mapping,
    no passes (re-quantizing would change the integers the source was trained to)."""
    from .passes.map_cores import map_to_cores

    netlists = deployable.netlists
    if tgt.modes[0] not in netlists or set(netlists) - set(tgt.modes):
        raise SncError(f"the source's netlists ({', '.join(netlists)}) are not {tgt.name}'s modes")
    for net in netlists.values():
        tgt.check(net)
    chip = netlists[tgt.modes[0]]
    resources = map_to_cores(chip, tgt.profile)
    if resources["violations"] and not options.allow_oversize:
        raise SncError(f"the network does not fit {tgt.name} ({len(resources['violations'])} violation(s); "
                       "--allow-oversize compiles anyway):\n  " + "\n  ".join(resources["violations"]))
    report = CompileReport(deployable.arch, tgt.name, mode, deployable.timestep, deployable.source, False,
                           options.threshold_scale, [], True, dt=deployable.dt, warnings=list(deployable.warnings))
    report.layers = tgt.layer_rows(chip, {})
    report.depth, report.call_steps = chip.depth, chip.call_steps
    report.synapses = sum(r["synapses_in"] for r in report.layers)
    report.synapses_before_reassociation = report.synapses
    report.resources = resources
    report.compile_seconds = round(time.perf_counter() - start, 2)
    report.peak_rss_mb = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    meta = {"format": FORMAT, "format_version": FORMAT_VERSION, "modes": list(netlists), **report.as_dict(),
            "host_meta": deployable.meta, "log": [{"pass": "adopt", "source": deployable.source}]}
    build = Build.in_memory(meta, deployable.nir_graph, netlists, None)
    return CompileResult(None, report, build)


def _log(graph: Graph, name: str) -> Optional[dict[str, Any]]:
    return next((entry for entry in reversed(graph.log) if entry["pass"] == name), None)


def _summarise(report: CompileReport, graph: Graph, target) -> None:
    """The report's fields from the passes' records in the IR and from the fixed-point netlist."""
    placed = _log(graph, "partition_host")
    report.host_ops = placed["host_ops"] if placed else []
    reassociated = _log(graph, "reassociate")
    if reassociated:
        report.synapses_before_reassociation = reassociated["synapses_before"]
        report.rewritten_edges = len(reassociated["rewritten"])
        report.residual = reassociated["residual"]
        report.graded_populations = len(reassociated["graded"])
    sliced = _log(graph, "slice_weights")
    report.weight_bits = sliced["weight_bits"] if sliced else None
    guided = _log(graph, "guide_thresholds")
    if guided and guided["populations"]:
        factors = [r["effective_scale"] for r in guided["populations"]]
        report.guidance = (min(factors), max(factors))
    mapped = _log(graph, "map_cores")
    if mapped:
        report.resources = {k: v for k, v in mapped.items() if k not in ("pass",)}
    net = graph.netlists.get(target.modes[0])
    if net is not None:
        quantized = _log(graph, "quantize")
        errors = {row["edge"]: row["relative_error"] for entry in (quantized, sliced) if entry
                  for row in entry["synapses"]}  # a sliced edge's error is its coarse + fine weights'
        report.layers = target.layer_rows(net, errors)
        report.depth, report.call_steps = net.depth, net.call_steps
        report.synapses = sum(r["synapses_in"] for r in report.layers)
