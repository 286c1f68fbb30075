"""Spiking-Diffusion on chip (issue 17, item 3): its three cores as NIR, compiled into one pipeline build, run
as the model runs (the absorbing sampler over the SDID's calls, then the decoder) on torch, the emulator and
Lava, verified core by core, and costed per sample."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from snc import api
from snc.compiler.build import PipelineBuild, read_any_build, read_build
from snc.compiler.frontends import deployable
from snc.compiler.linear import LinearOp, compose, op_from_dict, op_to_dict, upsample_op
from snc.compiler.nir_io import ZeroInsert2d, read_graph, write_graph
from snc.errors import SncError
from snc.models import load_checkpoint
from snc.runtime.graph_run import run_graph
from snc.models.checkpoint import shipped_checkpoint

from conftest import run_snc
from test_spiking_diffusion import public_files  # noqa: F401  (a fixture)


@pytest.fixture(scope="module")
def shipped():
    return load_checkpoint(shipped_checkpoint("digits-vq"))


@pytest.fixture(scope="module")
def vq_build(shipped, tmp_path_factory):
    out = tmp_path_factory.mktemp("vq") / "build"
    compiled = api.compile(shipped_checkpoint("digits-vq"), output=out)
    assert isinstance(compiled, api.CompiledPipeline) and list(compiled.stages) == ["encoder", "sdid", "decoder"]
    return out


@pytest.mark.parametrize("stride,kernel,padding", [(2, 3, 1), (2, 3, 0), (3, 3, 1), (2, 1, 0), (1, 3, 1)])
def test_zero_insertion_and_a_flipped_kernel_is_the_transposed_conv(stride, kernel, padding):
    torch.manual_seed(stride * 10 + kernel + padding)
    ct = torch.nn.ConvTranspose2d(3, 4, kernel, stride, padding, output_padding=stride - 1, bias=False).double()
    x = torch.randn(2, 3, 4, 4, dtype=torch.float64)
    w = ct.weight.detach().flip(-1, -2).transpose(0, 1).numpy()
    op = compose(LinearOp.conv(w, (3, 4 * stride, 4 * stride), 1, kernel - 1 - padding),
                 upsample_op((3, 4, 4), stride, zeros=True))  # the 1x1 insertion folds into the kernel
    assert op.kind == "conv" and op.in_shape == (3, 4, 4) and op.zeros == (stride > 1)
    want = ct(x)
    assert torch.allclose(op.apply(x), want, atol=1e-12)
    matrix = op.to_csr()
    assert torch.allclose(torch.from_numpy((matrix @ x.reshape(2, -1).numpy().T).T).reshape(want.shape), want,
                          atol=1e-12)
    # synapse counts: exact (one synapse per non-zero matrix entry), from either end
    assert op.synapse_count() == matrix.nnz == int(op.fan_in().sum())
    assert np.array_equal(op.fan_out(), np.diff(matrix.tocsc().indptr))
    back = op_from_dict(json.loads(json.dumps(op_to_dict(op))), op.weight)
    assert back == op and back.zeros == op.zeros


@pytest.mark.parametrize("core", ["vq-svae-encoder", "sdid", "vq-svae-decoder"])
def test_each_core_is_a_nir_graph_whose_float_run_is_the_torch_model(shipped, core, tmp_path):
    """Written and read back as a file (the ZeroInsert2d extension included), compiled, and run by the float NIR
    executor: the torch model's output (snc run --backend reference)."""
    d = deployable(shipped.model.eval(), core)
    write_graph(tmp_path / "core.nir", d.nir_graph)
    graph = read_graph(tmp_path / "core.nir")
    assert sorted(graph.nodes) == sorted(d.nir_graph.nodes) and len(graph.edges) == len(d.nir_graph.edges)
    assert any(isinstance(n, ZeroInsert2d) for n in graph.nodes.values()) == (core == "vq-svae-decoder")
    build = api.compile(d).build
    host = build.host
    x, t = host.call_pairs(3, (0.5,), seed=1)[0]
    inputs = host.call_inputs(x, t)["input"]
    sequence = inputs.expand(host.config.timestep, *inputs.shape) if inputs.dim() == x.dim() else inputs
    run = run_graph(build, sequence.numpy(), "reference", None, None)
    out = host.decode(torch.from_numpy(run.output), x, t)
    want = host.forward(x, t)
    if core == "vq-svae-encoder":  # token ids: a near tie between two codebook rows may go either way
        assert (out == want).double().mean() >= 0.98
    else:
        assert torch.allclose(out, want, atol=1e-5, rtol=1e-5), float((out - want).abs().max())


