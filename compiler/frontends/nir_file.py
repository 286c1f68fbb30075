"""Plain ``.nir`` files: a graph without host parts.

The file is read with snc's reader (NIR's primitives and snc's extension
nodes; every unknown node listed in one error). NIR stores no number of
spiking steps: snc reads T from the graph metadata ``snc.timestep``. A
build compiled from a bare graph runs on the chip backends with the host
currents a caller supplies; sampling and verification need a model.
"""

from __future__ import annotations

from pathlib import Path

from snc.errors import SncError

from ..nir_io import read_graph
from .base import Deployable


def load(path: Path) -> Deployable:
    graph = read_graph(path)
    timestep = graph.metadata.get("snc.timestep")
    if timestep is None:
        raise SncError(f"{path}: no snc.timestep in the NIR metadata; snc needs T to compile a .nir file")
    return Deployable(str(graph.metadata.get("snc.arch", "")), graph, int(timestep), None, source=str(path))
