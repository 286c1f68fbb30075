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


class FramesAnn(nn.Module):
    """The layout snc's own ANN twins write (``models/neurons.per_step``): the image repeated over one step
    [T = 1, B, C, H, W], each conv applied to the frames flattened [T * B, ...] and reshaped back, a skip
    concatenated on the channel axis (2) of the 5-d tensor, and a ``view(x.size(0), -1)``: with a dynamic batch,
    torch's exporter writes every reshape's shape as Shape, Gather, Unsqueeze and Concat nodes. ``frames=False``:
    the same network written on [B, C, H, W] tensors."""

    def __init__(self, frames: bool = True) -> None:
        super().__init__()
        self.layout = frames
        self.conv1, self.conv2 = nn.Conv2d(1, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.conv3 = nn.Conv2d(8, 4, 3, padding=1)
        self.fc = nn.Linear(4 * 8 * 8, 10)

    def frames(self, layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
        if not self.layout:
            return layer(x)
        t, b = x.shape[:2]
        y = layer(x.flatten(0, 1))
        return y.reshape(t, b, *y.shape[1:])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        seq = x.unsqueeze(0).repeat(1, 1, 1, 1, 1) if self.layout else x
        h = torch.relu(self.frames(self.conv1, seq))
        h2 = torch.relu(self.frames(self.bn, self.frames(self.conv2, h)))
        h = torch.relu(self.frames(self.conv3, torch.cat([h2, h], dim=2 if self.layout else 1)))
        h = h[0] if self.layout else h
        return self.fc(h.view(h.size(0), -1))


def frames_ann(seed: int = 0, frames: bool = True) -> FramesAnn:
    torch.manual_seed(seed)
    model = FramesAnn(frames)
    with torch.no_grad():
        model.bn.running_mean.uniform_(-0.5, 0.5)
        model.bn.running_var.uniform_(0.5, 2.0)
    return model.eval()


class TinyDenoiser(nn.Module):
    """A diffusion denoiser's shape at its smallest: a time embedding of t (host), added as a bias into the first
    layer of an image core that ends in ``core`` (a second output), and a tail (host: a Tanh, which snc does not
    convert). Its one activation is a Clip with ceiling 1: the SNN's first layer, exact for a constant input,
    so the converted model equals the quantized ANN."""

    def __init__(self) -> None:
        super().__init__()
        self.embedding, self.proj = nn.Embedding(1000, 8), nn.Linear(8, 4)
        self.conv1, self.conv2 = nn.Conv2d(1, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1)
        self.tail = nn.Conv2d(4, 1, 3, padding=1)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        bias = self.proj(nn.functional.silu(self.embedding(t)))[:, :, None, None]
        core = self.conv2(torch.clamp(self.conv1(x) + bias, 0, 1.0))
        return torch.tanh(self.tail(core)), core


def export_denoiser(model: nn.Module, path: Path, dynamic: bool = True, core_output: str = "core") -> Path:
    """``model(x, t) -> (eps, core)`` as ONNX (a dynamic batch unless ``dynamic`` is False), its core output
    named in the metadata as ``snc.core_output``."""
    import onnx

    model.eval()
    x, t = torch.zeros(2 if dynamic else 1, 1, 8, 8), torch.zeros(2 if dynamic else 1, dtype=torch.long)
    axes = {"x": {0: "batch"}, "t": {0: "batch"}, "eps": {0: "batch"}, "core": {0: "batch"}} if dynamic else None
    torch.onnx.export(model, (x, t), str(path), input_names=["x", "t"], output_names=["eps", "core"],
                      dynamic_axes=axes)
    written = onnx.load(str(path))
    onnx.helper.set_model_props(written, {"snc.core_output": core_output, "snc.diffusion_steps": "1000"})
    onnx.save(written, str(path))
    return path