def test_a_pipeline_build_holds_every_core_and_refuses_changes(vq_build, tmp_path):
    built = read_any_build(vq_build)
    assert isinstance(built, PipelineBuild) and built.arch == "spiking-diffusion-vq"
    assert {name: b.arch for name, b in built.stages.items()} == {
        "encoder": "vq-svae-encoder", "sdid": "sdid", "decoder": "vq-svae-decoder"}
    assert read_build(vq_build / "sdid").netlist("fixed").timestep == 16  # each core is a build of its own
    with pytest.raises(SncError, match="a pipeline build .*sdid"):
        read_build(vq_build)
    result = run_snc("run", str(vq_build), "--input", "x.npy")
    assert result.returncode == 1 and result.stderr.count("error:") == 1 and "Traceback" not in result.stderr
    assert "pipeline build" in result.stderr and str(vq_build / "decoder") in result.stderr
    result = run_snc("export", str(vq_build), "-o", str(tmp_path / "vq.nir"))  # a NIR file per core
    assert result.returncode == 0, result.stderr
    for name, b in built.stages.items():
        assert sorted(read_graph(tmp_path / f"vq-{name}.nir").nodes) == sorted(b.nir_graph.nodes)
    # a stage's build.json changed: the pipeline no longer matches it
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(vq_build, copy)
    meta = json.loads((copy / "decoder" / "build.json").read_text())
    (copy / "decoder" / "build.json").write_text(json.dumps(meta | {"source": "elsewhere"}))
    with pytest.raises(SncError, match="stage 'decoder'"):
        read_any_build(copy)
    # recompiling over a pipeline build replaces it
    assert isinstance(api.compile(shipped_checkpoint("digits-vq"), output=copy), api.CompiledPipeline)
    assert isinstance(read_any_build(copy), PipelineBuild)


def test_sampling_runs_the_models_own_process_on_any_backend(shipped, vq_build):
    """On torch it is the model's own ``sample`` to the bit; the emulator samples digits as well."""
    ours = api.sample(shipped_checkpoint("digits-vq"), backend="torch", n=16, seed=3, temperature=0.8)
    with torch.no_grad():
        theirs = shipped.model.float().sample(16, 0.8, seed=3)
    assert ours.sampler == "absorbing" and ours.steps == 16 and torch.equal(ours.images, theirs.float())
    emu = api.sample(vq_build, backend="emu", n=64, seed=0, temperature=0.65)
    again = api.sample(vq_build, backend="emu", n=64, seed=0, temperature=0.65)
    assert torch.equal(emu.images, again.images) and emu.mode == "fixed"
    quality = api.evaluate(emu.images)
    assert quality.noise_ratio < 0.15


def test_energy_of_a_sample_is_every_sdid_call_and_the_decoder(vq_build):
    report = api.energy(vq_build, backends=("emu",), n=2, profile="cmos45nm-fp32")
    assert {name: r.steps_per_sample for name, r in report.stages.items()} == {"sdid": 16, "decoder": 1}
    total = sum(r.totals["per_sample"]["energy_exact_mj"] for r in report.stages.values())
    assert report.per_sample["energy_exact_mj"] == pytest.approx(total) and total > 0
    sdid = report.stages["sdid"]
    assert sdid.totals["per_sample"]["energy_exact_mj"] == pytest.approx(
        16 * sdid.totals["per_call"]["energy_exact_pj"] / 1e9)
    fewer = api.energy(vq_build, backends=("emu",), n=2, steps=8, profile="cmos45nm-fp32")
    assert fewer.stages["sdid"].steps_per_sample == 8


def test_a_pipeline_refuses_what_it_does_not_run(vq_build, tmp_path):
    result = run_snc("sample", str(vq_build), "--sampler", "ddim", "-n", "2", "-o", str(tmp_path / "s.png"))
    assert result.returncode == 1 and "--sampler absorbing" in result.stderr and "Traceback" not in result.stderr
    result = run_snc("compile", str(shipped_checkpoint("digits-vq")), "--stop-after", "quantize", "-o",
                     str(tmp_path / "b"))
    assert result.returncode == 1 and "compiles 3 cores" in result.stderr
    result = run_snc("sample", str(vq_build / "sdid"), "-n", "2", "-o", str(tmp_path / "s.png"))  # one core
    assert result.returncode == 1 and "not an image denoiser" in result.stderr and "Traceback" not in result.stderr


def test_a_public_sdid_file_compiles_and_runs_on_the_emulator(public_files, tmp_path):  # noqa: F811
    path, _, _ = public_files
    out = tmp_path / "sdid"
    api.compile(path / "diff_model.pth", arch="spiking-diffusion-sdid",
                config={"n_channel": 1, "num_embeddings": 32}, output=out, allow_oversize=True)  # 14 chips
    report = api.verify(out, backends=("emu",), n=2)
    assert report.exact and [r["population"] for r in report.layers] == [f"conv{i}.2" for i in range(1, 6)]
    assert report.agreement["emu_vs_torch"] > 0.9


@pytest.mark.lava
def test_lava_runs_every_core_as_torch_and_the_emulator_as_lava_fixed(vq_build, tmp_path):
    report = api.verify(vq_build, backends=("lava", "emu"), n=1)
    assert report.exact  # the emulator = Lava fixed_pt: every spike and readout, every core
    for name, stage in report.stages.items():
        for row in stage.layers:
            assert row["lava_float_vs_torch"] >= 0.999, (name, row)
    samples = {}
    for backend in ("lava", "emu"):
        result = run_snc("sample", str(vq_build), "--backend", backend, "-n", "2", "--seed", "5",
                         "-o", str(tmp_path / f"{backend}.png"))
        assert result.returncode == 0, result.stderr
        samples[backend] = np.load(tmp_path / f"{backend}.npy")
    assert np.array_equal(samples["lava"], samples["emu"])


def test_a_transposed_conv_snc_cannot_lower_is_one_error(shipped):
    import copy

    model = copy.deepcopy(shipped.model).eval()
    model.vqsvae.decoder.snn_convs[3] = torch.nn.ConvTranspose2d(64, 32, 3, 2, 1, output_padding=0)
    with pytest.raises(SncError, match="decoder.snn_convs.3: snc lowers square ConvTranspose2d with "
                                       "output_padding = stride - 1"):
        deployable(model, "vq-svae-decoder")
