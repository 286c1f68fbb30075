"""Run any compiled graph for an input sequence: ``snc run BUILD --input x.npy``.

The input holds the graph's Input node value for every logical step,
``[steps, *input_shape]`` or ``[steps, batch, *input_shape]`` (spikes or
currents: whatever the graph's Input feeds). The whole sequence is one call:
a build without per-step parameters runs any number of steps
(``Netlist.for_steps``), and the backend runs ``depth + steps`` steps, the
pipeline depth added by snc; every group starts from zero and is read in its
own window. The output is the graph's Output node per logical step: spikes of
the population it reads, or the readout of a non-spiking output (integrated
on the host, ``compiler/readout.py``).

Backends: the netlist backends (``lava``, ``emu``) in a mode of the build,
and ``reference``: snc's float NIR executor on the build's NIR graph
(``compiler/nir_reference.py``: NIR's Euler semantics, no compilation).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import nir
import numpy as np
import torch

from snc.compiler.build import Build
from snc.compiler.frontends.nir_file import shaped_input
from snc.compiler.netlist import netlist_currents
from snc.compiler.nir_io import NIR_DT
from snc.compiler.nir_normalise import SPIKING
from snc.errors import SncError

from .backends import BACKENDS, check_device, get_backend
from .backends.base import NetlistBackend, host_readout
from snc.compiler.nir_reference import NIRReference

REFERENCE = "reference"


@dataclass
class GraphRun:
    backend: str
    mode: str  # fixed | float | float64 (reference)
    steps: int
    batch: int
    depth: int  # pipeline steps added before the first output (0 for the reference)
    output: np.ndarray  # [steps, batch, *output_shape]
    spikes: dict[str, np.ndarray] = field(default_factory=dict)  # [steps, batch, *shape] bool per population

    def counts(self) -> dict[str, np.ndarray]:
        """Spikes per neuron over the run [batch, *shape], per population."""
        return {name: s.sum(axis=0) for name, s in self.spikes.items()}

    def totals(self) -> dict[str, int]:
        return {name: int(s.sum()) for name, s in self.spikes.items()}


def run_backends() -> tuple[str, ...]:
    """The backends ``snc run`` takes: the netlist backends and the NIR reference."""
    return tuple(name for name in BACKENDS if isinstance(get_backend(name), NetlistBackend)) + (REFERENCE,)


def run_graph(build: Build, x: np.ndarray, backend: str = "emu", mode: Optional[str] = None,
              timeout: Optional[float] = None, device: Optional[str] = None) -> GraphRun:
    """Run ``build`` on the input sequence ``x`` (see the module docstring); ``timeout``: seconds a supervised
    backend's run may take; ``device``: of a backend that runs on one (the emulator)."""
    if backend == REFERENCE and device is not None:
        raise SncError("--backend reference is the float NIR executor on the CPU; it has no --device")
    graph = build.nir_graph
    x = shaped_input(x, graph)
    steps, batch = int(x.shape[0]), int(x.shape[1])
    name = next(iter(graph.inputs))
    if backend == REFERENCE:
        if mode not in (None, "float", "float64"):
            raise SncError("--backend reference is the float NIR executor (float64); it has no --mode " + str(mode))
        return _reference(build, graph, name, torch.as_tensor(x), steps, batch)
    if backend not in run_backends():
        raise SncError(f"--backend must be one of {', '.join(run_backends())}, not {backend!r}")
    be = get_backend(backend)
    mode = be.check_mode(mode or (build.default_mode if build.default_mode in be.modes else None))
    net = build.netlist(mode)
    if net.gates:
        raise SncError("this build has selection gates set per diffusion step: run it with snc sample / verify")
    if set(net.host_inputs) != {name}:
        raise SncError(f"snc run feeds one input ({name}); this build's host inputs are "
                       f"{', '.join(sorted(net.host_inputs))}: a denoiser build runs with snc sample / verify")
    net = net.for_steps(steps)
    currents = netlist_currents(net, {name: torch.as_tensor(x)})
    network = be.network(net, batch, True, **be.call_options(timeout, check_device(device, [backend])))
    try:
        result = network.call(currents, None)
    finally:
        network.close()
    output = host_readout(net, result.readout, currents).numpy()
    return GraphRun(backend, mode, steps, batch, net.depth, output, result.spikes)


def _reference(build: Build, graph: nir.NIRGraph, name: str, x: torch.Tensor, steps: int, batch: int) -> GraphRun:
    reference = NIRReference(graph, dt=float(build.meta.get("dt", NIR_DT)))
    values = reference.run({name: x}, record=True)
    output = next(iter(graph.outputs))
    spikes = {n: values[n].numpy() != 0 for n, node in graph.nodes.items() if isinstance(node, SPIKING)}
    return GraphRun(REFERENCE, "float64", steps, batch, 0, values[output].numpy(), spikes)


def save_run(run: GraphRun, path) -> None:
    """``output`` and ``count/<population>`` (spikes per neuron over the run, [batch, *shape])."""
    arrays = {"output": run.output}
    arrays.update({f"count/{name}": c for name, c in run.counts().items()})
    np.savez(path, **arrays)
