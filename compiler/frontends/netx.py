"""lava-dl netx HDF5 networks (``snc compile network.net``): Lava's integers, adopted as the netlist.

A netx file (lava-dl's ``netx.hdf5``: what slayer's ``export_hdf5`` writes
and ``netx.hdf5.Network`` loads) is already quantized for Loihi: neuron
parameters and weights are integers. snc does not re-quantize them: it reads
the file as lava-dl's ``Network`` builds it and writes the same Lava
processes' parameters into a fixed-mode netlist (bit for bit the network
``netx.hdf5.Network`` runs on Lava fixed_pt, which the tests check), a
float-mode netlist of the same numbers (Lava floating_pt), and a NIR graph
of its float dynamics (CubaLIF per layer) for the NIR reference and exports.
The build's pass list is not run (there is nothing to lower); the target's
range check and core mapping are (``driver.adopt``).

What netx layers become (lava-dl 0.6 ``netx/hdf5.py``):

- ``input`` with a neuron: the group ``layer0`` whose ``a_in`` takes the
  run's input (a current, integers in fixed mode: netx leaves the ``inp``
  port of its input neuron unconnected; ``snc run`` feeds it); without one,
  a ``shape`` for the next layer. When the first synaptic layer has no input
  layer before it, the run's input is spikes into that synapse, as for
  ``Network.inp``: snc adds a relay group ``input_relay`` that spikes when fed 1;
- ``dense``: a ``dense`` synapse with lava-dl's ``optimize_weight_bits`` of
  the weights (its mantissas, ``num_weight_bits`` and ``weight_exp``) into a
  group; per-synapse or axonal ``delay`` (DelayDense in netx): one ``sparse``
  synapse per distinct delay, the same integers;
- ``dense_rec``: the same, plus the recurrent synapse from the group to
  itself (weights optimized together, as netx does);
- ``conv``: a ``conv`` synapse with the raw kernel (Lava's Conv takes no
  weight exponent); groups and dilation as zeros of a full kernel; square
  kernels with one stride and padding for both axes;
- ``pool`` (slayer's ``Pool`` block; netx 0.6 cannot load it): a conv
  of every channel with the file's one kernel (``weight`` [1, 1, k, k],
  ``kernelSize``, ``stride``, ``padding``, ``dilation``), as Loihi runs a
  pool: the same synapse as a grouped ``conv`` layer with that kernel per
  channel, which is what ``snc export --format netx`` writes for it (and netx
  then loads);
- ``flatten``: nothing (a group is C x H x W flattened in C order, which is
  netx's ``transpose([2, 1, 0]).flatten()``);
- CUBA / LOIHI neurons: LIF with ``vth = vThMant``, ``du = iDecay - 1``,
  ``dv = vDecay``, ``bias_mant = bias`` (per neuron or per channel),
  ``bias_exp = 6``; ``refDelay`` is not modelled by Lava's LIF (netx drops it
  too); graded spikes of a CUBA neuron (``gradedSpike`` / ``messageBits``)
  are 0/1 on Lava's LIF, as in netx; a layer without a neuron gets netx's
  default non-leaky integrator;
- refused, naming the layer: SDNN (sigma-delta) and resonate-and-fire
  neurons, ``average``, ``convT``, ``unpool``, ``concat``, ``dense_comp``
  (netx 0.6 cannot load the first four either; slayer 0.6's ``Average``
  block cannot even be written: its export reads a neuron it does not have).

Groups are plain LIF (no reset), like ``Network(reset_interval=None)``; the
output is the last layer's spikes, read through an identity synapse.
"""

from __future__ import annotations

import contextlib
from dataclasses import replace
import io
from pathlib import Path
from typing import Any, Optional

import h5py
import nir
import numpy as np

from snc.errors import GraphError

from ..linear import LinearOp
from ..netlist import HostOp, Netlist, NeuronGroup, ReadoutPort, Synapse
from ..nir_io import NIR_DT
from .base import Deployable

NEURON_TYPES = ("CUBA", "LOIHI")
LAYER_TYPES = ("input", "dense", "dense_rec", "conv", "pool", "flatten")
REFUSED = ("average", "convT", "unpool", "concat", "dense_comp")
BIAS_EXP = 6  # netx: bias_mant << 6
DEFAULT_NEURON = {"type": "CUBA", "iDecay": 0, "vDecay": 4096, "vThMant": 1 << 17, "refDelay": 1}  # netx's
UNITY = 4096
RELAY = "input_relay"  # the group that turns the run's input spikes into chip spikes
FOREVER = 1e12  # tau / dt of a decay of exactly 0 (float32 and float64 keep 1 - 1e-12 as 1)


