"""Host-side integration of a graph's output: NIR's non-spiking output neurons.

Loihi 2 (and Lava's LIF) emits spikes, not membrane potentials, so a graph
whose Output is fed by a non-spiking neuron (NIR ``LI``, ``I``, ``CubaLI``)
runs that neuron on the host: the chip delivers the summed synaptic current
into the readout every step and the host integrates it. Each stage is one
Euler step of a leaky integrator, per output element:

    y[t] = decay * y[t - 1] + gain * x[t] + bias        (y[-1] = 0)

``LI``: one stage (decay ``1 - dt/tau``, gain ``dt*r/tau``, bias
``dt*v_leak/tau``); ``I``: decay 1, gain ``dt*r``; ``CubaLI``: the synaptic
current, then the voltage. It is host work (two multiply-adds per element and
stage each step), and energy reports count it as such.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch


@dataclass(frozen=True)
class ReadoutFilter:
    decay: np.ndarray  # [*shape] (or broadcastable)
    gain: np.ndarray
    bias: np.ndarray

    def as_dict(self) -> dict[str, list]:
        return {k: np.asarray(getattr(self, k), dtype=np.float64).tolist() for k in ("decay", "gain", "bias")}

    @classmethod
    def from_dict(cls, d: dict) -> "ReadoutFilter":
        return cls(*(np.asarray(d[k], dtype=np.float64) for k in ("decay", "gain", "bias")))


def apply_filters(values: torch.Tensor, filters: Sequence[ReadoutFilter], shape: Sequence[int]) -> torch.Tensor:
    """The filtered readout for values [T, B, *shape] (a new tensor; the input when there is no filter)."""
    for f in filters:
        decay, gain, bias = (torch.as_tensor(np.asarray(a, dtype=np.float64), dtype=values.dtype).expand(*shape)
                             for a in (f.decay, f.gain, f.bias))
        out = torch.empty_like(values)
        y = torch.zeros_like(values[0])
        for t in range(values.shape[0]):
            y = decay * y + gain * values[t] + bias
            out[t] = y
        values = out
    return values


def filter_macs(filters: Sequence[ReadoutFilter], n: int) -> int:
    """Host multiply-accumulates per step of the filters on n output elements."""
    return 2 * n * len(filters)
