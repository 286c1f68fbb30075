"""Netlists on Lava's CPU simulator (real Lava processes, small graphs)."""

from __future__ import annotations

import multiprocessing

import numpy as np
import pytest
import torch

from snc.compiler.ir_executor import run_ir
from snc.compiler.netlist import netlist_currents, synapse_matrix
from snc.errors import SncError
from snc.models.neurons import NeuronConfig
from snc.runtime.backends.lava import LavaNetwork

from conftest import compile_model, deploy, make_model

pytestmark = pytest.mark.lava
SMALL_UNET = dict(ch=8, ch_mult=(1, 2), num_res_blocks=1, timestep=2)


def _compiled(preset: str, residual: str = "graded", **overrides):
    """(host program, compiled IR, build) of a small calibrated model."""
    dep = deploy(make_model(preset, **overrides).double())
    result = compile_model(dep, calibration=2, residual=residual)
    return dep.host, result.graph, result.build


def _inputs(host, seed: int, batch: int = 2):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 1, 8, 8, generator=g, dtype=torch.float64)
    t = torch.randint(0, 1000, (batch,), generator=g)
    return host.call_inputs(x, t)


# leaky neurons on Lava floating_pt: the MLP's here, SpikingJelly's LIF in test_spiking_diffusion_chip.py and
# the frameworks' LIF / CubaLIF in test_nir_frameworks.py
@pytest.mark.parametrize("preset,overrides", [("digits-mlp", dict(neuron=NeuronConfig(decay=0.75))),
                                              ("digits-unet", SMALL_UNET)])
def test_lava_floating_pt_equals_the_compiled_graph(preset, overrides):
    host, ir, build = _compiled(preset, **overrides)
    inputs = _inputs(host, seed=1, batch=1)  # batches of several images on Lava: the other tests and snc verify
    ref = run_ir(ir, inputs, record=True)
    net = build.netlist("float")
    currents = netlist_currents(net, inputs)
    with LavaNetwork(net, batch=1, record=True) as lava:
        out = lava.call(currents)
    chip_ref = ref.readout.numpy() - ir.readout.bias - currents.get(ir.readout.name, 0)
    assert np.allclose(out.readout, chip_ref, atol=1e-9)
    for name, spikes in out.spikes.items():
        assert np.array_equal(spikes, ref.spikes[name].numpy() != 0), name


def test_fixed_pt_state_is_reset_between_calls_and_close_to_float():
    host, ir, build = _compiled("digits-unet", **SMALL_UNET)
    net = build.netlist("fixed")
    a, b = _inputs(host, seed=1), _inputs(host, seed=2)
    with LavaNetwork(net, batch=2, record=True) as lava:
        first = lava.call(netlist_currents(net, a))
        lava.call(netlist_currents(net, b))
        again = lava.call(netlist_currents(net, a))
    assert np.array_equal(first.readout, again.readout)  # staggered LIFReset: every call starts from zero
    for name in first.spikes:
        assert np.array_equal(first.spikes[name], again.spikes[name])
    ref = run_ir(ir, a, record=True)
    same = sum((first.spikes[n] == (ref.spikes[n].numpy() != 0)).sum() for n in first.spikes)
    total = sum(s.size for s in first.spikes.values())
    assert same / total > 0.98  # 8-bit weights: close to float, not equal


def test_fixed_pt_synapses_are_bit_exact_on_their_own_spikes():
    """Lava's readout equals integer arithmetic on Lava's own spikes (upsampled convs, split signs, relays;
    re-associated, so that the readout reads binary spikes: graded payloads are test_emulator's)."""
    host, _, build = _compiled("digits-unet", residual="reassociate", **SMALL_UNET)
    net = build.netlist("fixed")
    with LavaNetwork(net, batch=1, record=True) as lava:  # integer arithmetic does not depend on the batch
        out = lava.call(netlist_currents(net, _inputs(host, seed=4, batch=1)))
    expected = 0
    for s in net.synapses:
        if s.dst == net.readout.name:
            w = synapse_matrix(s).toarray()
            spikes = out.spikes[s.src].reshape(net.timestep, -1).astype(np.int64)
            expected = expected + (spikes @ w.T) * 2 ** s.weight_exp
    assert np.array_equal(out.readout.reshape(net.timestep, -1) * net.readout.scale, expected)


def test_fast_mat_vec_path_equals_lavas_binary_spike_path():
    host, _, build = _compiled("digits-unet", **SMALL_UNET)
    net = build.netlist("fixed")
    currents = {name: value[:, :1] for name, value in netlist_currents(net, _inputs(host, seed=3)).items()}
    results = []
    for binary in (True, False):  # one image: Lava's binary path is slow, and the paths do not differ by batch
        with LavaNetwork(net, batch=1, record=True, binary_path=binary) as lava:
            results.append(lava.call(currents))
    assert np.array_equal(results[0].readout, results[1].readout)
    for name in results[0].spikes:
        assert np.array_equal(results[0].spikes[name], results[1].spikes[name])


def test_no_lava_process_is_left_behind_even_on_errors():
    host, _, build = _compiled("digits-mlp")
    net = build.netlist("fixed")
    currents = netlist_currents(net, _inputs(host, seed=1))
    with LavaNetwork(net, batch=2) as lava:
        lava.call(currents)
        assert multiprocessing.active_children()
    assert not multiprocessing.active_children()
    with pytest.raises(SncError, match="host current"):
        with LavaNetwork(net, batch=2) as lava:
            lava.call(currents)
            bad = {k: v[:, :1] for k, v in currents.items()}
            lava.call(bad)
    assert not multiprocessing.active_children()
