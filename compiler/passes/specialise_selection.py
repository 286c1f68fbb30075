"""Selection specialisation: the gates tabulated per diffusion step, idle experts switched off.

Paper 000's router reads the diffusion step alone, so every ``snc.Gate``
value (an expert's weight h[t] of eq. 13, an expert's on/off switch) is a
function of the diffusion step: the host evaluates them all at compile time
(``gate_table``: key -> [diffusion steps, T]) and a chip call only re-programs
the gated synapses of its step. The pass stores the table and specialises it:

- a population is *idle* at diffusion step k when every synapse out of it is
  gated and each of those gates is 0 at every inner step of k: nothing it
  fires reaches anything;
- a gate is set to 0 at step k when every synapse it gates enters a population
  idle at k. An unselected expert's fc1 gate (``.active``, 1 in the model)
  thus switches it off: it receives no input and fires nothing, its gated
  synapses do no work (``StepGainSparse`` skips a zero-gain step), and the
  call computes the same numbers (the host scales the expert's bias, a host
  input, by the same gate).

One round, no fixpoint: the experts' inputs are the only gates a model has
that could be switched off this way.

Works on spike paths (``Graph.spike_paths``): after ``reassociate`` (no
relays yet) they are the edges; on an imported graph they run through the
Linear nodes (the NIR-level energy count uses it so).
Guarantees: ``graph.gates`` holds a finite [steps, T] table with |g| <= 1
for every gate key of the graph (all with the same number of steps);
``graph.model_gates`` the model's table of each key the pass changed; the log
lists each population's idle fraction of the diffusion steps. A graph without
gates passes unchanged (no table needed).
"""

from __future__ import annotations

from typing import Optional

import numpy as np

from snc.errors import GraphError

from ..ir import Graph
from ..gates import GateTable
from ..pass_manager import CompileContext, Pass


def run(graph: Graph, ctx: CompileContext) -> Graph:
    return specialise(graph, ctx.gate_table)


def specialise(graph: Graph, table: Optional[GateTable]) -> Graph:
    """The pass on any graph with its spike paths (an imported one for the NIR-level energy count)."""
    keys = graph.gate_keys()
    if not keys:
        return graph
    if table is None:
        raise GraphError(f"the graph has {len(keys)} gates (e.g. {keys[0]}) but no per-step gate table: "
                         "compile the checkpoint, whose model supplies the gate values")
    gates = {k: np.asarray(table[k], dtype=np.float64) for k in keys if k in table}
    _check(gates, keys, graph.timestep)
    paths = graph.spike_paths()
    out: dict[str, list[str]] = {}
    for src, _, gate in paths:
        out.setdefault(src, []).append(gate)
    idle = {p: np.logical_and.reduce([~gates[g].any(axis=1) for g in passed])
            for p, passed in out.items() if all(passed)}
    specialised = dict(gates)
    for key in keys:
        targets = {dst for _, dst, gate in paths if gate == key}
        if targets <= set(idle):
            off = np.logical_and.reduce([idle[t] for t in targets])
            specialised[key] = np.where(off[:, None], 0.0, gates[key])
    graph.gates = specialised
    graph.model_gates = {k: gates[k] for k in keys if not np.array_equal(specialised[k], gates[k])}
    graph.log.append({"pass": "specialise_selection", "gates": len(keys),
                      "diffusion_steps": int(next(iter(gates.values())).shape[0]),
                      "switched_off": sorted(graph.model_gates),
                      "idle_fraction": {p: float(v.mean()) for p, v in sorted(idle.items())}})
    return graph


def _check(gates: GateTable, keys: list[str], timestep: int) -> None:
    problems = [f"{k}: no values in the gate table" for k in keys if k not in gates]
    steps = {g.shape[0] for g in gates.values() if g.ndim == 2}
    for k, g in gates.items():
        if g.ndim != 2 or g.shape[1] != timestep:
            problems.append(f"{k}: gate table of shape {g.shape}, not [diffusion steps, {timestep}]")
        elif not np.all(np.isfinite(g)) or np.abs(g).max(initial=0) > 1:
            problems.append(f"{k}: gate values must be finite and within [-1, 1]")
    if len(steps) > 1:
        problems.append(f"gate tables disagree on the number of diffusion steps: {sorted(steps)}")
    if problems:
        raise GraphError("bad gate table:\n  " + "\n  ".join(problems))


def verify(graph: Graph, ctx: CompileContext) -> None:
    graph.check()
    _check(graph.gates, graph.gate_keys(), graph.timestep)
    for key in graph.model_gates:  # a switched-off gate is 0 exactly where its targets are idle
        changed = ~np.all(graph.gates[key] == graph.model_gates[key], axis=1)
        if np.any(graph.gates[key][changed]):
            raise GraphError(f"specialise_selection changed gate {key} to values other than 0")


PASS = Pass("specialise_selection", run, verify, requires=("spike-synapses",), provides=("gate-tables",))
