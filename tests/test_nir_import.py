"""Reading NIR as others write it: every primitive Loihi 2 can run, against snc's float NIR reference."""

from __future__ import annotations

import re

import h5py
import nir
import numpy as np
import pytest
import torch

from conftest import run_snc
from snc import api
from snc.compiler.frontends import GraphOptions
from snc.compiler.ir_executor import run_ir
from snc.compiler.nir_normalise import normalise
from snc.compiler.passes.import_nir import import_graph
from snc.errors import GraphError, SncError

STEPS, BATCH = 24, 3
DT = 1e-4


def _if(n, thr=1.0):
    return nir.IF(r=np.full(n, 1 / DT), v_threshold=np.full(n, thr), v_reset=np.zeros(n))


def _lif(shape, beta=0.8, thr=1.0, leak=0.0):
    tau = DT / (1 - beta)
    return nir.LIF(tau=np.full(shape, tau), r=np.full(shape, tau / DT), v_leak=np.full(shape, leak),
                   v_threshold=np.full(shape, thr), v_reset=np.zeros(shape))


def _chain(*nodes, input_shape):
    """input -> nodes... -> output, with types left for snc to infer (as exporters leave them)."""
    names = {f"n{i}": n for i, n in enumerate(nodes)}
    graph_nodes = {"input": nir.Input(input_type=np.array(input_shape)), **names,
                   "output": nir.Output(output_type=np.array([1]))}
    order = ["input", *names, "output"]
    return nir.NIRGraph(nodes=graph_nodes, edges=list(zip(order, order[1:])), type_check=False)


def _inputs(shape, scale=1.0, seed=0):
    return (np.random.default_rng(seed).random((STEPS, BATCH, *shape)) * scale).astype(np.float64)


def _compiled(graph, x, **options):
    return api.compile(graph, graph=GraphOptions(dt=DT, calibration=x, **options))


def _ir_output(compiled, x):
    return run_ir(compiled.result.graph, {"input": torch.as_tensor(x)}).readout.numpy()


def _agree(graph, x, tol=0.0):
    """The compiled IR's output against the NIR reference (float64), and the emulator's against the IR."""
    compiled = _compiled(graph, x)
    reference = api.run(compiled.build, x, backend="reference").output
    ir = _ir_output(compiled, x)
    assert ir.shape == reference.shape
    np.testing.assert_allclose(ir, reference, rtol=0, atol=tol)
    emu = api.run(compiled.build, x, backend="emu").output
    return compiled, reference, emu


CONVS = {
    "dilation 2": nir.Conv2d(None, np.random.default_rng(1).normal(size=(3, 2, 3, 3)), 1, 2, 2, 1, np.full(3, 0.1)),
    "groups 2": nir.Conv2d(None, np.random.default_rng(2).normal(size=(4, 1, 3, 3)), 1, 1, 1, 2, np.zeros(4)),
    "same, even kernel": nir.Conv2d(None, np.random.default_rng(3).normal(size=(3, 2, 2, 2)), 1, "same", 1, 1,
                                    np.zeros(3)),
    "stride (2, 1), padding (1, 0)": nir.Conv2d(None, np.random.default_rng(4).normal(size=(3, 2, 3, 3)), (2, 1),
                                                (1, 0), 1, 1, np.zeros(3)),
    "non-square kernel": nir.Conv2d(None, np.random.default_rng(5).normal(size=(3, 2, 1, 3)), 1, 0, 1, 1,
                                    np.zeros(3)),
}


@pytest.mark.parametrize("name", list(CONVS))
def test_every_conv2d_form_matches_the_reference(name):
    conv = CONVS[name]
    graph = _chain(conv, nir.IF(r=np.array(1 / DT), v_threshold=np.array(1.0), v_reset=np.array(0.0)),
                   nir.Flatten(None, 0, -1), input_shape=[2, 6, 6])
    x = _inputs((2, 6, 6), 1.0)
    # the output is the IF's spikes: equal, not close (float64 on both sides, same sums up to rounding)
    compiled, reference, emu = _agree(graph, x, tol=0.0)
    assert 0.02 < reference.mean() < 0.9
    assert (emu == reference).mean() >= 0.99


