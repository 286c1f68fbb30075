"""Fine-tuning a converted SNN (SDM section VI's "w ft"): after ``snc convert``, the SNN itself is trained on the
task's own loss with a surrogate gradient, so that it makes up for what conversion loses (deeper layers see
spike trains, not the constant currents the equivalence assumes).

What is trained: the weights and biases of every Affine, Linear and Conv node (BatchNorm and constant adds were
folded into them by the conversion). The thresholds ``s``, the initial membranes ``s/2``, the reset by
subtraction and the T steps stay as the conversion made them, so the result compiles as the unrefined SNN does.
The forward pass is the float NIR reference executor (``compiler/nir_reference``), between the host parts for
a model that has them: the same model ``snc verify`` compares Lava with. Only the spike's gradient is replaced:
the arctangent surrogate (SpikingJelly's ``ATan``, alpha = 2) of ``(v - s) / s``.

The task's loss comes with the data: ``target`` beside the model's inputs, either class labels (integers:
cross-entropy of the SNN's output) or the outputs wanted (floats: mean squared error; for a denoiser, the
noise that made each noisy example, DDPM's loss). Adam, a constant learning rate, minibatches drawn with
``seed``; the loss is measured on the first ``evaluate`` examples before and after.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, fields
from typing import Any

import nir
import numpy as np
import torch
import torch.nn.functional as F

from snc.errors import SncError

from .ann_to_snn import snn_forward
from .nir_reference import NIRReference

ALPHA = 2.0  # the surrogate's sharpness: its derivative at the threshold is alpha / 2 per threshold
TRAINED = {nir.Affine: ("weight", "bias"), nir.Linear: ("weight",), nir.Conv1d: ("weight", "bias"),
           nir.Conv2d: ("weight", "bias")}


class _ArctanSpike(torch.autograd.Function):
    """Forward: ``v > threshold`` exactly (the executor's spike); backward: d/dv of
    ``atan(pi/2 * alpha * u) / pi`` with ``u = (v - threshold) / |threshold|``."""

    @staticmethod
    def forward(ctx: Any, v: torch.Tensor, threshold: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(v, threshold)
        return (v > threshold).to(v.dtype)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        v, threshold = ctx.saved_tensors
        scale = torch.where(threshold == 0, torch.ones_like(threshold), threshold.abs())
        u = (v - threshold) / scale
        return grad * (ALPHA / 2 / (1 + (math.pi / 2 * ALPHA * u) ** 2) / scale), None


def surrogate_spike(v: torch.Tensor, threshold: torch.Tensor) -> torch.Tensor:
    return _ArctanSpike.apply(v, threshold)


@dataclass(frozen=True)
class Finetuned:
    graph: nir.NIRGraph  # the SNN with its trained weights
    steps: int
    lr: float
    batch: int
    examples: int  # training examples
    loss: str  # "cross-entropy" or "mean squared error"
    loss_before: float  # on the first ``evaluated`` examples
    loss_after: float
    evaluated: int
    seconds: float

    def as_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "graph"}


def trainable(graph: nir.NIRGraph) -> dict[str, torch.nn.Parameter]:
    """A float32 parameter per trained field, by ``"<node>.<field>"``."""
    found = {}
    for name, node in graph.nodes.items():
        for field in TRAINED.get(type(node), ()):
            found[f"{name}.{field}"] = torch.nn.Parameter(torch.tensor(np.asarray(getattr(node, field)),
                                                                       dtype=torch.float32))
    return found


def finetune(graph: nir.NIRGraph, inputs: list[np.ndarray], target: np.ndarray, *, steps: int, lr: float = 1e-4,
             batch: int = 32, seed: int = 0, evaluate: int = 256) -> Finetuned:
    """``graph`` (a converted SNN) trained ``steps`` minibatches on ``inputs`` (every model input, [N, ...],
    the image first) toward ``target`` [N, ...] (see the module docstring)."""
    if steps < 1 or batch < 1 or not (math.isfinite(lr) and lr > 0):
        raise SncError(f"fine-tuning needs steps >= 1, batch >= 1 and a finite lr > 0 (got {steps}, {batch}, {lr})")
    count = len(target)
    if any(len(x) != count for x in inputs):
        raise SncError(f"the fine-tuning target has {count} examples, the inputs {[len(x) for x in inputs]}")
    classes = target.dtype.kind in "iu"
    if not classes and (target.dtype.kind != "f" or not np.isfinite(target).all()):
        raise SncError("the fine-tuning target must be class labels (integers) or finite float outputs")
    params = trainable(graph)
    if not params:
        raise SncError("the SNN has no weights to fine-tune")
    forward = snn_forward(graph, NIRReference(graph, parameters=params, spike=surrogate_spike), torch.float32)
    xs = [torch.from_numpy(np.asarray(x)) for x in inputs]
    xs = [x.float() if x.is_floating_point() else x for x in xs]
    y = torch.from_numpy(np.asarray(target))
    y = y.long() if classes else y.float()

    def loss_of(index: torch.Tensor) -> torch.Tensor:
        out, _ = forward([x[index] for x in xs])
        if classes:
            return F.cross_entropy(out.reshape(len(index), -1), y[index])
        return F.mse_loss(out.reshape(y[index].shape), y[index])

    def measured() -> float:
        with torch.no_grad():
            chunks = torch.arange(min(evaluate, count)).split(batch)
            return float(sum(loss_of(c) * len(c) for c in chunks) / min(evaluate, count))

    start = time.perf_counter()
    before = measured()
    optimiser = torch.optim.Adam(params.values(), lr=lr)
    generator = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        optimiser.zero_grad()
        loss = loss_of(torch.randint(0, count, (min(batch, count),), generator=generator))
        if not torch.isfinite(loss):
            raise SncError("fine-tuning diverged (the loss is not finite); try a smaller --finetune-lr")
        loss.backward()
        optimiser.step()
    after = measured()
    tuned = copy.deepcopy(graph)
    for key, value in params.items():
        name, field = key.rsplit(".", 1)  # node names may hold dots, field names do not
        node = tuned.nodes[name]
        setattr(node, field, value.detach().numpy().astype(np.asarray(getattr(node, field)).dtype))
    tuned.metadata = dict(tuned.metadata) | {"snc.finetune": f"{steps} steps, lr {lr}, batch {batch}, "
                                             f"{'cross-entropy' if classes else 'mean squared error'}"}
    return Finetuned(tuned, steps, lr, min(batch, count), count, "cross-entropy" if classes else "mean squared error",
                     before, after, min(evaluate, count), round(time.perf_counter() - start, 1))
