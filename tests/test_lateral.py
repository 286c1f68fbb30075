"""The lateral-selection spiking transformer (paper 000): selection, lateral circuit, experts."""

from __future__ import annotations

import dataclasses

import numpy as np

import pytest
import torch

import snc.models as m
from snc.models.lateral import LateralConfig, SpikingLateralTransformer, top_k_mask
from snc.models.neurons import NeuronConfig

from conftest import compile_model, compile_nir, deploy, make_model

TINY = LateralConfig(img_size=8, img_ch=1, hidden=16, depth=2, mlp_ratio=2, timestep=3)


def _model(cfg: LateralConfig = TINY, seed: int = 0) -> SpikingLateralTransformer:
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return SpikingLateralTransformer(cfg).double().eval()


def test_initial_lateral_state_is_mutual_inhibition_with_no_effect():
    model = _model()
    sel = model.blocks[0].selection
    n = TINY.experts
    assert torch.equal(sel.aggregation, (torch.eye(n) - torch.ones(n, n)).double())
    assert sel.gamma.item() == 0.0
    t = torch.tensor([0, 400, 999])
    corrected, _ = sel(model.time_embedding(t))
    assert torch.equal(corrected, sel.logits(model.time_embedding(t)).expand(TINY.timestep, -1, -1))


def test_lateral_circuit_follows_equations_10_and_11():
    """Omega integrates A_agg l_hat of the previous inner step (l_hat before the first is l), then fires."""
    cfg = dataclasses.replace(TINY, timestep=4, lateral_neuron=NeuronConfig(threshold=1.0, decay=0.5))
    sel = _model(cfg).blocks[0].selection
    l = torch.tensor([[0.9, -0.4, 1.3]], dtype=torch.float64)
    with torch.no_grad():
        sel.router.weight.zero_()
        sel.router.bias.copy_(l[0])
        sel.aggregation.copy_(torch.tensor([[1.0, -0.5, 0.2], [0.3, 1.0, -0.7], [-0.6, 0.4, 1.0]]))
        sel.gamma.fill_(0.8)
    corrected, delta = sel(torch.zeros(1, sel.router.in_features, dtype=torch.float64))
    a, gamma = sel.aggregation.detach(), 0.8
    m_, previous = torch.zeros(3, dtype=torch.float64), l[0]
    for step in range(4):
        m_ = 0.5 * m_ + a @ previous
        fired = (m_ > 1.0).double()
        m_ = m_ * (1 - fired)
        previous = l[0] + gamma * fired
        assert torch.equal(delta[step, 0], fired), step
        assert torch.allclose(corrected[step, 0], previous), step
    assert delta.sum() > 0 and delta.sum() < delta.numel()  # the example exercises both outcomes


def test_top_k_mask_keeps_the_k_largest_probabilities():
    logits = torch.tensor([[0.1, 2.0, -1.0], [3.0, 1.0, 2.0]])
    h = top_k_mask(logits, 2)
    p = torch.softmax(logits, -1)
    assert torch.equal(h[0], torch.tensor([p[0, 0], p[0, 1], 0.0]))
    assert torch.equal(h[1], torch.tensor([p[1, 0], 0.0, p[1, 2]]))
    assert torch.equal((h > 0).sum(-1), torch.tensor([2, 2]))


