"""SpikingJelly's own networks, simulation and NIR exporter, for snc's conformance tests.

SpikingJelly 2.0 (the first release on PyPI with ``nir_exchange``) needs
Python >= 3.11 and torch >= 2.6; snc needs Python 3.10 and torch 2.3.1 (Lava).
So this script runs in a venv of its own (``tools/bootstrap_spikingjelly_venv.sh``
makes ``.venv-spikingjelly``) and imports nothing of snc: for every network it
builds the network in SpikingJelly, simulates it there step by step on a random
input, exports it with SpikingJelly's ``export_to_nir`` and writes

    OUT/<case>.nir   the exporter's graph, as written by nir.write
    OUT/<case>.npz   x [steps, batch, *input_shape], out [steps, batch, *output_shape] (the framework's spikes)

and ``OUT/cases.json`` (name, dt, neuron, network, output rate). snc then
compiles the files in its own venv (``tests/test_nir_spikingjelly.py``).

    .venv-spikingjelly/bin/python tools/spikingjelly_export.py OUT
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import nir
import numpy as np
import torch
from spikingjelly.activation_based import functional, neuron
from spikingjelly.activation_based.nir_exchange import export_to_nir

STEPS, BATCH, DT = 40, 4, 1e-4


def _mlp(node) -> torch.nn.Module:
    return torch.nn.Sequential(torch.nn.Linear(10, 24), node(), torch.nn.Linear(24, 6), node())


def _conv() -> torch.nn.Module:
    return torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), neuron.LIFNode(tau=2.0),
                               torch.nn.AvgPool2d(2), torch.nn.Flatten(), torch.nn.Linear(4 * 4 * 4, 6),
                               neuron.LIFNode(tau=2.0))


# name -> (network, neuron kind, builder, input shape, input scale, weight gain)
CASES = {
    "mlp-lif": ("mlp", "LIFNode (LIF, decay_input)", lambda: _mlp(lambda: neuron.LIFNode(tau=2.0)), (10,), 1.0, 6.0),
    "mlp-lif-no-decay-input": ("mlp", "LIFNode (LIF, decay_input=False)",
                               lambda: _mlp(lambda: neuron.LIFNode(tau=5.0, decay_input=False)), (10,), 1.0, 2.0),
    "mlp-if": ("mlp", "IFNode (IF)", lambda: _mlp(neuron.IFNode), (10,), 1.0, 2.0),
    "mlp-cubalif": ("mlp", "CUBALIFNode (CubaLIF)",
                    lambda: _mlp(lambda: neuron.CUBALIFNode(c_decay=0.5, v_decay=0.75, v_threshold=0.5)), (10,), 1.0,
                    0.5),
    "conv-lif": ("conv + avgpool", "LIFNode (LIF)", _conv, (1, 8, 8), 1.0, 8.0),
}


def simulate_and_export(name: str, out: Path, seed: int = 0) -> dict:
    network, kind, build, shape, scale, gain = CASES[name]
    torch.manual_seed(seed)
    net = build()  # float32: simulated with the weights the exporter writes
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d)):
                m.weight.mul_(gain)
    x = torch.rand(STEPS, BATCH, *shape, generator=torch.Generator().manual_seed(seed)) * scale
    functional.reset_net(net)
    with torch.no_grad():
        y = torch.stack([net(x[t]) for t in range(STEPS)])
    functional.reset_net(net)
    graph = export_to_nir(net, x[0], dt=DT)
    nir.write(str(out / f"{name}.nir"), graph)
    np.savez(out / f"{name}.npz", x=x.numpy(), out=y.numpy())
    return {"name": name, "network": network, "neuron": kind, "input_shape": list(shape), "dt": DT,
            "rate": float(y.mean())}


def main() -> None:
    out = Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    rows = [simulate_and_export(name, out) for name in CASES]
    (out / "cases.json").write_text(json.dumps(rows, indent=1))
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
