"""Firing rates of a trained spiking model, given to an untrained one by calibrating its BatchNorm.

A randomly initialised spiking U-Net fires rarely (``cifar10-sddpm``: 0.47 % of neuron-steps, the mean over
its spiking layers on the compiler's calibration inputs): its
BatchNorm layers hold their initial statistics (mean 0, variance 1: the identity), so the small outputs
of Kaiming-initialised convs seldom reach a threshold of 1. Trained SDDPM networks fire at roughly
15-25 %, and spike counts set both the energy and the event-driven cost of running a model, so a
benchmark of an untrained model should fire like a trained one. ``calibrate_firing_rate`` does what
training does to BatchNorm, without training the weights:

1. every BatchNorm's running statistics are measured on calibration inputs (one pass in train mode with
   a cumulative average, ``momentum=None``), so each normalises its conv's output to unit variance;
2. every BatchNorm's shift (``bias``, beta) is then set to one common value ``b``, found by bisection so
   that the mean firing rate over all spiking layers is ``target`` on the same inputs.

The result is an ordinary model of the same architecture (only BatchNorm buffers and biases change),
so it compiles, runs and is priced like any checkpoint. Deterministic for given inputs.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from .neurons import IFNeuron, LIFNeuron

Forward = Callable[[nn.Module], object]  # runs the model on the calibration inputs


def spike_rates(model: nn.Module, forward: Forward) -> dict[str, float]:
    """The fraction of neuron-steps that spike, per spiking layer, over one ``forward(model)``."""
    counts: dict[str, list[float]] = {}
    hooks = []
    for name, module in model.named_modules():
        if isinstance(module, (IFNeuron, LIFNeuron)):
            def record(_m, _inputs, out, name=name):
                total = counts.setdefault(name, [0.0, 0.0])
                total[0] += float(out.sum())
                total[1] += out.numel()
            hooks.append(module.register_forward_hook(record))
    try:
        with torch.no_grad():
            forward(model)
    finally:
        for h in hooks:
            h.remove()
    return {name: spikes / steps for name, (spikes, steps) in counts.items()}


def _batchnorms(model: nn.Module) -> list[nn.BatchNorm2d]:
    return [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]


def calibrate_firing_rate(model: nn.Module, forward: Forward, target: float = 0.2, iterations: int = 20,
                          tolerance: float = 0.005) -> dict[str, float]:
    """Set the BatchNorm statistics and a common BatchNorm shift so that ``model`` fires at a mean rate of
    ``target`` on ``forward``'s inputs (see the module docstring); returns the per-layer rates it reaches.
    The model is left in eval mode."""
    if not 0.0 < target < 1.0:
        raise ValueError(f"target firing rate must be in (0, 1), got {target}")
    norms = _batchnorms(model)
    if not norms:
        raise ValueError("the model has no BatchNorm2d layer to calibrate")
    momenta = [bn.momentum for bn in norms]
    for bn in norms:
        bn.reset_running_stats()
        bn.momentum = None  # a cumulative average over the calibration pass
    model.train()
    try:
        with torch.no_grad():
            forward(model)
    finally:
        for bn, momentum in zip(norms, momenta):
            bn.momentum = momentum
        model.eval()

    def mean_rate(shift: float) -> tuple[float, dict[str, float]]:
        with torch.no_grad():
            for bn in norms:
                bn.bias.fill_(shift)
        rates = spike_rates(model, forward)
        return sum(rates.values()) / len(rates), rates

    low, high = -4.0, 4.0  # shifts in units of a normalised activation's standard deviation
    for _ in range(iterations):
        shift = (low + high) / 2
        rate, rates = mean_rate(shift)
        if abs(rate - target) <= tolerance:
            break
        low, high = (shift, high) if rate < target else (low, shift)
    return rates
