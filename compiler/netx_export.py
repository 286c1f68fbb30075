"""A build's fixed-point netlist as a lava-dl netx network (``snc export BUILD --format netx``).

Writes the subset ``netx.hdf5.Network`` loads: a chain of layers, each a
group of LIF neurons fed by the group before it (``dense``, ``conv``, or
``dense_rec`` with its recurrent synapse), the output the last group's
spikes. The first group is either snc's input relay (netx then takes spikes
into the first synapse) or a group fed by the host (netx's ``input`` layer:
the run's current goes into its neurons).

netx stores what its reader turns into Lava's parameters
(``frontends/netx.py`` reads it back the same way): ``vThMant = vth``,
``iDecay = du + 1``, ``vDecay = dv``, ``bias`` with an exponent of 6, and for
synapses the integer weights Lava computes with (``w << weight_exp``), which
netx re-optimizes (``optimize_weight_bits``) to the same sums. A netlist
outside that subset is refused, naming what netx cannot hold: a weight that is
not an integer after its exponent or does not fit netx's 8 bits, a bias that
is not a whole multiple of 64 in Lava's units, per-step values, relays of
delay balancing or graded groups (``--residual graded``), branches.
"""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np

from snc.errors import SncError

from .netlist import Netlist, NeuronGroup, Synapse, synapse_matrix

BIAS_EXP = 6
NETX_WEIGHT = 255  # netx's weights are 8-bit magnitudes


def _neuron(g: NeuronGroup) -> dict:
    return {"type": "CUBA", "vThMant": int(g.vth), "iDecay": int(g.du) + 1, "vDecay": int(g.dv), "refDelay": 1,
            "gradedSpike": 0}


def _bias(g: NeuronGroup, problems: list[str]) -> np.ndarray:
    full = g.bias()
    if full.ndim != 1:
        problems.append(f"{g.name}: a bias per step")
        return np.zeros(g.n, np.int64)
    if np.any(full % (1 << BIAS_EXP)):
        problems.append(f"{g.name}: bias not a multiple of 2^{BIAS_EXP} in Lava's units (netx stores bias << 6)")
    return (full >> BIAS_EXP).astype(np.int64)


def _layer_bias(g: NeuronGroup, problems: list[str]) -> np.ndarray:
    """A layer's bias as netx takes it: per neuron (a vector), per channel, or netx's (x, y, c) array."""
    bias = _bias(g, problems)
    if len(g.shape) != 3:
        return bias
    full = bias.reshape(g.shape)
    if np.all(full == full[:, :1, :1]):
        return full[:, 0, 0].copy()
    return full.transpose(2, 1, 0).copy()


def _effective(s: Synapse, problems: list[str]) -> np.ndarray:
    """The integer weights Lava computes with, [n_dst, n_src] (dense) or the kernel (conv)."""
    w = s.op.weight.astype(np.int64)
    if s.kind == "conv":
        return w
    m = synapse_matrix(s).toarray().astype(np.int64)
    e = s.weight_exp
    if e >= 0:
        m = m << e
    elif np.any(m % (1 << -e)):
        problems.append(f"{s.name}: weights with exponent {e} are not integers (netx stores integer weights)")
    else:
        m = m >> -e
    if np.abs(m).max(initial=0) > NETX_WEIGHT:
        problems.append(f"{s.name}: weights up to {np.abs(m).max()} do not fit netx's 8 bits")
    return m


