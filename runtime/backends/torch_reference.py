"""The torch reference backend: the model itself, the float function every lowering is checked against.

It runs the host program's model (a build's, with the build's threshold
guidance, or a checkpoint's) in ``float32`` (its default: the speed a
torch user samples at) or ``float64`` (what verification and energy counts
compare with). With ``record`` each call's spikes are read from the model's
neuron modules under the graph's population names (``HostProgram.reference``):
there are no relays, and every expert of a gated model is computed.

A call runs the model on ``batch`` images at a time (the last forward holds the rest). Its floats depend on
the forward's batch (and on torch's thread count: different kernels), so the split is part of the result:
``batch`` is given (``--batch``) or, left to snc, ``DEFAULT_BATCH`` images whatever ``-n`` is, so that a
shard of a run (``snc sample --workers``) makes the same forwards as the whole run.
"""

from __future__ import annotations

import copy
from typing import Any, Optional

import numpy as np
import torch

from snc.compiler.frontends.base import HostProgram
from snc.errors import SncError

from .base import Backend, CallResult, Source

DTYPES = {"float32": torch.float32, "float64": torch.float64}
DEFAULT_BATCH = 64  # images per forward when the caller leaves it to snc


class TorchRunner:
    """``host``: the source's host program in the runner's dtype; ``program``: what runs (``host`` with the
    runner's threshold guidance)."""

    runs_netlist = False

    def __init__(self, host: HostProgram, mode: str, record: bool, threshold_scale: float = 1.0,
                 batch: Optional[int] = None) -> None:
        dtype = DTYPES[mode]
        if next(host.model.parameters()).dtype != dtype:  # a copy: the source's host stays as it is
            host = host.with_model(copy.deepcopy(host.model).to(dtype))
        self.host, self.dtype = host, dtype
        self.program = host.guided(threshold_scale) if threshold_scale != 1.0 else host
        self.backend, self.mode, self.record, self.batch = BACKEND.name, mode, record, batch
        self.last: Optional[CallResult] = None

    @torch.no_grad()
    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """eps of the images in forwards of ``batch`` (None: all at once)."""
        x = x.to(self.dtype)  # the sampler's float32 images into a float64 model
        b = self.batch or len(x)
        if not self.record:
            return torch.cat([self.program.forward(x[i:i + b], t[i:i + b]) for i in range(0, len(x), b)])
        eps, spikes = zip(*(self.program.reference(x[i:i + b], t[i:i + b]) for i in range(0, len(x), b)))
        self.last = CallResult(None, {k: np.concatenate([s[k] for s in spikes], axis=1) for k in spikes[0]})
        return torch.cat(eps)

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
    split_batch = DEFAULT_BATCH

    def open(self, source: Source, mode: Optional[str] = None, batch: Optional[int] = None, record: bool = False,
             threshold_scale: float = 1.0, auto_batch: bool = False, **options: Any) -> TorchRunner:
        """The model on ``batch`` images per forward (None: all of a call's); ``auto_batch``: ``batch`` is only
        the most the caller wants (at most ``DEFAULT_BATCH`` then)."""
        host = source.host  # a build without host parts refuses here
        if host is None:  # a deployable of a bare graph
            raise SncError(f"{source.source}: a NIR graph has no model to run on torch")
        if auto_batch and batch is not None:
            batch = min(batch, DEFAULT_BATCH)
        return TorchRunner(host, self.check_mode(mode), record, threshold_scale, batch)


BACKEND = TorchBackend()
