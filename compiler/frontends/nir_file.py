"""Plain NIR graphs, from a ``.nir`` file or in memory: a graph without host parts.

The file is read with snc's reader (NIR's primitives, nested subgraphs and
snc's extension nodes; every unknown node listed in one error) and made into
the flat, typed graph snc compiles by ``nir_normalise`` (the frameworks'
exporter quirks, dt and parameter conventions: see there). NIR stores no
number of spiking steps: T is ``timestep``, else the graph metadata's
``snc.timestep``, else the steps of the calibration input, else 1. A build of
a graph without per-step parameters runs any number of steps (``snc run``
sets its T to the input's); sampling and verification need a model.

Calibration: ``calibration`` holds the graph's input per step
``[steps, batch, *input_shape]`` (what ``snc run`` will be fed); the compiler
picks each population's fixed-point scale from the float run on it.

A graph ``snc convert`` made from an ANN with host parts carries them in its metadata (``onnx_host``): it
loads with its host program, and compiles, samples and verifies as a model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import nir
import numpy as np
import torch

from snc.errors import SncError
from snc.models.presets import MAX_TIMESTEP

from ..nir_io import read_graph
from ..nir_normalise import normalise
from ..pass_manager import CalibrationCall
from . import onnx_host
from .base import Deployable


def load(path: Path, dt: Optional[float] = None, convention: str = "nir", timestep: Optional[int] = None,
         calibration: Optional[np.ndarray] = None) -> Deployable:
    """The deployable of a ``.nir`` file (see the module docstring)."""
    warnings: list[str] = []
    graph = read_graph(path, warnings)
    return from_graph(graph, str(path), dt, convention, timestep, calibration, warnings)


def from_graph(graph: nir.NIRGraph, source: str = "NIR graph", dt: Optional[float] = None, convention: str = "nir",
               timestep: Optional[int] = None, calibration: Optional[np.ndarray] = None,
               warnings: Optional[list[str]] = None) -> Deployable:
    """The deployable of an in-memory NIR graph, e.g. what a framework's exporter returned."""
    normalised = normalise(graph, dt, convention)
    flat = normalised.graph
    inputs = list(flat.inputs)
    meta_steps = flat.metadata.get("snc.timestep")
    if calibration is not None:
        calibration = shaped_input(calibration, flat)
    if timestep is not None:
        steps = timestep
    elif meta_steps is not None:
        steps = meta_steps
    else:
        steps = calibration.shape[0] if calibration is not None else 1
    if isinstance(steps, (np.integer, np.floating)) or (isinstance(steps, np.ndarray) and steps.size == 1):
        steps = np.asarray(steps).item()
    if isinstance(steps, bool) or not isinstance(steps, (int, float)) or steps != int(steps) \
            or not 1 <= steps <= MAX_TIMESTEP:
        where = "--timestep" if timestep is not None else "the graph metadata's snc.timestep" \
            if meta_steps is not None else "the calibration input's steps"
        raise SncError(f"{where}: T must be a whole number of spiking steps in 1..{MAX_TIMESTEP}, not {steps!r}")
    steps = int(steps)
    if calibration is not None and calibration.shape[0] != steps:
        raise SncError(f"the calibration input has {calibration.shape[0]} steps, T is {steps}")
    host = None
    if onnx_host.has_host(flat):  # an ANN converted with host parts (snc convert): they come with the graph
        if calibration is not None:
            raise SncError(f"{source} is a converted model with host parts: it calibrates on its own data "
                           "(give no --calibrate)")
        host = onnx_host.program(flat)
    deployable = Deployable(str(flat.metadata.get("snc.arch", "converted-ann" if host else "")), flat, int(steps),
                            host, source=source, dt=normalised.dt,
                            warnings=[*(warnings or []), *normalised.warnings])
    if calibration is not None:
        data = {inputs[0]: torch.as_tensor(calibration, dtype=torch.float64)}
        deployable.calibration_calls = [CalibrationCall(None, lambda gates: data)]
    return deployable


def input_shape(graph: nir.NIRGraph) -> tuple[int, ...]:
    """The shape of the graph's one Input node (without steps and batch)."""
    if len(graph.inputs) != 1:
        raise SncError(f"snc runs graphs with one Input node; this one has {len(graph.inputs)}")
    node = next(iter(graph.inputs.values()))
    return tuple(int(v) for v in np.asarray(node.input_type["input"]))


def shaped_input(x: np.ndarray, graph: nir.NIRGraph) -> np.ndarray:
    """A graph input per step as [steps, batch, *input_shape] from [steps, *input_shape] (batch 1) or
    [steps, batch, *input_shape]; one SncError if it is neither or not finite."""
    shape = input_shape(graph)
    x = np.asarray(x)
    if x.dtype.kind not in "biuf":
        raise SncError(f"the input must be numbers (spikes or currents), not {x.dtype}")
    x = x.astype(np.float64)
    if x.shape[1:] == shape:
        x = x[:, None]
    elif x.ndim != len(shape) + 2 or x.shape[2:] != shape:
        n = int(np.prod(shape))
        if x.ndim == 3 and x.shape[2] == n:
            x = x.reshape(x.shape[0], x.shape[1], *shape)
        else:
            raise SncError(f"the input has shape {x.shape}; the graph's input is {shape}: give "
                           f"[steps, {', '.join(map(str, shape))}] or [steps, batch, {', '.join(map(str, shape))}]")
    if x.shape[0] < 1 or x.shape[1] < 1:
        raise SncError(f"the input has shape {x.shape}: no steps or no batch")
    if not np.all(np.isfinite(x)):
        raise SncError("the input holds NaN or infinite values")
    return x