def test_conv1d_sumpool_avgpool_and_a_scale():
    rng = np.random.default_rng(6)
    conv1d = _chain(nir.Conv1d(None, rng.normal(size=(3, 2, 3)), 1, 1, 1, 1, np.zeros(3)), _if(1), input_shape=[2, 8])
    x = _inputs((2, 8))
    _agree(conv1d, x)
    pools = _chain(nir.Conv2d(None, rng.normal(size=(2, 1, 3, 3)) + 0.3, 1, 1, 1, 1, np.zeros(2)), _if(1, 0.5),
                   nir.SumPool2d(np.array([2, 2]), np.array([2, 2]), np.array([0, 0])), _if(1, 1.5),
                   nir.AvgPool2d(np.array([2, 1]), np.array([2, 1]), np.array([0, 0])),
                   nir.Scale(np.array([2.0, 0.5]).reshape(2, 1, 1)), _if(1, 0.4), input_shape=[1, 8, 8])
    compiled, reference, emu = _agree(pools, _inputs((1, 8, 8), 1.5))
    assert reference.shape == (STEPS, BATCH, 2, 2, 4) and reference.mean() > 0.05


def test_cubalif_threshold_and_leak_match_the_reference():
    n = 5
    tau_syn, tau_mem = DT / 0.3, DT / 0.1
    cuba = nir.CubaLIF(tau_syn=np.full(n, tau_syn), tau_mem=np.full(n, tau_mem), r=np.full(n, tau_mem / DT),
                       v_leak=np.full(n, 0.2), v_threshold=np.full(n, 1.0), v_reset=np.zeros(n),
                       w_in=np.full(n, tau_syn / DT))
    graph = _chain(nir.Affine(np.random.default_rng(7).normal(size=(n, 4)), np.full(n, 0.1)), cuba,
                   nir.Affine(np.random.default_rng(8).normal(size=(3, n)), np.zeros(3)),
                   nir.Threshold(np.full(3, 0.3)), input_shape=[4])
    compiled, reference, emu = _agree(graph, _inputs((4,), 1.0))
    pops = {p.name: p for p in compiled.result.graph.nodes.values() if hasattr(p, "current_decay")}
    assert pops["n1"].current_decay == pytest.approx(0.7) and pops["n1"].decay == pytest.approx(0.9)
    assert "n1.input_bias" in pops  # the Affine's bias reaches u through a synapse, not Lava's v bias
    # a memoryless Threshold on real-valued sums flips where 8-bit weights move a sum across it
    assert 0.05 < reference.mean() < 0.9 and (emu == reference).mean() >= 0.95


def test_per_neuron_thresholds_and_gains_are_mapped_exactly():
    lif = _lif(6)
    lif.v_threshold = np.linspace(0.5, 2.0, 6)
    lif.r = lif.r * np.linspace(1.0, 3.0, 6)
    graph = _chain(nir.Affine(np.random.default_rng(9).normal(size=(6, 4)) + 0.5, np.zeros(6)), lif,
                   input_shape=[4])
    compiled, reference, emu = _agree(graph, _inputs((4,), 2.0))
    imported = import_graph(normalise(graph, dt=DT).graph, STEPS, dt=DT)
    assert imported.nodes["n1.input_scale"].op.kind == "dense"  # each neuron's input scaled to one threshold
    assert 0.05 < reference.mean() < 0.9 and (emu == reference).mean() >= 0.99

