"""Conformance networks: small SNNs built, simulated and exported by the frameworks themselves.

Each ``Case`` builds a network in norse or snnTorch, simulates it there
step by step on a random input sequence, exports it with the framework's own
exporter, and says how snc must read the export (dt, convention). ``conform``
compiles the export with snc (calibrated on the same input) and runs it on the
given backends; agreement is the fraction of equal output spikes (every step,
image and output neuron).

Used by ``tests/test_nir_frameworks.py`` and ``tools/nir_conformance.py`` (the
table in the closing note). Only what each framework's discretisation shares
with Lava is compared for equality: snnTorch's neurons with
``reset_mechanism="zero", reset_delay=False`` (its defaults subtract the
threshold, and reset one step late; the NIR file says neither: snnTorch writes
``v_reset = 0`` for every neuron); norse's cells as they are; SpikingJelly's
hard-reset nodes as they are (it spikes at ``v >= v_threshold``, NIR and Lava
at ``v > v_threshold``: equal except where v lands exactly on the threshold,
which real-valued inputs make vanishingly rare; its exporter refuses
soft-reset nodes).

SpikingJelly 2.0, the first release with an NIR exporter, needs Python >= 3.11:
its networks are built, simulated and exported in a venv of their own
(``spikingjelly_exports``), and snc reads the files.
"""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import nir
import numpy as np
import torch

STEPS, BATCH = 40, 4
ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Case:
    framework: str
    network: str
    neuron: str
    build: Optional[Callable[[], torch.nn.Module]]  # None: built in another process (SpikingJelly)
    input_shape: tuple[int, ...]
    dt: float
    convention: str
    scale: float  # input currents uniform in [0, scale)
    gain: float = 1.0  # every Linear / Conv weight times this (the frameworks' inits fire too little)


@dataclass
class Conformance:
    case: Case
    export_note: str  # how the framework's exporter behaved
    warnings: list[str]
    rate: float  # output firing rate in the framework
    agreement: dict[str, float] = field(default_factory=dict)  # backend[:mode] -> fraction equal to the framework
    outputs: dict[str, np.ndarray] = field(default_factory=dict)
    spikes: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)

    def row(self) -> dict[str, Any]:
        c = self.case
        return {"framework": c.framework, "network": c.network, "neuron": c.neuron, "compiles": True,
                "export": self.export_note, "warnings": len(self.warnings), "output_rate": round(self.rate, 4),
                **{f"agreement[{k}]": v for k, v in self.agreement.items()}}


# --- snnTorch ----------------------------------------------------------------------------------------
def _snn_kwargs() -> dict[str, Any]:
    return dict(init_hidden=True, reset_mechanism="zero", reset_delay=False)


def _snntorch_mlp_leaky() -> torch.nn.Module:
    import snntorch as snn
    return torch.nn.Sequential(torch.nn.Linear(10, 24), snn.Leaky(beta=0.9, **_snn_kwargs()),
                               torch.nn.Linear(24, 6), snn.Leaky(beta=0.8, output=True, **_snn_kwargs()))


def _snntorch_mlp_leaky_per_neuron() -> torch.nn.Module:
    """Leaky with one beta per neuron (as ``learn_beta`` on a vector trains it): three values in the hidden
    layer, so snc splits it into three populations. snnTorch 1.0's exporter builds the NIR LIF only when the
    threshold is a vector too (with a scalar one NIR refuses the node: "All parameters must have the same
    shape"), so the threshold is given per neuron."""
    import snntorch as snn
    beta = torch.tensor([0.7, 0.85, 0.95] * 8)
    return torch.nn.Sequential(torch.nn.Linear(10, 24), snn.Leaky(beta=beta, threshold=torch.ones(24),
                                                                  **_snn_kwargs()),
                               torch.nn.Linear(24, 6), snn.Leaky(beta=0.8, output=True, **_snn_kwargs()))


def _snntorch_mlp_synaptic() -> torch.nn.Module:
    import snntorch as snn
    return torch.nn.Sequential(torch.nn.Linear(10, 24), snn.Synaptic(alpha=0.7, beta=0.9, **_snn_kwargs()),
                               torch.nn.Linear(24, 6), snn.Synaptic(alpha=0.6, beta=0.85, output=True, **_snn_kwargs()))


