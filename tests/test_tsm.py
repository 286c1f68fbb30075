"""SDM's temporal-wise spiking mechanism: the TSM variant of a U-Net, the fine-tuning of p[t], its
export (snc.StepScale), compilation (per-step gains and biases) and the Lava processes that run it."""

import json

import nir
import numpy as np
import pytest
import torch

import snc.models as m
from snc.compiler.ir import Linear, Population
from snc.compiler.ir_executor import run_ir
from snc.compiler.netlist import netlist_currents
from snc.compiler.nir_io import StepScale, read_graph, write_graph
from snc.errors import GraphError
from snc.models.checkpoint import load_checkpoint, save_checkpoint, shipped_checkpoint
from snc.models.train import TrainSettings, finetune_tsm
from snc.runtime.backends.emulator import EmuNetwork
from snc.runtime.backends.lava import LavaNetwork
from snc.compiler.nir_reference import NIRReference

from conftest import compile_model, compile_nir, deploy, host_of, make_model, run_snc
from test_cli import _clean_error, _ok
from test_emulator import _assert_same_trace


def test_unit_scales_give_the_base_model_and_a_scale_acts_on_its_step_only():
    base = make_model("digits-unet")
    tsm = m.SpikingUNetTSM.from_unet(base)
    x, t = torch.randn(3, 1, 8, 8), torch.tensor([0, 500, 999])
    assert torch.equal(tsm(x, t), base(x, t))
    p = torch.tensor([0.5, 1.0, 2.0, -1.0]).view(4, 1, 1, 1, 1)
    with torch.no_grad():
        tsm.conv_identity.tsmp.copy_(p)
    frames = torch.randn(4 * 3, 32, 8, 8)  # T=4 steps of 3 images, step-major
    plain = tsm.conv_identity.tsmconv(frames).view(4, 3, 32, 8, 8)
    assert torch.equal(tsm.conv_identity(frames).view(4, 3, 32, 8, 8), plain * p)  # bias scaled too


def test_finetune_trains_the_scales_only():
    base = load_checkpoint(shipped_checkpoint("digits-unet")).model
    before = {k: v.clone() for k, v in base.state_dict().items()}
    model, meta = finetune_tsm(base, TrainSettings(steps=3, batch_size=8, lr=1e-2, warmup=1))
    assert meta["train_steps"] == 3 and not model.training
    assert all(torch.equal(v, before[k]) for k, v in base.state_dict().items())  # the base is untouched
    assert all(p.requires_grad for n, p in model.named_parameters() if "timembedding.0" not in n)
    changed = {k for k, v in model.state_dict().items()
               if not torch.equal(v, torch.ones_like(v) if k.endswith("tsmp") else before[k.replace(".tsmconv.", ".")])}
    assert changed == {k for k in model.state_dict() if k.endswith("tsmp")}


@pytest.mark.slow
def test_tsm_finetune_on_the_command_line(tmp):
    out = tmp / "tsm.pt"
    _ok(run_snc("train", "--tsm-finetune", str(shipped_checkpoint("digits-unet")), "--steps", "2",
                "--batch-size", "4", "-o", str(out)))
    ckpt = load_checkpoint(out)
    assert ckpt.arch == "spiking-unet-tsm" and ckpt.meta["tsm_finetune_of"].endswith("digits-unet.pt")
    res = json.loads(_ok(run_snc("sample", str(out), "--steps", "2", "-n", "2", "-o", str(tmp / "s.png"),
                                 "--json")).stdout)
    assert res["n"] == 2
    _ok(run_snc("compile", str(out), "-o", str(tmp / "b")))
    res = json.loads(_ok(run_snc("sample", str(tmp / "b"), "--backend", "emu", "--steps", "2", "-n", "2",
                                 "-o", str(tmp / "c.png"), "--json")).stdout)
    assert res["n"] == 2
    report = json.loads(_ok(run_snc("energy", str(tmp / "b"), "--backend", "emu", "-n", "1", "--steps", "2",
                                    "--json")).stdout)
    gains = {r["layer"]: r for r in report["layers"] if r["layer"].startswith("TSM per-step gains")}
    assert set(gains) == {"TSM per-step gains (chip)", "TSM per-step gains (host)"}
    chip = gains["TSM per-step gains (chip)"]  # every gained synapse output vs every scaled conv output, per step
    assert chip["macs_exact"] > chip["macs_papers"] > 0
    mlp = tmp / "mlp.pt"
    save_checkpoint(mlp, "spiking-mlp", make_model("digits-mlp"), {})
    _clean_error(run_snc("train", "--tsm-finetune", str(mlp), "-o", str(out)), "needs a spiking-unet checkpoint")
    _clean_error(run_snc("train", "-o", str(out)), "give --preset NAME to train, or --tsm-finetune")


