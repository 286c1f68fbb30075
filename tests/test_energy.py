"""Energy and resource accounting: exact SOPs on hand-computed cases, MACs for real values, the DRC."""

from __future__ import annotations

import copy
import json

import nir
import numpy as np
import pytest

from snc.compiler.linear import LinearOp
from snc.compiler.netlist import Netlist, NeuronGroup, ReadoutPort, Synapse
from snc.compiler.pass_manager import CompileContext, CompileOptions
from snc.compiler.passes import map_cores
from snc.compiler.targets import get_target
from snc.errors import GraphError
from snc.hw_profiles import available, load_profile
from snc.runtime.energy import ENERGY_KEYS, LoweredCount, NirLayer, NirModel, exact_sops, layer_sops

from conftest import compile_nir, run_snc


def _group(name: str, shape: tuple) -> NeuronGroup:
    n = int(np.prod(shape))
    return NeuronGroup(name, shape, 4095, 0, 10, np.zeros(n, np.int64), np.zeros(n, np.int64))


def _chain(op: LinearOp) -> LoweredCount:
    """A netlist a -> b through ``op`` (its weights as integers), and a readout of b."""
    a, b = _group("a", op.in_shape), _group("b", op.out_shape)
    op = LinearOp(op.kind, op.in_shape, op.out_shape, op.weight.astype(np.int64), op.stride, op.padding, op.upsample)
    out = LinearOp("identity", op.out_shape, op.out_shape, np.ones(1, np.int64))
    net = Netlist("fixed", {"a": a, "b": b}, [Synapse("ab", "a", "b", "sparse", op), Synapse("bo", "b", "out", "sparse", out)],
                  ReadoutPort("out", op.out_shape, 1.0, 1), timestep=4)
    net.check()
    return LoweredCount(net)


@pytest.mark.parametrize("seed", range(6))
def test_fan_out_and_fan_in_equal_the_sparse_matrix(seed):
    rng = np.random.default_rng(seed)
    for stride, padding, upsample in [(1, 1, 1), (2, 1, 1), (1, 0, 2), (2, 2, 3)]:
        w = rng.integers(-2, 3, size=(3, 2, 3, 3)).astype(float)
        w[:, :, 0, 0] = -w[:, :, 0, 1]  # after upsampling these taps fall on one input and cancel
        op = LinearOp.conv(w, (2, 5, 4), stride, padding, upsample)
        m = op.to_csr()
        assert np.array_equal(op.fan_out(), np.diff(m.tocsc().indptr))
        assert np.array_equal(op.fan_in(), np.diff(m.indptr))
        assert op.synapse_count() == m.nnz


def test_exact_sops_of_a_padded_3x3_conv_on_a_known_spike_map():
    op = LinearOp.conv(np.ones((1, 1, 3, 3)), (1, 4, 4), stride=1, padding=1)
    # border-aware fan-out: 4 synapses at a corner, 6 on an edge, 9 inside
    assert op.fan_out().reshape(4, 4).tolist() == [[4, 6, 6, 4], [6, 9, 9, 6], [6, 9, 9, 6], [4, 6, 6, 4]]
    spikes = np.zeros((4, 4))
    spikes[0, 0], spikes[0, 1], spikes[1, 1] = 2, 1, 3  # spikes per neuron over the T=4 steps
    sops = exact_sops(_chain(op).fan_outs(), {"a": spikes.reshape(-1), "b": np.zeros(16)})
    assert sops["a"] == 2 * 4 + 1 * 6 + 3 * 9
    # the papers' fr x T x FLOPs charges every spike a full 3x3 kernel: 6 spikes x 9
    layer = NirLayer("conv", "conv3x3/s1", op.dense_macs(), "spikes", "a")
    assert op.dense_macs() == 16 * 9
    assert layer_sops(layer, {"a": spikes.reshape(-1)}, timestep=4) == pytest.approx(6 * 9)


