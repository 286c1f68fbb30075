"""Torch devices for the backends that compute with torch tensors (``--device``), and the float settings under
which the emulator's float32 sums stay exact on any of them.

A backend lists the device types it runs on in ``Backend.devices`` (the emulator: cpu and cuda); ``--device``
moves those backends there and leaves the others (the float torch reference, Lava) where they run; a command
none of whose backends has a device refuses it.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch

from snc.errors import SncError

DEVICE_TYPES = ("cpu", "cuda")


def torch_device(name: str) -> torch.device:
    """The device ``--device name`` names (cpu, cuda or cuda:N), refused when unknown or absent here."""
    try:
        device = torch.device(name)
    except RuntimeError:
        device = None
    if device is None or device.type not in DEVICE_TYPES:
        raise SncError(f"--device must be cpu, cuda or cuda:N, not {name!r}")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            why = "built without CUDA" if torch.version.cuda is None else "finds no GPU"
            raise SncError(f"--device {name}: no CUDA device (torch {torch.__version__} {why})")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise SncError(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return device


@contextmanager
def exact_float_ops() -> Iterator[None]:
    """Within: float matrix products and convolutions multiply and add their operands as IEEE floats.

    On CUDA, cuBLAS may round float32 operands to TF32 (10-bit mantissas) on Ampere and later, and cuDNN
    may pick FFT or Winograd convolutions, which transform the operands (not exact on integers); here
    matrix products run at "highest" float32 precision and convolutions without cuDNN (torch's own:
    im2col and a cuBLAS product). The previous settings are restored on exit: the settings are
    process-wide, so torch work on other threads meanwhile runs under them too.
    """
    precision = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")
    try:
        with torch.backends.cudnn.flags(enabled=False, allow_tf32=False):
            yield
    finally:
        torch.set_float32_matmul_precision(precision)
