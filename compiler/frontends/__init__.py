"""Frontends: every source a user compiles becomes a ``Deployable`` here.

Sources: an snc checkpoint (``.pt``, dispatched by its ``arch`` to the
family registered for it), a preset (random init), a checkpoint of the
public SDDPM / SDM code (``reference``), a plain ``.nir`` file
(``nir_file``), a lava-dl netx network (``.net`` / ``.h5``: ``netx``). A model family is one module with its exporter and host
program (``unet``, ``mlp``, ``lateral``) and one ``register`` line below;
``base`` declares the contract.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Optional, Union

import torch
from torch import nn

from snc.errors import SncError
from snc.models import build_model
from snc.models import preset as get_preset
from snc.models.checkpoint import load_checkpoint

from . import lateral, mlp, netx, nir_file, reference, spiking_diffusion, unet
from .base import Deployable, Family, HostProgram, Pipeline, PipelineFamily

FAMILIES: dict[str, Family] = {}
PIPELINES: dict[str, PipelineFamily] = {}
NETX_SUFFIXES = (".net", ".h5", ".hdf5")  # lava-dl netx networks


@dataclass(frozen=True)
class GraphOptions:
    """How to read a plain NIR graph (``nir_file``, ``nir_normalise``)."""
    dt: Optional[float] = None  # seconds per step (None: the graph metadata's, else 1e-4 with a warning)
    convention: str = "nir"  # or "norse": what norse 1.1's to_nir writes
    timestep: Optional[int] = None  # T
    calibration: Optional[Any] = None  # the graph input per step [steps, (batch,) *shape] to calibrate on

    def given(self) -> bool:
        return self.convention != "nir" or any(v is not None for v in (self.dt, self.timestep, self.calibration))


def register(family: Family) -> None:
    for arch in family.archs:
        FAMILIES[arch] = family


def register_pipeline(pipeline: PipelineFamily) -> None:
    for arch in pipeline.archs:
        PIPELINES[arch] = pipeline


register(unet.FAMILY)
register(mlp.FAMILY)
register(lateral.FAMILY)
register(lateral.SELECTION)
register(spiking_diffusion.SDID_CORE)
register(spiking_diffusion.DECODER_CORE)
register(spiking_diffusion.ENCODER_CORE)
register_pipeline(spiking_diffusion.PIPELINE)
register_pipeline(spiking_diffusion.AUTOENCODER)


def family_of(arch: str) -> Family:
    if arch not in FAMILIES:
        what = f"{arch!r} is a model of several cores ({', '.join(s for s, _ in PIPELINES[arch].stages)})" \
            if arch in PIPELINES else f"no frontend for architecture {arch!r}"
        raise SncError(f"{what}; single-graph frontends: {', '.join(FAMILIES)}")
    return FAMILIES[arch]


def ann_onnx(path: Path, output: Path) -> Path:
    """The ANN of an snc checkpoint (a family's ANN twin, ``spiking: false``) written as ONNX at ``output``:
    what ``snc convert`` reads."""
    checkpoint = load_checkpoint(path)
    family = family_of(checkpoint.arch)
    if family.ann_onnx is None or getattr(checkpoint.model.config, "spiking", True):
        twins = ", ".join(arch for arch, f in FAMILIES.items() if f.ann_onnx)
        raise SncError(f"{path}: a spiking model ({checkpoint.arch}); snc convert takes an ANN: an ONNX file, or an "
                       f"snc checkpoint of an ANN twin (spiking: false) of {twins}")
    return family.ann_onnx(checkpoint.model, output)


def host_program(arch: str, model: nn.Module, nir_graph) -> HostProgram:
    """The family's host program around ``model`` (as it is: dtype, mode) for its exported ``nir_graph``."""
    return family_of(arch).host(model, nir_graph, arch)


def deployable(model: nn.Module, arch: str, source: str = "", checkpoint: Optional[Path] = None,
               meta: Optional[dict[str, Any]] = None) -> Union[Deployable, Pipeline]:
    """Export ``model`` (eval mode; the graph in its parameters' dtype) and give it its host program, which
    keeps a float64 copy of the model (the host's arithmetic); a pipeline's model, each of its cores."""
    if arch in PIPELINES:
        return Pipeline(arch, {stage: deployable(model, core, f"{source} ({stage})", checkpoint, meta)
                               for stage, core in PIPELINES[arch].stages}, source, checkpoint, dict(meta or {}))
    family = family_of(arch)
    graph = family.export(model, arch)
    host = family.host(copy.deepcopy(model).double().eval(), graph, arch)
    return Deployable(arch, graph, host.config.timestep, host, source, checkpoint, dict(meta or {}))


def load(path: Optional[Path] = None, *, preset: Optional[str] = None, reference_arch: Optional[str] = None,
         reference_config: Optional[Union[Path, Mapping[str, Any]]] = None, weights: str = "net",
         seed: int = 0, graph: Optional[GraphOptions] = None) -> Union[Deployable, Pipeline]:
    """The deployable of a checkpoint (``.pt``: snc's, or the public code's with ``reference_arch``), a
    ``.nir`` file (read with ``graph``'s options) or a preset (random init under ``seed``). Any problem is
    one SncError."""
    if path is None and preset is None:
        raise SncError("give a model (checkpoint .pt or .nir) or --preset NAME")
    if path is not None and preset is not None:
        raise SncError("give a model or --preset NAME, not both")
    if reference_arch is None and (reference_config is not None or weights != "net"):
        raise SncError("--config and --weights describe a checkpoint of the public code: give --arch sddpm|sdm-tsm")
    if reference_arch is not None and (path is None or Path(path).suffix == ".nir"):
        raise SncError("--arch reads a checkpoint (.pt) of the public SDDPM / SDM code; give its path")
    if preset is not None:
        arch, config = get_preset(preset)
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            net = build_model(arch, config).eval()
        return deployable(net, arch, f"preset {preset} (random init)",
                          meta={"preset": preset, "seed": seed, "random_init": True})
    path = Path(path)
    if path.suffix != ".nir" and graph is not None and graph.given():
        raise SncError("--dt, --nir-convention, --timestep and --calibrate describe a NIR graph (.nir)")
    if path.suffix in NETX_SUFFIXES:
        return netx.load(path)
    if path.suffix == ".nir":
        g = graph or GraphOptions()
        return nir_file.load(path, g.dt, g.convention, g.timestep, g.calibration)
    if reference_arch is not None:
        return reference.load(path, reference_arch, reference_config, weights)
    ckpt = load_checkpoint(path)
    return deployable(ckpt.model, ckpt.arch, str(path), checkpoint=path)


__all__ = ["Deployable", "FAMILIES", "Family", "GraphOptions", "HostProgram", "PIPELINES", "Pipeline",
           "PipelineFamily", "deployable", "family_of", "host_program", "lateral", "load", "register",
           "register_pipeline"]