# --- lowering --------------------------------------------------------------------------------------
def _tiny_tsm(timestep: int = 3) -> m.SpikingUNetTSM:
    """A small TSM U-Net with non-trivial BatchNorms, conv biases and scales p[t] (one negative)."""
    base = make_model("digits-unet", ch=8, ch_mult=(1, 2), num_res_blocks=1, timestep=timestep).double()
    model = m.SpikingUNetTSM.from_unet(base).eval()
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for mod in model.modules():
            if isinstance(mod, m.unet.TSMConv2d):
                mod.tsmconv.bias.copy_(torch.rand(mod.tsmconv.bias.shape, generator=g, dtype=torch.float64) - 0.5)
                mod.tsmp.copy_(torch.rand(mod.tsmp.shape, generator=g, dtype=torch.float64) * 0.6 + 0.7)
        model.downblocks[0].conv2.tsmp[1] = -0.5
    return model


@pytest.fixture(scope="module")
def tiny():
    """(model, NIR graph, compiled IR and build, host inputs of a call, the core's output in torch)."""
    model = _tiny_tsm()
    dep = deploy(model)
    result = compile_model(dep, calibration=2)
    x = torch.randn((2, 1, 8, 8), generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    t = torch.tensor([20, 700])
    with torch.no_grad():
        expected = model.core(model.encode(x), model.time_biases(t))
    return model, dep.nir_graph, (result.graph, result.build), dep.host.call_inputs(x, t), expected


def test_export_holds_step_scales_and_computes_the_model(tiny, tmp):
    model, graph, *_ = tiny
    core_convs = sum(isinstance(mod, m.unet.TSMConv2d) for mod in model.modules()) - 1  # the tail is host-side
    steps = {n for n, node in graph.nodes.items() if isinstance(node, StepScale)}
    assert len(steps) >= core_convs and all(graph.nodes[n].scale.shape == (3,) for n in steps)
    write_graph(tmp / "tsm.nir", graph)
    back = read_graph(tmp / "tsm.nir")
    assert {n for n, node in back.nodes.items() if isinstance(node, StepScale)} == steps
    x = torch.randn((2, 1, 8, 8), generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    t = torch.tensor([3, 900])
    out = NIRReference(back).run(host_of(model, back).core_inputs(x, t, None))["output"]
    with torch.no_grad():
        expected = model.core(model.encode(x), model.time_biases(t))
    assert torch.allclose(out, expected.reshape(out.shape), rtol=0, atol=1e-12)


def test_compiled_graph_has_per_step_gains_and_biases_and_computes_the_model(tiny):
    model, graph, (ir, _), inputs, expected = tiny
    assert not list(ir.of_type(Linear))
    gained = [e for e in ir.edges if e.gain is not None]
    assert gained and any(np.any(e.gain < 0) for e in gained)
    assert any(np.ndim(p.bias) == 4 for p in ir.of_type(Population))
    for e in gained:
        if isinstance(ir.nodes[e.src], Population):  # chip synapses: a gain mantissa within a rounding step
            mant, shift = e.fixed["gain"], e.fixed["gain_shift"]
            assert np.abs(mant).max() < 2**12 and np.abs(mant / 2.0**shift - e.gain).max() <= 2.0 ** -(shift + 1)
    run = run_ir(ir, inputs, record=True)
    ref = NIRReference(graph).run({k: v.unsqueeze(0).expand(3, *v.shape) for k, v in inputs.items()}, record=True)
    assert torch.allclose(run.readout.reshape(expected.shape), expected, rtol=0, atol=1e-10)
    for name, spikes in run.spikes.items():
        if ir.nodes[name].role == "neuron":
            assert torch.equal(spikes, ref[name]), name


@pytest.mark.lava
def test_lava_floating_pt_equals_torch(tiny):
    model, graph, (ir, build), inputs, expected = tiny
    net = build.netlist("float")
    currents = netlist_currents(net, inputs)
    run = run_ir(ir, inputs, record=True)
    with LavaNetwork(net, batch=2, record=True) as lava:
        result = lava.call(currents)
    readout = result.readout + net.readout.step_bias(3)[:, None] + currents.get(net.readout.name, 0)
    assert np.abs(readout.reshape(expected.shape) - expected.numpy()).max() < 1e-9
    for name, spikes in run.spikes.items():
        assert np.array_equal(result.spikes[name], spikes.numpy().astype(bool).reshape(result.spikes[name].shape)), name


@pytest.mark.lava
def test_lava_fixed_pt_equals_the_emulator_at_every_step_across_calls(tiny):
    model, graph, (ir, build), inputs, _ = tiny
    net = build.netlist("fixed")
    assert any(s.gain is not None for s in net.synapses) and any(g.per_step for g in net.groups.values())
    currents = netlist_currents(net, inputs)
    steps = net.call_steps + 4
    # one image: a trace reads every population's state from Lava at every step (Var.get per image copy),
    # and per-step gains and biases do not depend on the batch
    first = {name: value[:, :1] for name, value in currents.items()}
    emu = EmuNetwork(net, 1, record=True).trace(steps, first)
    with LavaNetwork(net, 1, record=True) as lava:
        _assert_same_trace(lava.trace(steps, first), emu, net)
    # (the emulator's windowed calls equal Lava's on batches: test_emulator.py, snc verify)


def test_step_scales_of_the_wrong_length_are_one_clear_error(tiny):
    _, graph, *_ = tiny
    nodes = dict(graph.nodes)
    name = next(n for n, node in nodes.items() if isinstance(node, StepScale))
    node = nodes[name]
    nodes[name] = StepScale(input_shape=node.input_shape, scale=np.ones(5), bias=node.bias)
    with pytest.raises(GraphError, match=f"{name}: 5 per-step scales for T = 3"):
        compile_nir(nir.NIRGraph(nodes=nodes, edges=graph.edges, metadata=graph.metadata), 3)


def test_build_directory_keeps_gains_and_per_step_biases(tiny, tmp):
    from snc.compiler.build import read_build, write_build

    *_, (ir, build), _, _ = tiny
    write_build(tmp / "build", build, None)
    back = read_build(tmp / "build")
    for mode in ("fixed", "float"):
        a, b = build.netlist(mode), back.netlist(mode)
        assert any(s.gain is not None for s in a.synapses) and any(g.per_step for g in a.groups.values())
        for s, t in zip(a.synapses, b.synapses):
            assert (s.gain is None) == (t.gain is None) and (s.gain is None or np.array_equal(s.gain, t.gain)), s.name
            assert s.gain_shift == t.gain_shift and np.array_equal(s.op.weight, t.op.weight)
        for name, g in a.groups.items():
            assert np.array_equal(g.bias_mant, b.groups[name].bias_mant), name
            assert np.array_equal(g.bias_exp, b.groups[name].bias_exp), name
        assert all((h.gain is None) == (k.gain is None) for h, k in zip(a.host_ops, b.host_ops))
