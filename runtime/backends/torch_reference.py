"""The torch reference backend: the model itself, the float function every lowering is checked against.

It runs the host program's model (a build's, with the build's threshold
guidance, or a checkpoint's) in ``float32`` (its default: the speed a
torch user samples at) or ``float64`` (what verification and energy counts
compare with). With ``record`` each call's spikes are read from the model's
neuron modules under the graph's population names (``HostProgram.reference``):
there are no relays, and every expert of a gated model is computed.
"""

from __future__ import annotations

import copy
from typing import Any, Optional

import torch

from snc.compiler.frontends.base import HostProgram
from snc.errors import SncError

from .base import Backend, CallResult, Source

DTYPES = {"float32": torch.float32, "float64": torch.float64}


class TorchRunner:
    """``host``: the source's host program in the runner's dtype; ``program``: what runs (``host`` with the
    runner's threshold guidance)."""

    runs_netlist = False

    def __init__(self, host: HostProgram, mode: str, record: bool, threshold_scale: float = 1.0) -> None:
        dtype = DTYPES[mode]
        if next(host.model.parameters()).dtype != dtype:  # a copy: the source's host stays as it is
            host = host.with_model(copy.deepcopy(host.model).to(dtype))
        self.host, self.dtype = host, dtype
        self.program = host.guided(threshold_scale) if threshold_scale != 1.0 else host
        self.backend, self.mode, self.record = BACKEND.name, mode, record
        self.last: Optional[CallResult] = None

    @torch.no_grad()
    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        x = x.to(self.dtype)  # the sampler's float32 images into a float64 model
        if not self.record:
            return self.program.forward(x, t)
        eps, spikes = self.program.reference(x, t)
        self.last = CallResult(None, spikes)
        return eps

    def close(self) -> None:
        """Nothing to release."""

    def __enter__(self) -> "TorchRunner":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class TorchBackend(Backend):
    name = "torch"
    modes = ("float32", "float64")
    default_mode = "float32"
    description = "the torch model (float reference)"

    def open(self, source: Source, mode: Optional[str] = None, batch: int = 1, record: bool = False,
             threshold_scale: float = 1.0, **options: Any) -> TorchRunner:
        host = source.host  # a build without host parts refuses here
        if host is None:  # a deployable of a bare graph
            raise SncError(f"{source.source}: a NIR graph has no model to run on torch")
        return TorchRunner(host, self.check_mode(mode), record, threshold_scale)


BACKEND = TorchBackend()