def _snntorch_conv() -> torch.nn.Module:
    import snntorch as snn
    return torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), snn.Leaky(beta=0.9, **_snn_kwargs()),
                               torch.nn.AvgPool2d(2), torch.nn.Flatten(), torch.nn.Linear(4 * 4 * 4, 6),
                               snn.Leaky(beta=0.85, output=True, **_snn_kwargs()))


def _snntorch_rleaky() -> torch.nn.Module:
    import snntorch as snn
    return torch.nn.Sequential(torch.nn.Linear(10, 12),
                               snn.RLeaky(beta=0.9, linear_features=12, **_snn_kwargs()),
                               torch.nn.Linear(12, 5), snn.Leaky(beta=0.8, output=True, **_snn_kwargs()))


def _snntorch_simulate(net: torch.nn.Module, x: torch.Tensor) -> np.ndarray:
    from snntorch import utils
    utils.reset(net)
    out = []
    with torch.no_grad():
        for t in range(x.shape[0]):
            out.append(net(x[t])[0])  # (spk, mem) or (spk, syn, mem) of the output layer
    return torch.stack(out).numpy()


def snntorch_export(net: torch.nn.Module, sample: torch.Tensor) -> tuple[nir.NIRGraph, str]:
    """snnTorch's ``export_to_nir``; in snnTorch 1.0.0 it fails in its final ``infer_types`` on every graph
    with a batch dimension or a 0-d neuron parameter, so the graph its mapping built (the same call,
    ``nirtorch.extract_nir_graph`` with snnTorch's module mapper, without that step) is taken then."""
    import nirtorch
    import snntorch as snn
    from snntorch.export_nir import _extract_snntorch_module, export_to_nir

    try:
        return export_to_nir(net, sample), "export_to_nir"
    except (ValueError, IndexError) as exc:  # NIR's type inference on the exporter's types
        graph = nirtorch.extract_nir_graph(net, _extract_snntorch_module, sample, model_name="snntorch",
                                           ignore_submodules_of=[snn.RLeaky, snn.RSynaptic])
        reason = f"{type(exc).__name__}: {str(exc).splitlines()[0][:50]}"
        return graph, f"export_to_nir fails in infer_types ({reason}); its graph before that step"


# --- norse -------------------------------------------------------------------------------------------
def _norse_mlp(cell: str) -> Callable[[], torch.nn.Module]:
    def build() -> torch.nn.Module:
        import norse.torch as norse
        kind = getattr(norse, cell)
        return norse.SequentialState(torch.nn.Linear(10, 24), kind(), torch.nn.Linear(24, 6), kind())
    return build


def _norse_conv() -> torch.nn.Module:
    import norse.torch as norse
    return norse.SequentialState(torch.nn.Conv2d(1, 4, 3, padding=1), norse.LIFBoxCell(),
                                 torch.nn.Conv2d(4, 6, 3, stride=2, padding=1), norse.LIFBoxCell())


def _norse_simulate(net: torch.nn.Module, x: torch.Tensor) -> np.ndarray:
    state, out = None, []
    with torch.no_grad():
        for t in range(x.shape[0]):
            z, state = net(x[t], state)
            out.append(z)
    return torch.stack(out).numpy()


def norse_export(net: torch.nn.Module, sample: torch.Tensor) -> tuple[nir.NIRGraph, str]:
    import norse.torch as norse
    return norse.to_nir(net, sample, dt=1e-3), "to_nir (dt 1e-3)"


