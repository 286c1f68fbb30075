"""The build directory: everything ``snc sample`` / ``snc verify`` need, without the checkpoint.

    build/
      build.json      format, arch, target, T, depth, pass log, per-layer report
      graph.nir       the exported NIR graph
      lowered.json    the compiled IR (structure) ...
      lowered.npz     ... and its arrays (float weights and the quantized integers,
                      the gate tables per diffusion step)
      moments.json    (written by Analytic-DPM sampling) the model's epsilon moments
      model.pt        host-side parts: the snc checkpoint the build came from
                      (time embedding, stem and tail run on the host); absent when
                      compiled from a .nir file
"""

from __future__ import annotations

import json
import shutil
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import nir
import numpy as np

from snc.errors import SncError

from .ir import Edge, Graph, HostInput, Population, Readout
from .linear import LinearOp
from .nir_io import read_graph, write_graph

FORMAT = "snc-build"
FORMAT_VERSION = 1


@dataclass
class Build:
    path: Path
    meta: dict[str, Any]
    graph: Graph
    nir_graph: nir.NIRGraph

    @property
    def model_path(self) -> Optional[Path]:
        p = self.path / "model.pt"
        return p if p.is_file() else None


def _op_dict(op: LinearOp) -> dict[str, Any]:
    return {"kind": op.kind, "in_shape": list(op.in_shape), "out_shape": list(op.out_shape),
            "stride": op.stride, "padding": op.padding, "upsample": op.upsample}


def _op_from(d: dict[str, Any], weight: Optional[np.ndarray]) -> LinearOp:
    return LinearOp(d["kind"], tuple(d["in_shape"]), tuple(d["out_shape"]), weight, d["stride"], d["padding"],
                    d["upsample"])


def save_graph(graph: Graph, directory: Path) -> None:
    arrays: dict[str, np.ndarray] = {}
    nodes = []
    for n in graph.nodes.values():
        d: dict[str, Any] = {"kind": type(n).__name__, "name": n.name, "shape": list(n.shape)}
        if isinstance(n, (Population, Readout)):
            arrays[f"node/{n.name}/bias"] = n.bias
            d.update(depth=n.depth, scale=n.scale)
        if isinstance(n, Population):
            d.update(threshold=n.threshold, decay=n.decay, role=n.role)
            d["fixed"] = {k: int(v) for k, v in n.fixed.items() if np.ndim(v) == 0}
            for k, v in n.fixed.items():
                if np.ndim(v):
                    arrays[f"node/{n.name}/fixed/{k}"] = v
        nodes.append(d)
    edges = []
    for i, e in enumerate(graph.edges):
        if e.op.weight is not None:
            arrays[f"edge/{i}/weight"] = e.op.weight
        if "weight" in e.fixed:
            arrays[f"edge/{i}/fixed/weight"] = e.fixed["weight"]
        if e.gain is not None:
            arrays[f"edge/{i}/gain"] = e.gain
        if "gain" in e.fixed:
            arrays[f"edge/{i}/fixed/gain"] = e.fixed["gain"]
        edges.append({"src": e.src, "dst": e.dst, "delay": e.delay, "origin": list(e.origin), "op": _op_dict(e.op),
                      "weight_exp": e.fixed.get("weight_exp"), "gain_shift": e.fixed.get("gain_shift"),
                      "part": e.part, "lag": e.lag, "gate": e.gate})
    for prefix, tables in (("gates", graph.gates), ("model_gates", graph.model_gates)):
        arrays.update({f"{prefix}/{k}": v for k, v in tables.items()})
    doc = {"arch": graph.arch, "timestep": graph.timestep, "nodes": nodes, "edges": edges}
    (directory / "lowered.json").write_text(json.dumps(doc, indent=1))
    np.savez(directory / "lowered.npz", **arrays)  # compressing float weights gains little, costs minutes


