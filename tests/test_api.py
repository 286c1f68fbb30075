"""The library API (``snc.api``), the backend registry and protocol, frontends and targets as seams."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import snc.compiler.build as build_module
import snc.compiler.frontends as frontends_module
import snc.compiler.passes.import_nir as import_nir
from snc import api
from snc.compiler.build import read_build
from snc.compiler.frontends import FAMILIES
from snc.compiler.frontends.base import HostProgram
from snc.compiler.targets import TARGETS, get_target
from snc.errors import SncError
from snc.models.checkpoint import shipped_checkpoint
from snc.runtime.backends import BACKENDS, get_backend
from snc.runtime.backends.base import NetlistBackend

from conftest import deploy, make_model


@pytest.fixture
def counted(monkeypatch):
    """How often checkpoints are loaded and NIR graphs imported into the IR."""
    counts = {"checkpoint": 0, "import": 0}

    def counting(module, name, key):
        original = getattr(module, name)

        def wrapper(*args, **kwargs):
            counts[key] += 1
            return original(*args, **kwargs)

        monkeypatch.setattr(module, name, wrapper)

    counting(build_module, "load_checkpoint", "checkpoint")
    counting(frontends_module, "load_checkpoint", "checkpoint")
    counting(import_nir, "import_graph", "import")
    return counts


def test_each_command_loads_a_checkpoint_once_and_imports_a_nir_graph_once(unet_build, counted, tmp):
    from snc.models.checkpoint import save_checkpoint

    runs = {
        "energy of a build": lambda: api.energy(read_build(unet_build.path), backends=("torch", "emu"), n=1, steps=2),
        "verify": lambda: api.verify(read_build(unet_build.path), backends=("emu",), n=1),
        "sample": lambda: api.sample(unet_build.path, backend="emu", steps=2, n=2),
        "energy of a checkpoint": lambda: api.energy(tmp / "mlp.pt", n=1, steps=2),  # compiled in memory
        "compile": lambda: api.compile(tmp / "mlp.pt", output=tmp / "b"),
    }
    imports = {"energy of a build": 1, "energy of a checkpoint": 1, "compile": 1}  # the compile's serves energy
    save_checkpoint(tmp / "mlp.pt", "spiking-mlp", make_model("digits-mlp"), {})
    for what, run in runs.items():
        counted.update(checkpoint=0, **{"import": 0})
        run()
        assert counted == {"checkpoint": 1, "import": imports.get(what, 0)}, what


def test_verify_compares_any_backends_and_fails_on_inexact_twins(unet_build, monkeypatch):
    report = api.verify(unet_build, backends=("emu",), n=1)
    assert report.runs == ["torch", "emu"] and set(report.agreement) == {"emu_vs_torch"}
    assert report.exact and report.agreement["emu_vs_torch"] > 0.9
    assert all(row["emu_vs_torch"] is not None for row in report.layers)
    # two runs that promise the same arithmetic must agree bit for bit: a broken twin is caught
    emu = get_backend("emu")
    monkeypatch.setattr(type(get_backend("torch")), "semantics", lambda self, mode: emu.semantics("fixed"))
    assert not api.verify(unet_build, backends=("emu",), n=1).exact
    with pytest.raises(SncError, match="--backends takes"):
        api.verify(unet_build, backends=("gpu",))


def test_backends_are_registered_once_and_share_the_protocol():
    assert list(BACKENDS) == ["torch", "lava", "emu"]
    for name in BACKENDS:
        backend = get_backend(name)
        assert backend.name == name and backend.default_mode in backend.modes and backend.description
    netlist = [n for n in BACKENDS if isinstance(get_backend(n), NetlistBackend)]
    assert netlist == ["lava", "emu"] and all(get_backend(n).targets == ("loihi2",) for n in netlist)
    assert get_backend("emu").semantics("fixed") == get_backend("lava").semantics("fixed")
    with pytest.raises(SncError, match="unknown backend"):
        get_backend("gpu")


def test_torch_and_emu_sample_through_one_entry_point(unet_build):
    torch_run = api.sample(unet_build, backend="torch", steps=2, n=2)
    emu_run = api.sample(unet_build, backend="emu", steps=2, n=2)
    assert torch_run.mode == "float32" and emu_run.mode == "fixed"
    assert torch_run.images.shape == emu_run.images.shape == (2, 1, 8, 8)
    assert torch.equal(api.sample(unet_build, backend="emu", steps=2, n=2).images, emu_run.images)  # seeded
    with pytest.raises(SncError, match="needs a build"):
        api.sample(shipped_checkpoint("digits-unet"), backend="emu", steps=2, n=2)


def test_sample_time_guidance_on_a_netlist_follows_the_targets_rule(unet_build):
    target = get_target("loihi2")
    net = unet_build.netlist("fixed")
    guided = target.guide(net, 0.997)
    for name, g in net.groups.items():
        h = guided.groups[name]
        if g.role == "neuron":
            assert h.vth == round(g.threshold * 0.997 * g.scale) != g.vth
        else:
            assert h.vth == g.vth
    with pytest.raises(SncError, match="rounds away"):
        target.guide(net, 1.000001)
    floating = target.guide(unet_build.netlist("float"), 1.000001)  # float mode can express any factor
    assert all(floating.groups[n].vth == pytest.approx(g.vth * 1.000001) for n, g in
               unet_build.netlist("float").groups.items() if g.role == "neuron")


def test_frontends_targets_and_families_are_registries():
    assert {"spiking-unet", "spiking-unet-tsm", "spiking-mlp", "lateral-transformer"} <= set(FAMILIES)
    assert list(TARGETS) == ["loihi2"]
    with pytest.raises(SncError, match="not a compile target"):
        get_target("cmos45nm-fp32")
    dep = deploy(make_model("digits-mlp"))
    assert isinstance(dep.host, HostProgram)
    assert next(dep.host.model.parameters()).dtype == torch.float64  # the host's arithmetic
    inputs = dep.host.call_inputs(torch.zeros(2, 1, 8, 8), torch.tensor([5, 5]))
    assert set(inputs) == set(dep.nir_graph.inputs)  # the family names the graph's inputs it feeds


def test_the_target_reads_every_rule_from_its_profile():
    rules = get_target("loihi2").rules
    fixed = get_target("loihi2").profile["fixed_point"]
    assert rules.decay_unity == 2 ** fixed["decay_bits"] and rules.vth_limit == 2 ** fixed["vth_bits"]
    assert rules.weight_range(mixed=True) == (-256, 254, 2) and rules.weight_range(mixed=False) == (-255, 255, 1)
    assert rules.current_limit == 2 ** (fixed["state_bits"] - 1 - fixed["activation_shift"])


def test_an_in_memory_build_writes_and_reads_back_the_same_netlists(tmp):
    compiled = api.compile(deploy(make_model("digits-mlp")), calibration=0, output=tmp / "b")
    back = read_build(tmp / "b")
    assert back.modes == ["fixed", "float"] and back.default_mode == "fixed"
    for mode in back.modes:
        a, b = compiled.build.netlist(mode), back.netlist(mode)
        assert [s.name for s in a.synapses] == [s.name for s in b.synapses]
        assert all(np.array_equal(s.op.weight, t.op.weight) for s, t in zip(a.synapses, b.synapses))
    assert back.host.model.config == compiled.build.host.model.config