def _value(group: h5py.Group, key: str) -> Any:
    v = group[key][()]
    if isinstance(v, bytes):
        return v.decode("ascii")
    if isinstance(v, np.ndarray) and v.dtype.kind in "SO":
        return v.reshape(-1)[0].decode("ascii") if isinstance(v.reshape(-1)[0], bytes) else str(v.reshape(-1)[0])
    return v


def _ints(group: h5py.Group, key: str, name: str, problems: list[str]) -> np.ndarray:
    raw = np.asarray(group[key][()])
    if raw.dtype.kind == "f":
        if not np.all(np.isfinite(raw)):
            problems.append(f"{name}: non-finite (NaN/inf) values in {key}")
            return np.zeros(raw.shape, np.int64)
        if not np.all(raw == np.round(raw)):
            problems.append(f"{name}: {key} holds non-integer values (netx stores Loihi's integers)")
    if raw.dtype.kind not in "iuf" or (raw.size and np.abs(raw).max() >= 2**31):
        problems.append(f"{name}: {key} holds values outside Loihi's 32-bit integers or no numbers")
        return np.zeros(raw.shape, np.int64)
    return raw.astype(np.int64)


def _neuron(layer: h5py.Group, name: str, problems: list[str]) -> dict[str, int]:
    if "neuron" not in layer:
        return dict(DEFAULT_NEURON)
    cfg = layer["neuron"]
    kind = _value(cfg, "type")
    if kind not in NEURON_TYPES:
        what = "sigma-delta (SDNN)" if kind == "SDNN" else kind
        problems.append(f"{name}: {what} neurons are not supported (snc runs Lava's LIF: CUBA / LOIHI)")
        return dict(DEFAULT_NEURON)
    out = {"type": kind}
    for key in ("vThMant", "iDecay", "vDecay"):
        if key not in cfg:
            problems.append(f"{name}: the neuron has no {key}")
            out[key] = DEFAULT_NEURON[key]
        else:
            out[key] = int(np.asarray(cfg[key][()]).reshape(-1)[0])
    return out


def _group(name: str, shape: tuple, neuron: dict, bias: Optional[np.ndarray], depth: int, mode: str) -> NeuronGroup:
    n = int(np.prod(shape))
    b = np.zeros(n, np.int64) if bias is None else _bias(bias, shape)
    du, dv, vth = neuron["iDecay"] - 1, neuron["vDecay"], neuron["vThMant"]
    if mode == "fixed":
        return NeuronGroup(name, shape, du, dv, vth, b, np.full(n, BIAS_EXP, np.int64), depth=depth,
                           threshold=float(vth))
    # floating_pt: Lava keeps u * (1 - du) (fixed: (4096 - du - 1) / 4096); a_in and vth in the same units
    return NeuronGroup(name, shape, (du + 1) / UNITY, dv / UNITY, float(vth), b.astype(np.float64),
                       np.zeros(n, np.int64), depth=depth, threshold=float(vth))


def _bias(bias: np.ndarray, shape: tuple) -> np.ndarray:
    n = int(np.prod(shape))
    if len(shape) == 3 and bias.shape == tuple(reversed(shape)):  # netx's (x, y, c) per neuron
        return bias.transpose(2, 1, 0).reshape(-1).astype(np.int64)
    if bias.size == n:
        return bias.reshape(-1).astype(np.int64)
    if len(shape) == 3 and bias.size == shape[0]:  # per channel
        return np.repeat(bias.reshape(-1), shape[1] * shape[2]).astype(np.int64)
    raise GraphError(f"bias of {bias.size} values for {n} neurons")


def _dense_weights(weight: np.ndarray) -> tuple[np.ndarray, int, int]:
    """lava-dl's own optimisation of a dense layer's integers: (mantissas, num_weight_bits, weight_exp)."""
    with contextlib.redirect_stdout(io.StringIO()):  # lava-dl's package import prints a dataset-toolbox notice
        from lava.lib.dl.netx.utils import optimize_weight_bits

    if not np.any(weight):  # lava-dl's optimisation divides by the largest weight
        return np.zeros(weight.shape, np.int64), 8, 0
    w, bits, exp, _ = optimize_weight_bits(weight)
    return np.asarray(w, np.int64), int(bits), int(exp)


