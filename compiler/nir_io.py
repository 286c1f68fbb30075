"""NIR reading and writing, with snc's extension nodes.

NIR 1.0 has no node for some operations the spiking U-Net needs. snc adds them
as *extension nodes*: NIR node classes whose ``type`` string starts with
``snc.``. ``nir.write`` stores them like any node; the stock ``nir.read``
refuses them (it only knows the 17 primitives), :func:`read_graph` here loads
both. A graph without extension nodes (e.g. the spiking MLP) is plain NIR.

Extension nodes:

``snc.NearestUpsample2d(input_shape=(C, H, W), scale=s)``
    ``y[c, i, j] = x[c, i // s, j // s]``: output (C, s*H, s*W). Linear and
    stateless, like a Conv2d; the U-Net's ``F.interpolate(mode='nearest')``.

``snc.ZeroInsert2d(input_shape=(C, H, W), scale=s)``
    ``y[c, s*i, s*j] = x[c, i, j]``, every other element 0: output (C, s*H, s*W)
    (each input followed by s - 1 zeros along both axes). With a stride-1
    Conv2d of the flipped, transposed kernel and padding k - 1 - p after it,
    torch's ``ConvTranspose2d(k, stride=s, padding=p, output_padding=s - 1)``
    (the fractionally-strided conv of the Spiking-Diffusion decoder).

``snc.StepScale(input_shape, scale=p[T], bias=b)``
    ``y_t = p[t] * x_t + b`` at spiking step t (0-based within a denoiser
    call of T steps), ``b`` full-shape and constant. SDM's temporal-wise
    spiking mechanism (TSM): the conv output scaled per step, then the
    folded BatchNorm's shift. The only extension whose function changes with
    the step: a reader that ignores it computes a different network, so a
    graph holding it needs snc's reader.

``snc.Gate(input_shape, key)``
    ``y_t = g[t] * x_t`` with ``g`` [T] supplied by the host for each denoiser
    call under the name ``key``, ``|g| <= 1``. Paper 000's expert weights
    h[t] of the top-k selection (eq. 13) and an expert's on/off switch: the
    router reads the diffusion step only, so the compiler tabulates every
    gate for every diffusion step (``specialise_selection``) and the chip is
    re-programmed per call, not per spike.

``snc.SubtractiveIF(r, v_threshold, v_initial)``
    NIR's IF, except that a spike subtracts ``v_threshold`` from v instead of
    setting it to ``v_reset``, and v is ``v_initial`` at the start of every
    denoiser call (each call of T steps). The neuron of an ANN-to-SNN
    conversion (SDM section VI, eqs. 22-24): ``v_initial = v_threshold / 2``
    turns the spike count's floor into a round. A reader that took it for an
    IF would compute another network, so it is an extension node.

Time: NIR is continuous-time and stores no dt. snc exports with
``NIR_DT`` = 1e-4 s (the snnTorch / SpikingJelly convention) and bakes it into
the parameters: an IF neuron has ``r = 1 / dt`` so that one Euler step adds
exactly its input; an LIF neuron with per-step decay b has
``tau = dt / (1 - b)`` and ``r = tau / dt``. Graph metadata repeats dt
(``snc.dt``) for readers; nothing in snc reads it from there.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Optional

import h5py
import nir
import numpy as np
from nir.serialization import hdf2dict

from snc.errors import GraphError
from snc.memory import available_mb

NIR_DT = 1e-4

STOCK_TYPES = frozenset(
    "Input Output Affine Linear Scale Conv1d Conv2d Flatten SumPool2d AvgPool2d Delay "
    "Threshold I IF LI LIF CubaLI CubaLIF".split()
)


class _Extension:
    """What every snc extension node shares: its ``type`` string in the file, and construction from a dict."""

    TYPE = ""

    def to_dict(self) -> Dict[str, Any]:
        ret = super().to_dict()  # type: ignore[misc]  # nir.NIRNode's
        ret["type"] = self.TYPE
        return ret

    @classmethod
    def from_dict(cls, kwargs: Dict[str, Any]):
        return cls(**{k: v for k, v in kwargs.items() if k != "type"})


@dataclass(eq=False)
class Upsample2d(_Extension, nir.NIRNode):
    """What snc's two upsamplings of a (C, H, W) signal by a whole factor share (shapes, the file form)."""

    input_shape: np.ndarray  # (C, H, W)
    scale: int

    def __post_init__(self) -> None:
        self.input_shape = np.asarray(self.input_shape, dtype=np.int64)
        self.scale = int(self.scale)
        c, h, w = (int(v) for v in self.input_shape)
        self.input_type = {"input": np.array([c, h, w])}
        self.output_type = {"output": np.array([c, h * self.scale, w * self.scale])}

    def to_dict(self) -> Dict[str, Any]:
        ret = super().to_dict()
        ret["scale"] = np.int64(self.scale)
        return ret


@dataclass(eq=False)
class NearestUpsample2d(Upsample2d):
    """snc extension: nearest-neighbour upsampling of a (C, H, W) signal."""

    TYPE = "snc.NearestUpsample2d"


