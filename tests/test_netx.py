"""lava-dl netx in and out: snc's emulator equals lava-dl's own netx.hdf5.Network on Lava fixed_pt."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import run_snc
from netx_files import networks, run_netx, write_netx, write_slayer_pool_net
from snc import api
from snc.compiler.netlist import netlist_currents
from snc.errors import GraphError, SncError
from snc.runtime.backends.emulator import EmuNetwork

STEPS = 30


def _input(name, shape, seed=1):
    rng = np.random.default_rng(seed)
    if name == "mlp":  # spikes into the first synapse
        return (rng.random((STEPS, *shape)) < 0.3).astype(np.float64)
    return rng.integers(0, 40 if name == "conv" else 20, (STEPS, *shape)).astype(np.float64)  # the input layer's


def _emu_trace(build, x):
    """Every step of every group (the run's input repeated over the pipeline tail, as snc's call feeds it)."""
    net = build.netlist("fixed").for_steps(STEPS)
    currents = netlist_currents(net, {"input": torch.as_tensor(x[:, None])})
    return net, EmuNetwork(net, 1, record=True).trace(net.call_steps, currents)


@pytest.mark.lava
@pytest.mark.parametrize("name", ["mlp", "conv"])
def test_emulator_equals_netx_network_on_lava_and_export_reloads(name, tmp_path):
    path = write_netx(tmp_path / f"{name}.net", networks()[name])
    build = api.compile(path).build
    shape = tuple(int(v) for v in build.nir_graph.nodes["input"].input_type["input"])
    x = _input(name, shape)
    net, trace = _emu_trace(build, x)
    fed = np.concatenate([x, np.repeat(x[-1:], net.call_steps - STEPS, 0)])
    theirs = run_netx(path, fed)
    layers = [g for g in net.groups if g != "input_relay"]
    assert len(layers) == len(theirs)
    for g, spikes in zip(layers, theirs):
        assert np.array_equal(trace.spikes[g][:, 0], spikes), g  # every step of every layer
        assert 0.02 < spikes.mean() < 0.5
    assert np.array_equal(api.run(build, x, backend="lava", mode="fixed").output,
                          api.run(build, x, backend="emu").output)
    again = api.export_netx(build, tmp_path / "again.net")
    assert all(np.array_equal(a, b) for a, b in zip(run_netx(again, fed), theirs))
    assert np.array_equal(api.run(api.compile(again).build, x, backend="emu").output,
                          api.run(build, x, backend="emu").output)


@pytest.mark.lava
def test_a_slayer_pool_runs_as_the_grouped_conv_netx_loads(tmp_path):
    """slayer writes pool layers that netx 0.6 cannot load; snc runs them as a conv of each channel with the
    pool's kernel, exports that as a netx conv layer, and lava-dl's own Network on Lava fixed_pt gives the
    same spikes in every layer as snc's emulator of the slayer file."""
    build = api.compile(write_slayer_pool_net(tmp_path / "pool.net")).build
    assert [g for g in build.netlist("fixed").groups] == ["layer0", "layer1", "layer2", "layer4"]
    x = _input("pool", (2, 6, 6))
    net, trace = _emu_trace(build, x)
    fed = np.concatenate([x, np.repeat(x[-1:], net.call_steps - STEPS, 0)])
    theirs = run_netx(api.export_netx(build, tmp_path / "as-conv.net"), fed)
    assert len(theirs) == len(net.groups)
    for g, spikes in zip(net.groups, theirs):
        assert np.array_equal(trace.spikes[g][:, 0], spikes), g
        assert 0.05 < spikes.mean() < 0.5
    assert np.array_equal(api.run(build, x, backend="lava", mode="fixed").output,
                          api.run(build, x, backend="emu").output)


def test_netx_run_energy_and_bad_files(tmp_path):
    path = write_netx(tmp_path / "mlp.net", networks()["mlp"])
    assert run_snc("compile", str(path), "-o", str(tmp_path / "b")).returncode == 0
    np.save(tmp_path / "x.npy", _input("mlp", (10,)))
    result = run_snc("energy", str(tmp_path / "b"), "--input", str(tmp_path / "x.npy"), "--backend", "emu", "--json")
    assert result.returncode == 0, result.stderr
    bad = networks()["mlp"]
    bad[0] = {**bad[0], "weight": np.where(np.eye(12, 10) > 0, np.nan, 1.0)}
    bad.insert(1, {"type": "average", "shape": np.array([12])})
    bad.append({"type": "spline", "shape": np.array([5])})
    bad[2] = {**bad[2], "neuron": {"type": "SDNN", "vThMant": 10}}
    write_netx(tmp_path / "bad.net", bad)
    result = run_snc("compile", str(tmp_path / "bad.net"), "-o", str(tmp_path / "c"))
    assert result.returncode == 1 and result.stderr.count("error:") == 1 and "Traceback" not in result.stderr
    assert "'average'" in result.stderr and "'spline'" in result.stderr
    write_netx(tmp_path / "nan.net", [bad[0], *networks()["mlp"][1:]])
    with pytest.raises(GraphError, match="non-finite"):
        api.compile(tmp_path / "nan.net")
    nir_build = api.compile(preset="digits-mlp", modes=("fixed",)).build  # host ops into two layers
    with pytest.raises(SncError, match="netx takes one input"):
        api.export_netx(nir_build, tmp_path / "no.net")
