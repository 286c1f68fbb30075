"""The compiler, in order. Read this file to see the whole compiler's shape.

    NIR graph
      1. import_nir       NIR nodes -> IR (neurons with thresholds in input units)
      2. partition_host   real-valued ops that see only host inputs run on the host
      3. reassociate      every on-chip edge carries spikes: compose linear maps,
                          push biases through, host ops become per-call currents;
                          TSM's per-step scales become per-step synapse gains and biases
      4. specialise_selection  gate values (paper 000's expert weights) tabulated per
                          diffusion step; experts idle at a step switched off there
      5. balance_delays   pipeline depth per population, relays for shorter paths,
                          reset offsets
      6. fold_thresholds  one power-of-two scale per population (calibrated peaks)
      7. split_signs      mixed-sign synapses become an excitatory and an inhibitory one
                          (8 magnitude bits and an exponent each instead of 7 shared)
      8. quantize         8-bit weights + exponent, vth, du/dv, bias mantissa/exponent,
                          per-step gain mantissa/shift, all range-checked
      9. guide_thresholds threshold guidance: every neuron threshold x S (default 1), refused
                          where the integer vth cannot express it
     10. map_cores        neurons and synapses onto the target's cores and chips; every
                          violation of its limits listed at once (the DRC)
    -> lowered graph (runtime.lava_backend builds Lava processes from it)

Recurrence (paper 000's lateral circuits: Omega with gamma A_agg onto
itself) is a NIR loop through a one-step ``Delay``: import_nir gives the
delay a lag, reassociate composes it into a recurrent edge (lag 1),
balance_delays schedules it (Lava's one synaptic step is the model's
previous step) and the lowering passes only in-window spikes through it.

BatchNorm is folded by export (NIR has no BatchNorm node, so none reaches the
compiler). Threshold folding comes after re-association and delay balancing
because the scale of a population depends on the synapses that finally feed it
and calibration runs the re-associated graph.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional

import nir

from snc.errors import SncError
from snc.hw_profiles import compile_targets, load_profile

from .ir import Graph
from .passes import (balance_delays, fold_thresholds, guide_thresholds, import_nir, map_cores, partition_host,
                     quantize, reassociate, specialise_selection, split_signs)
from .passes.specialise_selection import GateTable

Calibrate = Callable[[Graph], dict[str, float]]

def compile_graph(
    graph: nir.NIRGraph,
    timestep: int,
    arch: str = "",
    target: str = "loihi2",
    calibrate: Optional[Calibrate] = None,
    dump_ir: Optional[Path] = None,
    verify: bool = True,
    allow_oversize: bool = False,
    threshold_scale: float = 1.0,
    gate_table: Optional[GateTable] = None,
) -> Graph:
    """Run every pass; ``verify`` runs each pass's verifier after it.

    ``allow_oversize`` keeps a graph that does not fit the target (the
    violations stay in the log) instead of failing; ``threshold_scale`` is
    the threshold guidance factor S; ``gate_table`` every ``snc.Gate``'s
    values per diffusion step (needed when the graph has gates).
    """
    profile = load_profile(target)
    if "fixed_point" not in profile:
        raise SncError(f"{target} is an energy and resource profile, not a compile target "
                       f"(targets: {', '.join(compile_targets())})")
    fixed = dict(profile["fixed_point"], target=target)
    max_delay = fixed["max_delay"]
    if dump_ir is not None:
        dump_ir.mkdir(parents=True, exist_ok=True)

    passes: list[tuple[str, Callable[[Graph], Graph], Callable[[Graph], None]]] = [
        ("import_nir", lambda _: import_nir.run(graph, timestep, arch), import_nir.verify),
        ("partition_host", partition_host.run, partition_host.verify),
        ("reassociate", reassociate.run, reassociate.verify),
        ("specialise_selection", lambda g: specialise_selection.run(g, gate_table), specialise_selection.verify),
        ("balance_delays", lambda g: balance_delays.run(g, max_delay), lambda g: balance_delays.verify(g, max_delay)),
        ("fold_thresholds", lambda g: fold_thresholds.run(g, fixed, calibrate(g) if calibrate else None),
         fold_thresholds.verify),
        ("split_signs", split_signs.run, split_signs.verify),
        ("quantize", lambda g: quantize.run(g, fixed), lambda g: quantize.verify(g, fixed)),
        ("guide_thresholds", lambda g: guide_thresholds.run(g, threshold_scale, fixed["vth_bits"]),
         lambda g: guide_thresholds.verify(g, threshold_scale)),
        ("map_cores", lambda g: map_cores.run(g, profile, allow_oversize), map_cores.verify),
    ]
    ir: Graph = None  # type: ignore[assignment]  # import_nir makes it
    for index, (name, run, check) in enumerate(passes, start=1):
        ir = run(ir)
        if verify:
            check(ir)
        if dump_ir is not None:
            ir.dump(dump_ir / f"{index:02d}-{name}.json")
    return ir