def test_selection_depends_on_the_diffusion_step_only_and_unselected_experts_do_not_matter():
    model = _model()
    t = torch.full((2,), 321)
    h, delta = model.selection(t)
    assert h.shape == delta.shape == (TINY.depth, TINY.timestep, 2, TINY.experts)
    assert torch.equal(h[:, :, 0], h[:, :, 1])
    x = torch.randn((2, 1, 8, 8), generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    out = model(x, t)
    unused = (h[0, :, 0] == 0).all(0).nonzero().flatten()
    assert unused.numel() == TINY.experts - TINY.top_k  # the same expert is left out at every inner step here
    with torch.no_grad():
        model.blocks[0].experts[int(unused[0])].fc2.fc.weight.mul_(7.0)
    assert torch.equal(model(x, t), out)


def test_presets_and_ann_twin():
    arch, cfg = m.preset("digits-lateral")
    assert arch == "lateral-transformer" and (cfg.experts, cfg.top_k, cfg.timestep, cfg.patch) == (3, 2, 2, 2)
    _, big = m.preset("cifar10-lateral")
    assert (big.hidden, big.depth, big.img_size, big.tokens) == (768, 12, 32, 256)
    model = make_model("digits-lateral")
    x, t = torch.randn(3, 1, 8, 8), torch.tensor([0, 500, 999])
    assert model(x, t).shape == x.shape
    twin = m.build_model(arch, m.ann_twin(cfg)).eval()
    assert twin(x, t).shape == x.shape
    with pytest.raises(ValueError, match="top_k"):
        LateralConfig(top_k=4)


# --- the lateral circuits on chip: Omega -> a LIF population, gamma A_agg -> its recurrent synapse ---------
def _active_circuits(seed: int = 1) -> SpikingLateralTransformer:
    """A model whose lateral circuits fire about a third of the time, with gamma != 0 and a full A_agg."""
    model = _model(dataclasses.replace(TINY, depth=3, timestep=4))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for block in model.blocks:
            sel = block.selection
            sel.aggregation.copy_(torch.eye(3) * 1.5 - 0.4 + torch.randn(3, 3, generator=g) * 0.3)
            sel.gamma.fill_(0.8)
            sel.router.weight.mul_(3.0)
            sel.router.bias.copy_(torch.rand(3, generator=g) * 2 - 0.5)
    return model


@pytest.mark.lava
def test_lateral_circuits_select_the_same_experts_on_lava_as_in_torch():
    from snc.compiler import frontends
    from snc.compiler.ir_executor import run_ir
    from snc.compiler.netlist import netlist_currents
    from snc.runtime.backends.emulator import EmuNetwork
    from snc.runtime.backends.lava import LavaNetwork
    from snc.compiler.nir_reference import NIRReference

    from test_emulator import _assert_same_trace

    model = _active_circuits()
    cfg = model.config
    dep = frontends.deployable(model, "lateral-selection")
    graph, result = dep.nir_graph, compile_model(dep)
    ir = result.graph
    loops = [e for e in ir.edges if e.lag]
    assert loops and all(e.src == e.dst and e.lag == 1 and e.delay == 0 for e in loops)  # Lava's one step
    t = torch.tensor([0, 50, 200, 400, 600, 800, 950, 999])  # 8 inputs: the selection depends on t alone
    with torch.no_grad():
        h, delta = model.selection(t)
        inputs = dep.host.core_inputs(torch.zeros(8, 1, 8, 8, dtype=torch.float64), t, None)
    assert 0.1 < delta.mean() < 0.9
    omega = [f"blocks.{r}.selection.omega" for r in range(cfg.depth)]
    ref = NIRReference(graph).run(inputs, record=True)
    run = run_ir(ir, {k: v[0] for k, v in inputs.items()}, record=True)
    for r, name in enumerate(omega):
        assert torch.equal(ref[name], delta[r]) and torch.equal(run.spikes[name], delta[r]), name
    net = result.build.netlist("fixed")
    currents = netlist_currents(net, {k: v[0] for k, v in inputs.items()})
    with LavaNetwork(result.build.netlist("float"), batch=8, record=True) as lava:
        calls = [lava.call(currents) for _ in range(2)]  # the second call starts from the first's state
    for call in calls:
        chip = torch.stack([torch.from_numpy(call.spikes[name].astype(np.float64)) for name in omega])
        assert torch.equal(chip, delta)
        assert torch.equal(model.selection_from_spikes(t, chip), h)  # identical experts, every t and inner step
    steps = 2 * net.call_steps + 1
    emu = EmuNetwork(net, 8, record=True).trace(steps, currents)
    with LavaNetwork(net, 8, record=True) as lava:
        _assert_same_trace(lava.trace(steps, currents), emu, net)
    windowed = EmuNetwork(net, 8, record=True, windows_only=True)
    assert windowed.windowed
    with LavaNetwork(net, 8, record=True) as lava:
        for _ in range(2):
            a, b = windowed.call(currents), lava.call(currents)
            assert np.array_equal(a.readout, b.readout)
            assert all(np.array_equal(a.spikes[n], b.spikes[n]) for n in net.groups)


def test_a_cycle_without_a_delay_is_a_clear_error():
    import nir

    from snc.compiler.frontends.lateral import export_selection
    from snc.errors import GraphError

    graph = export_selection(_model())
    nodes = {k: v for k, v in graph.nodes.items() if not k.endswith(".delay")}
    edges = [(a, b) for a, b in graph.edges if not a.endswith(".delay") and not b.endswith(".delay")]
    edges += [(a.replace(".lateral", ".omega"), a) for a, _ in graph.edges if a.endswith(".lateral")]
    with pytest.raises(GraphError, match="cycle without a delay"):
        compile_nir(nir.NIRGraph(nodes=nodes, edges=edges, metadata=graph.metadata), TINY.timestep)


@pytest.mark.lava
def test_feed_forward_delays_gains_after_them_and_builds_keep_lags(tmp):
    """P -> Delay -> Affine -> StepScale -> B (a lag with a per-step gain) beside a plain path, saved and reloaded."""
    import nir

    from snc.compiler.build import read_build, write_build
    from snc.compiler.frontends.nir_builder import neuron_node
    from snc.compiler.ir_executor import run_ir
    from snc.compiler.netlist import netlist_currents
    from snc.compiler.nir_io import NIR_DT, StepScale
    from snc.runtime.backends.emulator import EmuNetwork
    from snc.runtime.backends.lava import LavaNetwork
    from snc.compiler.nir_reference import NIRReference

    from test_emulator import _assert_same_trace

    n, T = 6, 4
    rng = np.random.default_rng(0)
    lif = neuron_node(NeuronConfig(threshold=1.0, decay=0.5), (n,), np.float64)
    nodes = {
        "input": nir.Input(input_type=np.array([n])),
        "p": lif, "b": neuron_node(NeuronConfig(threshold=1.0, decay=0.5), (n,), np.float64),
        "delay": nir.Delay(delay=np.full(n, NIR_DT)),
        "w": nir.Affine(weight=rng.normal(0, 1.0, (n, n)), bias=np.zeros(n)),
        "scale": StepScale(input_shape=np.array([n]), scale=np.array([2.0, 0.5, -1.0, 1.5]), bias=np.full(n, 0.2)),
        "v": nir.Affine(weight=rng.normal(0, 0.5, (n, n)), bias=np.zeros(n)),
        "read": nir.Affine(weight=np.eye(n), bias=np.zeros(n)),
        "output": nir.Output(output_type=np.array([n])),
    }
    edges = [("input", "p"), ("p", "delay"), ("delay", "w"), ("w", "scale"), ("scale", "b"), ("p", "v"), ("v", "b"),
             ("b", "read"), ("read", "output")]
    graph = nir.NIRGraph(nodes=nodes, edges=edges, metadata={})
    result = compile_nir(graph, T)
    ir = result.graph
    lagged = [e for e in ir.edges if e.lag]
    assert lagged and all(e.src in ("p", "p.delay1") and e.dst == "b" and e.gain is not None for e in lagged)
    x = torch.as_tensor(rng.uniform(0.3, 1.6, (3, n)))
    ref = NIRReference(graph).run({"input": x.unsqueeze(0).expand(T, -1, -1)}, record=True)
    run = run_ir(ir, {"input": x}, record=True)
    assert torch.equal(run.spikes["b"], ref["b"]) and torch.allclose(run.readout, ref["output"], atol=1e-12)
    assert 0 < ref["b"].mean() < 1
    write_build(tmp / "build", result.build, None)
    back = read_build(tmp / "build")
    net = back.netlist("fixed")
    assert [(s.name, s.lag) for s in net.synapses] == [(s.name, s.lag) for s in result.build.netlist("fixed").synapses]
    assert any(s.lag for s in net.synapses) and not back.has_host
    currents = netlist_currents(net, {"input": x})
    steps = 2 * net.call_steps + 1
    emu = EmuNetwork(net, 3, record=True).trace(steps, currents)
    with LavaNetwork(net, 3, record=True) as lava:
        _assert_same_trace(lava.trace(steps, currents), emu, net)
    with LavaNetwork(back.netlist("float"), 3, record=True) as lava:
        for _ in range(2):
            assert np.array_equal(lava.call(currents).spikes["b"], ref["b"].numpy().astype(bool))


# --- the whole denoiser on chip: attention as AND populations, experts behind per-call gates ---------------

def _trained_like(cfg: LateralConfig = TINY) -> SpikingLateralTransformer:
    """A random model with non-trivial BatchNorm statistics, a lateral effect and a head (not zero-init)."""
    model = _model(cfg)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm1d):
                module.running_mean.copy_(0.1 * torch.randn(module.num_features, generator=g))
                module.running_var.copy_(0.5 + torch.rand(module.num_features, generator=g))
                module.bias.copy_(0.2 * torch.randn(module.num_features, generator=g))
        model.head.weight.copy_(0.1 * torch.randn(model.head.weight.shape, generator=g))
        for block in model.blocks:
            block.selection.gamma.fill_(0.3)
    return model


