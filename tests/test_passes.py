"""Each pass on a tiny hand-made IR (run and verify), the pass manager, IR dumps and resuming from them."""

from __future__ import annotations

import copy
import json
import signal
import time

import nir
import numpy as np
import pytest
import torch

from snc.compiler.ir import Edge, Graph, HostInput, Linear, Population, Readout
from snc.compiler.ir_io import load_graph, save_graph
from snc.compiler.linear import LinearOp
from snc.compiler.pass_manager import CalibrationCall, CompileContext, CompileOptions, Pass, PassManager
from snc.compiler.passes import (balance_delays, center_shifts, fold_thresholds, guide_thresholds, import_nir, lower,
                                 map_cores, partition_host, quantize, reassociate, slice_weights,
                                 specialise_selection, split_signs)
from snc.compiler.targets import get_target
from snc.errors import GraphError, SncError

from conftest import compile_model, deploy, make_model

T = 2
TARGET = get_target("loihi2")


def _ctx(**options) -> CompileContext:
    return CompileContext(TARGET, T, options=CompileOptions(**options))


def _population(name: str, n: int, threshold: float = 1.0, decay: float = 1.0, **kw) -> Population:
    return Population(name, (n,), threshold, decay, np.zeros(n), **kw)


def _dense(w) -> LinearOp:
    w = np.asarray(w, dtype=np.float64)
    return LinearOp.dense(w, (w.shape[1],), (w.shape[0],))


def _ident(n: int) -> LinearOp:
    return LinearOp.identity((n,))


# --- import_nir -------------------------------------------------------------------------------------
def test_import_nir_makes_populations_in_input_units_and_identity_edges():
    graph = nir.NIRGraph(nodes={
        "input": nir.Input(input_type=np.array([2])),
        "fc": nir.Affine(weight=np.array([[1.0, 2.0], [0.5, 0.0]]), bias=np.array([0.1, 0.2])),
        "lif": nir.LIF(tau=np.full(2, 2e-4), r=np.full(2, 4.0), v_leak=np.zeros(2), v_threshold=np.full(2, 0.5),
                       v_reset=np.zeros(2)),
        "output": nir.Output(output_type=np.array([2])),
    }, edges=[("input", "fc"), ("fc", "lif"), ("lif", "output")])
    ir = import_nir.run(None, CompileContext(TARGET, T, nir_graph=graph))
    import_nir.verify(ir, _ctx())
    lif = ir.nodes["lif"]
    # one Euler step adds dt * r / tau * I = 0.5 * 4 * I = 2 I: threshold 0.5 in v is 0.25 in input units
    assert isinstance(lif, Population) and lif.threshold == pytest.approx(0.25) and lif.decay == pytest.approx(0.5)
    assert isinstance(ir.nodes["fc"], Linear) and isinstance(ir.nodes["input"], HostInput)
    assert all(e.op.kind == "identity" for e in ir.edges) and len(ir.edges) == 3
    bad = nir.NIRGraph(nodes={**graph.nodes, "lif": nir.LIF(tau=np.full(2, 2e-5), r=np.full(2, 4.0),
                                                             v_leak=np.ones(2), v_threshold=np.full(2, 0.5),
                                                             v_reset=np.ones(2))}, edges=graph.edges)
    with pytest.raises(GraphError) as err:  # every problem of the node at once
        import_nir.run(None, CompileContext(TARGET, T, nir_graph=bad))
    assert all(k in str(err.value) for k in ("lif: v_reset", "lif: tau gives a per-step decay -4"))


def _host_chain() -> Graph:
    """input -> a (Linear) -> p -> b (Linear) -> out, NIR-style identity edges."""
    nodes = {"input": HostInput("input", (2,)), "a": Linear("a", _dense(np.eye(2)), np.zeros(2)),
             "p": _population("p", 2), "b": Linear("b", _dense([[1.0, -1.0]]), np.zeros(1)),
             "out": Readout("out", (1,), np.zeros(1))}
    edges = [Edge("input", "a", _ident(2)), Edge("a", "p", _ident(2)), Edge("p", "b", _ident(2)),
             Edge("b", "out", _ident(1))]
    return Graph(nodes, edges, T)