def write_netx(net: Netlist, path: Path) -> None:
    """Write ``net`` (fixed mode) as a netx network; one SncError listing everything netx cannot hold."""
    if net.mode != "fixed":
        raise SncError("netx holds Loihi's integers: export the fixed-point netlist")
    problems = [f"{', '.join(net.step_invariant())}"] if net.step_invariant() else []
    if net.gates:
        problems.append("selection gates")
    if len(net.host_ops) != 1 or net.host_ops[0].op.kind != "identity":
        problems.append("netx takes one input into one layer: the build has host ops "
                        + ", ".join(f"{h.src}->{h.dst} ({h.op.describe()})" for h in net.host_ops))
    if problems:
        raise SncError("netx cannot hold this build: " + "; ".join(problems))
    first = net.groups[net.host_ops[0].dst]
    chain = [first]
    while True:
        out = [s for s in net.synapses if s.src == chain[-1].name and s.dst != chain[-1].name]
        targets = {s.dst for s in out}
        if targets == {net.readout.name}:
            break
        if len(targets) != 1:
            raise SncError(f"netx holds chains of layers; {chain[-1].name} feeds {', '.join(sorted(targets))}")
        chain.append(net.groups[targets.pop()])
    layers: list[dict] = []
    relay = first.role == "relay"
    if not relay:
        if np.any(_bias(first, problems)):
            problems.append(f"{first.name}: netx.hdf5.Network ignores an input layer's bias")
        layers.append({"type": "input", "shape": np.array(first.shape), "neuron": _neuron(first)})
    elif len(first.shape) == 3:
        layers.append({"type": "input", "shape": np.array(first.shape)})
    for prev, g in zip(chain, chain[1:]):
        into = [s for s in net.synapses if s.dst == g.name]
        feed = [s for s in into if s.src == prev.name]
        rec = [s for s in into if s.src == g.name]
        other = [s.name for s in into if s not in feed and s not in rec]
        if other or any(s.scheduled for s in into) or g.role != "neuron" or g.reset_interval:
            problems.append(f"{g.name}: netx layers take one input layer, no per-step gains, no relays, no graded "
                            "groups, no resets"
                            + (f" (also from {', '.join(other)})" if other else ""))
            continue
        layer = {"shape": np.array(g.shape), "neuron": _neuron(g), "bias": _layer_bias(g, problems)}
        if len(feed) == 1 and feed[0].kind == "conv":
            s = feed[0]
            if s.op.upsample != 1:
                problems.append(f"{s.name}: an upsampling conv")
            layer.update(type="conv", weight=_effective(s, problems), stride=np.array([s.op.stride] * 2),
                         padding=np.array([s.op.padding] * 2), dilation=np.array([1, 1]), groups=np.int64(1))
        else:
            if len(prev.shape) == 3:
                layers.append({"type": "flatten"})
            weight = sum(_effective(s, problems) for s in feed)
            delays = {s.delay for s in feed}
            if len(delays) > 1 or next(iter(delays)):
                per = np.zeros(weight.shape, np.int64)
                for s in feed:
                    per[_effective(s, []) != 0] = s.delay
                layer["delay"] = per
            layer.update(type="dense_rec" if rec else "dense", weight=weight)
            if rec:
                layer["weight_rec"] = sum(_effective(s, problems) for s in rec)
        if rec and layer["type"] == "conv":
            problems.append(f"{g.name}: a recurrent conv layer")
        layers.append(layer)
    readout = [s for s in net.synapses if s.dst == net.readout.name]
    if len(readout) != 1 or readout[0].src != chain[-1].name or readout[0].op.kind != "identity":
        problems.append("the output must be the last layer's spikes")
    if problems:
        raise SncError("netx cannot hold this build:\n  " + "\n  ".join(problems))
    write_layers(path, layers)


def write_layers(path: Path, layers: list[dict]) -> Path:
    """netx's HDF5 layout: ``layer/<i>/<key>``, a ``neuron`` dict as the layer's neuron group, strings ASCII."""
    try:
        with h5py.File(path, "w") as f:
            root = f.create_group("layer")
            for i, layer in enumerate(layers):
                group = root.create_group(str(i))
                for key, value in layer.items():
                    if key == "neuron":
                        neuron = group.create_group("neuron")
                        for k, v in value.items():
                            neuron.create_dataset(k, data=v.encode("ascii") if isinstance(v, str) else v)
                    else:
                        group.create_dataset(key, data=value.encode("ascii") if isinstance(value, str) else value)
    except OSError as exc:
        raise SncError(f"cannot write {path}: {exc}") from None
    return Path(path)