def _full_kernel(weight: np.ndarray, groups: int, dilation: int) -> np.ndarray:
    cout, cin_g, k, _ = weight.shape
    kd = dilation * (k - 1) + 1
    full = np.zeros((cout, cin_g * groups, kd, kd), np.int64)
    per = cout // groups
    for g in range(groups):
        full[g * per:(g + 1) * per, g * cin_g:(g + 1) * cin_g, ::dilation, ::dilation] = weight[g * per:(g + 1) * per]
    return full


def _int_op(op: LinearOp, weight: np.ndarray) -> LinearOp:
    """``op`` carrying the integer weights (LinearOp's constructors store float64)."""
    return replace(op, weight=np.asarray(weight, np.int64))


def _square(v: np.ndarray, what: str, name: str, problems: list[str]) -> int:
    arr = np.atleast_1d(np.asarray(v)).reshape(-1)
    if not np.all(arr == arr[0]):
        problems.append(f"{name}: {what} {arr.tolist()} differs between the axes (snc lowers square convs)")
    return int(arr[0])


class _Builder:
    """Both netlists and the NIR graph, layer by layer."""

    def __init__(self, dt: float) -> None:
        self.dt = dt
        self.groups: dict[str, dict[str, NeuronGroup]] = {"fixed": {}, "float": {}}
        self.synapses: dict[str, list[Synapse]] = {"fixed": [], "float": []}
        self.nir_nodes: dict[str, nir.NIRNode] = {}
        self.nir_edges: list[tuple[str, str]] = []
        self.delays = False

    def group(self, name: str, shape: tuple, neuron: dict, bias: Optional[np.ndarray], depth: int) -> None:
        for mode in ("fixed", "float"):
            self.groups[mode][name] = _group(name, shape, neuron, bias, depth, mode)
        g = self.groups["float"][name]
        n = tuple(shape)
        tau_syn = self.dt * (FOREVER if g.du == 0 else 1 / g.du)
        tau_mem = self.dt * (FOREVER if g.dv == 0 else 1 / g.dv)
        bias_f = np.asarray(g.bias_mant, np.float64).reshape(n)
        self.nir_nodes[name] = nir.CubaLIF(
            tau_syn=np.full(n, tau_syn), tau_mem=np.full(n, tau_mem), r=np.full(n, tau_mem / self.dt),
            v_leak=bias_f * tau_mem / self.dt, v_threshold=np.full(n, g.vth), v_reset=np.zeros(n),
            w_in=np.full(n, tau_syn / self.dt))

    def synapse(self, name: str, src: str, dst: str, kind: str, op: LinearOp, weight_exp: int, bits: int,
                delay: int = 0, nir_node: Optional[nir.NIRNode] = None) -> None:
        self.synapses["fixed"].append(Synapse(name, src, dst, kind, op, weight_exp, bits, delay))
        effective = op.weight.astype(np.float64) * (2.0 ** weight_exp if kind != "conv" else 1.0)
        self.synapses["float"].append(Synapse(name, src, dst, kind, replace(op, weight=effective), 0, bits, delay))
        if nir_node is not None:
            self.nir_nodes[name] = nir_node
            self.nir_edges += [(src, name), (name, dst)]


def load(path: Path) -> Deployable:
    """The deployable of a netx file; one GraphError listing every problem."""
    path = Path(path)
    if not path.is_file():
        raise GraphError(f"{path}: no such file")
    try:
        f = h5py.File(path, "r")
    except OSError as exc:
        raise GraphError(f"{path}: not a readable netx (HDF5) file ({exc})") from None
    with f:
        if "layer" not in f:
            raise GraphError(f"{path}: no 'layer' group: not a lava-dl netx network")
        try:
            return _load(f, path)
        except (KeyError, ValueError, TypeError, IndexError) as exc:
            raise GraphError(f"{path}: malformed netx network ({type(exc).__name__}: {exc})") from None