# --- partition_host -----------------------------------------------------------------------------------
def test_partition_host_places_what_sees_only_host_inputs_on_the_host():
    ir = partition_host.run(_host_chain(), _ctx())
    partition_host.verify(ir, _ctx())
    assert (ir.nodes["a"].placement, ir.nodes["b"].placement) == ("host", "chip")
    ir.nodes["b"].placement = "host"  # the verifier checks the IR, not the pass's record
    with pytest.raises(GraphError, match="placed b on the host"):
        partition_host.verify(ir, _ctx())


# --- reassociate -------------------------------------------------------------------------------------
def test_reassociate_composes_real_valued_chains_into_spike_synapses_and_pushes_biases():
    w1, w2 = np.array([[1.0, 2.0], [0.0, 1.0], [3.0, 0.0]]), np.array([[1.0, 0.0, -1.0]])
    nodes = {"input": HostInput("input", (2,)), "p": _population("p", 2),
             "w1": Linear("w1", _dense(w1), np.array([0.5, 0.0, 1.0]), "chip"),
             "w2": Linear("w2", _dense(w2), np.array([0.25]), "chip"), "q": _population("q", 1),
             "out": Readout("out", (1,), np.zeros(1))}
    edges = [Edge("input", "p", _ident(2)), Edge("p", "w1", _ident(2)), Edge("w1", "w2", _ident(3)),
             Edge("w2", "q", _ident(1)), Edge("q", "out", _ident(1))]
    ir = reassociate.run(Graph(nodes, edges, T), _ctx())
    reassociate.verify(ir, _ctx())
    assert not list(ir.of_type(Linear))
    synapse = next(e for e in ir.edges if (e.src, e.dst) == ("p", "q"))
    assert np.allclose(synapse.op.weight, w2 @ w1) and synapse.origin == ("w1", "w2")
    assert np.allclose(ir.nodes["q"].bias, w2 @ np.array([0.5, 0.0, 1.0]) + 0.25)  # the biases, pushed through
    ir.edges.append(Edge("input", "input", _ident(2)))
    with pytest.raises(GraphError):
        reassociate.verify(ir, _ctx())


# --- specialise_selection ------------------------------------------------------------------------------
def _gated() -> Graph:
    """a -(gate g)-> b -(gate h)-> out: b's only way out passes h."""
    nodes = {"a": _population("a", 1), "b": _population("b", 1), "out": Readout("out", (1,), np.zeros(1))}
    edges = [Edge("a", "b", _ident(1), gate="g", gain=np.ones(T)), Edge("b", "out", _ident(1), gate="h",
                                                                       gain=np.ones(T))]
    return Graph(nodes, edges, T)


def test_specialise_selection_switches_off_the_gates_into_idle_populations():
    table = {"g": np.ones((3, T)), "h": np.array([[1.0, 1.0], [0.0, 0.0], [0.0, 0.5]])}
    ctx = CompileContext(TARGET, T, gate_table=table)
    ir = specialise_selection.run(_gated(), ctx)
    specialise_selection.verify(ir, ctx)
    # at diffusion step 1 nothing b fires reaches anything: its input gate g is 0 there
    assert ir.gates["g"].tolist() == [[1.0, 1.0], [0.0, 0.0], [1.0, 1.0]]
    assert np.array_equal(ir.gates["h"], table["h"]) and set(ir.model_gates) == {"g"}
    with pytest.raises(GraphError, match="no per-step gate table"):
        specialise_selection.run(_gated(), _ctx())
    ir.gates["g"][0, 0] = 0.5  # a specialised gate may only be switched off, never changed
    with pytest.raises(GraphError, match="other than 0"):
        specialise_selection.verify(ir, ctx)


# --- balance_delays --------------------------------------------------------------------------------------
def _triangle() -> Graph:
    """a -> b -> c and a -> c: the short path needs a relay of one step."""
    nodes = {"a": _population("a", 2), "b": _population("b", 2), "c": _population("c", 2),
             "out": Readout("out", (2,), np.zeros(2)), "in": HostInput("in", (2,))}
    edges = [Edge("in", "a", _dense(np.eye(2))), Edge("a", "b", _dense(np.eye(2))), Edge("b", "c", _dense(np.eye(2))),
             Edge("a", "c", _dense([[1.0, 1.0], [0.0, 1.0]])), Edge("c", "out", _dense(np.eye(2)))]
    return Graph(nodes, edges, T)