def test_exact_sops_of_a_dense_layer_skip_zero_weights():
    w = np.array([[1.0, 0, 2, 0], [0, 0, 1, 0], [3, 0, 0, 1]])
    op = LinearOp.dense(w, (4,), (3,))
    spikes = np.array([1.0, 5, 2, 1])
    sops = exact_sops(_chain(op).fan_outs(), {"a": spikes, "b": np.zeros(3)})
    assert sops["a"] == 1 * 2 + 5 * 0 + 2 * 2 + 1 * 1


def _if(n: int) -> nir.IF:
    return nir.IF(r=np.full(n, 1e4), v_threshold=np.ones(n), v_reset=np.zeros(n))


def _delayed_and_reassociated_graph() -> tuple[nir.NIRGraph, dict[str, np.ndarray]]:
    """input -> A -> a -> W1 -> W2 -> b -> W4 -> out, and a -> W5 -> out (shorter: a relay delays it).

    W2 after W1 is a real-valued chain: re-association makes one synapse a -> b
    with weights W2 @ W1.
    """
    w1 = np.array([[1.0, 0, 0, 1], [0, 1, 0, 0], [0, 0, 0, 1]])
    w2 = np.array([[1.0, 1, 0], [0, 0, 1], [0, 0, 0], [1, 0, 0]])
    w4 = np.eye(4)
    w5 = np.array([[1.0, 0, 0, 0], [0, 0, 0, 0], [0, 0, 2, 0], [0, 0, 0, 1]])
    nodes = {
        "input": nir.Input(input_type=np.array([4])),
        "A": nir.Affine(weight=np.eye(4), bias=np.zeros(4)),
        "a": _if(4), "W1": nir.Linear(weight=w1), "W2": nir.Linear(weight=w2), "b": _if(4),
        "W4": nir.Linear(weight=w4), "W5": nir.Linear(weight=w5),
        "output": nir.Output(output_type=np.array([4])),
    }
    edges = [("input", "A"), ("A", "a"), ("a", "W1"), ("W1", "W2"), ("W2", "b"), ("b", "W4"), ("W4", "output"),
             ("a", "W5"), ("W5", "output")]
    return nir.NIRGraph(nodes=nodes, edges=edges), {"w21": w2 @ w1, "w4": w4, "w5": w5}


def test_exact_sops_through_reassociated_and_delayed_synapses():
    nir_graph, w = _delayed_and_reassociated_graph()
    net = compile_nir(nir_graph, timestep=4).build.netlist("fixed")
    relays = [g.name for g in net.groups.values() if g.role == "relay"]
    assert relays == ["a.delay1"]  # a -> output is one step shorter than a -> b -> output
    spikes = {"a": np.array([1.0, 2, 0, 3]), "b": np.array([0.0, 1, 1, 2])}
    spikes["a.delay1"] = spikes["a"]  # a relay repeats its source
    sops = exact_sops(LoweredCount(net).fan_outs(), spikes)
    nonzero = lambda m: (m != 0).sum(axis=0)  # noqa: E731  synapses per source neuron
    assert sops["a"] == spikes["a"] @ (nonzero(w["w21"]) + 1)  # composed synapses + one into the relay
    assert sops["a.delay1"] == spikes["a"] @ nonzero(w["w5"])
    assert sops["b"] == spikes["b"] @ nonzero(w["w4"])


def test_real_valued_inputs_are_charged_as_macs():
    nir_graph, _ = _delayed_and_reassociated_graph()
    layers = {layer.name: layer for layer in NirModel(nir_graph, timestep=4).layers}
    assert layers["A"].reads == "host"  # the analog input: MACs once per call on the host
    assert layers["W1"].reads == "spikes" and layers["W1"].source == "a"
    assert layers["W2"].reads == "real"  # W1's output is real-valued: W2 multiplies
    assert layers["W5"].reads == "spikes" and layers["W4"].reads == "spikes"
    assert layers["W2"].flops == 12 and layers["A"].flops == 16


