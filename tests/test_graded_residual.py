"""``--residual graded``: sum populations that send the residual stream as graded spikes.

The IR keeps the model's function (float64, against re-association) and stores each weighted op once; the
fixed-point passes give every sum population a scale and a payload shift that fit the target; the build
runs on Lava floating_pt as the torch model does, spike for spike, and on the emulator as on Lava fixed_pt,
bit for bit; the energy report prices graded ops as multiplies. The emulator's graded arithmetic against
Lava's at every step is in ``test_emulator.py`` (random netlists and the edge cases).
"""

from __future__ import annotations

import collections

import pytest
import torch

from snc import api
from snc import models as m
from snc.compiler.build import read_build
from snc.compiler.driver import compile_deployable
from snc.compiler.ir import Linear, Population
from snc.compiler.ir_executor import run_ir
from snc.compiler.netlist import load_netlist, save_netlist
from snc.compiler.pass_manager import CompileOptions
from snc.models.checkpoint import shipped_checkpoint

from conftest import deploy, make_model, run_snc
from test_cli import _clean_error, _ok


@pytest.fixture(scope="module")
def graded_build(tmp_path_factory):
    """The shipped digits U-Net compiled with --residual graded, written and read back."""
    out = tmp_path_factory.mktemp("graded") / "unet"
    compiled = api.compile(shipped_checkpoint("digits-unet"), output=out, residual="graded")
    assert compiled.report.residual == "graded" and compiled.report.graded_populations > 0
    return read_build(out)


def _tsm_unet() -> torch.nn.Module:
    """A small SDM U-Net whose per-step scales differ from step to step."""
    tsm = m.SpikingUNetTSM.from_unet(make_model("digits-unet", ch=8, ch_mult=(1, 2), num_res_blocks=1))
    with torch.no_grad():
        for i, p in enumerate(q for name, q in tsm.named_parameters() if name.endswith("tsmp")):
            p.copy_(torch.linspace(0.5, 1.5, p.numel()).roll(i).view_as(p))
    return tsm


MODELS = {"digits-unet": lambda: make_model("digits-unet"), "tsm-unet": _tsm_unet,
          "digits-lateral": lambda: make_model("digits-lateral")}


@pytest.mark.parametrize("model", list(MODELS))
def test_sum_populations_keep_the_function_and_store_each_op_once(model):
    dep = deploy(MODELS[model]().double())
    graphs = {residual: compile_deployable(dep, options=CompileOptions(residual=residual),
                                           stop_after="specialise_selection").graph
              for residual in ("reassociate", "graded")}
    graded = graphs["graded"]
    assert any(p.graded for p in graded.of_type(Population))
    for call in dep.calibration(2, 0)[:2]:
        gates = graded.gates_at(call.step) if graded.gates else None
        ref = run_ir(graphs["reassociate"], call.inputs(gates), gates=gates).readout
        out = run_ir(graded, call.inputs(gates), gates=gates).readout
        assert float((out - ref).abs().max()) <= 1e-9 * float(ref.abs().max())
    imported = compile_deployable(dep, stop_after="partition_host").graph
    weighted = {n.name for n in imported.of_type(Linear) if n.op.kind in ("conv", "dense") and n.placement == "chip"}
    uses = collections.Counter(o for e in graded.edges if isinstance(graded.nodes[e.src], Population)
                               for o in e.origin if o in weighted)
    assert uses and max(uses.values()) == 1  # each conv once, not a copy per reader of the stream
    stored = {r: sum(e.op.weight.size for e in g.edges if e.op.weight is not None) for r, g in graphs.items()}
    assert stored["graded"] < stored["reassociate"]


def test_sum_populations_get_scales_and_payload_shifts_that_fit(graded_build, tmp):
    net = graded_build.netlist("fixed")
    graded = [g for g in net.groups.values() if g.graded]
    assert graded and all(g.payload_shift >= 0 and g.reset_interval == 0 for g in graded)
    assert any(g.payload_shift > 0 for g in graded)
    readers = {s.src for s in net.synapses}
    assert all(g.name in readers for g in graded)
    for s in net.synapses:  # a graded source's weights may shift right, down to the target's smallest exponent
        if net.groups[s.src].graded:
            assert -8 <= s.weight_exp <= 7
    save_netlist(net, tmp / "net")
    again = load_netlist(tmp / "net")
    assert [(g.role, g.payload_shift) for g in again.groups.values()] == \
        [(g.role, g.payload_shift) for g in net.groups.values()]
    float_net = graded_build.netlist("float")
    assert all(g.payload_shift == 0 for g in float_net.groups.values())