def test_per_neuron_time_constants_become_one_population_each():
    lif = _lif(6)
    lif.tau = np.array([2e-4, 5e-4, 2e-4, 1e-3, 5e-4, 2e-4])  # three distinct decays
    lif.v_threshold = np.linspace(0.5, 1.5, 6)
    cuba = nir.CubaLIF(tau_syn=np.array([DT / 0.3, DT / 0.5, DT / 0.3, DT / 0.5]), tau_mem=np.full(4, DT / 0.1),
                       r=np.full(4, 10.0), v_leak=np.zeros(4), v_threshold=np.ones(4), v_reset=np.zeros(4),
                       w_in=np.array([DT / 0.3 / DT, DT / 0.5 / DT] * 2))
    rng = np.random.default_rng(15)
    graph = _chain(nir.Affine(rng.normal(size=(6, 4)) + 0.5, np.full(6, 0.05)), lif,
                   nir.Affine(rng.normal(size=(4, 6)) + 0.3, np.full(4, 0.1)), cuba, input_shape=[4])
    compiled, reference, emu = _agree(graph, _inputs((4,), 2.0))
    net = compiled.build.netlist("fixed")
    parts = {node: [g for g in net.groups if re.fullmatch(rf"{node}\.part\d", g)] for node in ("n1", "n3")}
    assert parts["n1"] == ["n1.part0", "n1.part1", "n1.part2"] and "n1" not in net.groups
    assert sorted(net.groups[g].dv for g in parts["n1"]) == [410, 819, 2048]  # 4096 dt / tau
    assert sorted(net.groups[g].du for g in parts["n3"]) == [1228, 2047]  # 4095 - round(4096 current_decay)
    assert 0.05 < reference.mean() < 0.9 and (emu == reference).mean() >= 0.98
    many = _chain(nir.Affine(np.ones((100, 4)), np.zeros(100)), _lif(100), input_shape=[4])
    many.nodes["n1"].tau = np.linspace(2e-4, 5e-4, 100)
    with pytest.raises(GraphError, match="n1: its time constants take 100 values over 100 neurons"):
        _compiled(many, _inputs((4,)))


@pytest.mark.parametrize("kind", ["LI", "CubaLI", "I"])
def test_non_spiking_outputs_are_integrated_on_the_host(kind):
    n = 3
    out = {"LI": nir.LI(tau=np.full(n, DT / 0.2), r=np.ones(n), v_leak=np.full(n, 0.1)),
           "CubaLI": nir.CubaLI(tau_syn=np.full(n, DT / 0.5), tau_mem=np.full(n, DT / 0.2), r=np.ones(n),
                                v_leak=np.zeros(n), w_in=np.ones(n)),
           "I": nir.I(r=np.full(n, 1 / DT))}[kind]
    graph = _chain(nir.Affine(np.random.default_rng(10).normal(size=(5, 4)) + 0.4, np.zeros(5)), _lif(5, 0.9, 0.8),
                   nir.Affine(np.random.default_rng(11).normal(size=(n, 5)), np.full(n, 0.05)), out, input_shape=[4])
    compiled, reference, emu = _agree(graph, _inputs((4,), 1.5), tol=1e-9)
    assert compiled.build.netlist("fixed").readout.filters
    assert np.abs(reference).max() > 0.05
    np.testing.assert_allclose(emu, reference, atol=0.05 * np.abs(reference).max())  # fixed-point weights


def test_mid_graph_non_spiking_neuron_and_algebraic_loop_are_refused():
    li = nir.LI(tau=np.full(4, 1e-3), r=np.ones(4), v_leak=np.zeros(4))
    with pytest.raises(GraphError, match="n0: a non-spiking LI is supported only as the neuron the graph's Output"):
        _compiled(_chain(li, nir.Affine(np.eye(4), np.zeros(4)), input_shape=[4]), _inputs((4,)))
    loop = nir.NIRGraph(nodes={"input": nir.Input(np.array([2])), "a": nir.Affine(np.eye(2), np.zeros(2)),
                               "b": nir.Linear(np.eye(2)), "output": nir.Output(np.array([2]))},
                        edges=[("input", "a"), ("a", "b"), ("b", "a"), ("b", "output")], type_check=False)
    with pytest.raises(GraphError, match="algebraic loop"):
        normalise(loop)


def test_dt_from_metadata_or_option_and_the_norse_tau_hint():
    graph = _chain(nir.Affine(np.ones((2, 2)), np.zeros(2)), _lif(2), input_shape=[2])
    assert normalise(graph).dt == 1e-4 and "assuming dt" in normalise(graph).warnings[0]
    graph.metadata = {"dt": 1e-3}
    assert normalise(graph).dt == 1e-3
    assert normalise(graph, dt=2e-4).dt == 2e-4
    # norse 1.1 writes dt * tau: read as NIR the decay is impossible, and the error says what to do
    norse_like = _chain(nir.Affine(np.ones((2, 2)), np.zeros(2)),
                        nir.LIF(tau=np.full(2, 1e-5), r=np.ones(2), v_leak=np.zeros(2), v_threshold=np.ones(2),
                                v_reset=np.zeros(2)), input_shape=[2])
    with pytest.raises(GraphError, match="--nir-convention norse"):
        api.compile(norse_like, graph=GraphOptions(dt=1e-3))
    compiled = api.compile(norse_like, graph=GraphOptions(dt=1e-3, convention="norse"))
    assert compiled.result.graph.nodes["n1"].decay == pytest.approx(0.9)


