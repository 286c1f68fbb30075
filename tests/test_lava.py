"""Lowered graphs on Lava's CPU simulator (real Lava processes, small graphs)."""

from __future__ import annotations

import multiprocessing

import numpy as np
import pytest
import torch

from snc.compiler.export import export_model
from snc.compiler.pipeline import compile_graph
from snc.errors import SncError
from snc.models.neurons import NeuronConfig
from snc.runtime.compiled import calibrator, host_inputs
from snc.runtime.ir_executor import host_currents, run_ir
from snc.runtime.lava_backend import LavaNetwork

from conftest import make_model

SMALL_UNET = dict(ch=8, ch_mult=(1, 2), num_res_blocks=1, timestep=2)


def _compiled(preset: str, **overrides):
    model = make_model(preset, **overrides).double()
    graph = export_model(model)
    ir = compile_graph(graph, model.config.timestep, calibrate=calibrator(model, graph, n=2))
    return model, graph, ir


def _inputs(model, graph, seed: int, batch: int = 2):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 1, 8, 8, generator=g, dtype=torch.float64)
    t = torch.randint(0, 1000, (batch,), generator=g)
    return host_inputs(model, graph, x, t)


def _currents(ir, inputs):
    return {k: v.numpy() for k, v in host_currents(ir, inputs).items()}


@pytest.mark.parametrize("preset,overrides", [("digits-mlp", {}), ("digits-unet", SMALL_UNET),
                                              ("digits-unet", dict(SMALL_UNET, neuron=NeuronConfig(decay=0.75)))])
def test_lava_floating_pt_equals_the_compiled_graph(preset, overrides):
    model, graph, ir = _compiled(preset, **overrides)
    inputs = _inputs(model, graph, seed=1)
    ref = run_ir(ir, inputs, record=True)
    with LavaNetwork(ir, "float", batch=2, record=True) as net:
        out = net.call(_currents(ir, inputs))
    chip_ref = ref.readout.numpy() - ir.readout.bias - _currents(ir, inputs).get(ir.readout.name, 0)
    assert np.allclose(out.readout, chip_ref, atol=1e-9)
    for name, spikes in out.spikes.items():
        assert np.array_equal(spikes, ref.spikes[name].numpy() != 0), name


def test_fixed_pt_state_is_reset_between_calls_and_close_to_float():
    model, graph, ir = _compiled("digits-unet", **SMALL_UNET)
    a, b = _inputs(model, graph, seed=1), _inputs(model, graph, seed=2)
    with LavaNetwork(ir, "fixed", batch=2, record=True) as net:
        first = net.call(_currents(ir, a))
        net.call(_currents(ir, b))
        again = net.call(_currents(ir, a))
    assert np.array_equal(first.readout, again.readout)  # staggered LIFReset: every call starts from zero
    for name in first.spikes:
        assert np.array_equal(first.spikes[name], again.spikes[name])
    ref = run_ir(ir, a, record=True)
    same = sum((first.spikes[n] == (ref.spikes[n].numpy() != 0)).sum() for n in first.spikes)
    total = sum(s.size for s in first.spikes.values())
    assert same / total > 0.98  # 8-bit weights: close to float, not equal


def test_fixed_pt_synapses_are_bit_exact_on_their_own_spikes():
    """Lava's readout equals integer arithmetic on Lava's own spikes (upsampled convs, split signs, relays)."""
    from scipy import sparse

    from snc.compiler.lower import lower, synapse_matrix

    model, graph, ir = _compiled("digits-unet", **SMALL_UNET)
    net = lower(ir, "fixed")
    with LavaNetwork(net, "fixed", batch=2, record=True) as lava:
        out = lava.call(_currents(ir, _inputs(model, graph, seed=4)))
    expected = 0
    for s in net.synapses:
        if s.dst == net.readout.name:
            w = sparse.kron(sparse.identity(2), synapse_matrix(s)).toarray()
            spikes = out.spikes[s.src].reshape(ir.timestep, -1).astype(np.int64)
            expected = expected + (spikes @ w.T) * 2 ** s.weight_exp
    assert np.array_equal(out.readout.reshape(ir.timestep, -1) * ir.readout.scale, expected)


def test_fast_mat_vec_path_equals_lavas_binary_spike_path():
    model, graph, ir = _compiled("digits-unet", **SMALL_UNET)
    currents = _currents(ir, _inputs(model, graph, seed=3))
    results = []
    for binary in (True, False):
        with LavaNetwork(ir, "fixed", batch=2, record=True, binary_path=binary) as net:
            results.append(net.call(currents))
    assert np.array_equal(results[0].readout, results[1].readout)
    for name in results[0].spikes:
        assert np.array_equal(results[0].spikes[name], results[1].spikes[name])


def test_no_lava_process_is_left_behind_even_on_errors():
    model, graph, ir = _compiled("digits-mlp")
    currents = _currents(ir, _inputs(model, graph, seed=1))
    with LavaNetwork(ir, "fixed", batch=2) as net:
        net.call(currents)
        assert multiprocessing.active_children()
    assert not multiprocessing.active_children()
    with pytest.raises(SncError, match="host current"):
        with LavaNetwork(ir, "fixed", batch=2) as net:
            net.call(currents)
            bad = {k: v[:, :1] for k, v in currents.items()}
            net.call(bad)
    assert not multiprocessing.active_children()