@dataclass(eq=False)
class ZeroInsert2d(Upsample2d):
    """snc extension: each element of a (C, H, W) signal followed by ``scale - 1`` zeros along both axes."""

    TYPE = "snc.ZeroInsert2d"


@dataclass(eq=False)
class StepScale(_Extension, nir.NIRNode):
    """snc extension: ``y_t = scale[t] * x_t + bias`` at spiking step t (SDM's TSM)."""

    input_shape: np.ndarray  # the signal's shape
    scale: np.ndarray  # [T]
    bias: np.ndarray  # input_shape

    TYPE = "snc.StepScale"

    def __post_init__(self) -> None:
        self.input_shape = np.asarray(self.input_shape, dtype=np.int64).reshape(-1)
        self.scale = np.asarray(self.scale).reshape(-1)
        self.bias = np.asarray(self.bias)
        shape = tuple(int(v) for v in self.input_shape)
        if self.bias.shape != shape:
            raise ValueError(f"bias has shape {self.bias.shape}, not the input's {shape}")
        self.input_type = {"input": np.array(shape)}
        self.output_type = {"output": np.array(shape)}


@dataclass(eq=False)
class Gate(_Extension, nir.NIRNode):
    """snc extension: ``y_t = g[t] * x_t`` with the host's per-call values ``g`` of ``key`` (|g| <= 1)."""

    input_shape: np.ndarray
    key: str

    TYPE = "snc.Gate"

    def __post_init__(self) -> None:
        self.input_shape = np.asarray(self.input_shape, dtype=np.int64).reshape(-1)
        self.key = _as_str(self.key)
        if not self.key:
            raise ValueError("a Gate needs a key")
        shape = np.array([int(v) for v in self.input_shape])
        self.input_type = {"input": shape}
        self.output_type = {"output": shape.copy()}


@dataclass(eq=False)
class SubtractiveIF(_Extension, nir.IF):
    """snc extension: IF with reset by subtraction, starting every call from ``v_initial``."""

    v_initial: Optional[np.ndarray] = None

    TYPE = "snc.SubtractiveIF"

    def __post_init__(self) -> None:
        super().__post_init__()
        self.v_initial = np.zeros_like(self.v_threshold) if self.v_initial is None else np.asarray(self.v_initial)
        if self.v_initial.shape != np.shape(self.v_threshold):
            raise ValueError(f"v_initial has shape {self.v_initial.shape}, not v_threshold's "
                             f"{np.shape(self.v_threshold)}")


EXTENSIONS: dict[str, type] = {NearestUpsample2d.TYPE: NearestUpsample2d, ZeroInsert2d.TYPE: ZeroInsert2d,
                               StepScale.TYPE: StepScale, Gate.TYPE: Gate, SubtractiveIF.TYPE: SubtractiveIF}


def fix_grouped_conv_type(node: nir.NIRNode) -> nir.NIRNode:
    """NIR 1.0 gives a grouped Conv2d the input channels of one group (``weight.shape[1]``); the input
    has ``groups`` times as many. Set right, in place, so that the graph's type check passes."""
    if isinstance(node, nir.Conv2d) and int(node.groups) > 1:
        shape = np.array(node.input_type["input"])
        shape[0] = int(node.weight.shape[1]) * int(node.groups)
        node.input_type = {"input": shape}
    return node


def _as_str(value: Any) -> str:
    return value.decode("utf8") if isinstance(value, bytes) else str(value)


def write_graph(path: str | Path, graph: nir.NIRGraph) -> None:
    """Write with NIR's own writer (extension nodes serialise like primitives)."""
    check_finite(graph)
    nir.write(str(path), graph)


def read_graph(path: str | Path, warnings: Optional[list[str]] = None) -> nir.NIRGraph:
    """Read a NIR file that may contain snc extension nodes and nested subgraphs; one GraphError listing
    every unknown node type or malformed node. Parameters whose shapes NIR's node classes refuse (0-d
    values beside per-neuron ones, as norse writes them) are broadcast, with a note in ``warnings``."""
    path = Path(path)
    if not path.is_file():
        raise GraphError(f"{path}: no such file")
    try:
        with h5py.File(path, "r") as f:
            _check_declared_size(path, f)
            data = hdf2dict(f["node"])
    except (OSError, KeyError, ValueError, TypeError) as exc:
        raise GraphError(f"{path}: not a readable NIR file ({exc})") from None
    if _as_str(data.get("type")) != "NIRGraph" or "nodes" not in data or "edges" not in data:
        raise GraphError(f"{path}: the top-level node is not a NIRGraph")
    unknown: list[str] = []
    problems: list[str] = []
    notes = [] if warnings is None else warnings
    graph = _graph_from_dict(data, "", unknown, problems, notes)
    if unknown:
        problems.insert(0, f"unknown NIR node type(s): {', '.join(sorted(unknown))}; snc reads the NIR 1.0 "
                           f"primitives, nested NIRGraphs and {', '.join(EXTENSIONS)}")
    if problems:
        raise GraphError(f"{path}: " + ("\n  ".join([""] + problems) if len(problems) > 1 else problems[0]))
    check_finite(graph)
    return graph


