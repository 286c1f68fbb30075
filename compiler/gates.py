"""Gate tables (``snc.Gate``: paper 000's per-call expert weights) and what they switch off.

A gate table maps every gate key to its values [diffusion steps, T]; a call
at diffusion step k programs row k. The IR (``specialise_selection``) and
the netlist hold such tables; both answer with these functions which gates
are 0 for a whole call and which populations that leaves without input.
"""

from __future__ import annotations

from typing import Callable, Iterable

import numpy as np

from snc.errors import SncError

Gates = dict[str, np.ndarray]  # key -> [T] values of one call
GateTable = dict[str, np.ndarray]  # key -> [diffusion steps, T]


def gates_at(tables: GateTable, step: int) -> Gates:
    """Every gate's values [T] at diffusion step ``step``."""
    steps = next(iter(tables.values())).shape[0] if tables else 0
    if tables and not 0 <= step < steps:
        raise SncError(f"diffusion step {step} outside the gate table's 0..{steps - 1}")
    return {k: v[step] for k, v in tables.items()}


def gates_off(tables: GateTable, step: int) -> set[str]:
    """The gates that are 0 at every inner step of diffusion step ``step``."""
    return {k for k, v in gates_at(tables, step).items() if not np.any(v)}


def switched_off(paths: Iterable[tuple[str, str]], off: set[str], is_population: Callable[[str], bool]) -> set[str]:
    """Populations every spike path into which (``paths``: (target, gate key or "")) passes a gate in ``off``:
    they get no input in that call (their host inputs, an expert's bias, are scaled by the same gate)."""
    if not off:
        return set()
    gates: dict[str, list[str]] = {}
    for dst, gate in paths:
        gates.setdefault(dst, []).append(gate)
    return {p for p, passed in gates.items() if is_population(p) and all(g in off for g in passed)}
