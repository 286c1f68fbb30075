"""The pass pipeline: linear algebra of re-association, each pass's guarantees, errors."""

from __future__ import annotations

import nir
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from snc.compiler.ir import HostInput, Linear, Population
from snc.compiler.ir_executor import run_ir
from snc.compiler.linear import LinearOp, compose, upsample_op
from snc.compiler.passes.quantize import quantize_weights
from snc.compiler.targets import get_target
from snc.errors import GraphError
from snc.compiler.nir_reference import NIRReference

from conftest import compile_model, compile_nir, deploy, make_model

FIXED = get_target("loihi2").rules


def _rand(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


@pytest.mark.parametrize("stride,padding,upsample", [(1, 1, 1), (2, 1, 1), (1, 0, 1), (1, 1, 2)])
def test_conv_matrix_equals_torch(stride, padding, upsample):
    w = _rand(5, 3, 3, 3).numpy()
    op = LinearOp.conv(w, (3, 6, 6), stride, padding, upsample)
    x = _rand(2, 3, 6, 6, seed=1)
    up = F.interpolate(x, scale_factor=upsample, mode="nearest") if upsample > 1 else x
    expect = F.conv2d(up, torch.from_numpy(w), stride=stride, padding=padding)
    via_matrix = (op.to_csr() @ x.reshape(2, -1).numpy().T).T.reshape(expect.shape)
    assert np.allclose(via_matrix, expect.numpy(), atol=1e-12)
    assert np.allclose(op.apply(x).numpy(), expect.numpy(), atol=1e-12)
    assert op.synapse_count() == op.to_csr().nnz  # border- and upsample-aware count is exact


def test_compositions_are_exact():
    x = _rand(2, 4, 4, 4)
    conv = LinearOp.conv(_rand(6, 4, 3, 3).numpy(), (4, 4, 4), 1, 1)
    point = LinearOp.conv(_rand(3, 6, 1, 1).numpy(), (6, 4, 4), 1, 0)
    composed = compose(point, conv)
    assert composed.kind == "conv" and composed.weight.shape == (3, 4, 3, 3)  # stays a kernel
    assert torch.allclose(composed.apply(x), point.apply(conv.apply(x)), atol=1e-12)
    up = upsample_op((4, 4, 4), 2)
    after_up = LinearOp.conv(_rand(5, 4, 3, 3).numpy(), (4, 8, 8), 1, 1)
    folded = compose(after_up, up)
    assert folded.kind == "conv" and folded.upsample == 2
    assert torch.allclose(folded.apply(x), after_up.apply(up.apply(x)), atol=1e-12)
    d1 = LinearOp.dense(_rand(5, 64).numpy(), (4, 4, 4), (5,))
    d2 = LinearOp.dense(_rand(3, 5).numpy(), (5,), (3,))
    assert torch.allclose(compose(d2, d1).apply(x), d2.apply(d1.apply(x)), atol=1e-12)


def test_a_reshape_after_a_conv_stays_a_kernel_with_an_output_view():
    """The lateral transformer's token sum: a conv over channels stacked as one image between two reshapes
    composes into one conv (k x k weights, not a dense matrix) whose output is a view; a kernel then never
    folds across that view."""
    x = _rand(2, 6, 4, 4)
    stack = LinearOp.identity((6, 4, 4), (1, 24, 4))
    token_sum = LinearOp.conv(np.ones((1, 1, 4, 4)), (1, 24, 4), 4, 0)  # -> (1, 6, 1)
    unstack = LinearOp.identity((1, 6, 1), (6, 1, 1))
    op = compose(unstack, compose(token_sum, stack))
    assert op.kind == "conv" and op.weight.shape == (1, 1, 4, 4)
    assert op.out_shape == (6, 1, 1) and op.conv_shape == (1, 6, 1)
    expect = unstack.apply(token_sum.apply(stack.apply(x)))
    assert torch.allclose(op.apply(x), expect, atol=1e-12)
    assert np.allclose((op.to_csr() @ x.reshape(2, -1).numpy().T).T, expect.reshape(2, -1).numpy(), atol=1e-12)
    assert op.synapse_count() == op.to_csr().nnz == 96
    assert np.array_equal(op.fan_in(), np.asarray((op.to_csr() != 0).sum(axis=1)).reshape(-1))
    mix = LinearOp.conv(_rand(3, 6, 1, 1).numpy(), (6, 1, 1), 1, 0)  # a 1x1 conv reading the view
    mixed = compose(mix, op)
    assert torch.allclose(mixed.apply(x), mix.apply(expect), atol=1e-12)

@pytest.mark.parametrize("preset,residual", [("digits-mlp", "graded"), ("digits-unet", "graded"),
                                              ("digits-unet", "reassociate")])
def test_compiled_graph_computes_what_the_nir_graph_computes(preset, residual):
    dep = deploy(make_model(preset).double())
    graph, model = dep.nir_graph, dep.host.model
    ir = compile_model(dep, calibration=2, residual=residual).graph
    x, t = _rand(3, 1, 8, 8, seed=2), torch.tensor([5, 400, 950])
    inputs = dep.host.call_inputs(x, t)
    ref = NIRReference(graph).run({k: v.unsqueeze(0).expand(model.config.timestep, *v.shape) for k, v in inputs.items()},
                                  record=True)
    run = run_ir(ir, inputs, record=True)
    assert torch.allclose(run.readout, ref["output"], atol=1e-10)
    for name, spikes in run.spikes.items():
        if ir.nodes[name].role == "neuron":
            assert torch.equal(spikes, ref[name]), name
    assert not list(ir.of_type(Linear))
    for e in ir.edges:  # every on-chip synapse carries spikes, every delay is balanced
        src, dst = ir.nodes[e.src], ir.nodes[e.dst]
        assert isinstance(src, (Population, HostInput))
        if isinstance(src, Population):
            assert dst.depth == src.depth + 1 + e.delay
            assert np.abs(e.fixed["weight"]).max() <= 256
    for p in ir.of_type(Population):
        assert 0 < p.fixed["vth"] < 2 ** FIXED.vth_bits or (p.graded and p.fixed["vth"] == 0)
        assert np.abs(p.fixed["bias_mant"]).max(initial=0) < 2 ** (FIXED.bias_mant_bits - 1)


def test_unet_reassociation_report_and_relays():
    ir = compile_model(make_model("digits-unet")).graph
    log = {entry["pass"]: entry for entry in ir.log}
    assert log["partition_host"]["host_ops"] == ["conv"]  # the analog stem conv of direct encoding
    assert log["reassociate"]["rewritten"], "residual and skip paths must be rewritten"
    assert all(r["through"] for r in log["reassociate"]["rewritten"])
    relays = [p for p in ir.of_type(Population) if p.role == "relay"]
    assert relays and all(e.delay == 0 or e.op.kind == "identity" for e in ir.edges)
    assert ir.depth == max(p.depth for p in ir.of_type(Population)) + 1


def test_threshold_guidance_survives_quantization_or_is_refused():
    dep = deploy(make_model("digits-mlp"))
    plain = compile_model(dep).graph
    guided = compile_model(dep, threshold_scale=0.997).graph
    for name, p in guided.nodes.items():
        if isinstance(p, Population) and p.role == "neuron":
            before = plain.nodes[name].fixed["vth"]
            assert p.fixed["vth"] == round(plain.nodes[name].threshold * 0.997 * p.scale) != before
            assert p.threshold == pytest.approx(plain.nodes[name].threshold * 0.997)
    with pytest.raises(GraphError, match="rounds away in"):
        compile_model(dep, threshold_scale=1.00001)


def test_quantize_weights_follow_the_targets_rules():
    mixed, exp, err = quantize_weights(np.array([0.5, -0.25, 0.001]), 1024.0, FIXED)
    assert exp == 2 and np.all(mixed % 2 == 0) and err < 0.01  # mixed sign: Lava drops the low bit
    single, exp, _ = quantize_weights(np.array([0.5, 0.25]), 1000.0, FIXED)
    assert single.max() <= 255 and exp == 1 and single.tolist() == [250, 125]


def test_upsampled_conv_synapses_fit_after_taps_are_summed():
    from snc.compiler.passes.quantize import synapse_range

    kernel = np.ones((2, 2, 3, 3))  # after nearest x2 one input feeds up to 2x2 taps: weights sum
    w_int, exp, _ = quantize_weights(kernel, 100.0, FIXED, upsample=2)
    matrix = LinearOp.conv(w_int.astype(float), (2, 4, 4), 1, 1, upsample=2).to_csr()
    assert matrix.data.max() <= 255 and synapse_range(w_int, 2)[1] >= matrix.data.max()
    assert exp == 1  # 4 taps x 100 needs one more bit than one tap


def _graph_with(nodes, edges):
    return nir.NIRGraph(nodes=nodes, edges=edges)


def test_out_of_range_parameters_are_all_listed():
    big = np.full((4, 4), 1e7)
    neuron = lambda: nir.IF(r=np.full(4, 1e4), v_threshold=np.ones(4), v_reset=np.zeros(4))  # noqa: E731
    nodes = {
        "input": nir.Input(input_type=np.array([4])),
        "a": nir.Affine(weight=np.eye(4), bias=np.zeros(4)),
        "n1": neuron(), "b": nir.Linear(weight=big), "n2": neuron(), "c": nir.Linear(weight=big), "n3": neuron(),
        "d": nir.Linear(weight=np.eye(4)),
        "output": nir.Output(output_type=np.array([4])),
    }
    edges = [("input", "a"), ("a", "n1"), ("n1", "b"), ("b", "n2"), ("n2", "c"), ("c", "n3"), ("n3", "d"),
             ("d", "output")]
    with pytest.raises(GraphError) as err:
        compile_nir(_graph_with(nodes, edges), timestep=2)
    message = str(err.value)
    assert "n2: threshold 1 rounds to vth 0" in message and "n3: threshold 1" in message
    assert "2 parameter(s)" in message


def test_unknown_and_non_finite_nodes_are_refused():
    nodes = {
        "input": nir.Input(input_type=np.array([4])),
        "li": nir.LI(tau=np.full(4, 1e-3), r=np.ones(4), v_leak=np.zeros(4)),
        "a": nir.Affine(weight=np.eye(4), bias=np.zeros(4)),
        "output": nir.Output(output_type=np.array([4])),
    }
    with pytest.raises(GraphError, match="li: a non-spiking LI is supported only as the neuron the graph's Output"):
        compile_nir(_graph_with(nodes, [("input", "li"), ("li", "a"), ("a", "output")]), timestep=1)
    nodes = {
        "input": nir.Input(input_type=np.array([2])),
        "a": nir.Affine(weight=np.array([[np.nan, 0], [0, 1]]), bias=np.zeros(2)),
        "output": nir.Output(output_type=np.array([2])),
    }
    with pytest.raises(GraphError, match="non-finite"):
        compile_nir(_graph_with(nodes, [("input", "a"), ("a", "output")]), timestep=1)


def test_build_directory_round_trip(tmp):
    from snc.compiler.build import read_build, write_build

    build = compile_model(make_model("digits-unet")).build
    write_build(tmp / "build", build, None)
    back = read_build(tmp / "build")
    for mode in ("fixed", "float"):
        a, b = build.netlist(mode), back.netlist(mode)
        assert a.groups.keys() == b.groups.keys() and [s.name for s in a.synapses] == [s.name for s in b.synapses]
        for s, t in zip(a.synapses, b.synapses):
            assert (s.src, s.dst, s.delay, s.op.geometry()) == (t.src, t.dst, t.delay, t.op.geometry())
            assert np.array_equal(s.op.weight, t.op.weight) and s.op.weight.dtype == t.op.weight.dtype
        for name, g in a.groups.items():
            h = b.groups[name]
            assert np.array_equal(g.bias_mant, h.bias_mant) and (g.vth, g.du, g.dv, g.role) == (h.vth, h.du, h.dv, h.role)
        assert [(h.src, h.dst, h.origin) for h in a.host_ops] == [(h.src, h.dst, h.origin) for h in b.host_ops]
    assert back.has_host and back.host.model.config == build.host.model.config

