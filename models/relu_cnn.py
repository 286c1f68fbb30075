"""A ReLU CNN digits classifier, and the quantized activation that trains its clipping thresholds: the ANN
of issue 16's classifier sanity case for ANN-to-SNN conversion (``tools/ann_classifier.py`` trains it with
``models.quality.train_classifier`` and exports it to ONNX)."""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn


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


class ReluCnnClassifier(nn.Module):
    """conv 3x3 (8) + BatchNorm + activation, 2x2 average pool, conv 3x3 (16) + activation, linear to 10
    classes; ``activation``: ``nn.ReLU`` (the ANN) or ``QuantizedReLU`` of some bits."""

    def __init__(self, activation: Callable[[], nn.Module] = nn.ReLU) -> None:
        super().__init__()
        self.conv1, self.bn1, self.act1 = nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), activation()
        self.pool = nn.AvgPool2d(2)
        self.conv2, self.act2 = nn.Conv2d(8, 16, 3, padding=1), activation()
        self.head = nn.Linear(16 * 4 * 4, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.pool(self.act1(self.bn1(self.conv1(x))))
        return self.head(self.act2(self.conv2(h)).flatten(1))

    def for_export(self) -> "ReluCnnClassifier":
        """The same network with every ``QuantizedReLU`` as its Clip (what the ONNX file holds)."""
        for name, module in list(self.named_children()):
            if isinstance(module, QuantizedReLU):
                setattr(self, name, module.as_clip())
        return self
