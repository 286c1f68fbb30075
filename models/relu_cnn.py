"""A ReLU CNN digits classifier (its activation a ReLU or ``neurons.QuantizedReLU``): the ANN
of issue 16's classifier sanity case for ANN-to-SNN conversion (``tools/ann_classifier.py`` trains it with
``models.quality.train_classifier`` and exports it to ONNX)."""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from .neurons import clips_for_export


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
        return clips_for_export(self)