def test_balance_delays_schedules_every_population_and_relays_shorter_paths():
    ir = balance_delays.run(_triangle(), _ctx())
    balance_delays.verify(ir, _ctx())
    assert [ir.nodes[n].depth for n in ("a", "b", "c", "out")] == [0, 1, 2, 3]
    relay = ir.nodes["a.delay1"]
    assert relay.role == "relay" and relay.depth == 1
    assert any((e.src, e.dst) == ("a.delay1", "c") for e in ir.edges)
    ir.nodes["c"].depth = 5
    with pytest.raises(GraphError, match="depth"):
        balance_delays.verify(ir, _ctx())


# --- fold_thresholds -----------------------------------------------------------------------------------
def test_fold_thresholds_picks_the_largest_power_of_two_within_the_targets_ranges():
    ir = balance_delays.run(_triangle(), _ctx())
    calls = [CalibrationCall(None, lambda gates: {"in": torch.tensor([[3.0, 0.5]], dtype=torch.float64)})]
    ctx = CompileContext(TARGET, T, calibration=calls)
    ir = fold_thresholds.run(ir, ctx)
    fold_thresholds.verify(ir, ctx)
    rules = TARGET.rules
    a = ir.nodes["a"]  # its input peaks at 3: with the 2x margin and the threshold, 7 x scale must fit 2^17
    assert a.scale == 2.0 ** np.floor(np.log2(rules.current_limit / 7.0))
    assert ir.nodes["a.delay1"].scale == 2.0  # a relay: weight 2, vth 1
    a.scale = 3.0
    with pytest.raises(GraphError, match="not a power of two"):
        fold_thresholds.verify(ir, ctx)


def test_fold_thresholds_gives_the_wrapping_input_a_margin_and_the_saturating_v_none():
    steps = 4
    nodes = {"in": HostInput("in", (2,)), "p": _population("p", 2), "out": Readout("out", (2,), np.zeros(2))}
    edges = [Edge("in", "p", _dense(np.eye(2))), Edge("p", "out", _dense(np.eye(2)))]
    ir = balance_delays.run(Graph(nodes, edges, steps), CompileContext(TARGET, steps))
    calls = [CalibrationCall(None, lambda gates: {"in": torch.tensor([[-3.0, 0.5]], dtype=torch.float64)})]
    ir = fold_thresholds.run(ir, CompileContext(TARGET, steps, calibration=calls))
    # p[0] sinks to v = -12 in 4 steps of input -3: v's peak bounds the scale as it is (1 + 2 x 3 is below it)
    assert ir.nodes["p"].scale == 2.0 ** np.floor(np.log2(TARGET.rules.current_limit / 12.0)) == 8192
    # the readout's input (it wraps) peaks at 1 (p[1]'s spikes): 2 x scale must fit
    assert ir.nodes["out"].scale <= TARGET.rules.current_limit / 2


# --- split_signs ------------------------------------------------------------------------------------------
def test_split_signs_makes_one_sign_per_synapse_summing_to_the_original():
    ir = fold_thresholds.fold(balance_delays.run(_triangle(), _ctx()), TARGET.rules, None)
    ir.edges.append(Edge("b", "out", _dense([[2.0, -3.0], [-1.0, 0.0]])))
    ir = split_signs.run(ir, _ctx())
    split_signs.verify(ir, _ctx())
    parts = [e for e in ir.edges if (e.src, e.dst) == ("b", "out")]
    assert sorted(e.part for e in parts) == ["+", "-"]
    assert np.array_equal(sum(e.op.weight for e in parts), [[2.0, -3.0], [-1.0, 0.0]])
    assert all(e.op.weight.min() >= 0 or e.op.weight.max() <= 0 for e in parts)


# --- quantize and guide_thresholds ----------------------------------------------------------------------
def _scaled() -> Graph:
    ir = fold_thresholds.fold(balance_delays.run(_triangle(), _ctx()), TARGET.rules, None)
    return split_signs.run(ir, _ctx())


