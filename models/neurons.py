"""Multi-step spiking neurons with surrogate gradients.

All spiking modules take sequences shaped ``[T, B, ...]`` (T spiking steps
first) and keep no state between calls: every forward starts from v = 0,
which is what one denoiser call of a spiking diffusion model needs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from typing import Optional

import torch
from torch import nn


class _ATanSpike(torch.autograd.Function):
    """Heaviside step forward, arctan surrogate backward (as SpikingJelly's ATan)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, alpha: float, fire_at_zero: bool) -> torch.Tensor:
        ctx.save_for_backward(x)
        ctx.alpha = alpha
        return (x >= 0).to(x.dtype) if fire_at_zero else (x > 0).to(x.dtype)

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        (x,) = ctx.saved_tensors
        alpha = ctx.alpha
        grad = alpha / 2 / (1 + (math.pi / 2 * alpha * x).pow(2))
        return grad_out * grad, None, None


@dataclass(frozen=True)
class NeuronConfig:
    """Integrate-and-fire neuron parameters.

    ``decay`` = 1.0 is the papers' IF neuron (no leak); below 1.0 the membrane
    leaks as ``v = decay * v + x`` (a discrete LIF). ``fire_at_threshold``
    selects ``v >= threshold`` (SpikingJelly, the public SDDPM code) instead of
    the strict ``v > threshold`` that NIR and Lava use.
    """

    threshold: float = 1.0
    decay: float = 1.0
    fire_at_threshold: bool = False
    surrogate_alpha: float = 2.0
    # the ANN twin's activation: None a ReLU; b: eq. 21's QuantizedReLU of b bits (its threshold, starting at
    # ``threshold``, learned: QCFS training for ANN-to-SNN conversion)
    ann_bits: Optional[int] = None


def fire(v: torch.Tensor, config: NeuronConfig) -> torch.Tensor:
    """Spikes (0/1) of membrane potentials v under ``config``'s threshold test, with its surrogate gradient."""
    return _ATanSpike.apply(v - config.threshold, config.surrogate_alpha, config.fire_at_threshold)


class IFNeuron(nn.Module):
    """Integrate-and-fire (optionally leaky) neuron with hard reset to 0."""

    def __init__(self, config: NeuronConfig = NeuronConfig()) -> None:
        super().__init__()
        if not 0.0 < config.decay <= 1.0:
            raise ValueError(f"neuron decay must be in (0, 1], got {config.decay}")
        self.config = config

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        cfg = self.config
        v = torch.zeros_like(x[0])
        spikes = []
        for x_t in x:
            v = cfg.decay * v + x_t
            s = fire(v, cfg)
            v = v * (1.0 - s)  # hard reset to 0
            spikes.append(s)
        return torch.stack(spikes)

    def extra_repr(self) -> str:
        c = self.config
        return f"threshold={c.threshold}, decay={c.decay}, fire_at_threshold={c.fire_at_threshold}"


class LIFNeuron(nn.Module):
    """SpikingJelly's ``LIFNode`` at its defaults (the public Spiking-Diffusion code's neuron): the input is
    decayed with the membrane, ``H = V + (X - V) / tau`` (NIR's LIF with dt = 1, r = 1, v_leak = 0); a
    spike where ``H >= threshold``; hard reset of ``H`` to 0. Computed in that order, as SpikingJelly
    does, so that the same floats come out. Multi-step: ``[T, B, ...]`` in and out, v = 0 at every call."""

    def __init__(self, tau: float = 2.0, threshold: float = 1.0, surrogate_alpha: float = 2.0) -> None:
        super().__init__()
        if not tau >= 1.0:
            raise ValueError(f"LIF tau must be >= 1 (a decay in [0, 1)), got {tau}")
        self.tau = tau
        self.config = NeuronConfig(threshold=threshold, fire_at_threshold=True, surrogate_alpha=surrogate_alpha)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        v = torch.zeros_like(x[0])
        spikes = []
        for x_t in x:
            h = v + (x_t - v) / self.tau
            s = fire(h, self.config)
            v = h * (1.0 - s)
            spikes.append(s)
        return torch.stack(spikes)

    def extra_repr(self) -> str:
        return f"tau={self.tau}, threshold={self.config.threshold}"


class SpikeAnd(nn.Module):
    """Logical AND of two spike tensors (broadcasting): for 0/1 spikes their product.

    A module of its own so that the products of spike-driven attention are a
    named, observable stage of the model, like its neurons.
    """

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return a * b


def scale_thresholds(model: nn.Module, factor: float) -> nn.Module:
    """Threshold guidance (SDDPM 4.3): every spiking neuron's threshold times ``factor``, in place."""
    if not 0 < factor < float("inf"):
        raise ValueError(f"threshold scale must be a positive finite number, got {factor}")
    for module in model.modules():
        if isinstance(module, (IFNeuron, LIFNeuron)):
            module.config = replace(module.config, threshold=module.config.threshold * factor)
    return model


class Swish(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(x)


def per_step(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Apply a stateless per-frame module to a ``[T, B, ...]`` sequence."""
    t, b = x.shape[:2]
    y = module(x.flatten(0, 1))
    return y.reshape(t, b, *y.shape[1:])


def make_activation(spiking: bool, config: NeuronConfig) -> nn.Module:
    """The spiking neuron, or for the non-spiking (ANN) twin of a model a ReLU (quantized with ``ann_bits``)."""
    if spiking:
        return IFNeuron(config)
    return QuantizedReLU(config.ann_bits, config.threshold) if config.ann_bits else nn.ReLU()


class QuantizedReLU(nn.Module):
    """Eq. 21 of SDM with a learned clipping threshold ``s`` (QCFS, Bu et al. 2022): ``s/L * clip(floor(L x / s
    + 1/2), 0, L)`` with ``L = 2^bits - 1`` levels; the rounding passes its gradient straight through, so ``s``
    learns where the activation saturates. For export it is ``clamp(x, 0, s)`` (``as_clip``): ONNX's Clip
    from 0, whose ceiling snc's converter takes as the layer's threshold."""

    def __init__(self, bits: int, threshold: float = 1.0) -> None:
        super().__init__()
        self.levels = 2 ** bits - 1
        self.threshold = nn.Parameter(torch.tensor(float(threshold)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scaled = torch.clamp(x / self.threshold, 0, 1) * self.levels
        rounded = scaled + (torch.floor(scaled + 0.5) - scaled).detach()  # straight-through rounding
        return rounded * self.threshold / self.levels

    def as_clip(self) -> nn.Module:
        return nn.Hardtanh(0.0, float(self.threshold))


def clips_for_export(model: nn.Module) -> nn.Module:
    """``model`` with every ``QuantizedReLU`` replaced by its Clip (what an ONNX file of it holds), in place."""
    for name, module in list(model.named_children()):
        if isinstance(module, QuantizedReLU):
            setattr(model, name, module.as_clip())
        else:
            clips_for_export(module)
    return model