def load_graph(directory: Path) -> Graph:
    doc = json.loads((directory / "lowered.json").read_text())
    with np.load(directory / "lowered.npz", allow_pickle=False) as npz:
        arrays = {k: npz[k] for k in npz.files}
    nodes: dict[str, Any] = {}
    for d in doc["nodes"]:
        name, shape = d["name"], tuple(d["shape"])
        if d["kind"] == "HostInput":
            nodes[name] = HostInput(name, shape)
        elif d["kind"] == "Readout":
            nodes[name] = Readout(name, shape, arrays[f"node/{name}/bias"], d["depth"], d["scale"])
        elif d["kind"] == "Population":
            fixed = dict(d["fixed"])
            prefix = f"node/{name}/fixed/"
            fixed.update({k[len(prefix):]: v for k, v in arrays.items() if k.startswith(prefix)})
            nodes[name] = Population(name, shape, d["threshold"], d["decay"], arrays[f"node/{name}/bias"],
                                     d["role"], d["depth"], d["scale"], fixed)
        else:
            raise SncError(f"{directory}: lowered graph holds a {d['kind']} node; rebuild with this snc")
    edges = []
    for i, d in enumerate(doc["edges"]):
        fixed = {}
        if f"edge/{i}/fixed/weight" in arrays:
            fixed = {"weight": arrays[f"edge/{i}/fixed/weight"], "weight_exp": d["weight_exp"]}
        if f"edge/{i}/fixed/gain" in arrays:
            fixed.update(gain=arrays[f"edge/{i}/fixed/gain"], gain_shift=d["gain_shift"])
        edges.append(Edge(d["src"], d["dst"], _op_from(d["op"], arrays.get(f"edge/{i}/weight")), d["delay"],
                          tuple(d["origin"]), fixed, d["part"], arrays.get(f"edge/{i}/gain"), d.get("lag", 0),
                          d.get("gate", "")))
    tables = {prefix: {k[len(prefix) + 1:]: v for k, v in arrays.items() if k.startswith(prefix + "/")}
              for prefix in ("gates", "model_gates")}
    graph = Graph(nodes, edges, timestep=doc["timestep"], arch=doc["arch"], gates=tables["gates"],
                  model_gates=tables["model_gates"])
    graph.check()
    return graph


def write_build(directory: Path, graph: Graph, nir_graph: nir.NIRGraph, meta: dict[str, Any],
                checkpoint: Optional[Path]) -> Build:
    directory.mkdir(parents=True, exist_ok=True)
    write_graph(directory / "graph.nir", nir_graph)
    save_graph(graph, directory)
    if checkpoint is not None:
        if Path(checkpoint).resolve() != (directory / "model.pt").resolve():
            shutil.copyfile(checkpoint, directory / "model.pt")
    elif (directory / "model.pt").exists():
        (directory / "model.pt").unlink()  # a stale copy from an earlier build would mislead
    (directory / "moments.json").unlink(missing_ok=True)  # the cached epsilon moments were the old model's
    meta = {"format": FORMAT, "format_version": FORMAT_VERSION, **meta, "log": graph.log}
    (directory / "build.json").write_text(json.dumps(meta, indent=1, default=_json_default))
    return Build(directory, meta, graph, nir_graph)


def _json_default(v: Any) -> Any:
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, np.ndarray):
        return v.tolist()
    raise TypeError(f"not JSON serialisable: {type(v).__name__}")


def read_build(directory: Path) -> Build:
    directory = Path(directory)
    meta_path = directory / "build.json"
    if not meta_path.is_file():
        raise SncError(f"{directory}: not an snc build directory (no build.json); make one with snc compile")
    try:
        meta = json.loads(meta_path.read_text())
    except json.JSONDecodeError as exc:
        raise SncError(f"{meta_path}: corrupt ({exc})") from None
    if meta.get("format") != FORMAT or meta.get("format_version") != FORMAT_VERSION:
        raise SncError(f"{directory}: build format {meta.get('format')!r} v{meta.get('format_version')!r}, "
                       f"this snc reads {FORMAT} v{FORMAT_VERSION}")
    try:
        graph = load_graph(directory)
    except (OSError, KeyError, ValueError, zipfile.BadZipFile) as exc:
        raise SncError(f"{directory}: lowered graph unreadable ({type(exc).__name__}: {exc})") from None
    return Build(directory, meta, graph, read_graph(directory / "graph.nir"))