CASES = [  # input scale and weight gain chosen for output rates of about 0.1 to 0.35
    Case("snntorch", "mlp", "Leaky (LIF)", _snntorch_mlp_leaky, (10,), 1e-4, "nir", 2.0, 3.0),
    Case("snntorch", "mlp", "Leaky, beta per neuron (3 populations)", _snntorch_mlp_leaky_per_neuron, (10,), 1e-4,
         "nir", 2.0, 3.0),
    Case("snntorch", "mlp", "Synaptic (CubaLIF)", _snntorch_mlp_synaptic, (10,), 1e-4, "nir", 1.0, 1.0),
    Case("snntorch", "conv + avgpool", "Leaky (LIF)", _snntorch_conv, (1, 8, 8), 1e-4, "nir", 2.0, 3.0),
    Case("snntorch", "mlp + recurrent", "RLeaky (LIF subgraph)", _snntorch_rleaky, (10,), 1e-4, "nir", 2.0, 3.0),
    Case("norse", "mlp", "LIFBoxCell (LIF)", _norse_mlp("LIFBoxCell"), (10,), 1e-3, "norse", 8.0, 10.0),
    Case("norse", "mlp", "LIFCell (CubaLIF)", _norse_mlp("LIFCell"), (10,), 1e-3, "norse", 2.0, 3.0),
    Case("norse", "mlp", "IAFCell (IF)", _norse_mlp("IAFCell"), (10,), 1e-3, "norse", 2.0, 3.0),
    Case("norse", "conv (stride 2)", "LIFBoxCell (LIF)", _norse_conv, (1, 8, 8), 1e-3, "norse", 8.0, 40.0),
]


def case_input(case: Case, seed: int = 0) -> np.ndarray:
    g = torch.Generator().manual_seed(seed)
    return (torch.rand((STEPS, BATCH, *case.input_shape), generator=g, dtype=torch.float32) * case.scale).numpy()


def simulate_and_export(case: Case, seed: int = 0) -> tuple[np.ndarray, nir.NIRGraph, str, np.ndarray]:
    """(the framework's output spikes [T, B, out], its NIR export, how it exported, the input)."""
    torch.manual_seed(seed)
    net = case.build().eval()
    with torch.no_grad():
        for module in net.modules():
            if isinstance(module, (torch.nn.Linear, torch.nn.Conv2d)):
                module.weight.mul_(case.gain)
    x = case_input(case, seed)
    sample = torch.as_tensor(x[0, :1])
    if case.framework == "snntorch":
        ref = _snntorch_simulate(net, torch.as_tensor(x))
        graph, note = snntorch_export(net, sample)
    else:
        ref = _norse_simulate(net, torch.as_tensor(x))
        graph, note = norse_export(net, sample)
    return ref.reshape(STEPS, BATCH, -1), graph, note, x


def conform(case: Case, backends: tuple[tuple[str, Optional[str]], ...], seed: int = 0) -> Conformance:
    """Compile the framework's export with snc and run it on ``backends`` ((name, mode) pairs)."""
    ref, graph, note, x = simulate_and_export(case, seed)
    return conform_export(case, graph, note, ref, x, backends)


def conform_export(case: Case, graph: nir.NIRGraph, note: str, ref: np.ndarray, x: np.ndarray,
                   backends: tuple[tuple[str, Optional[str]], ...]) -> Conformance:
    """Compile one export (calibrated on its input ``x``) and compare each backend's output spikes with the
    framework's ``ref`` [T, B, out]."""
    from snc import api
    from snc.compiler.frontends import GraphOptions

    compiled = api.compile(graph, graph=GraphOptions(case.dt, case.convention, None, x))
    result = Conformance(case, note, compiled.report.warnings, float(ref.mean()))
    for backend, mode in backends:
        run = api.run(compiled.build, x, backend=backend, mode=mode)
        key = backend if mode is None else f"{backend}:{mode}"
        out = run.output.reshape(STEPS, BATCH, -1)
        result.outputs[key] = out
        result.spikes[key] = run.spikes
        result.agreement[key] = float((out == ref).mean())
    return result


# --- SpikingJelly, in a venv of its own ----------------------------------------------------------------
def spikingjelly_exports(directory: Path) -> list[tuple[Case, Path]]:
    """SpikingJelly's networks simulated and exported by SpikingJelly 2.0 itself (``tools/spikingjelly_export.py``
    in ``.venv-spikingjelly``: it needs Python >= 3.11 and torch >= 2.6, which Lava cannot share): each
    case and the stem of its ``.nir`` (the export) and ``.npz`` (input ``x``, the framework's spikes ``out``)."""
    python = subprocess.run([str(ROOT / "tools" / "bootstrap_spikingjelly_venv.sh")], capture_output=True,
                            text=True, check=True).stdout.strip().splitlines()[-1]
    subprocess.run([str(ROOT / python), str(ROOT / "tools" / "spikingjelly_export.py"), str(directory)],
                   capture_output=True, text=True, check=True)
    rows = json.loads((directory / "cases.json").read_text())
    return [(Case("spikingjelly", r["network"], r["neuron"], None, tuple(r["input_shape"]), r["dt"], "nir", 1.0),
             directory / r["name"]) for r in rows]