def test_graded_builds_are_smaller_and_the_report_says_so(graded_build):
    graded = graded_build.netlist("fixed")
    copied = api.compile(shipped_checkpoint("digits-unet"), residual="reassociate").build.netlist("fixed")
    stored = {name: sum(s.op.weight.size for s in net.synapses) for name, net in
              (("graded", graded), ("reassociate", copied))}
    assert stored["graded"] < stored["reassociate"]
    assert graded.depth > copied.depth  # a pipeline step per sum population on the stream
    report = graded_build.meta
    sums = [g for g in graded.groups.values() if g.graded and ".delay" not in g.name]  # not balance_delays' relays
    assert report["residual"] == "graded" and report["graded_populations"] == len(sums)


def test_energy_prices_graded_ops_as_multiplies(graded_build):
    report = api.energy(graded_build, profile="cmos45nm-fp32", backends=("emu",), n=1)
    call = report.totals["per_call"]
    assert call["graded_ops_exact"] > 0
    rows = [r for r in report.layers if r["role"] == "graded"]
    assert rows and all(r["sops_exact"] == 0 for r in rows)
    row = max(rows, key=lambda r: r["graded_ops_exact"])
    expected = (row["graded_ops_exact"] * 4.6 + (row["updates_active"] + row["updates_idle"]) * 0.9)
    assert row["energy_exact_pj"] == pytest.approx(expected)
    assert any("graded ops x 4.6 pJ" in f for f in report.formulas)


def test_residual_errors_are_one_line(graded_build, tmp):
    result = run_snc("compile", str(shipped_checkpoint("digits-unet")), "--residual", "copies", "-o", str(tmp / "b"))
    _clean_error(result, "error: --residual copies: use reassociate or graded")
    result = run_snc("energy", str(graded_build.path), "--profile", "loihi1", "--backend", "emu", "-n", "1")
    _clean_error(result, "error: profile loihi1 has no graded spikes")


def test_cli_compiles_graded(tmp):
    result = run_snc("compile", str(shipped_checkpoint("digits-unet")), "--residual", "graded", "-o", str(tmp / "b"),
                     "--json")
    _ok(result)
    assert read_build(tmp / "b").meta["residual"] == "graded"


@pytest.mark.lava
def test_lava_runs_sum_populations_as_torch_and_the_emulator_as_lava_fixed(graded_build):
    report = api.verify(graded_build, backends=("lava", "emu"), n=1)
    assert report.agreement["lava_float_vs_torch"] == 1.0  # every spike of every population
    assert report.output_rel_error["lava_float_vs_torch"] < 1e-6
    assert report.exact  # emulator = Lava fixed_pt: every spike and the readout
    assert report.agreement["lava_fixed_vs_torch"] > 0.95


def test_reassociation_past_the_machines_memory_is_one_error(monkeypatch):
    """Composed weights beyond the memory available stop the pass with one error naming the way out
    (cifar10-lateral re-associated would need a copy of every expert's output conv per later block)."""
    from snc.compiler.passes import reassociate
    from snc.errors import GraphError

    dep = deploy(make_model("digits-unet"))
    monkeypatch.setattr(reassociate, "available_mb", lambda: 1.0)  # a machine with 1 MB to spare
    with pytest.raises(GraphError, match=r"re-association holds .* GiB of composed weights at .*, more than half "
                                         r"the 0\.0 GB this machine had available \(later passes copy them\); "
                                         r"--residual graded stores each op once"):
        compile_deployable(dep, options=CompileOptions(residual="reassociate"), calibration=0)
    monkeypatch.setattr(reassociate, "available_mb", lambda: 10_000.0)
    assert compile_deployable(dep, options=CompileOptions(residual="reassociate"), calibration=0).build is not None
