"""Hardware profiles: one data file per target (energy per operation, core limits).

Adding a target is adding ``NAME.toml`` here; nothing in code names a profile.
Sections: ``[energy]`` (pJ per operation and the basis of the figures; read by
``snc.runtime.energy``), ``[resources]`` (core and chip limits; read by the
``map_cores`` pass) and, for compile targets, ``[fixed_point]`` (the ranges
the quantizer must respect).
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


def compile_targets() -> list[str]:
    """Profiles with fixed-point limits: the ones ``snc compile --target`` accepts."""
    return [name for name in available() if "fixed_point" in load_profile(name)]
