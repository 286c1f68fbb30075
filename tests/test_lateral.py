"""The lateral-selection spiking transformer (paper 000): selection, lateral circuit, experts."""

from __future__ import annotations

import dataclasses

import numpy as np

import pytest
import torch

import snc.models as m
from snc.models.lateral import LateralConfig, SpikingLateralTransformer, top_k_mask
from snc.models.neurons import NeuronConfig

from conftest import make_model

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


def test_lateral_circuits_select_the_same_experts_on_lava_as_in_torch():
    from snc.compiler.export import export_selection
    from snc.compiler.lower import lower
    from snc.compiler.pipeline import compile_graph
    from snc.runtime.emulator import EmuNetwork
    from snc.runtime.host import core_inputs
    from snc.runtime.ir_executor import host_currents, run_ir
    from snc.runtime.lava_backend import LavaNetwork
    from snc.runtime.nir_reference import NIRReference

    from test_emulator import _assert_same_trace

    model = _active_circuits()
    cfg = model.config
    graph = export_selection(model)
    ir = compile_graph(graph, cfg.timestep, "lateral-selection")
    loops = [e for e in ir.edges if e.lag]
    assert loops and all(e.src == e.dst and e.lag == 1 and e.delay == 0 for e in loops)  # Lava's one step
    t = torch.tensor([0, 50, 200, 400, 600, 800, 950, 999])  # 8 inputs: the selection depends on t alone
    with torch.no_grad():
        h, delta = model.selection(t)
        inputs = core_inputs(model, graph, torch.zeros(8, 1, 8, 8, dtype=torch.float64), t)
    assert 0.1 < delta.mean() < 0.9
    omega = [f"blocks.{r}.selection.omega" for r in range(cfg.depth)]
    ref = NIRReference(graph).run(inputs, record=True)
    run = run_ir(ir, {k: v[0] for k, v in inputs.items()}, record=True)
    for r, name in enumerate(omega):
        assert torch.equal(ref[name], delta[r]) and torch.equal(run.spikes[name], delta[r]), name
    currents = {k: v.numpy() for k, v in host_currents(ir, {k: v[0] for k, v in inputs.items()}).items()}
    with LavaNetwork(ir, "float", batch=8, record=True) as lava:
        calls = [lava.call(currents) for _ in range(2)]  # the second call starts from the first's state
    for result in calls:
        chip = torch.stack([torch.from_numpy(result.spikes[name].astype(np.float64)) for name in omega])
        assert torch.equal(chip, delta)
        assert torch.equal(model.selection_from_spikes(t, chip), h)  # identical experts, every t and inner step
    net = lower(ir, "fixed")
    steps = 2 * net.call_steps + 1
    emu = EmuNetwork(net, 8, record=True).trace(steps, currents)
    with LavaNetwork(net, "fixed", 8, record=True) as lava:
        _assert_same_trace(lava.trace(steps, currents), emu, net)
    windowed = EmuNetwork(net, 8, record=True, windows_only=True)
    assert windowed.windowed
    with LavaNetwork(net, "fixed", 8, record=True) as lava:
        for _ in range(2):
            a, b = windowed.call(currents), lava.call(currents)
            assert np.array_equal(a.readout, b.readout)
            assert all(np.array_equal(a.spikes[n], b.spikes[n]) for n in net.groups)


def test_a_cycle_without_a_delay_and_the_whole_model_are_clear_errors():
    import nir

    from snc.compiler.export import export_model, export_selection
    from snc.compiler.pipeline import compile_graph
    from snc.errors import GraphError, SncError

    graph = export_selection(_model())
    nodes = {k: v for k, v in graph.nodes.items() if not k.endswith(".delay")}
    edges = [(a, b) for a, b in graph.edges if not a.endswith(".delay") and not b.endswith(".delay")]
    edges += [(a.replace(".lateral", ".omega"), a) for a, _ in graph.edges if a.endswith(".lateral")]
    with pytest.raises(GraphError, match="cycle without a delay"):
        compile_graph(nir.NIRGraph(nodes=nodes, edges=edges, metadata=graph.metadata), TINY.timestep)
    with pytest.raises(SncError, match="only its lateral circuits"):
        export_model(_model())


def test_feed_forward_delays_gains_after_them_and_builds_keep_lags(tmp):
    """P -> Delay -> Affine -> StepScale -> B (a lag with a per-step gain) beside a plain path, saved and reloaded."""
    import nir

    from snc.compiler.build import read_build, write_build
    from snc.compiler.export import neuron_node
    from snc.compiler.lower import lower
    from snc.compiler.nir_io import NIR_DT, StepScale
    from snc.compiler.pipeline import compile_graph
    from snc.runtime.emulator import EmuNetwork
    from snc.runtime.ir_executor import host_currents, run_ir
    from snc.runtime.lava_backend import LavaNetwork
    from snc.runtime.nir_reference import NIRReference

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
    ir = compile_graph(graph, T)
    lagged = [e for e in ir.edges if e.lag]
    assert lagged and all(e.src in ("p", "p.delay1") and e.dst == "b" and e.gain is not None for e in lagged)
    x = torch.as_tensor(rng.uniform(0.3, 1.6, (3, n)))
    ref = NIRReference(graph).run({"input": x.unsqueeze(0).expand(T, -1, -1)}, record=True)
    run = run_ir(ir, {"input": x}, record=True)
    assert torch.equal(run.spikes["b"], ref["b"]) and torch.allclose(run.readout, ref["output"], atol=1e-12)
    assert 0 < ref["b"].mean() < 1
    write_build(tmp / "build", ir, graph, {"arch": "test"}, None)
    back = read_build(tmp / "build").graph
    assert [(e.name, e.lag) for e in back.edges] == [(e.name, e.lag) for e in ir.edges]
    net = lower(back, "fixed")
    currents = {k: v.numpy() for k, v in host_currents(back, {"input": x}).items()}
    steps = 2 * net.call_steps + 1
    emu = EmuNetwork(net, 3, record=True).trace(steps, currents)
    with LavaNetwork(net, "fixed", 3, record=True) as lava:
        _assert_same_trace(lava.trace(steps, currents), emu, net)
    with LavaNetwork(back, "float", 3, record=True) as lava:
        for _ in range(2):
            assert np.array_equal(lava.call(currents).spikes["b"], ref["b"].numpy().astype(bool))
