"""Float reference executor of the compiled IR (population form), in torch float64.

Runs logical spiking steps with same-step semantics (no pipeline delays: a
population at step t reads step t of its sources), which is what the model
computes; relays pass their source's spikes through, a graded population
its value (``spikes`` records it); per-step gains and
biases (TSM) are taken at the logical step, a gated edge's current is
also multiplied by the call's gate value at the step; a recurrent edge (lag k) reads
its source's spikes of step t - k (nothing before step 0). A population with a
current decay (CubaLIF) integrates its input into u first; the readout is
integrated through its host filters (LI / I / CubaLI outputs). Used to calibrate
``fold_thresholds`` and to prove that re-association kept the function.
The host-input edges are evaluated as the netlist's host ops are
(``netlist.host_currents``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import torch

from snc.errors import GraphError

from .ir import Graph, HostInput, Population, Readout, bias_at
from .netlist import HostOp, host_currents
from .readout import apply_filters


@dataclass
class IRRun:
    readout: torch.Tensor  # [T, B, *shape], bias included
    spikes: dict[str, torch.Tensor] = field(default_factory=dict)  # [T, B, *shape] per population (graded: values)
    peak_v: dict[str, float] = field(default_factory=dict)  # max |v| before the spike test
    peak_input: dict[str, float] = field(default_factory=dict)  # max |input current|


def host_ops(graph: Graph) -> list[HostOp]:
    """The graph's host-input edges as the host computes them (in edge order: the currents sum in it)."""
    return [HostOp(e.src, e.dst, e.op, e.gain, e.origin) for e in graph.edges
            if isinstance(graph.nodes[e.src], HostInput)]


def ir_host_currents(graph: Graph, host_inputs: dict[str, torch.Tensor],
                     dtype: torch.dtype = torch.float64) -> dict[str, torch.Tensor]:
    """Currents [T, B, *shape] per logical step into each population / readout from host-input edges."""
    shapes = {n.name: n.shape for n in graph.of_type(HostInput)}
    return host_currents(host_ops(graph), shapes, host_inputs, graph.timestep, dtype)


@torch.no_grad()
def run_ir(graph: Graph, host_inputs: dict[str, torch.Tensor], record: bool = False,
           dtype: torch.dtype = torch.float64, gates: Optional[dict[str, np.ndarray]] = None) -> IRRun:
    """Execute T logical steps for host inputs [B, *shape] (constant over the steps) or [T, B, *shape];
    ``gates``: the call's values [T] per gate key (needed when the graph has gates).

    float64 is the reference; calibration may use float32, it only needs peaks.
    """
    currents = ir_host_currents(graph, host_inputs, dtype)
    name, first = next((k, v) for k, v in host_inputs.items() if k in graph.nodes)
    batch = first.shape[-1 - len(graph.nodes[name].shape)]  # [B, *shape] or [T, B, *shape]
    missing = sorted({e.gate for e in graph.edges if e.gate and (gates is None or e.gate not in gates)})
    if missing:
        raise GraphError(f"no values for the gates {', '.join(missing)}")
    order = [n for n in graph.topological() if not isinstance(graph.nodes[n], HostInput)]
    chip_edges = {n: [e for e in graph.into(n) if isinstance(graph.nodes[e.src], Population)] for n in order}
    v: dict[str, torch.Tensor] = {}
    u: dict[str, torch.Tensor] = {}
    out = IRRun(readout=torch.empty(0))
    # the steps a population sent are kept when they are read later (a recurrent edge) or recorded: for every
    # population and step they would be T copies of the network's state (gigabytes for a CIFAR transformer)
    lagged = {e.src for e in graph.edges if e.lag}
    readouts, spikes = [], {n: [] for n in order if isinstance(graph.nodes[n], Population) and (record or n in lagged)}

    def source(e, now: dict[str, torch.Tensor], t: int) -> torch.Tensor:
        if not e.lag:
            return now[e.src]
        past = spikes[e.src]  # a recurrent edge reads an earlier step (none before step 0)
        return past[t - e.lag] if t >= e.lag else torch.zeros((batch, *graph.nodes[e.src].shape), dtype=dtype)

    for t in range(graph.timestep):
        now: dict[str, torch.Tensor] = {}
        for name in order:
            node = graph.nodes[name]
            shape = (batch, *node.shape)
            bias = torch.as_tensor(bias_at(node, t), dtype=dtype).expand(shape)
            x = torch.zeros(shape, dtype=dtype)
            if name in currents:
                x = x + currents[name][t].reshape(shape)
            chip = torch.zeros(shape, dtype=dtype)
            for e in chip_edges[name]:
                y = e.op.apply(source(e, now, t).reshape(batch, *e.op.in_shape)).reshape(shape)
                factor = 1.0 if e.gain is None else float(e.gain[t])
                chip = chip + (factor * float(gates[e.gate][t]) if e.gate else factor) * y
            x = x + chip
            if isinstance(node, Readout):
                out.peak_input[name] = max(out.peak_input.get(name, 0.0), float(chip.abs().max()))
                readouts.append(x + bias)
                continue
            if node.graded:  # a sum population sends its value; it keeps nothing
                value = x + bias
                out.peak_v[name] = max(out.peak_v.get(name, 0.0), float(value.abs().max()))
                out.peak_input[name] = out.peak_v[name]
                now[name] = value
                if name in spikes:
                    spikes[name].append(value)
                continue
            if node.current_decay:  # CubaLIF: the synaptic current u keeps a fraction of itself
                x = node.current_decay * u.get(name, torch.zeros(shape, dtype=dtype)) + x
                u[name] = x
            state = node.decay * v.get(name, torch.zeros(shape, dtype=dtype)) + x + bias
            fired = (state > node.threshold).to(dtype)
            out.peak_v[name] = max(out.peak_v.get(name, 0.0), float(state.abs().max()))
            out.peak_input[name] = max(out.peak_input.get(name, 0.0), float((x + bias).abs().max()))
            v[name] = state - node.threshold * fired if node.subtractive_reset else state * (1 - fired)
            now[name] = fired
            if name in spikes:
                spikes[name].append(fired)
    out.readout = apply_filters(torch.stack(readouts), graph.readout.filters, graph.readout.shape)
    if record:
        out.spikes = {n: torch.stack(s) for n, s in spikes.items()}
    return out