def test_center_shifts_adds_the_mean_floor_of_right_shifted_sums_to_the_readers_bias():
    ir = quantize.run(_scaled(), _ctx())
    into_c = next(e for e in ir.edges if (e.src, e.dst) == ("b", "c"))
    into_c.fixed.update(weight=np.array([[3, 0], [4, 8]], dtype=np.int16), weight_exp=-3)
    into_out = next(e for e in ir.edges if e.dst == "out")
    into_out.fixed.update(weight=np.array([[0, 0], [0, 16]], dtype=np.int16), weight_exp=-4)
    c_bias = ir.nodes["c"].bias.copy()
    ir = center_shifts.run(ir, _ctx())
    center_shifts.verify(ir, _ctx())
    # row 0 leaves any multiple of 1/8 below a unit: (1 - 1/8) / 2; row 1 only multiples of 4/8: (1 - 1/2) / 2
    assert center_shifts.floor_offsets(ir, ir.nodes["c"]).tolist() == [7 / 16, 1 / 4]
    c = ir.nodes["c"]
    assert np.array_equal(c.bias, c_bias)  # the float model is unchanged; the integers get the offset in v's units
    assert (c.fixed["bias_mant"] << c.fixed["bias_exp"]).tolist() == [28, 16]
    # the readout: row 0 has no weight (its sum is 0, exact), row 1 is a multiple of 2^4 (exact)
    assert "offset" not in ir.readout.fixed
    c.fixed["bias_mant"] = np.zeros_like(c.fixed["bias_mant"])  # the verifier checks the IR
    with pytest.raises(GraphError, match="c: its integer bias"):
        center_shifts.verify(ir, _ctx())


def test_quantize_gives_integers_within_the_profiles_ranges():
    ir = quantize.run(_scaled(), _ctx())
    quantize.verify(ir, _ctx())
    rules = TARGET.rules
    for p in ir.of_type(Population):
        assert p.fixed["vth"] == round(p.threshold * p.scale) and p.fixed["du"] == rules.decay_max
        assert p.fixed["dv"] == min(round(rules.decay_unity * (1 - p.decay)), rules.decay_max)  # a relay: no memory
    for e in ir.edges:
        if isinstance(ir.nodes[e.src], Population):
            lo, hi, _ = rules.weight_range(mixed=False)
            assert lo <= e.fixed["weight"].min() and e.fixed["weight"].max() <= hi
    narrow = copy.copy(TARGET)  # the rules are the profile's: fewer vth bits refuse the same graph
    narrow.rules = type(TARGET.rules)(**{**TARGET.rules.__dict__, "vth_bits": 1})
    with pytest.raises(GraphError, match="outside 1 bits"):
        quantize.run(_scaled(), CompileContext(narrow, T))


def test_guide_thresholds_scales_neurons_not_relays_and_refuses_rounding_away():
    ir = quantize.run(_scaled(), _ctx())
    before = {p.name: (p.fixed["vth"], p.threshold) for p in ir.of_type(Population)}
    ctx = _ctx(threshold_scale=0.9)
    ir = guide_thresholds.run(ir, ctx)
    guide_thresholds.verify(ir, ctx)
    for p in ir.of_type(Population):
        vth, thr = before[p.name]
        if p.role == "relay":
            assert (p.fixed["vth"], p.threshold) == (vth, thr)
        else:
            assert p.threshold == pytest.approx(thr * 0.9) and p.fixed["vth"] == round(thr * 0.9 * p.scale) != vth
    with pytest.raises(GraphError, match="rounds away"):
        guide_thresholds.run(quantize.run(_scaled(), _ctx()), _ctx(threshold_scale=1 + 1e-9))
    ir.nodes["a"].fixed["vth"] += 1
    with pytest.raises(GraphError, match="does not encode the threshold"):
        guide_thresholds.verify(ir, ctx)


# --- slice_weights ----------------------------------------------------------------------------------------
def _quantized_with(w: np.ndarray) -> Graph:
    """The triangle, fixed-point, with a synapse b -> out of weights ``w`` (split by sign)."""
    ir = fold_thresholds.fold(balance_delays.run(_triangle(), _ctx()), TARGET.rules, None)
    ir.edges.append(Edge("b", "out", _dense(w)))
    return quantize.run(split_signs.run(ir, _ctx()), _ctx())