def _compiled(model: SpikingLateralTransformer, mode_calibrated: bool = True):
    """(deployable, compile result) of a lateral transformer (calibrated on 2 images)."""
    dep = deploy(model)
    return dep, compile_model(dep, calibration=2 if mode_calibrated else 0)


def test_whole_denoiser_exports_and_compiles_to_the_torch_function():
    """NIR reference (float64) and the compiled IR (population form) compute the model's epsilon."""
    from snc.compiler.frontends.lateral import from_grid
    from snc.compiler.ir_executor import run_ir
    from snc.compiler.nir_io import Gate
    from snc.compiler.nir_reference import NIRReference

    model = _trained_like()
    dep, result = _compiled(model, mode_calibrated=False)
    graph, ir, host, net = dep.nir_graph, result.graph, dep.host, result.build.netlist("fixed")
    gates = [n.key for n in graph.nodes.values() if isinstance(n, Gate)]
    assert len(gates) == 2 * TINY.depth * TINY.experts  # an on/off and a weight gate per expert
    assert "blocks.0.attention.kv_and" in ir.nodes and ir.nodes["blocks.0.attention.kv_and"].decay == 0.0
    for x, t in host.noisy_inputs(3, [10, 500, 990], seed=0):
        expected = model(x.double(), t)
        g = {k: v[0].numpy() for k, v in host.gate_values(t[:1]).items()}  # the model's own, unspecialised
        out = NIRReference(graph).run(host.core_inputs(x.double(), t, g), gates=g)["output"]
        assert torch.allclose(model.decode(from_grid(out)), expected, atol=1e-9)
        specialised = net.call_gates(t)
        run = run_ir(ir, host.call_inputs(x, t, specialised), gates=specialised)
        assert torch.allclose(model.decode(from_grid(run.readout)), expected, atol=1e-9)


