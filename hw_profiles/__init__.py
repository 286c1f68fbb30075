"""Hardware profiles: one data file per chip or accelerator (energy per operation, core limits).

An energy and resource profile is a ``NAME.toml`` here; a compile target is
such a file with a ``[fixed_point]`` section plus its module in
``snc.compiler.targets``. Sections: ``[energy]`` (pJ per operation and the
basis of the figures; read by ``snc.runtime.energy``), ``[resources]`` (core
and chip limits; read by the ``map_cores`` pass) and ``[fixed_point]`` (every
range the target's quantizer and netlist check use, read into
``snc.compiler.targets.fixed_point.FixedPoint``).
"""

from __future__ import annotations

from importlib import resources
from typing import Any

import tomli

from snc.errors import SncError


def available() -> list[str]:
    return sorted(p.name[:-5] for p in resources.files(__name__).iterdir() if p.name.endswith(".toml"))


def load_profile(name: str) -> dict[str, Any]:
    path = resources.files(__name__) / f"{name}.toml"
    if not path.is_file():
        raise SncError(f"unknown profile {name!r}; profiles: {', '.join(available())}")
    try:
        profile = tomli.loads(path.read_text())
    except tomli.TOMLDecodeError as exc:
        raise SncError(f"hardware profile {name}: {exc}") from None
    profile.setdefault("name", name)
    return profile