def test_slice_weights_adds_a_fine_synapse_of_the_same_sign_that_completes_the_weights():
    w = np.array([[0.913, -0.0123], [-0.4567, 0.00789]])  # small weights too: 8 bits of the largest miss them
    ir = slice_weights.run(_quantized_with(w), _ctx(weight_bits=16))
    slice_weights.verify(ir, _ctx(weight_bits=16))
    rules, out = TARGET.rules, ir.nodes["out"]
    parts = [e for e in ir.edges if (e.src, e.dst) == ("b", "out")]
    assert sorted(e.part for e in parts) == ["+", "+:fine", "-", "-:fine"]
    assert np.allclose(sum(e.op.weight for e in parts), w, rtol=0, atol=1e-15)  # the float function is kept
    for coarse, fine in zip(parts[::2], parts[1::2]):
        hi, lo = coarse.fixed["weight"].astype(np.int64), fine.fixed["weight"].astype(np.int64)
        exp, fine_exp = coarse.fixed["weight_exp"], fine.fixed["weight_exp"]
        assert fine_exp == exp - rules.weight_bits >= rules.weight_exp_min
        assert all(v.min() >= 0 for v in (hi, lo)) or all(v.max() <= 0 for v in (hi, lo))  # one sign, the same
        assert np.abs(lo).max() <= rules.weight_range(mixed=False)[1]
        x = (coarse.op.weight + fine.op.weight) * out.scale
        assert np.abs(hi * 2.0**exp + lo * 2.0**fine_exp - x).max() <= 2.0 ** (fine_exp - 1)  # 2^(e-9)
        single = quantize.quantize_weights(x, 1.0, rules)
        assert np.abs(hi * 2.0**exp + lo * 2.0**fine_exp - x).max() < \
            np.abs(single[0] * 2.0**single[1] - x).max()
    fine = parts[1]
    fine.fixed["weight"] = fine.fixed["weight"] + np.sign(fine.fixed["weight"].sum()).astype(np.int16)
    with pytest.raises(GraphError, match="more than half a unit"):
        slice_weights.verify(ir, _ctx(weight_bits=16))
    fine.fixed["weight"] = -fine.fixed["weight"]
    with pytest.raises(GraphError, match="one sign"):
        slice_weights.verify(ir, _ctx(weight_bits=16))
    with pytest.raises(GraphError, match="fine slice at weight_bits 8"):
        slice_weights.verify(ir, _ctx())
    unsliced = slice_weights.run(_quantized_with(w), _ctx())
    assert [e.name for e in unsliced.edges] == [e.name for e in _quantized_with(w).edges]
    with pytest.raises(GraphError, match="use 8 or 16"):
        slice_weights.run(_quantized_with(w), _ctx(weight_bits=12))


def test_slice_weights_keeps_exponents_and_upsampled_sums_within_the_target():
    rules = TARGET.rules
    x = np.random.default_rng(1).uniform(0, 60, size=(3, 2, 3, 3))  # 2 x 2 taps sum to at most 240
    coarse, fine, fine_exp = slice_weights.slice_integers(x, 0, 8, rules)
    assert fine_exp == -8 and np.abs(coarse + fine / 256 - x).max() <= 1 / 512
    coarse, fine, fine_exp = slice_weights.slice_integers(x / 32, -5, 8, rules)  # a graded source's exponent
    assert fine_exp == rules.weight_exp_min  # three fine bits are left
    coarse, fine, fine_exp = slice_weights.slice_integers(x, 0, 8, rules, upsample=2)
    assert quantize.synapse_range(fine, 2)[1] <= 255 and fine_exp > -8  # summed taps fit the mantissa
    assert quantize.synapse_range(coarse, 2)[1] <= quantize.synapse_range(np.round(x).astype(np.int64), 2)[1]
    assert slice_weights.slice_integers(x, rules.weight_exp_min, 8, rules) is None  # no fine bit left
    assert slice_weights.slice_integers(np.round(x), 0, 8, rules) is None  # exact already