def test_specialisation_switches_idle_experts_off_and_keeps_every_number():
    """An expert unused at every inner step of a diffusion step gets no input: it fires nothing and the
    call's readout (bit-exact emulator of Lava fixed_pt) is the same as with every expert on."""
    from snc.compiler.netlist import netlist_currents
    from snc.runtime.backends.emulator import EmuNetwork

    model = _trained_like()
    dep, result = _compiled(model)
    log = next(e for e in result.graph.log if e["pass"] == "specialise_selection")
    assert log["switched_off"] and all(k.endswith(".active") for k in log["switched_off"])
    net = result.build.netlist("fixed")
    (x, t), = dep.host.noisy_inputs(2, [300], seed=1)
    off = net.switched_off(300)
    h, _ = model.selection(t[:1])
    idle = {f"blocks.{r}.experts.{i}.neuron" for r in range(TINY.depth) for i in range(TINY.experts)
            if not h[r, :, 0, i].any()}
    assert off == idle and off  # gamma 0.3 still leaves one expert of three idle per block here
    results = {}
    with EmuNetwork(net, batch=2, record=True) as emu:
        for specialised in (True, False):
            gates = net.call_gates(t, specialised)
            results[specialised] = emu.call(netlist_currents(net, dep.host.call_inputs(x, t, gates)), gates)
    on, every = results[True], results[False]
    assert np.array_equal(on.readout, every.readout)
    for name in off:
        assert not on.spikes[name].any() and every.spikes[name].any(), name


