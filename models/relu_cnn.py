"""A ReLU CNN digits classifier: the ANN of issue 16's classifier sanity case for ANN-to-SNN conversion
(``tools/ann_classifier.py`` trains it with ``models.quality.train_classifier`` and exports it to ONNX)."""

from __future__ import annotations

import torch
from torch import nn


class ReluCnnClassifier(nn.Module):
    """conv 3x3 (8) + BatchNorm + ReLU, 2x2 average pool, conv 3x3 (16) + ReLU, linear to 10 classes."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.pool = nn.AvgPool2d(2)
        self.conv2 = nn.Conv2d(8, 16, 3, padding=1)
        self.head = nn.Linear(16 * 4 * 4, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.pool(torch.relu(self.bn1(self.conv1(x))))
        return self.head(torch.relu(self.conv2(h)).flatten(1))