def _load(f: h5py.File, path: Path) -> Deployable:
    layers = f["layer"]
    order = sorted(layers, key=int)
    problems: list[str] = []
    kinds = {}
    for key in order:
        kind = _value(layers[key], "type")
        if not isinstance(kind, str):  # a type that is not a name: reported as unknown, as it is
            kind = repr(np.asarray(kind).tolist())
        kinds[key] = kind
        if kind in REFUSED:
            problems.append(f"layer {key}: {kind!r} layers are not supported (netx 0.6 cannot load them either"
                            + ("; slayer 0.6 cannot write one: its Average block has no neuron)" if kind == "average"
                               else ")"))
        elif kind not in LAYER_TYPES:
            problems.append(f"layer {key}: unknown netx layer type {kind!r}")
    if problems:
        raise GraphError(f"{path}: cannot read the netx network:\n  " + "\n  ".join(problems))
    b = _Builder(NIR_DT)
    prev: Optional[str] = None  # the group the next synapse reads
    shape: Optional[tuple] = None  # its shape (C, H, W) or (n,)
    depth = 0
    input_shape: Optional[tuple] = None
    input_kind = "spikes"
    notes: list[str] = []
    for key in order:
        layer, kind, name = layers[key], kinds[key], f"layer{key}"
        if kind == "flatten":
            continue
        if kind == "input":
            shape = tuple(int(v) for v in np.asarray(layer["shape"][()]).reshape(-1))
            if "neuron" in layer:
                # the input layer's weight and bias are a transform netx leaves to the user (Network ignores them)
                b.group(name, shape, _neuron(layer, name, problems), None, depth)
                if "weight" in layer or "bias" in layer:
                    notes.append(f"{name}: the input layer's weight / bias are not applied (netx.hdf5.Network does not "
                                 "apply them either: transform the input before snc run)")
                input_shape, input_kind, prev = shape, "current", name
            else:
                input_shape = shape
            continue
        if prev is None:  # spikes into the first synapse: a relay that spikes when fed 1
            if kind in ("conv", "pool") and input_shape is None:
                problems.append(f"layer {key}: a {kind} first layer needs an input layer with its shape")
                break
            if input_shape is None:
                input_shape = (int(np.asarray(layer["weight"]).shape[1]),)
            relay = {"type": "CUBA", "iDecay": UNITY, "vDecay": UNITY, "vThMant": 0}
            b.group(RELAY, input_shape, relay, None, 0)
            for mode in ("fixed", "float"):
                g = b.groups[mode][RELAY]
                b.groups[mode][RELAY] = NeuronGroup(g.name, g.shape, g.du, g.dv, g.vth, g.bias_mant, g.bias_exp,
                                                      role="relay", depth=0, threshold=g.threshold)
            prev, shape = RELAY, input_shape
        depth += 1
        neuron = _neuron(layer, name, problems)
        out_shape = tuple(int(v) for v in np.asarray(layer["shape"][()]).reshape(-1))
        bias = _ints(layer, "bias", name, problems) if "bias" in layer else None
        if kind in ("dense", "dense_rec"):
            n_out = int(np.prod(out_shape))
            weight = _ints(layer, "weight", name, problems).reshape(n_out, -1)
            rec = _ints(layer, "weight_rec", name, problems).reshape(n_out, n_out) if kind == "dense_rec" else None
            if weight.shape[1] != int(np.prod(shape)):
                problems.append(f"{name}: weight {weight.shape} does not take the {int(np.prod(shape))} inputs of "
                                "the layer before")
                break
            both, bits, exp = _dense_weights(np.hstack([weight, rec]) if rec is not None else weight)
            w, w_rec = both[:, :weight.shape[1]], both[:, weight.shape[1]:]
            delay = _ints(layer, "delay", name, problems) if "delay" in layer else None
            max_delay = 0 if delay is None else int(delay.max())
            b.group(name, (n_out,), neuron, bias, depth + max_delay)
            nir_dense = nir.Linear(weight=weight.astype(np.float64))
            if delay is None or not np.any(delay):
                b.synapse(f"{prev}->{name}", prev, name, "dense", _int_op(LinearOp.dense(w, shape, (n_out,)), w), exp,
                          bits, nir_node=nir_dense)
            else:
                b.delays = True
                per = np.broadcast_to(delay.reshape(-1, 1) if delay.size == n_out else delay.reshape(1, -1)
                                      if delay.size == weight.shape[1] else delay.reshape(weight.shape), weight.shape)
                for d in np.unique(per[w != 0]):
                    part = np.where(per == d, w, 0)
                    b.synapse(f"{prev}->{name}@{d}", prev, name, "sparse", _int_op(LinearOp.dense(part, shape, (n_out,)),
                                                                                     part), exp, bits, delay=int(d))
                depth += max_delay
            if rec is not None:
                b.synapse(f"{name}->{name}", name, name, "dense", _int_op(LinearOp.dense(w_rec, (n_out,), (n_out,)),
                                                                                 w_rec), exp, bits)
                b.nir_nodes[f"{name}.rec"] = nir.Linear(weight=rec.astype(np.float64))
                b.nir_nodes[f"{name}.rec_delay"] = nir.Delay(np.full(n_out, b.dt))
                b.nir_edges += [(name, f"{name}.rec_delay"), (f"{name}.rec_delay", f"{name}.rec"),
                                (f"{name}.rec", name)]
            prev, shape = name, (n_out,)
        else:  # conv, or pool: a conv of each channel with the one kernel (slayer's Pool synapse)
            if len(shape) != 3:
                problems.append(f"{name}: a {kind} needs a (C, H, W) input, the layer before gives {shape}")
                break
            weight = _ints(layer, "weight", name, problems)
            if weight.ndim < 4 or any(d != 1 for d in weight.shape[4:]):  # netx may add a trailing axis of 1
                problems.append(f"{name}: kernel of shape {weight.shape} is not a [out, in, k, k] kernel")
                break
            weight = weight.reshape(weight.shape[:4])
            stride = _square(layer["stride"][()], "stride", name, problems)
            padding = _square(layer["padding"][()], "padding", name, problems)
            dilation = _square(layer["dilation"][()], "dilation", name, problems)
            if kind == "pool":
                weight = np.broadcast_to(weight.reshape(1, 1, *weight.shape[-2:]), (shape[0], 1, *weight.shape[-2:]))
                groups = shape[0]
            else:
                groups = int(np.asarray(layer["groups"][()]).reshape(-1)[0])
            if weight.ndim != 4 or weight.shape[2] != weight.shape[3] or not weight.size:
                problems.append(f"{name}: kernel of shape {weight.shape} is not a square [out, in, k, k] kernel")
                break
            if stride < 1 or padding < 0 or dilation < 1 or groups < 1 or shape[0] % groups \
                    or weight.shape[0] % groups or weight.shape[1] * groups != shape[0]:
                problems.append(f"{name}: stride {stride}, padding {padding}, dilation {dilation} and groups {groups}"
                                f" do not make a conv of a {shape} input with a {weight.shape} kernel")
                break
            kernel = _full_kernel(weight, groups, dilation)
            op = _int_op(LinearOp.conv(kernel, shape, stride, padding), kernel)
            if tuple(op.out_shape) != out_shape:
                problems.append(f"{name}: the conv gives {op.out_shape}, the file says {out_shape}")
                break
            b.group(name, out_shape, neuron, bias, depth)
            b.synapse(f"{prev}->{name}", prev, name, "conv", op, 0, 8,
                      nir_node=nir.Conv2d(shape[1:], kernel.astype(np.float64), stride, padding, 1, 1,
                                          np.zeros(out_shape[0])))
            prev, shape = name, out_shape
    if prev is None and not problems:
        problems.append("no layers")
    if problems:
        raise GraphError(f"{path}: cannot read the netx network:\n  " + "\n  ".join(problems))
    return _deployable(b, path, prev, shape, depth, input_shape, input_kind, notes)


