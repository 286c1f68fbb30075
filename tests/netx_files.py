"""Small lava-dl netx networks written with h5py (the layout ``netx.hdf5.Network`` reads), and lava-dl's own
``netx.hdf5.Network`` run on Lava fixed_pt to compare snc with."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path
from typing import Any

import numpy as np

from snc.compiler.netx_export import write_layers


def write_netx(path: Path, layers: list[dict[str, Any]]) -> Path:
    """A netx file of ``layers`` (snc's writer of netx's layout; the tests' files are read by lava-dl)."""
    return write_layers(path, layers)


def cuba(vth: int, i_decay: int, v_decay: int) -> dict[str, Any]:
    return {"type": "CUBA", "vThMant": vth, "iDecay": i_decay, "vDecay": v_decay, "refDelay": 1, "gradedSpike": 0}


def networks(seed: int = 0) -> dict[str, list[dict[str, Any]]]:
    """A dense chain with a recurrent layer and synaptic delays (spike input), and a conv net with an input
    layer (current input), a strided grouped conv and biases per neuron and per channel; the integers
    are chosen for firing rates between about 0.05 and 0.35."""
    rng = np.random.default_rng(seed)
    mlp = [
        {"type": "dense", "shape": np.array([12]), "weight": rng.integers(-90, 100, (12, 10)),
         "bias": rng.integers(-5, 6, 12), "neuron": cuba(200, 1024, 256)},
        {"type": "dense_rec", "shape": np.array([8]), "weight": rng.integers(-100, 127, (8, 12)),
         "weight_rec": rng.integers(-60, 40, (8, 8)), "neuron": cuba(400, 2048, 512)},
        {"type": "dense", "shape": np.array([5]), "weight": rng.integers(-80, 127, (5, 8)),
         "delay": rng.integers(0, 3, (5, 8)), "neuron": cuba(300, 4096, 1024)},
    ]
    conv = [
        {"type": "input", "shape": np.array([2, 6, 6]), "neuron": cuba(28, 4096, 4096)},
        {"type": "conv", "shape": np.array([4, 6, 6]), "weight": rng.integers(-40, 100, (4, 2, 3, 3)),
         "stride": np.array([1, 1]), "padding": np.array([1, 1]), "dilation": np.array([1, 1]),
         "groups": np.int64(1), "neuron": cuba(1100, 1024, 512)},
        {"type": "conv", "shape": np.array([4, 3, 3]), "weight": rng.integers(-30, 90, (4, 2, 3, 3)),
         "stride": np.array([2, 2]), "padding": np.array([1, 1]), "dilation": np.array([1, 1]),
         "groups": np.int64(2), "bias": rng.integers(0, 20, 4), "neuron": cuba(700, 2048, 1024)},
        {"type": "flatten"},
        {"type": "dense", "shape": np.array([6]), "weight": rng.integers(-60, 90, (6, 36)), "neuron": cuba(600, 2048, 256)},
    ]
    return {"mlp": mlp, "conv": conv}


def _lava_shape(shape: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(reversed(shape))  # netx's processes are (x, y, c): a C x H x W tensor reversed


def run_netx(path: Path, x: np.ndarray) -> list[np.ndarray]:
    """lava-dl's ``netx.hdf5.Network`` on Lava fixed_pt, fed ``x`` [steps, *input_shape] (C-order shapes) into
    ``Network.inp`` (spikes, or the input layer's current): every layer's spikes [steps, n], C order."""
    from lava.magma.core.run_conditions import RunSteps
    from lava.magma.core.run_configs import Loihi2SimCfg
    from lava.proc.io.sink import RingBuffer as Sink
    from lava.proc.io.source import RingBuffer as Source

    with contextlib.redirect_stdout(io.StringIO()):
        from lava.lib.dl.netx.hdf5 import Network

        net = Network(net_config=str(path))
    steps = x.shape[0]
    in_shape = net.inp.shape
    data = np.moveaxis(x.reshape(steps, *reversed(in_shape)).transpose(0, *range(x.ndim - 1, 0, -1)), 0, -1)
    source = Source(data=data.astype(np.int32))
    first = net.layers[0]
    # netx leaves an input layer's inp port unconnected: its current goes into the neuron's a_in
    source.s_out.connect(first.neuron.a_in if type(first).__name__ == "Input" else net.inp)
    sinks = []
    for layer in net.layers:
        sink = Sink(shape=layer.out.shape, buffer=steps)
        layer.out.connect(sink.a_in)
        sinks.append(sink)
    try:
        net.run(condition=RunSteps(num_steps=steps), run_cfg=Loihi2SimCfg(select_tag="fixed_pt"))
        recorded = [s.data.get() for s in sinks]
    finally:
        net.stop()
    out = []
    for layer, r in zip(net.layers, recorded):
        shape = layer.out.shape  # (x, y, c) or (n,)
        r = np.moveaxis(r, -1, 0)  # [steps, *shape]
        if len(shape) == 3:
            r = r.transpose(0, 3, 2, 1)  # -> [steps, c, y, x]
        out.append(r.reshape(steps, -1) != 0)
    return out


def write_slayer_pool_net(path: Path, seed: int = 0) -> Path:
    """A network written by lava-dl's own writer (slayer blocks' ``export_hdf5``): input layer, conv, a 2x2
    ``pool`` (which netx 0.6 cannot load), flatten, dense."""
    import h5py
    import torch

    with contextlib.redirect_stdout(io.StringIO()):
        import lava.lib.dl.slayer as slayer

    neuron = {"threshold": 1.25, "current_decay": 0.25, "voltage_decay": 0.03, "requires_grad": False}
    torch.manual_seed(seed)
    blocks = [slayer.block.cuba.Input(neuron), slayer.block.cuba.Conv(neuron, 2, 4, 3, padding=1, weight_scale=2),
              slayer.block.cuba.Pool(neuron, 2, stride=2), slayer.block.cuba.Flatten(),
              slayer.block.cuba.Dense(neuron, 4 * 3 * 3, 5, weight_scale=2)]
    x = torch.zeros(1, 2, 6, 6, 2)
    with torch.no_grad():
        for block in blocks:  # slayer blocks learn their shapes in a first forward pass
            x = block(x)
    with h5py.File(path, "w") as f:
        layers = f.create_group("layer")
        for i, block in enumerate(blocks):
            block.export_hdf5(layers.create_group(str(i)))
    return path