# --- lower and map_cores ---------------------------------------------------------------------------------
def test_lower_makes_one_netlist_per_mode_from_the_guided_graph():
    ir = guide_thresholds.run(quantize.run(_scaled(), _ctx()), _ctx())
    ir = lower.PASS.run(ir, _ctx())
    lower.PASS.verify(ir, _ctx())
    fixed, floating = ir.netlists["fixed"], ir.netlists["float"]
    assert set(fixed.groups) == {"a", "b", "c", "a.delay1"} and fixed.groups["a.delay1"].reset_interval == 0
    assert [h.src for h in fixed.host_ops] == ["in"] and fixed.inputs == {"a": ir.nodes["a"].scale}
    assert all(s.op.weight.dtype.kind == "i" for s in fixed.synapses)
    assert all(s.op.weight.dtype.kind == "f" for s in floating.synapses) and floating.groups["a"].vth == 1.0
    only_fixed = lower.PASS.run(ir, _ctx(modes=("fixed",)))
    assert list(only_fixed.netlists) == ["fixed"]
    with pytest.raises(SncError, match="needs fixed"):
        lower.PASS.run(ir, _ctx(modes=("float",)))


def test_map_cores_fails_a_netlist_that_does_not_fit_unless_allowed():
    ir = lower.PASS.run(guide_thresholds.run(quantize.run(_scaled(), _ctx()), _ctx()), _ctx())
    assert map_cores.run(ir, _ctx()) is ir and map_cores.verify(ir, _ctx()) is None
    entry = ir.log[-1]
    assert entry["pass"] == "map_cores" and entry["neurons"] == 10 and not entry["violations"]
    small = copy.copy(TARGET)
    small.profile = {**TARGET.profile, "resources": {**TARGET.profile["resources"], "chips": 0}}
    with pytest.raises(GraphError, match="does not fit"):
        map_cores.run(ir, CompileContext(small, T))
    map_cores.run(ir, CompileContext(small, T, options=CompileOptions(allow_oversize=True)))
    with pytest.raises(GraphError, match="accepted a netlist with violations"):
        map_cores.verify(ir, CompileContext(small, T))


# --- the pass manager, dumps, --stop-after and --from-ir ----------------------------------------------------
def test_the_pipeline_is_checked_for_missing_requirements():
    first = Pass("a", lambda g, ctx: g, lambda g, ctx: None, provides=("x",))
    needs = Pass("b", lambda g, ctx: g, lambda g, ctx: None, requires=("y",))
    with pytest.raises(SncError, match="requires y"):
        PassManager([first, needs])
    with pytest.raises(SncError, match="twice"):
        PassManager([first, first])
    PassManager(TARGET.passes())  # loihi2's pipeline is consistent


def test_a_pass_that_outgrows_the_machines_memory_is_one_error(monkeypatch):
    """The pass manager's memory sampler stops a pass whose process grows past its size at the start plus the
    memory then available (here 1 MB) with one error, where the kernel's OOM killer would end the process."""
    from snc.compiler import pass_manager

    def grow(graph, ctx):
        held = np.ones(2**24)  # 128 MB, touched
        time.sleep(1.0)  # the sampler reads the RSS every 5 ms
        return graph if held.any() else None

    manager = PassManager([Pass("grow", grow, lambda g, ctx: None)])
    monkeypatch.setattr(pass_manager, "available_mb", lambda: 1.0)
    with pytest.raises(SncError, match=r"grow needed more memory than this machine has: the compile grew past"):
        manager.run(_ctx(), _triangle())
    assert signal.getsignal(signal.SIGUSR1) == signal.SIG_DFL  # the guard's handler does not outlive the pass
    monkeypatch.setattr(pass_manager, "available_mb", lambda: 100_000.0)
    assert manager.run(_ctx(), _triangle()).complete


