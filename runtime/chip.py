"""What every chip backend (Lava, the emulator) takes and returns.

A backend executes a ``Netlist`` for a batch of ``B`` independent images.
``call(currents)`` runs one denoiser call (``depth + T`` steps with the same
host currents every step) and returns a ``CallResult``: the readout and, when
recording, every group's spikes, both for the T logical steps (each group
read at its own depth). ``trace(steps, currents)`` runs ``steps`` steps and
returns every step of every group's spikes, u and v and the raw readout: the
backends' exactness is checked on traces. Both keep counting time steps
across calls, as Lava does.

Host currents are model-unit floats per input group, [B, *shape] (the same
every step) or [T, B, *shape] (one per logical step: TSM); at each Lava step
a group gets the current of ``logical_steps`` (compiler/lower.py). In fixed
mode they are rounded to integers at the group's scale, and a value whose
``a_in << 6`` would leave the 24-bit current is refused.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Union

import numpy as np

from snc.compiler.ir import Graph
from snc.compiler.lower import Netlist, logical_steps, lower
from snc.errors import SncError

BACKENDS = ("lava", "emu")
HOST_CURRENT_LIMIT = 1 << 17  # a_in << 6 must stay inside the 24-bit current


@dataclass
class CallResult:
    readout: np.ndarray  # [T, B, *shape], model units, chip part only (host adds bias and host currents)
    spikes: dict[str, np.ndarray] = field(default_factory=dict)  # [T, B, *shape] per neuron population


@dataclass
class Trace:
    """Every step of a run: spikes (bool), u and v after the step, and the readout in integer units."""
    spikes: dict[str, np.ndarray]  # [steps, B, n]
    u: dict[str, np.ndarray]  # [steps, B, n]
    v: dict[str, np.ndarray]  # [steps, B, n]
    readout: np.ndarray  # [steps, B, n_readout]


def as_netlist(source: Union[Graph, Netlist], mode: str) -> Netlist:
    """A netlist as given (its mode must be ``mode``), or the lowering of a compiled graph."""
    if isinstance(source, Netlist):
        if source.mode != mode:
            raise SncError(f"the netlist is in {source.mode} mode, not {mode}")
        source.check()
        return source
    return lower(source, mode)


def host_values(net: Netlist, currents: dict[str, np.ndarray], batch: int) -> dict[str, np.ndarray]:
    """Per input group: [T, B, n] int64 (fixed: rounded at the group's scale) or float64 (float)."""
    values = {}
    T = net.timestep
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
        if net.mode == "fixed":
            scaled = np.round(x * scale)
            if np.abs(scaled).max(initial=0) >= HOST_CURRENT_LIMIT:
                raise SncError(f"host current into {name} exceeds the 24-bit range at this scale "
                               f"(peak {np.abs(x).max():.3g}); recompile with calibration data like these inputs")
            x = scaled.astype(np.int64)
        values[name] = np.broadcast_to(x, (T, batch, n))
    return values


def step_rows(net: Netlist, name: str, first: int, count: int) -> np.ndarray:
    """Indices into a group's per-logical-step values for Lava time steps first..first+count-1."""
    return logical_steps(np.arange(first, first + count), net.groups[name].depth, net.timestep, net.call_steps)


def call_result(net: Netlist, readout: np.ndarray, spikes: dict[str, np.ndarray], batch: int) -> CallResult:
    """A CallResult from one call's per-step readout [L, B, n] and spikes [L, B, n]: the T logical steps."""
    d, T = net.depth, net.timestep
    out = readout[d:d + T].reshape(T, batch, *net.readout.shape)
    if net.mode == "fixed":
        out = out / net.readout.scale
    windows = {}
    for name, s in spikes.items():
        g = net.groups[name]
        windows[name] = s[g.depth:g.depth + T].reshape(T, batch, *g.shape) != 0
    return CallResult(out, windows)


def open_network(source: Union[Graph, Netlist], backend: str, mode: str = "fixed", batch: int = 1,
                 record: bool = False, every_step: bool = False):
    """A LavaNetwork or EmuNetwork (both: ``call``, ``trace``, ``close``, context manager).

    The emulator integrates only the logical windows unless ``every_step``
    (same CallResults, see ``EmuNetwork``); Lava always runs every step.
    """
    if backend == "lava":
        from .lava_backend import LavaNetwork
        return LavaNetwork(source, mode, batch, record)
    if backend == "emu":
        if mode != "fixed":
            raise SncError(f"the emulator runs Lava's fixed_pt semantics only, not {mode}; "
                           "use --backend lava for floating_pt")
        from .emulator import EmuNetwork
        return EmuNetwork(source, batch, record, windows_only=not every_step)
    raise SncError(f"unknown chip backend {backend!r}; available: {', '.join(BACKENDS)}")
