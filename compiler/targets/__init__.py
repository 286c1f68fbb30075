"""Compile targets: one module per target, registered here.

A target owns what is particular to a chip: its pass list (the pipeline
the pass manager runs), its fixed-point rules (``FixedPoint``, read from
``hw_profiles/<name>.toml``), its lowering of the compiled IR to the netlist
in each of its arithmetic modes, the range check of a netlist, the
threshold guidance of a compiled netlist and the per-population table of
its compile report. A second target is a new module here defining a
``Target`` subclass as ``TARGET``, a profile file with a ``[fixed_point]``
section, and one line in ``TARGETS``.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any, Sequence

from snc.errors import SncError
from snc.hw_profiles import available, load_profile

from ..netlist import Netlist, raise_problems
from .fixed_point import FixedPoint

if TYPE_CHECKING:
    from ..ir import Graph
    from ..pass_manager import Pass

TARGETS: dict[str, str] = {
    "loihi2": "snc.compiler.targets.loihi2",
}


class Target:
    """What a compile target provides; subclasses fill in each method."""

    name: str = ""
    modes: tuple[str, ...] = ()  # arithmetic modes its backends run; the first is the default

    def __init__(self) -> None:
        self.profile: dict[str, Any] = load_profile(self.name)
        self.rules = FixedPoint.from_profile(self.profile)

    def passes(self) -> Sequence["Pass"]:
        """The pipeline, first pass (the import of the NIR graph) to last (the checks of the netlist)."""
        raise NotImplementedError

    def lower(self, graph: "Graph", mode: str) -> Netlist:
        """The netlist of a compiled graph in ``mode``, range-checked."""
        raise NotImplementedError

    def problems(self, net: Netlist) -> list[str]:
        """Every parameter of ``net`` outside what this target represents."""
        raise NotImplementedError

    def guide(self, net: Netlist, factor: float) -> Netlist:
        """``net`` with threshold guidance ``factor`` applied on top (refused where it rounds away)."""
        raise NotImplementedError

    def layer_rows(self, net: Netlist, weight_errors: dict[str, float]) -> list[dict[str, Any]]:
        """The compile report's table: one row per population of the fixed-point netlist."""
        raise NotImplementedError

    def check(self, net: Netlist) -> None:
        """One SncError listing every structural and range problem of ``net``."""
        if net.target != self.name:
            raise SncError(f"a netlist for {net.target!r}, not {self.name!r}")
        raise_problems(net.problems() + self.problems(net))


def get_target(name: str) -> Target:
    """The registered target ``name``; an unknown name or an energy-only profile is one clear error."""
    if name not in TARGETS:
        if name in available():
            raise SncError(f"{name} is an energy and resource profile, not a compile target "
                           f"(targets: {', '.join(TARGETS)})")
        raise SncError(f"unknown profile {name!r}; profiles: {', '.join(available())}")
    return importlib.import_module(TARGETS[name]).TARGET  # made once, at import: it holds only its profile


def check_netlist(net: Netlist) -> None:
    """Structure and the ranges of the netlist's own target."""
    get_target(net.target).check(net)