def _check_declared_size(path: Path, f: h5py.File) -> None:
    """Refuse, before reading any array, a file whose datasets declare more bytes than this machine has
    available (a small compressed file can declare a weight of hundreds of GB)."""
    sizes: list[tuple[int, str]] = []
    f.visititems(lambda name, obj: sizes.append((int(obj.size) * obj.dtype.itemsize, name))
                 if isinstance(obj, h5py.Dataset) else None)
    total = sum(s for s, _ in sizes)
    available = available_mb()
    if available is not None and total / 2**20 > available:
        largest = max(sizes)
        raise GraphError(f"{path}: its arrays declare {total / 2**30:.1f} GiB ({largest[1]}: "
                         f"{largest[0] / 2**30:.1f} GiB), more than the {max(available, 0) / 1024:.1f} GB available")


def _graph_from_dict(data: dict, prefix: str, unknown: list[str], problems: list[str],
                     warnings: list[str]) -> nir.NIRGraph:
    nodes = {}
    for name, node in data["nodes"].items():
        kind = _as_str(node.get("type"))
        full = prefix + str(name)
        if kind == "NIRGraph" and "nodes" in node and "edges" in node:
            nodes[name] = _graph_from_dict(node, full + ".", unknown, problems, warnings)
            continue
        if kind not in STOCK_TYPES and kind not in EXTENSIONS:
            unknown.append(f"{full} ({kind})")
            continue
        try:
            nodes[name] = _node_from_dict(kind, dict(node), full, warnings)
        except (TypeError, ValueError, KeyError, AssertionError) as exc:
            problems.append(f"node {full!r} ({kind}) is malformed: {exc}")
    raw_edges = np.asarray(data["edges"])
    if raw_edges.size and (raw_edges.ndim != 2 or raw_edges.shape[1] != 2):
        problems.append(f"{prefix or 'the graph'}: edges must be pairs (source, target), not an array of shape "
                        f"{raw_edges.shape}")
        raw_edges = np.zeros((0, 2))
    edges = [(_as_str(a), _as_str(b)) for a, b in raw_edges.reshape(-1, 2)]
    missing = sorted({n for e in edges for n in e if n not in data["nodes"]})
    if missing:
        problems.append(f"edges name unknown nodes: {', '.join(prefix + n for n in missing)}")
    meta = data.get("metadata", {})
    return nir.NIRGraph(nodes=nodes, edges=[e for e in edges if e[0] in nodes and e[1] in nodes],
                        metadata=dict(meta) if isinstance(meta, dict) else {}, type_check=False)


def _node_from_dict(kind: str, node: dict, name: str, warnings: list[str]) -> nir.NIRNode:
    if kind in EXTENSIONS:
        return EXTENSIONS[kind].from_dict(node)
    try:
        return fix_grouped_conv_type(nir.dict2NIRNode(node))
    except AssertionError:  # "All parameters must have the same shape": broadcast the one-value ones
        arrays = {k: np.asarray(v) for k, v in node.items() if isinstance(v, np.ndarray) and v.dtype.kind == "f"}
        shape = np.broadcast_shapes(*(a.shape for a in arrays.values()))
        node.update({k: np.broadcast_to(a, shape).copy() for k, a in arrays.items()})
        warnings.append(f"{name}: parameters of different shapes broadcast to {tuple(shape)}")
        return fix_grouped_conv_type(nir.dict2NIRNode(node))


def node_arrays(node: nir.NIRNode) -> dict[str, np.ndarray]:
    """Every numeric parameter of a node as an array (weights, neuron parameters, strides...)."""
    skip = {"input_type", "output_type", "metadata"}
    arrays = {}
    for key, value in vars(node).items():
        if key in skip or isinstance(value, (str, bool)) or value is None:
            continue
        arr = np.asarray(value)
        if np.issubdtype(arr.dtype, np.number):
            arrays[key] = arr
    return arrays


def digest(graph: nir.NIRGraph) -> str:
    """A fingerprint of a graph's nodes (types, every parameter's bytes) and edges: an IR records the one of
    the graph it was imported from, so that resuming a compile from a dump checks it is the same source."""
    h = hashlib.blake2b(digest_size=16)
    for name in sorted(graph.nodes):
        node = graph.nodes[name]
        h.update(f"{name}:{getattr(node, 'TYPE', type(node).__name__)}".encode())
        for key, arr in sorted(node_arrays(node).items()):
            h.update(f"{key}{arr.dtype}{arr.shape}".encode())
            h.update(np.ascontiguousarray(arr).tobytes())
    h.update(repr(sorted((str(a), str(b)) for a, b in graph.edges)).encode())
    return h.hexdigest()


def check_finite(graph: nir.NIRGraph) -> None:
    """Refuse NaN/inf parameters, listing every offending array at once."""
    bad = [
        f"{name}.{field}"
        for name, node in graph.nodes.items()
        for field, arr in node_arrays(node).items()
        if np.issubdtype(arr.dtype, np.floating) and not np.isfinite(arr).all()
    ]
    if bad:
        raise GraphError(f"non-finite (NaN/inf) parameters in {len(bad)} array(s): {', '.join(bad)}")