def test_dump_ir_writes_every_pass(tmp):
    """Each dump holds the IR after its pass (reloadable, with the passes it went through) and resuming from
    any dump gives the build a direct compile gives."""
    dep = deploy(make_model("digits-mlp"))
    direct = compile_model(dep, calibration=0)
    from snc.compiler.driver import compile_deployable

    compile_deployable(dep, calibration=0, dump_ir=tmp)
    dumps = sorted(p for p in tmp.glob("[0-9][0-9]-*.json") if ".netlist-" not in p.name)
    names = [p.name for p in TARGET.passes()]
    assert len(dumps) == len(names)
    for index, path in enumerate(dumps):
        doc = json.loads(path.read_text())
        graph = load_graph(path)
        assert doc["passes"] == graph.passes == names[:index + 1]
        last = names[index]
        assert last in ("import_nir", "specialise_selection", "lower") or graph.log[-1]["pass"] == last
        if last == "import_nir":
            assert list(graph.of_type(Linear)) and all(e.op.kind == "identity" for e in graph.edges)
        if last == "reassociate":
            assert not list(graph.of_type(Linear))
        if last == "balance_delays":
            assert all(p.depth >= 0 for p in graph.of_type(Population))
        if last == "quantize":
            assert all(p.fixed for p in graph.of_type(Population))
            chip = [e for e in graph.edges if isinstance(graph.nodes[e.src], Population)]
            assert chip and all(e.fixed["weight"].dtype.kind == "i" for e in chip)  # arrays from the npz
            assert all("weight_exp" in d["fixed"] for d in doc["edges"] if d["src"] in graph.nodes
                       and isinstance(graph.nodes[d["src"]], Population))  # scalars in the JSON
        if last in ("lower", "map_cores"):
            assert doc["netlists"] == ["fixed", "float"] and set(graph.netlists) == {"fixed", "float"}
    for path in dumps[:-1]:
        resumed = compile_deployable(dep, calibration=0, from_ir=path)
        assert resumed.report.complete and [p.name for p in resumed.report.passes] == names[len(load_graph(path).passes):]
        for mode in ("fixed", "float"):
            a, b = direct.build.netlist(mode), resumed.build.netlist(mode)
            assert [(s.name, s.weight_exp) for s in a.synapses] == [(s.name, s.weight_exp) for s in b.synapses]
            assert all(np.array_equal(s.op.weight, t.op.weight) for s, t in zip(a.synapses, b.synapses))
            assert all(a.groups[n].vth == b.groups[n].vth for n in a.groups)


def test_stop_after_writes_the_ir_and_from_ir_refuses_another_source(tmp):
    from snc import api

    dep = deploy(make_model("digits-mlp"))
    stopped = api.compile(dep, calibration=0, stop_after="balance_delays", output=tmp / "out")
    assert not stopped.report.complete and stopped.build is None
    dump = tmp / "out" / "05-balance_delays.json"
    assert load_graph(dump).passes[-1] == "balance_delays"
    finished = api.compile(dep, calibration=0, from_ir=dump, output=tmp / "b")
    assert finished.report.complete and (tmp / "b" / "netlist-fixed.json").is_file()
    with pytest.raises(SncError, match="no such pass"):
        api.compile(dep, stop_after="nonsense")
    with pytest.raises(SncError, match="not of this source"):
        api.compile(deploy(make_model("digits-unet")), from_ir=dump)
    with pytest.raises(SncError, match="not of this source"):  # the same architecture, other weights
        api.compile(deploy(make_model("digits-mlp", seed=1)), from_ir=dump)
    with pytest.raises(GraphError, match="not an snc IR dump"):
        (tmp / "x.json").write_text("[]")
        (tmp / "x.npz").write_bytes(b"")
        load_graph(tmp / "x.json")


def test_pass_records_have_times_and_memory():
    result = compile_model(make_model("digits-mlp"))
    records = result.report.passes
    assert [r.name for r in records] == [p.name for p in TARGET.passes()] == result.graph.passes
    assert all(r.seconds >= 0 and r.verify_seconds >= 0 and r.peak_rss_mb > 0 for r in records)


def test_ir_round_trips_through_its_files(tmp):
    ir = quantize.run(_scaled(), _ctx())
    save_graph(ir, tmp / "ir")
    back = load_graph(tmp / "ir")
    assert set(back.nodes) == set(ir.nodes) and [e.name for e in back.edges] == [e.name for e in ir.edges]
    for a, b in zip(ir.edges, back.edges):
        assert np.array_equal(a.op.weight, b.op.weight) and a.fixed.keys() == b.fixed.keys()
    for name, p in ir.nodes.items():
        if isinstance(p, Population):
            assert back.nodes[name].fixed["vth"] == p.fixed["vth"] and back.nodes[name].scale == p.scale
