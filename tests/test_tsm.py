"""SDM's temporal-wise spiking mechanism: the TSM variant of a U-Net and the fine-tuning of p[t]."""

import json

import torch

import snc.models as m
from snc.models.checkpoint import load_checkpoint, save_checkpoint, shipped_checkpoint
from snc.models.train import TrainSettings, finetune_tsm

from conftest import make_model, run_snc
from test_cli import _clean_error, _ok


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


def test_tsm_finetune_on_the_command_line(tmp):
    out = tmp / "tsm.pt"
    _ok(run_snc("train", "--tsm-finetune", str(shipped_checkpoint("digits-unet")), "--steps", "2",
                "--batch-size", "4", "-o", str(out)))
    ckpt = load_checkpoint(out)
    assert ckpt.arch == "spiking-unet-tsm" and ckpt.meta["tsm_finetune_of"].endswith("digits-unet.pt")
    res = json.loads(_ok(run_snc("sample", str(out), "--steps", "2", "-n", "2", "-o", str(tmp / "s.png"),
                                 "--json")).stdout)
    assert res["n"] == 2
    _clean_error(run_snc("compile", str(out), "-o", str(tmp / "b")), "TSM per-step scales have no lowering yet")
    mlp = tmp / "mlp.pt"
    save_checkpoint(mlp, "spiking-mlp", make_model("digits-mlp"), {})
    _clean_error(run_snc("train", "--tsm-finetune", str(mlp), "-o", str(out)), "needs a spiking-unet checkpoint")
    _clean_error(run_snc("train", "-o", str(out)), "give --preset NAME to train, or --tsm-finetune")