def conform_spikingjelly(case: Case, stem: Path, backends: tuple[tuple[str, Optional[str]], ...]) -> Conformance:
    graph = nir.read(f"{stem}.nir")
    with np.load(f"{stem}.npz") as data:
        x, ref = data["x"].astype(np.float64), data["out"]
    return conform_export(case, graph, "export_to_nir", ref.reshape(STEPS, BATCH, -1), x, backends)


# --- snc's exports in the frameworks' readers ----------------------------------------------------------
def read_back(reader: str, path) -> Callable[[torch.Tensor], np.ndarray]:
    """The framework's reader of a NIR file, as a function of an input sequence [T, B, ...] -> outputs [T, B, ...]
    (a fresh state per sequence)."""
    graph = nir.read(str(path))
    if reader == "norse":
        import norse.torch as norse
        module = norse.from_nir(graph, dt=float(graph.metadata["snc.dt"]))

        def run(x: torch.Tensor) -> np.ndarray:
            state, out = None, []
            with torch.no_grad():
                for t in range(x.shape[0]):
                    y, state = module(x[t], state)
                    out.append(y)
            return torch.stack(out).numpy()
        return run
    from snntorch import utils
    from snntorch.import_nir import import_from_nir
    module = import_from_nir(graph)

    def run(x: torch.Tensor) -> np.ndarray:
        utils.reset(module)
        out = []
        with torch.no_grad():
            for t in range(x.shape[0]):
                y = module(x[t])
                out.append(y[0] if isinstance(y, tuple) else y)
        return torch.stack(out).numpy()
    return run


def mlp_reader_error(reader: str, directory, step: int = 300, seed: int = 0) -> float:
    """Max abs difference between snc's torch MLP denoiser (a digits-mlp preset) and ``reader``'s module of
    snc's export of it at diffusion step ``step``, on 4 noisy images."""
    from snc import api
    from snc.compiler.nir_io import write_graph

    deployable = api.load(preset="digits-mlp", seed=seed)
    host = deployable.host
    path = directory / f"mlp-{reader}.nir"
    write_graph(path, api.export(deployable, convention=reader, at_step=step))
    g = torch.Generator().manual_seed(seed)
    x = torch.randn((4, 1, 8, 8), generator=g, dtype=torch.float64)
    t = torch.full((4,), step)
    with torch.no_grad():
        inputs = host.core_inputs(x, t, None)
        eps, _ = host.reference(x, t)
    image = inputs["input"].float().reshape(deployable.timestep, 4, -1)  # the reader's flat input
    readout = torch.as_tensor(read_back(reader, path)(image), dtype=torch.float64)
    return float((host.decode(readout, x, t) - eps).abs().max())


def conv_reader_agreement(reader: str, directory, seed: int = 0) -> float:
    """Fraction of equal output spikes between snc's NIR reference of a compiled conv net (snnTorch's conv,
    avgpool, flatten, linear, read by snc) and ``reader``'s module of snc's export of that build, the whole
    batch at once (the Flatten after the pool must keep the batch)."""
    from snc import api
    from snc.compiler.frontends import GraphOptions
    from snc.compiler.nir_io import write_graph

    case = next(c for c in CASES if c.framework == "snntorch" and c.network.startswith("conv"))
    _, graph, _, x = simulate_and_export(case, seed)
    build = api.compile(graph, graph=GraphOptions(case.dt, case.convention, None, x)).build
    reference = api.run(build, x, backend="reference").output
    path = directory / f"conv-{reader}.nir"
    write_graph(path, api.export(build, convention=reader))
    run = read_back(reader, path)
    theirs = run(torch.as_tensor(x))
    return float((theirs.reshape(reference.shape) == reference).mean())