def _deployable(b: _Builder, path: Path, last: str, shape: tuple, depth: int, input_shape: tuple,
                input_kind: str, notes: list[str]) -> Deployable:
    netlists = {}
    first = "layer0" if input_kind == "current" else RELAY
    for mode in ("fixed", "float"):
        one = np.ones(1, np.int64 if mode == "fixed" else np.float64)
        readout = Synapse(f"{last}->output", last, "output", "sparse", LinearOp("identity", shape, shape, one))
        netlists[mode] = Netlist(mode, b.groups[mode], [*b.synapses[mode], readout],
                                 ReadoutPort("output", shape, 1.0, depth + 1), 1, {first: 1.0},
                                 {"input": input_shape}, [HostOp("input", first, LinearOp.identity(input_shape))])
        netlists[mode].check()
    nodes = {"input": nir.Input(np.array(input_shape)), **b.nir_nodes, "output": nir.Output(np.array(shape))}
    edges = [("input", first)] + b.nir_edges + [(last, "output")]
    if first == RELAY:  # the relay passes the input spikes through: NIR reads them directly
        nodes.pop(RELAY)
        edges = [("input", b_) if a == RELAY else (a, b_) for a, b_ in edges if (a, b_) != ("input", RELAY)]
    meta = {"snc.dt": b.dt, "snc.source": "netx", "snc.netx_input": input_kind,
            "snc.netx_delays": int(b.delays)}
    graph = nir.NIRGraph(nodes=nodes, edges=edges, metadata=meta, type_check=False)
    return Deployable("", graph, 1, None, source=str(path), dt=b.dt, netlists=netlists,
                      warnings=[*notes, "snc run's --input: " + ("the current into the input layer (layer0)"
                                                                 if input_kind == "current" else
                                                                 "spikes into the first synapse")])
