"""Run a lateral transformer's lateral circuits on a chip backend and compare its expert selection with torch.

    python tools/check_lateral_selection.py CHECKPOINT [--backend lava|emu] [--mode float|fixed] [-n 8]

Exports the circuits (``export_selection``), compiles them for Loihi 2, runs
one call per diffusion step (``-n`` steps spread over the schedule, or all
1000 with ``-n 0``) and prints JSON: Omega's spike agreement with the torch
model and the fraction of (diffusion step, block, inner step) whose selected
experts are identical.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from snc import api
from snc.compiler import frontends
from snc.compiler.netlist import netlist_currents
from snc.models.checkpoint import load_checkpoint
from snc.models.lateral import SpikingLateralTransformer
from snc.runtime.backends import netlist_backend


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("--backend", default="lava", choices=("lava", "emu"))
    parser.add_argument("--mode", choices=("float", "fixed"), help="default: float on lava, fixed on emu")
    parser.add_argument("-n", type=int, default=8, help="diffusion steps to check (0: every step)")
    args = parser.parse_args()
    args.mode = args.mode or ("float" if args.backend == "lava" else "fixed")
    model = load_checkpoint(args.checkpoint).model.double().eval()
    if not isinstance(model, SpikingLateralTransformer):
        raise SystemExit(f"error: {args.checkpoint} is not a lateral transformer")
    cfg = model.config
    steps = cfg.diffusion_steps
    t = torch.arange(steps) if args.n == 0 else torch.linspace(0, steps - 1, args.n).round().long()
    circuits = frontends.deployable(model, "lateral-selection", source=f"lateral circuits of {args.checkpoint}")
    net = api.compile(circuits, calibration=0).build.netlist(args.mode)
    with torch.no_grad():
        h, delta = model.selection(t)
        inputs = circuits.host.core_inputs(torch.zeros(len(t), cfg.img_ch, cfg.img_size, cfg.img_size,
                                                       dtype=torch.float64), t, None)
    currents = netlist_currents(net, {k: v[0] for k, v in inputs.items()})
    omega = [f"blocks.{r}.selection.omega" for r in range(cfg.depth)]
    with netlist_backend(args.backend).network(net, batch=len(t), record=True) as network:
        result = network.call(currents)
    chip = torch.stack([torch.from_numpy(result.spikes[name].astype(np.float64)) for name in omega])
    chip_h = model.selection_from_spikes(t, chip)
    same = ((chip_h > 0) == (h > 0)).all(-1)  # [depth, T, B]: the same experts selected
    print(json.dumps({
        "checkpoint": str(args.checkpoint), "backend": args.backend, "mode": args.mode,
        "diffusion_steps": len(t), "blocks": cfg.depth, "inner_steps": cfg.timestep,
        "omega_rate_torch": float(delta.mean()),
        "omega_spike_agreement": float((chip == delta).double().mean()),
        "same_experts": float(same.double().mean()),
        "weights_max_abs_difference": float((chip_h - h).abs().max()),
    }, indent=1))


if __name__ == "__main__":
    main()
