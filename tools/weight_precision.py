"""Which weight precision the fixed point needs: spike agreement of the float IR executor with the spike
synapses' weights rounded (per tensor at 8 bits, as ``quantize``; per output channel at 8 bits; 16 bits: 8
and a residual of 8 more), against the unrounded IR, on the calibration calls (issue 18, item 3).

Only the weights are rounded (no payload, threshold or bias rounding): what each precision can reach at
best. JSON on stdout.

    .venv/bin/python tools/weight_precision.py models/checkpoints/digits-unet.pt [--residual graded]
"""

from __future__ import annotations

import argparse
import copy
import json
from dataclasses import replace

import numpy as np

from snc.compiler.driver import compile_deployable
from snc.compiler.frontends import load
from snc.compiler.ir import Graph, Population
from snc.compiler.ir_executor import run_ir
from snc.compiler.pass_manager import CompileOptions
from snc.compiler.passes.quantize import quantize_weights
from snc.compiler.targets import get_target

RULES = get_target("loihi2").rules
VARIANTS = ("tensor", "channel", "16bit")


def rounded(w: np.ndarray, scale: float, upsample: int, variant: str) -> np.ndarray:
    """``w`` as the target would hold it at ``scale`` (target units per model unit) in ``variant``."""
    if variant == "channel":
        out = np.zeros_like(w)
        for c in np.flatnonzero(np.abs(w.reshape(len(w), -1)).max(axis=1)):
            w_int, exp, _ = quantize_weights(w[c:c + 1], scale, RULES, upsample, RULES.weight_exp_min)
            out[c:c + 1] = w_int * 2.0**exp / scale
        return out
    w_int, exp, _ = quantize_weights(w, scale, RULES, upsample)
    if variant == "16bit":
        residual = w * scale / 2.0**exp - w_int  # in units of the coarse step
        return (w_int + np.round(residual * 256) / 256) * 2.0**exp / scale
    return w_int * 2.0**exp / scale


def variant_graph(graph: Graph, variant: str) -> Graph:
    out = copy.deepcopy(graph)
    for e in out.edges:
        src, dst = out.nodes[e.src], out.nodes[e.dst]
        if isinstance(src, Population) and e.op.weight is not None:
            e.op = replace(e.op, weight=rounded(e.op.weight, dst.scale / src.payload_scale,
                                                e.op.taps_per_synapse, variant))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", help="an snc checkpoint")
    parser.add_argument("--residual", default="graded")
    parser.add_argument("--images", type=int, default=4, help="images per calibration step")
    args = parser.parse_args()
    dep = load(args.source)
    graph = compile_deployable(dep, "loihi2", options=CompileOptions(residual=args.residual),
                               stop_after="split_signs").graph
    calls = dep.calibration(args.images, 1)
    gates = [graph.gates_at(c.step) if graph.gates else None for c in calls]
    reference = [run_ir(graph, c.inputs(g), record=True, gates=g).spikes for c, g in zip(calls, gates)]
    agreement = {}
    for variant in VARIANTS:
        rounded_graph = variant_graph(graph, variant)
        agree = total = 0
        for call, ref, g in zip(calls, reference, gates):
            spikes = run_ir(rounded_graph, call.inputs(g), record=True, gates=g).spikes
            for name, expected in ref.items():
                node = rounded_graph.nodes[name]
                if node.graded or node.role == "relay":
                    continue
                agree += int((spikes[name] == expected).sum())
                total += expected.numel()
        agreement[variant] = agree / total
    print(json.dumps({"source": args.source, "residual": args.residual, "calls": len(calls),
                      "spike_agreement": agreement}, indent=1))


if __name__ == "__main__":
    main()
