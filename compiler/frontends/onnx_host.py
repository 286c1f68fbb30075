"""The host program of an ANN converted with host parts (``snc convert`` of an ONNX model whose spiking core was
cut out of it: ``onnx_ann.HostParts``), e.g. a diffusion U-Net whose time embedding and tail stay on the host.

The converted NIR graph carries what the host needs in its metadata (so the ``.nir`` file and a build's
``graph.nir`` are self-contained): ``snc.host`` (JSON: the cut, and which graph input each host tensor feeds),
``snc.host.head`` / ``snc.host.tail`` (the ONNX parts, bytes), ``snc.diffusion_steps``. The parts run as
onnx2torch modules in float64:

- the head maps the model's inputs (x, t) to the host tensors; each enters the core as a current every step
  (a graph input ``host.<node>``), broadcast to the shape of the sum it is added to;
- the image enters as ``input``, the same every step (direct encoding);
- the graph's output is the integrator over the call (the core output's mean); the tail maps it, in the
  model's layout, to the model's output.

The torch reference of such a build (``--backend torch``, verification) is the NIR graph run by the float
reference executor (``compiler.nir_reference``) between the same head and tail: the model the conversion
made, in float.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Callable, Optional

import nir
import numpy as np
import torch
from torch import nn

from snc.errors import SncError

from ..nir_reference import NIRReference
from .base import HostProgram

DEFAULT_DIFFUSION_STEPS = 1000  # DDPM's, when the ONNX file does not say (metadata snc.diffusion_steps)


@dataclass(frozen=True)
class HostConfig:
    """What the samplers and the compile-time calibration read of a model."""
    img_ch: int
    img_size: int
    timestep: int
    diffusion_steps: int


def has_host(graph: nir.NIRGraph) -> bool:
    return "snc.host" in (graph.metadata or {})


class ConvertedModel(nn.Module):
    """Head, converted core (float reference executor) and tail: ``forward(x, t)`` is the model's output."""

    def __init__(self, graph: nir.NIRGraph, info: dict[str, Any], head: Optional[nn.Module],
                 tail: Optional[nn.Module], config: HostConfig) -> None:
        super().__init__()
        self.head, self.tail, self.info, self.config = head, tail, info, config
        self.graph = graph
        self.anchor = nn.Parameter(torch.zeros(()), requires_grad=False)  # the model's dtype, with no part

    @property
    def batch_fixed(self) -> bool:
        return self.info["static_batch"] is not None

    def _examples(self, x: torch.Tensor, t: torch.Tensor) -> list[torch.Tensor]:
        values = {self.info["core_input"]: x}
        others = [name for name in self.info["inputs"] if name != self.info["core_input"]]
        if len(others) > 1:
            raise SncError(f"the converted model takes {', '.join(self.info['inputs'])}: snc feeds an image and "
                           "a diffusion step")
        for name in others:
            values[name] = t.to(getattr(torch, self.info["inputs"][name]["dtype"]))
        return [values[name] for name in self.info["inputs"]]

    def host_tensors(self, x: torch.Tensor, t: torch.Tensor) -> dict[str, torch.Tensor]:
        """Every graph input but ``input``: [B, *its shape], the head's tensors as the core adds them."""
        if self.head is None:
            return {}
        if self.batch_fixed:  # a file exported at a fixed batch: one example at a time
            per = [self.host_tensors_at(x[i:i + 1], t[i:i + 1]) for i in range(len(x))]
            return {k: torch.cat([p[k] for p in per]) for k in per[0]}
        return self.host_tensors_at(x, t)

    def host_tensors_at(self, x: torch.Tensor, t: torch.Tensor) -> dict[str, torch.Tensor]:
        outs = self.head(*self._examples(x, t))
        outs = dict(zip(self.info["host_tensors"], outs if isinstance(outs, (tuple, list)) else [outs]))
        batch, found = len(x), {}
        for entry, use in self.info["host_inputs"].items():
            value, target = outs[use["tensor"]], list(self.info["full_shapes"][use["sum"]])
            shape = tuple(int(v) for v in self.graph.nodes[entry].input_type["input"])
            axis = -1 if self.batch_fixed else self.info["batch_axes"][use["tensor"]]
            if axis < 0:  # the same for every example
                found[entry] = torch.broadcast_to(value, target).reshape(1, *shape).expand(batch, *shape)
                continue
            at = axis + len(target) - value.dim()  # broadcasting aligns the shapes from the right
            target[at] = batch
            found[entry] = torch.broadcast_to(value, target).movedim(at, 0).reshape(batch, *shape)
        return found

    def decode(self, core: torch.Tensor, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The model's output from the core output's mean [B, *shape] (its graph's output shape)."""
        if self.tail is None:
            return core
        if self.batch_fixed:
            return torch.cat([self.decode_at(core[i:i + 1], x[i:i + 1], t[i:i + 1]) for i in range(len(x))])
        return self.decode_at(core, x, t)

    def decode_at(self, core: torch.Tensor, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        full = list(self.info["full_shapes"][self.info["core_output"]])
        axis = 0 if self.batch_fixed else self.info["batch_axes"][self.info["core_output"]]
        rest = full[:axis] + full[axis + 1:]
        value = core.reshape(len(core), *rest).movedim(0, axis)
        out = self.tail(value, *self._examples(x, t))
        return out[0] if isinstance(out, (tuple, list)) else out

    def core_inputs(self, x: torch.Tensor, t: torch.Tensor) -> dict[str, torch.Tensor]:
        """[T, B, *shape] of every graph input."""
        steps = self.config.timestep
        shape = tuple(int(v) for v in self.graph.nodes["input"].input_type["input"])
        inputs = {"input": x.reshape(len(x), *shape)}
        inputs.update(self.host_tensors(x, t))
        return {k: v.unsqueeze(0).expand(steps, *v.shape) for k, v in inputs.items()}

    def run(self, x: torch.Tensor, t: torch.Tensor, record: bool = False,
            core: Optional[NIRReference] = None) -> tuple[torch.Tensor, dict]:
        """The model's output and the core's run; ``core``: its executor (default: the graph's, as it is)."""
        run = (core or NIRReference(self.graph)).run(self.core_inputs(x, t), record=record)
        return self.decode(run["output"][-1], x, t), run

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.run(x, t)[0]


class ConvertedHost(HostProgram):
    """The host program around a ``ConvertedModel`` (see the module docstring)."""

    kept_in_graph = True

    def core_inputs(self, x: torch.Tensor, t: torch.Tensor, gates: Any) -> dict[str, torch.Tensor]:
        return self.model.core_inputs(x, t)

    def decode(self, readout: torch.Tensor, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The model's output from the graph's output per logical step [T, B, *shape]: the integrator's value
        after the last step (the mean over the call) through the tail."""
        return self.model.decode(readout[-1], x, t)

    @torch.no_grad()
    def reference(self, x: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, dict[str, np.ndarray]]:
        eps, run = self.model.run(x.to(self.model.anchor.dtype), t, record=True)
        spikes = {name: run[name].numpy() != 0 for name, node in self.nir_graph.nodes.items()
                  if isinstance(node, (nir.IF, nir.LIF))}
        return eps, spikes

    def host_work(self, specialised: bool = True) -> dict[str, Callable[[], Any]]:
        cfg = self.config
        dtype = self.model.anchor.dtype
        x = torch.zeros((1, cfg.img_ch, cfg.img_size, cfg.img_size), dtype=dtype)
        t = torch.full((1,), cfg.diffusion_steps // 2, dtype=torch.long)
        out = torch.zeros((1, *self.output_shape), dtype=dtype)
        parts = {}
        if self.model.head is not None:
            parts["head"] = lambda: self.model.host_tensors(x, t)
        if self.model.tail is not None:
            parts["tail"] = lambda: self.model.decode(out, x, t)
        return parts

    def guided(self, factor: float) -> "HostProgram":
        raise SncError("threshold guidance is not offered for converted ANNs (their thresholds are eq. 21's s)")

    def ann_twin(self) -> "HostProgram":
        """The host parts are the ANN's own; the core's ANN MACs are its layers'."""
        return self


def program(graph: nir.NIRGraph, arch: str = "converted-ann") -> ConvertedHost:
    """The host program of a converted graph (``has_host``), its parts read from the graph's metadata."""
    from .onnx_ann import torch_module

    import onnx

    meta = graph.metadata
    try:
        info = json.loads(str(meta["snc.host"]))
        parts = {}
        for part in ("head", "tail"):
            blob = meta.get(f"snc.host.{part}")
            parts[part] = None if blob is None else \
                torch_module(onnx.load_from_string(np.asarray(blob, dtype=np.uint8).tobytes()), f"the {part}")
        shape = tuple(int(v) for v in graph.nodes["input"].input_type["input"])
    except (KeyError, ValueError, TypeError) as exc:
        raise SncError(f"the graph's host parts (metadata snc.host) are unreadable: {type(exc).__name__}: {exc}") \
            from None
    if len(shape) != 3 or shape[1] != shape[2]:
        raise SncError(f"a converted diffusion model takes square images [C, H, W], not {list(shape)}")
    config = HostConfig(shape[0], shape[1], int(np.asarray(meta["snc.timestep"]).item()),
                        int(np.asarray(meta.get("snc.diffusion_steps", DEFAULT_DIFFUSION_STEPS)).item()))
    model = ConvertedModel(graph, info, parts["head"], parts["tail"], config).double().eval()
    return ConvertedHost(model, graph, arch)