def test_bad_files_give_one_error_listing_every_problem(tmp_path):
    good = _chain(nir.Affine(np.ones((2, 2)), np.zeros(2)), _lif(2), input_shape=[2])
    path = tmp_path / "unknown.nir"
    nir.write(str(path), normalise(good).graph)
    with h5py.File(path, "r+") as f:  # two node types no NIR version defines
        for name in ("n0", "n1"):
            del f[f"node/nodes/{name}/type"]
            f[f"node/nodes/{name}/type"] = {"n0": "Spline", "n1": "Quantum"}[name]
    result = run_snc("compile", str(path), "-o", str(tmp_path / "b"))
    assert result.returncode == 1 and result.stderr.count("error:") == 1 and "Traceback" not in result.stderr
    assert "n0 (Spline)" in result.stderr and "n1 (Quantum)" in result.stderr
    nan = normalise(good).graph
    nan.nodes["n0"].weight = np.array([[np.nan, 1.0], [0.0, 1.0]])
    nir.write(str(tmp_path / "nan.nir"), nan)
    result = run_snc("compile", str(tmp_path / "nan.nir"), "-o", str(tmp_path / "b"))
    assert result.returncode == 1 and "n0.weight" in result.stderr and "Traceback" not in result.stderr
    shapes = _chain(nir.Affine(np.ones((3, 2)), np.zeros(3)), _lif(3), nir.Affine(np.ones((2, 5)), np.zeros(2)),
                    _lif(2), nir.Affine(np.ones((2, 7)), np.zeros(2)), input_shape=[2])
    with pytest.raises(GraphError) as err:
        normalise(shapes)
    assert "n2: input of shape (3,) into a weight of shape (2, 5)" in str(err.value)


def test_run_and_energy_of_a_compiled_nir_file(tmp_path):
    graph = _chain(nir.Affine(np.random.default_rng(12).normal(size=(6, 4)) + 0.5, np.zeros(6)), _lif(6, 0.9),
                   nir.Affine(np.random.default_rng(13).normal(size=(3, 6)), np.zeros(3)), _lif(3, 0.8, 0.5),
                   input_shape=[4])
    nir.write(str(tmp_path / "g.nir"), normalise(graph).graph)
    x = _inputs((4,), 2.0)
    np.save(tmp_path / "x.npy", x)
    assert run_snc("compile", str(tmp_path / "g.nir"), "--calibrate", str(tmp_path / "x.npy"),
                   "-o", str(tmp_path / "b")).returncode == 0
    longer = np.concatenate([x, x])  # the build runs any number of steps
    np.save(tmp_path / "long.npy", longer[:, 0])  # [steps, *input_shape]: one sequence
    result = run_snc("run", str(tmp_path / "b"), "--input", str(tmp_path / "long.npy"), "-o",
                     str(tmp_path / "out.npz"), "--json")
    assert result.returncode == 0, result.stderr
    with np.load(tmp_path / "out.npz") as out:
        output = out["output"]
        counts = {k: out[k] for k in out.files if k.startswith("count/")}
    assert output.shape == (2 * STEPS, 1, 3)
    reference = api.run(tmp_path / "b", longer[:, :1], backend="reference")
    assert (output == reference.output).mean() >= 0.99 and counts["count/n1"].shape == (1, 6)
    energy = run_snc("energy", str(tmp_path / "b"), "--input", str(tmp_path / "x.npy"), "--backend", "emu",
                     "--json")
    assert energy.returncode == 0, energy.stderr
    bad = np.zeros((5, 7))
    np.save(tmp_path / "bad.npy", bad)
    result = run_snc("run", str(tmp_path / "b"), "--input", str(tmp_path / "bad.npy"))
    assert result.returncode == 1 and "the graph's input is (4,)" in result.stderr and "Traceback" not in result.stderr