@pytest.mark.lava
def test_lava_runs_the_whole_denoiser_as_torch_and_reprograms_gates_per_call():
    """Lava floating_pt agrees with torch spike for spike on two diffusion steps (gates re-programmed
    between the calls); Lava fixed_pt and the emulator agree exactly on both calls."""
    from snc.compiler.netlist import netlist_currents
    from snc.runtime.backends.emulator import EmuNetwork
    from snc.runtime.backends.lava import LavaNetwork

    model = _trained_like()
    dep, result = _compiled(model)
    host, net = dep.host, result.build.netlist("fixed")
    pairs = host.noisy_inputs(1, [100, 800], seed=2)  # one image per call: Lava holds a network copy per image
    calls = []
    for x, t in pairs:
        gates = net.call_gates(t)
        calls.append((gates, netlist_currents(net, host.call_inputs(x, t, gates))))
    assert any(not np.array_equal(calls[0][0][k], calls[1][0][k]) for k in calls[0][0])
    same = total = 0
    with LavaNetwork(result.build.netlist("float"), batch=1, record=True) as lava:
        for (x, t), (gates, currents) in zip(pairs, calls):
            spikes = lava.call(currents, gates).spikes
            _, expected = host.reference(x.double(), t)
            for name, reference in expected.items():
                if name not in net.switched_off(int(t[0])):
                    same += int((spikes[name] == reference).sum())
                    total += reference.size
    assert same / total > 0.999, same / total
    with LavaNetwork(net, batch=1, record=True) as lava, EmuNetwork(net, batch=1, record=True) as emu:
        for gates, currents in calls:
            a, b = lava.call(currents, gates), emu.call(currents, gates)
            assert np.array_equal(a.readout, b.readout)
            assert all(np.array_equal(a.spikes[n], b.spikes[n]) for n in net.groups)


@pytest.mark.slow
def test_shipped_lateral_checkpoint_compiles_samples_in_chunks_and_reports_specialisation(tmp):
    """The CLI path of the trained model: compile, emulator samples the same whether a call holds every
    image or chunks of them, and the energy report counts fewer SOPs with the selection specialised."""
    import json

    from conftest import run_snc

    build = tmp / "build"
    done = run_snc("compile", "models/checkpoints/digits-lateral.pt", "-o", str(build))
    assert done.returncode == 0, done.stderr
    log = json.loads((build / "build.json").read_text())["log"]
    assert next(e for e in log if e["pass"] == "specialise_selection")["switched_off"]
    samples = {}
    for batch in ("3", "2"):
        out = tmp / f"b{batch}.png"
        done = run_snc("sample", str(build), "--backend", "emu", "--steps", "2", "-n", "3", "--batch", batch,
                       "-o", str(out))
        assert done.returncode == 0, done.stderr
        samples[batch] = np.load(out.with_suffix(".npy"))
    assert np.array_equal(samples["3"], samples["2"])
    totals = {}
    for flag in ((), ("--all-experts",)):
        done = run_snc("energy", str(build), "-n", "1", "--json", *flag)
        assert done.returncode == 0, done.stderr
        totals[flag] = json.loads(done.stdout)["totals"]["per_call"]
    on, every = totals[()], totals[("--all-experts",)]
    assert on["sops_exact"] < every["sops_exact"] and on["sops_papers"] < every["sops_papers"]
