"""ONNX files as users make them: torch ANNs exported with torch's own exporter (``torch.onnx.export``)."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn


class ConvAnn(nn.Module):
    """Every op snc converts that torch's exporter writes from ordinary layers: Conv, BatchNormalization (kept
    when exported in training mode), Relu, Clip, Add, Concat, Resize, AveragePool, GlobalAveragePool,
    Flatten, Gemm."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.bn = nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4)
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1)
        self.up, self.pool = nn.Upsample(scale_factor=2, mode="nearest"), nn.AvgPool2d(2)
        self.fc = nn.Linear(8 * 8 * 8 + 8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.bn(self.conv1(x)))
        h2 = torch.clamp(self.conv2(h), 0, 1.5)
        h = torch.cat([h + h2, h2], 1)
        pooled = nn.functional.adaptive_avg_pool2d(h, 1).flatten(1)
        return self.fc(torch.cat([self.pool(self.up(h)).flatten(1), pooled], 1))


def export(model: nn.Module, path: Path, shape: tuple[int, ...] = (1, 8, 8), **kwargs) -> Path:
    """``model`` (eval mode, BatchNorm folded by the exporter) as an ONNX file with a dynamic batch."""
    model.eval()
    torch.onnx.export(model, torch.zeros(2, *shape), str(path), input_names=["x"], output_names=["y"],
                      dynamic_axes={"x": {0: "batch"}, "y": {0: "batch"}}, **kwargs)
    return path


def conv_ann(seed: int = 0) -> ConvAnn:
    torch.manual_seed(seed)
    model = ConvAnn()
    with torch.no_grad():
        model.bn.running_mean.uniform_(-0.5, 0.5)
        model.bn.running_var.uniform_(0.5, 2.0)
    return model.eval()