def test_an_in_memory_graph_with_exporter_faults_is_read_with_warnings():
    lif = nir.LIF(tau=np.array(1e-3), r=np.array(10.0), v_leak=np.array(0.0), v_threshold=np.array(1.0),
                  v_reset=np.array(0.0))  # 0-d parameters, as nirtorch's exporters leave them
    graph = nir.NIRGraph(nodes={"input": nir.Input(np.array([1, 4])), "fc": nir.Affine(np.ones((3, 4)), np.zeros(3)),
                                "lif": lif, "output": nir.Output(np.array([1, 3]))},
                         edges=[("input", "fc"), ("fc", "lif"), ("lif", "output")], type_check=False)
    d = api.load(graph, graph=GraphOptions(dt=1e-4))
    text = " ".join(d.warnings)
    assert "batch dimension" in text and "broadcast to the (3,) neurons" in text
    assert d.nir_graph.nodes["lif"].v_threshold.shape == (3,)
    with pytest.raises(SncError, match="--dt, --nir-convention"):
        api.load("models/checkpoints/digits-mlp.pt", graph=GraphOptions(dt=1e-3))


def _delayed_graph(lag_forward=3, lag_loop=2):
    """A LIF layer feeding the next both directly and through a Delay of ``lag_forward`` steps; the second
    layer closes a loop onto itself through a Delay of ``lag_loop`` steps."""
    rng = np.random.default_rng(14)
    nodes = {"input": nir.Input(np.array([4])), "fc0": nir.Affine(rng.normal(size=(6, 4)) + 0.6, np.zeros(6)),
             "a": _lif(6, 0.8), "late": nir.Delay(np.full(6, lag_forward * DT)),
             "fc_late": nir.Linear(rng.normal(size=(5, 6)) + 0.4), "fc_now": nir.Linear(rng.normal(size=(5, 6)) * 0.5),
             "b": _lif(5, 0.85), "loop": nir.Delay(np.full(5, lag_loop * DT)), "fc_loop": nir.Linear(-0.6 * np.eye(5)),
             "output": nir.Output(np.array([5]))}
    edges = [("input", "fc0"), ("fc0", "a"), ("a", "late"), ("late", "fc_late"), ("fc_late", "b"), ("a", "fc_now"),
             ("fc_now", "b"), ("b", "loop"), ("loop", "fc_loop"), ("fc_loop", "b"), ("b", "output")]
    return nir.NIRGraph(nodes=nodes, edges=edges, type_check=False)


def test_delays_of_several_steps_feed_forward_and_in_a_loop():
    graph = _delayed_graph()
    x = _inputs((4,), 1.5)
    compiled, reference, emu = _agree(graph, x)
    lags = {s.lag for s in compiled.build.netlist("fixed").synapses if s.lag}
    assert lags == {2, 3}  # lagged synapses, windowed to the spikes that land in their target's window
    assert 0.05 < reference.mean() < 0.9 and (emu == reference).mean() >= 0.99
    one_step = api.run(_compiled(_delayed_graph(1, 1), x).build, x, backend="reference").output
    assert not np.array_equal(one_step, reference)  # the delays change what the network does
    uneven = _delayed_graph()
    uneven.nodes["late"] = nir.Delay(np.array([DT, 2 * DT, DT, DT, DT, DT]))
    half = _delayed_graph()
    half.nodes["loop"] = nir.Delay(np.full(5, 1.5 * DT))
    for bad, message in ((uneven, "late: a Delay whose elements differ"), (half, "loop: a Delay of 1.5 steps")):
        with pytest.raises(GraphError, match=message):
            _compiled(bad, x)


@pytest.mark.lava
def test_delays_of_several_steps_on_lava():
    x = _inputs((4,), 1.5)
    compiled = _compiled(_delayed_graph(), x)
    reference = api.run(compiled.build, x, backend="reference")
    lava_float = api.run(compiled.build, x, backend="lava", mode="float")
    lava_fixed = api.run(compiled.build, x, backend="lava", mode="fixed")
    emu = api.run(compiled.build, x, backend="emu")
    assert (lava_float.output == reference.output).mean() >= 0.999
    assert np.array_equal(lava_fixed.output, emu.output)
    for name, spikes in lava_fixed.spikes.items():
        assert np.array_equal(emu.spikes[name], spikes), name
