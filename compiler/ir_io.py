"""The IR on disk: ``stem.json`` (every node and edge, the pass log, the passes applied) and ``stem.npz``
(every array), reloadable without loss. ``--dump-ir`` writes one per pass; ``snc compile --from-ir``
and ``snc.api.compile(from_ir=...)`` resume the pipeline from one. A lowered graph's netlists go
beside it (``stem.netlist-<mode>.json/.npz``).
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from snc.errors import GraphError

from .ir import Edge, Graph, HostInput, Linear, Node, Population, Readout
from .readout import ReadoutFilter
from .linear import op_from_dict, op_to_dict
from .netlist import load_netlist, save_netlist, stem_file

FORMAT = "snc-ir"
FORMAT_VERSION = 3  # 3: graded populations (payload_shift)


def _scalars(fixed: dict[str, Any]) -> dict[str, Any]:
    return {k: (v.item() if isinstance(v, np.generic) else v) for k, v in fixed.items() if np.ndim(v) == 0}


def _arrays(fixed: dict[str, Any], prefix: str, arrays: dict[str, np.ndarray]) -> None:
    arrays.update({f"{prefix}/fixed/{k}": np.asarray(v) for k, v in fixed.items() if np.ndim(v)})


def _node_doc(n: Node, arrays: dict[str, np.ndarray]) -> dict[str, Any]:
    d: dict[str, Any] = {"kind": type(n).__name__, "name": n.name}
    key = f"node/{n.name}"
    if isinstance(n, Linear):
        d.update(op=op_to_dict(n.op), placement=n.placement, lag=n.lag, gate=n.gate)
        if n.op.weight is not None:
            arrays[f"{key}/weight"] = n.op.weight
        if n.gain is not None:
            arrays[f"{key}/gain"] = n.gain
        arrays[f"{key}/bias"] = n.bias
        return d
    d["shape"] = list(n.shape)
    if isinstance(n, (Population, Readout)):
        arrays[f"{key}/bias"] = n.bias
        d.update(depth=n.depth, scale=n.scale)
    if isinstance(n, Population):
        d.update(threshold=n.threshold, decay=n.decay, current_decay=n.current_decay, role=n.role,
                 subtractive_reset=n.subtractive_reset, payload_shift=n.payload_shift, fixed=_scalars(n.fixed))
        _arrays(n.fixed, key, arrays)
    if isinstance(n, Readout):
        d.update(filters=[f.as_dict() for f in n.filters], fixed=_scalars(n.fixed))
        _arrays(n.fixed, key, arrays)
    return d


def save_graph(graph: Graph, stem: Path) -> None:
    """Write ``graph`` (and its netlists, if lowered) to ``stem.json`` / ``stem.npz``."""
    arrays: dict[str, np.ndarray] = {}
    nodes = [_node_doc(n, arrays) for n in graph.nodes.values()]
    edges = []
    for i, e in enumerate(graph.edges):
        if e.op.weight is not None:
            arrays[f"edge/{i}/weight"] = e.op.weight
        if e.gain is not None:
            arrays[f"edge/{i}/gain"] = e.gain
        _arrays(e.fixed, f"edge/{i}", arrays)
        edges.append({"name": e.name, "src": e.src, "dst": e.dst, "op": op_to_dict(e.op), "delay": e.delay,
                      "origin": list(e.origin), "part": e.part, "lag": e.lag, "gate": e.gate,
                      "synapses": e.op.synapse_count(), "fixed": _scalars(e.fixed)})
    for prefix, tables in (("gates", graph.gates), ("model_gates", graph.model_gates)):
        arrays.update({f"{prefix}/{k}": v for k, v in tables.items()})
    doc = {"format": FORMAT, "format_version": FORMAT_VERSION, "arch": graph.arch, "timestep": graph.timestep,
           "source": graph.source, "passes": list(graph.passes), "netlists": sorted(graph.netlists), "nodes": nodes, "edges": edges,
           "log": graph.log}
    stem_file(stem, ".json").write_text(json.dumps(doc, indent=1, default=json_default))
    np.savez(stem_file(stem, ".npz"), **arrays)
    for mode, net in graph.netlists.items():
        save_netlist(net, stem.with_name(f"{stem.name}.netlist-{mode}"))


def load_graph(stem: Path) -> Graph:
    """The graph ``save_graph`` wrote (``stem`` with or without the ``.json`` suffix); one GraphError if
    the files are missing, corrupt or of another format."""
    stem = Path(stem)
    stem = stem.parent / stem.name[:-len(".json")] if stem.name.endswith(".json") else stem
    try:
        doc = json.loads(stem_file(stem, ".json").read_text())
        if not isinstance(doc, dict) or doc.get("format") != FORMAT or doc.get("format_version") != FORMAT_VERSION:
            raise GraphError(f"{stem}.json: not an snc IR dump ({FORMAT} v{FORMAT_VERSION})")
        with np.load(stem_file(stem, ".npz"), allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
        graph = _graph(doc, arrays)
        graph.netlists = {mode: load_netlist(stem.with_name(f"{stem.name}.netlist-{mode}")) for mode in doc["netlists"]}
    except (OSError, KeyError, ValueError, TypeError, zipfile.BadZipFile) as exc:
        raise GraphError(f"{stem}: IR dump unreadable ({type(exc).__name__}: {exc})") from None
    graph.check()
    return graph


def _fixed(d: dict[str, Any], prefix: str, arrays: dict[str, np.ndarray]) -> dict[str, Any]:
    fixed = dict(d)
    start = f"{prefix}/fixed/"
    fixed.update({k[len(start):]: v for k, v in arrays.items() if k.startswith(start)})
    return fixed


def _graph(doc: dict[str, Any], arrays: dict[str, np.ndarray]) -> Graph:
    nodes: dict[str, Node] = {}
    for d in doc["nodes"]:
        name = d["name"]
        key = f"node/{name}"
        if d["kind"] == "HostInput":
            nodes[name] = HostInput(name, tuple(d["shape"]))
        elif d["kind"] == "Linear":
            nodes[name] = Linear(name, op_from_dict(d["op"], arrays.get(f"{key}/weight")), arrays[f"{key}/bias"],
                                 d["placement"], arrays.get(f"{key}/gain"), d["lag"], d["gate"])
        elif d["kind"] == "Readout":
            nodes[name] = Readout(name, tuple(d["shape"]), arrays[f"{key}/bias"], d["depth"], d["scale"],
                                  tuple(ReadoutFilter.from_dict(f) for f in d["filters"]),
                                  _fixed(d.get("fixed", {}), key, arrays))
        elif d["kind"] == "Population":
            nodes[name] = Population(name, tuple(d["shape"]), d["threshold"], d["decay"], arrays[f"{key}/bias"],
                                     d["role"], d["depth"], d["scale"], _fixed(d["fixed"], key, arrays),
                                     d["current_decay"], bool(d.get("subtractive_reset", False)),
                                     int(d["payload_shift"]))
        else:
            raise GraphError(f"unknown IR node kind {d['kind']!r}")
    edges = [Edge(d["src"], d["dst"], op_from_dict(d["op"], arrays.get(f"edge/{i}/weight")), d["delay"],
                  tuple(d["origin"]), _fixed(d["fixed"], f"edge/{i}", arrays), d["part"], arrays.get(f"edge/{i}/gain"),
                  d["lag"], d["gate"]) for i, d in enumerate(doc["edges"])]
    tables = {prefix: {k[len(prefix) + 1:]: v for k, v in arrays.items() if k.startswith(prefix + "/")}
              for prefix in ("gates", "model_gates")}
    return Graph(nodes, edges, timestep=doc["timestep"], arch=doc["arch"], log=doc["log"], gates=tables["gates"],
                 model_gates=tables["model_gates"], passes=list(doc["passes"]), source=doc["source"])


def json_default(v: Any) -> Any:
    """numpy scalars and arrays as JSON (for the logs passes write)."""
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, np.ndarray):
        return v.tolist()
    raise TypeError(f"not JSON serialisable: {type(v).__name__}")
