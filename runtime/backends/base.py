"""The backend protocol, and what every netlist backend takes and returns.

A **backend** runs denoiser calls of a build (or, for the torch reference, of
a model): ``open(build, mode, batch, record)`` gives a ``Runner``, an
``eps = runner(x_t, t)`` denoiser whose ``last`` holds the ``CallResult`` of
the images it denoised last (the spikes of every population it runs, when
recording). ``modes`` are the arithmetics it offers, the most precise first
(``snc verify`` runs them in this order), ``default_mode`` the one it runs
unless told; ``semantics(mode)`` names the arithmetic: two runs with the
same semantics must agree bit for bit (``snc verify`` fails otherwise).

A **netlist backend** (Lava, the emulator) executes a ``Netlist`` for a
batch of ``B`` independent images: ``network(net, batch, record)`` gives a
network with ``call(currents, gates)`` (one denoiser call: ``depth + T``
steps) returning a ``CallResult`` (the readout and, when recording, every
group's spikes, both for the T logical steps, each group read at its own
depth) and ``trace(steps, currents)`` (every step of every group's spikes, u
and v and the raw readout: the backends' exactness is checked on traces).
Both keep counting time steps across calls, as Lava does. ``ChipRunner`` is
the denoiser around any network: the build's host program computes the
inputs and decodes, the netlist's host ops compute the currents.

Host currents are model-unit floats per input group, [B, *shape] (the same
every step) or [T, B, *shape] (one per logical step: TSM); at each step a
group gets the current of ``logical_steps``. In fixed mode they are rounded
to integers at the group's scale, and a value whose ``a_in << 6`` would
leave the target's neuron state is refused.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional, Protocol, Union

import numpy as np
import torch

from snc.compiler.build import Build
from snc.compiler.frontends.base import Deployable, HostProgram
from snc.compiler.netlist import Gates, Netlist, logical_steps, netlist_currents
from snc.compiler.readout import apply_filters
from snc.compiler.targets import check_netlist, get_target
from snc.errors import SncError

Source = Union[Build, Deployable]  # what a backend opens: a build, or (the torch reference) a model


@dataclass
class CallResult:
    readout: Optional[np.ndarray]  # [T, B, *shape], model units, chip part only; None: no readout (a model)
    spikes: dict[str, np.ndarray] = field(default_factory=dict)  # [T, B, *shape] bool per population


@dataclass
class Trace:
    """Every step of a run: spikes (bool; a graded group's payloads), u and v after the step (a graded group:
    its summed input and its value), and the readout in integer units."""
    spikes: dict[str, np.ndarray]  # [steps, B, n]
    u: dict[str, np.ndarray]  # [steps, B, n]
    v: dict[str, np.ndarray]  # [steps, B, n]
    readout: np.ndarray  # [steps, B, n_readout]


class Network(Protocol):
    def call(self, currents: dict[str, np.ndarray], gates: Optional[Gates] = None) -> CallResult: ...
    def trace(self, steps: int, currents: dict[str, np.ndarray], gates: Optional[Gates] = None) -> Trace: ...
    def close(self) -> None: ...


class Runner(Protocol):
    backend: str
    mode: str
    host: HostProgram  # the host program it runs with (its model without the runner's own guidance)
    last: Optional[CallResult]
    runs_netlist: bool  # False: the model itself (no relays; every expert computed)

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor: ...
    def close(self) -> None: ...
    def __enter__(self) -> "Runner": ...
    def __exit__(self, *exc: Any) -> None: ...


class Backend:
    """A registered backend; subclasses set the attributes and implement ``open``."""

    name: str = ""
    modes: tuple[str, ...] = ()
    default_mode: str = ""
    description: str = ""

    def semantics(self, mode: str) -> str:
        return f"{self.name}:{mode}"

    supervised: bool = False  # runs its networks in watched worker processes that a --timeout can bound
    devices: tuple[str, ...] = ()  # the torch device types its networks run on (--device); none: it has no device
    # Images per call when the caller leaves the batch to snc, for a backend whose results depend on the
    # batch (torch's float kernels); None: every image is computed on its own (a netlist's integers, a Lava
    # network per image), so any split of a run into calls or shards gives the same images.
    split_batch: Optional[int] = None

    def call_options(self, timeout: Optional[float], device: Optional[torch.device] = None) -> dict[str, Any]:
        """The ``open`` / ``network`` options of a ``--timeout`` (seconds per call): a supervised backend's
        bound; the others run in this process and need none. A ``--device`` (``backends.check_device``) goes
        to a backend that runs on it; the others run where they always do."""
        options: dict[str, Any] = {"device": device} if device is not None and self.devices else {}
        if timeout is None:
            return options
        if not 0 < timeout < float("inf"):
            raise SncError(f"--timeout must be a positive number of seconds, not {timeout}")
        return options | ({"timeout": timeout} if self.supervised else {})

    def check_mode(self, mode: Optional[str]) -> str:
        mode = mode or self.default_mode
        if mode not in self.modes:
            raise SncError(f"--backend {self.name} ({self.description}) runs --mode {' or '.join(self.modes)}, "
                           f"not {mode}")
        return mode

    def open(self, source: Source, mode: Optional[str] = None, batch: int = 1, record: bool = False,
             **options: Any) -> Runner:
        raise NotImplementedError


class NetlistBackend(Backend):
    """A backend that executes netlists of the targets it lists."""

    targets: tuple[str, ...] = ()

    def network(self, net: Netlist, batch: int = 1, record: bool = False, **options: Any) -> Network:
        raise NotImplementedError

    def batch_that_fits(self, net: Netlist, batch: int, record: bool) -> int:
        """The batch to run when the user left it to snc: ``batch``, or less where memory limits it."""
        return batch

    def run_mb(self, net: Netlist, batch: int) -> Optional[float]:
        """Estimated memory (MB) of a run of ``net`` at ``batch`` beyond this process's; None: nothing to speak
        of (the network lives in this process's arrays)."""
        return None

    def accept(self, net: Netlist) -> Netlist:
        """``net`` after its target's full check, if this backend runs it in its mode."""
        if net.target not in self.targets:
            raise SncError(f"backend {self.name} runs netlists for {', '.join(self.targets)}, not {net.target}")
        self.check_mode(net.mode)
        check_netlist(net)
        return net

    def open(self, source: Source, mode: Optional[str] = None, batch: int = 1, record: bool = False,
             threshold_scale: float = 1.0, specialised: bool = True, auto_batch: bool = False,
             **options: Any) -> "ChipRunner":
        """A denoiser on the build's netlist of ``mode`` (default: the build's, if this backend runs it),
        with threshold guidance ``threshold_scale`` on top of the build's (the target's rule);
        ``auto_batch``: ``batch`` is only the most the caller wants per call (``batch_that_fits``)."""
        if not isinstance(source, Build):
            raise SncError(f"--backend {self.name} needs a build directory (snc compile {source.source} -o build/)")
        mode = self.check_mode(mode or (source.default_mode if source.default_mode in self.modes else None))
        net = source.netlist(mode)
        if threshold_scale != 1.0:
            net = get_target(net.target).guide(net, threshold_scale)
        host = source.host
        if auto_batch:
            batch = self.batch_that_fits(net, batch, record)
        return ChipRunner(host, net, self.network(net, batch, record, **options), self.name, mode, batch,
                          specialised)


def host_values(net: Netlist, currents: dict[str, np.ndarray], batch: int) -> dict[str, np.ndarray]:
    """Per input group: [T, B, n] int64 (fixed: rounded at the group's scale) or float64 (float)."""
    values = {}
    T = net.timestep
    rules = get_target(net.target).rules
    limit = rules.current_limit if net.mode == "fixed" else None
    for name, scale in net.inputs.items():
        if name not in currents:
            raise SncError(f"no host current for population {name}")
        n = net.groups[name].n
        x = np.asarray(currents[name], dtype=np.float64)
        per_step = x.ndim >= 2 and x.shape[:2] == (T, batch) and x.size == T * batch * n
        if not per_step and not (x.ndim >= 1 and x.shape[0] == batch and x.size == batch * n):
            raise SncError(f"host current for {name} has shape {x.shape}; expected [{batch}, *shape] "
                           f"or [{T}, {batch}, *shape] (one per logical step) with {n} values per image")
        x = x.reshape(-1, batch, n)  # 1 or T rows; broadcast to T after rounding
        if limit is not None:
            scaled = np.round(x * scale)
            if np.abs(scaled).max(initial=0) >= limit:
                raise SncError(f"host current into {name} exceeds the {rules.state_bits}-bit range at this scale "
                               f"(peak {np.abs(x).max():.3g}); recompile with calibration data like these inputs")
            x = scaled.astype(np.int64)
        values[name] = np.broadcast_to(x, (T, batch, n))
    return values


def step_rows(net: Netlist, name: str, first: int, count: int) -> np.ndarray:
    """Indices into a group's per-logical-step values for Lava time steps first..first+count-1."""
    return logical_steps(np.arange(first, first + count), net.groups[name].depth, net.timestep, net.call_steps)


def host_readout(net: Netlist, readout: np.ndarray, currents: dict[str, np.ndarray]) -> torch.Tensor:
    """The graph's output [T, B, *shape] from a call's chip readout: plus the readout's bias and the host
    terms into it, through its host filters (all host work, float64)."""
    out = torch.from_numpy(readout)
    bias = net.readout.step_bias(net.timestep)  # [T, *shape]
    out = out + torch.from_numpy(np.array(bias)).unsqueeze(1)  # a writable copy: it may be a read-only view
    if net.readout.name in currents:
        out = out + torch.from_numpy(currents[net.readout.name])
    return apply_filters(out, net.readout.filters, net.readout.shape)


def call_result(net: Netlist, readout: np.ndarray, spikes: dict[str, np.ndarray], batch: int) -> CallResult:
    """A CallResult from one call's per-step readout [L, B, n] and spikes [L, B, n]: the T logical steps."""
    d, T = net.depth, net.timestep
    out = readout[d:d + T].reshape(T, batch, *net.readout.shape)
    if net.mode == "fixed":
        out = out / net.readout.scale
    windows = {}
    for name, s in spikes.items():
        g = net.groups[name]
        window = s[g.depth:g.depth + T] != 0
        if len(window) < T:  # a relay of a delay of k steps: its last k - 1 steps reach nothing and are not run
            window = np.concatenate([window, np.zeros((T - len(window), *window.shape[1:]), bool)])
        windows[name] = window.reshape(T, batch, *g.shape)
    return CallResult(out, windows)


class ChipRunner:
    """``eps = runner(x_t, t)`` with the spiking core on a network; the host parts in float64.

    A call: the host program's inputs for (x_t, t) and the call's gates (a
    gated build runs each call with the compiled gates of its diffusion step;
    ``specialised`` False runs the model's gates, every expert on), the
    netlist's host ops turn them into currents, the network runs ``depth + T``
    steps, the host adds the readout's bias and host terms and decodes. Calls
    hold ``batch`` images (the last one padded with copies of its first
    image); ``last`` is the ``CallResult`` of all images of the last
    ``__call__`` (spikes when recording).
    """

    runs_netlist = True

    def __init__(self, host: HostProgram, net: Netlist, network: Network, backend: str, mode: str, batch: int,
                 specialised: bool = True) -> None:
        self.host, self.net, self.network = host, net, network
        self.backend, self.mode, self.batch, self.specialised = backend, mode, batch, specialised
        self.last: Optional[CallResult] = None

    @torch.no_grad()
    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        b = self.batch
        eps, results = [], []
        for i in range(0, len(x), b):
            xs, ts = x[i:i + b], t[i:i + b]
            real, pad = len(xs), b - len(xs)
            xs, ts = torch.cat([xs, xs[:1].expand(pad, *xs.shape[1:])]), torch.cat([ts, ts[:1].expand(pad)])
            e, result = self._call(xs, ts)
            eps.append(e[:real])
            results.append(CallResult(result.readout[:, :real], {k: v[:, :real] for k, v in result.spikes.items()}))
        self.last = results[0] if len(results) == 1 else CallResult(
            np.concatenate([r.readout for r in results], axis=1),
            {k: np.concatenate([r.spikes[k] for r in results], axis=1) for k in results[0].spikes})
        return torch.cat(eps)

    def _call(self, x: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, CallResult]:
        net = self.net
        gates = net.call_gates(t, self.specialised)
        x64 = x.to(torch.float64)
        inputs = self.host.call_inputs(x64, t, gates)
        currents = netlist_currents(net, inputs)
        result = self.network.call(currents, gates)
        return self.host.decode(host_readout(net, result.readout, currents), x64, t).to(x.dtype), result

    def close(self) -> None:
        self.network.close()

    def __enter__(self) -> "ChipRunner":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
