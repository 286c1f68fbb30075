"""Backends behind one protocol (``base.Backend``) and this one registry.

``torch``: the model itself (float reference); ``lava``: Lava's CPU
simulator of Loihi 2; ``emu``: snc's bit-exact emulator of Lava fixed_pt.
A new backend is a module defining ``BACKEND`` and one line in ``BACKENDS``.
Nothing is imported until a backend is asked for (Lava's import alone takes
seconds; the command line lists the names without loading any).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Iterable, Optional

from snc.errors import SncError

if TYPE_CHECKING:
    import torch

    from .base import Backend, NetlistBackend

BACKENDS: dict[str, str] = {
    "torch": "snc.runtime.backends.torch_reference",
    "lava": "snc.runtime.backends.lava",
    "emu": "snc.runtime.backends.emulator",
}


def get_backend(name: str) -> "Backend":
    if name not in BACKENDS:
        raise SncError(f"unknown backend {name!r}; available: {', '.join(BACKENDS)}")
    return importlib.import_module(BACKENDS[name]).BACKEND


def netlist_backend(name: str) -> "NetlistBackend":
    from .base import NetlistBackend

    backend = get_backend(name)
    if not isinstance(backend, NetlistBackend):
        raise SncError(f"backend {name} runs a model, not a netlist")
    return backend


def check_device(device: Optional[str], backends: Iterable[str]) -> Optional["torch.device"]:
    """The torch device of ``--device`` for a command running ``backends`` (None: each backend's default);
    refused when unknown, absent here, or when none of ``backends`` runs on a torch device."""
    if device is None:
        return None
    from .devices import torch_device

    chosen = torch_device(device)
    names = list(dict.fromkeys(backends))
    if not any(get_backend(name).devices for name in names):
        on_devices = [name for name in BACKENDS if get_backend(name).devices]
        raise SncError(f"--device {device}: only {' / '.join(on_devices)} runs on a chosen torch device, "
                       f"not {', '.join(names)}")
    return chosen