def test_every_profile_has_energy_and_sources():
    assert {"cmos45nm-fp32", "cmos45nm-fp16", "cmos45nm-int8", "loihi1", "loihi2"} <= set(available())
    for name in available():
        profile = load_profile(name)
        assert all(key in profile["energy"] for key in ENERGY_KEYS), name
        assert profile["energy"]["basis"] and "resources" in profile, name
    assert load_profile("cmos45nm-fp32")["energy"]["mac_pj"] == 4.6
    assert load_profile("cmos45nm-fp32")["energy"]["sop_pj"] == 0.9
    assert load_profile("loihi2")["energy"]["estimate"] is True


def test_drc_lists_every_violation_at_once():
    nir_graph, _ = _delayed_and_reassociated_graph()
    graph = compile_nir(nir_graph, timestep=4).graph
    net = graph.netlists["fixed"]
    tiny = {"name": "tiny", "resources": {"neurons_per_core": 2, "synaptic_memory_kib_per_core": 1 / 1024,
                                          "synapse_bits": 4, "cores_per_chip": 2, "chips": 1, "weight_bits": 4,
                                          "max_delay": 0}}
    report = map_cores.map_to_cores(net, tiny)
    assert [g["cores"] for g in report["groups"] if g["group"] == "a"] == [2]  # 4 neurons, 2 per core
    text = "\n".join(report["violations"])
    assert "chips of 2 cores; the target has 1" in text
    assert "b: one neuron has 3 synapses, more than a core's 2" in text
    assert "a.delay1->output: weights [0, 128] exceed 4 magnitude bits and a sign" in text
    target = copy.copy(get_target("loihi2"))  # a target with these limits
    target.profile = tiny
    with pytest.raises(GraphError) as err:
        map_cores.run(graph, CompileContext(target, 4))
    assert f"{len(report['violations'])} violation(s)" in str(err.value)
    assert map_cores.run(graph, CompileContext(target, 4, options=CompileOptions(allow_oversize=True))) is graph
    int8 = "\n".join(map_cores.map_to_cores(net, load_profile("cmos45nm-int8"))["violations"])
    assert "weights [0, 128] exceed 8-bit two's complement" in int8  # Loihi's 8 bits + sign are 9 in int8


def test_energy_cli_on_a_compiled_mlp(tmp):
    build = tmp / "mlp"
    assert run_snc("compile", "--preset", "digits-mlp", "-o", str(build)).returncode == 0
    out = run_snc("energy", str(build), "--profile", "cmos45nm-fp32", "--json", "-n", "2", "--csv",
                  str(tmp / "e.csv"), "--plot", str(tmp / "e.png"), "--steps", "10")
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    call = report["totals"]["per_call"]
    # fp32: the SNN's energy is its SOPs at 0.9 pJ plus host MACs, neuron updates; the ANN twin 4.6 pJ a MAC
    assert call["ann_energy_pj"] == pytest.approx(call["ann_macs"] * 4.6)
    assert report["totals"]["per_sample"]["energy_exact_mj"] == pytest.approx(call["energy_exact_pj"] * 10 / 1e9)
    hidden = [r for r in report["layers"] if r["role"] == "neuron"]
    assert hidden and all(r["sops_exact"] == r["sops_exact[torch]"] for r in hidden)
    assert report["random_init"] is True
    assert (tmp / "e.png").stat().st_size > 0 and (tmp / "e.csv").read_text().startswith("layer,")
    text = run_snc("energy", str(build), "--profile", "loihi1", "-n", "1")
    assert text.returncode == 0 and "ESTIMATE" in text.stderr and "random init" in text.stderr


def test_energy_and_compile_errors_are_one_line(tmp):
    for args, message in [
        (("energy", str(tmp / "nothing")), "no such file"),
        (("energy", "--preset", "digits-mlp", "--profile", "nope"), "unknown profile 'nope'"),
        (("energy", "--preset", "digits-mlp", "--backend", "gpu"), "--backend takes"),
        (("energy", "--preset", "digits-mlp", "--csv", str(tmp / "no" / "e.csv")), "no such directory"),
        (("compile", "--preset", "digits-mlp", "--target", "cmos45nm-fp32", "-o", str(tmp / "b")),
         "not a compile target"),
    ]:
        out = run_snc(*args)
        assert out.returncode == 1 and message in out.stderr and "Traceback" not in out.stderr, (args, out.stderr)
