"""Spiking-Diffusion (paper 003): the public code's files load into snc's VQ-SVAE and SDID and give its outputs.

The check is a functional version of the public inference written here from the state dict alone
(F.conv2d, F.batch_norm, F.conv_transpose2d and SpikingJelly's LIF equations; the semantics of the public
code, github.com/Arktis2022/Spiking-Diffusion), run on a state dict in the public
code's layout, saved as that code saves it (``torch.save(model.state_dict())``).
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from snc.errors import SncError
from snc.models import absorbing, build_model, load_checkpoint, preset, save_checkpoint

T = 16
K = 32


def _conv(prefix: str, cin: int, cout: int, k: int, transposed: bool = False) -> dict[str, torch.Tensor]:
    shape = (cin, cout, k, k) if transposed else (cout, cin, k, k)
    bound = 1 / math.sqrt(cin * k * k)
    return {f"{prefix}.weight": torch.empty(shape).uniform_(-bound, bound) * 2,
            f"{prefix}.bias": torch.empty(cout).uniform_(-bound, bound)}


def _bn(prefix: str, c: int) -> dict[str, torch.Tensor]:
    # statistics and affine values that leave the LIFs firing at moderate rates
    return {f"{prefix}.weight": torch.empty(c).uniform_(0.8, 1.6), f"{prefix}.bias": torch.empty(c).uniform_(0.2, 1.2),
            f"{prefix}.running_mean": torch.randn(c) * 0.1, f"{prefix}.running_var": torch.empty(c).uniform_(0.5, 1.5),
            f"{prefix}.num_batches_tracked": torch.tensor(1000)}


def public_vqsvae_state_dict(k: int = K) -> dict[str, torch.Tensor]:
    """A random ``SNN_VQVAE(1, 16, k, ...)`` state dict: its keys, shapes and dtypes."""
    sd = {**_conv("encoder.snn_convs.0", 1, 32, 3), **_bn("encoder.snn_convs.1", 32),
          **_conv("encoder.snn_convs.3", 32, 64, 3), **_bn("encoder.snn_convs.4", 64),
          **_conv("encoder.snn_convs.6", 64, 16, 1), **_bn("encoder.snn_convs.7", 16),
          "vq_layer.alpha": torch.tensor(0.3),
          "vq_layer.memout.coef": torch.pow(torch.tensor(0.8), torch.arange(T - 1, -1, -1)).reshape(T, 1, 1, 1, 1),
          "vq_layer.embeddings.weight": torch.rand(k, 16) * 0.8,
          **_conv("vq_layer.poisson.0", 16, 16, 1), **_bn("vq_layer.poisson.1", 16),
          **_conv("decoder.snn_convs.0", 16, 64, 3, True), **_bn("decoder.snn_convs.1", 64),
          **_conv("decoder.snn_convs.3", 64, 32, 3, True), **_bn("decoder.snn_convs.4", 32),
          **_conv("decoder.snn_convs.6", 32, 1, 3, True)}
    sd["memout.coef"] = sd["vq_layer.memout.coef"].clone()
    return sd


def public_sdid_state_dict(k: int = K) -> dict[str, torch.Tensor]:
    """A random ``DummyModel(1, k)`` state dict."""
    sd, previous = {}, 2
    for i, c in enumerate((64, 128, 256, 512, 256), start=1):
        sd |= _conv(f"conv{i}.0", previous, c, 3) | _bn(f"conv{i}.1", c)
        previous = c
    return sd | _conv("conv6.0", 320, k, 3)


# --- the public inference, functionally, from the state dict -------------------------------------------

def lif(x: torch.Tensor) -> torch.Tensor:
    """SpikingJelly LIFNode defaults: H = V + (X - V) / 2; S = H >= 1; V = H (1 - S) + 0 S."""
    v, out = torch.zeros_like(x[0]), []
    for x_t in x:
        h = v + (x_t - v) / 2.0
        s = (h >= 1.0).float()
        v = (1.0 - s) * h + s * 0.0
        out.append(s)
    return torch.stack(out)


def per_step(fn, x: torch.Tensor) -> torch.Tensor:
    y = fn(x.flatten(0, 1))
    return y.reshape(*x.shape[:2], *y.shape[1:])


def conv(sd, p, x, stride=1, padding=1, transposed=False, output_padding=0):
    if transposed:
        return per_step(lambda a: F.conv_transpose2d(a, sd[f"{p}.weight"], sd[f"{p}.bias"], stride, padding,
                                                     output_padding), x)
    return per_step(lambda a: F.conv2d(a, sd[f"{p}.weight"], sd[f"{p}.bias"], stride, padding), x)


def bn(sd, p, x):
    return per_step(lambda a: F.batch_norm(a, sd[f"{p}.running_mean"], sd[f"{p}.running_var"], sd[f"{p}.weight"],
                                           sd[f"{p}.bias"], False, 0.1, 1e-5), x)


def functional_vqsvae(sd, image):
    x = image.unsqueeze(0).repeat(T, 1, 1, 1, 1)
    h = lif(bn(sd, "encoder.snn_convs.1", conv(sd, "encoder.snn_convs.0", x, 2)))
    h = lif(bn(sd, "encoder.snn_convs.4", conv(sd, "encoder.snn_convs.3", h, 2)))
    z = lif(bn(sd, "encoder.snn_convs.7", conv(sd, "encoder.snn_convs.6", h, 1, 0)))
    alpha = sd["vq_layer.alpha"]
    f = (1 - alpha) * torch.sum(z * sd["vq_layer.memout.coef"], dim=0) + alpha * torch.sum(z, dim=0) / T
    flat = f.permute(0, 2, 3, 1).reshape(-1, 16)
    e = sd["vq_layer.embeddings.weight"]
    d = torch.sum(flat ** 2, dim=1, keepdim=True) + torch.sum(e ** 2, dim=1) - 2.0 * torch.matmul(flat, e.t())
    indices = torch.argmin(d, dim=1)
    q = e[indices].view(f.shape[0], 7, 7, 16).permute(0, 3, 1, 2).unsqueeze(0).repeat(T, 1, 1, 1, 1)
    asg = lif(bn(sd, "vq_layer.poisson.1", conv(sd, "vq_layer.poisson.0", q, 1, 0)))
    h = lif(bn(sd, "decoder.snn_convs.1", conv(sd, "decoder.snn_convs.0", asg, 2, 1, True, 1)))
    h = lif(bn(sd, "decoder.snn_convs.4", conv(sd, "decoder.snn_convs.3", h, 2, 1, True, 1)))
    out = conv(sd, "decoder.snn_convs.6", h, 1, 1, True, 0)
    return z, asg, torch.tanh(torch.sum(out * sd["memout.coef"], dim=0)), indices


def functional_sdid(sd, x_t, t):
    t_map = torch.ones_like(x_t) * t.unsqueeze(1).unsqueeze(2).unsqueeze(3)
    x = torch.cat((x_t, t_map), dim=1).unsqueeze(0).repeat(T, 1, 1, 1, 1)
    hs = [x]
    for i in range(1, 6):
        hs.append(lif(bn(sd, f"conv{i}.1", conv(sd, f"conv{i}.0", hs[-1]))))
    return torch.sum(conv(sd, "conv6.0", torch.cat((hs[5], hs[1]), dim=2)), dim=0) / T


# --- the tests ----------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def public_files(tmp_path_factory):
    torch.manual_seed(3)
    path = tmp_path_factory.mktemp("public")
    vq, sdid = public_vqsvae_state_dict(), public_sdid_state_dict()
    torch.save(vq, path / "model.pth")  # as the public main.py saves them: the bare state dicts
    torch.save(sdid, path / "diff_model.pth")
    return path, vq, sdid


def test_a_public_vqsvae_file_loads_and_gives_the_public_outputs(public_files):
    path, sd, _ = public_files
    ckpt = load_checkpoint(path / "model.pth", arch="spiking-diffusion-vqsvae",
                           config={"in_dim": 1, "embedding_dim": 16, "num_embeddings": K, "data_variance": 0.09})
    model = ckpt.model
    assert ckpt.arch == "vq-svae" and not model.training
    image = torch.rand(3, 1, 28, 28) - 0.5
    z, asg, recon, indices = functional_vqsvae(sd, image)
    with torch.no_grad():
        got_asg, got_recon, got_indices = model(image)
        got_z = model.encode(image)
    for name, spikes in (("encoder", z), ("asg", asg)):
        rate = spikes.mean().item()
        assert 0.02 < rate < 0.98, f"{name} spikes are trivial ({rate:.3f}): the check would be weak"
    assert got_z.shape == (T, 3, 16, 7, 7) and torch.equal(got_z, z)
    assert got_indices.dtype == torch.int64 and got_indices.shape == (3 * 49,) and torch.equal(got_indices, indices)
    assert len(indices.unique()) > 3  # the codebook lookup is exercised
    assert got_asg.shape == (T, 3, 16, 7, 7) and torch.equal(got_asg, asg)
    assert got_recon.shape == (3, 1, 28, 28) and torch.allclose(got_recon, recon, atol=1e-6, rtol=0)
    assert recon.std() > 0.01
    # the network starts from zero at every call: the same call again gives the same result
    with torch.no_grad():
        assert torch.equal(model(image)[2], got_indices)


def test_a_public_sdid_file_loads_and_gives_the_public_logits(public_files):
    path, _, sd = public_files
    ckpt = load_checkpoint(path / "diff_model.pth", arch="spiking-diffusion-sdid",
                           config={"n_channel": 1, "num_embeddings": K})
    assert ckpt.arch == "sdid" and not ckpt.model.training
    x_t = torch.randint(0, K + 1, (4, 1, 7, 7)).float()  # token ids and the mask id K
    t = torch.tensor([1, 17, 30, 49])
    with torch.no_grad():
        logits = ckpt.model(x_t, t)
    expected = functional_sdid(sd, x_t, t)
    assert logits.shape == (4, K, 7, 7)
    assert torch.allclose(logits, expected, atol=1e-5, rtol=1e-6)
    assert expected.std() > 0.01


def test_every_mismatch_of_a_public_file_is_listed_in_one_error(public_files, tmp_path):
    _, vq, sdid = public_files
    bad = dict(vq)
    del bad["vq_layer.alpha"]
    bad["encoder.snn_convs.0.weight"] = torch.zeros(32, 1, 5, 5)
    bad["extra.weight"] = torch.zeros(1)
    torch.save(bad, tmp_path / "bad.pth")
    config = {"in_dim": 1, "embedding_dim": 16, "num_embeddings": K}
    with pytest.raises(SncError) as err:
        load_checkpoint(tmp_path / "bad.pth", arch="spiking-diffusion-vqsvae", config=config)
    message = str(err.value)
    assert "missing keys: vq_layer.alpha" in message and "unexpected keys: extra.weight" in message
    assert "encoder.snn_convs.0.weight (32, 1, 5, 5) (expected (32, 1, 3, 3))" in message
    with pytest.raises(SncError, match=r"conv6.0.weight \(32, 320, 3, 3\) \(expected \(10, 320, 3, 3\)\)"):
        torch.save(sdid, tmp_path / "d.pth")
        load_checkpoint(tmp_path / "d.pth", arch="spiking-diffusion-sdid",
                        config={"n_channel": 1, "num_embeddings": 10})
    with pytest.raises(SncError, match="embedding_dim must be 16"):
        load_checkpoint(tmp_path / "bad.pth", arch="spiking-diffusion-vqsvae", config=config | {"embedding_dim": 8})
    with pytest.raises(SncError, match="unknown keys T.*missing keys num_embeddings"):
        load_checkpoint(tmp_path / "d.pth", arch="spiking-diffusion-sdid", config={"n_channel": 1, "T": 4})
    with pytest.raises(SncError, match="no ema weights"):
        load_checkpoint(tmp_path / "d.pth", arch="spiking-diffusion-sdid", config={"n_channel": 1, "num_embeddings": K},
                        weights="ema")


def test_the_two_stage_model_round_trips_through_an_snc_checkpoint(tmp_path):
    arch, config = preset("digits-vq")
    torch.manual_seed(0)
    model = build_model(arch, config).eval()
    save_checkpoint(tmp_path / "vq.pt", arch, model, {"note": "random init"})
    loaded = load_checkpoint(tmp_path / "vq.pt")
    assert loaded.arch == "spiking-diffusion-vq" and loaded.config == config
    images = torch.rand(5, 1, 8, 8) * 2 - 1
    with torch.no_grad():
        assert torch.equal(loaded.model.tokens(images), model.tokens(images))
        x_t, t = torch.randint(0, config.sdid.num_embeddings + 1, (2, 1, 4, 4)).float(), torch.tensor([3, 16])
        assert torch.equal(loaded.model.sdid(x_t, t), model.sdid(x_t, t))
    first = loaded.model.sample(4, seed=7)
    again = loaded.model.sample(4, seed=7)
    assert first.shape == (4, 1, 8, 8) and torch.equal(first, again) and first.abs().max() <= 1


# --- the absorbing diffusion -----------------------------------------------------------------------------

def test_masking_rate_and_loss_weights_follow_the_schedule():
    g = torch.Generator().manual_seed(0)
    x0 = torch.randint(0, 10, (4000, 1, 4, 4)).float()
    t = torch.full((4000,), 4)
    x_t, target = absorbing.q_sample(x0, t, 16, 10, g)
    masked = x_t == 10
    assert abs(masked.float().mean().item() - 4 / 16) < 0.01
    assert torch.equal(target[masked], x0[masked]) and (target[~masked] == -1).all()
    assert torch.equal(x_t[~masked], x0[~masked])
    logits = torch.randn(2, 10, 4, 4)
    full = absorbing.q_sample(x0[:2], torch.tensor([16, 16]), 16, 10, g)[1]
    assert (full >= 0).all()  # t = steps masks everything
    assert absorbing.reweighted_elbo(logits, full, torch.tensor([16, 16]), 16).item() == 0.0  # weight 1 - t/S
    half = absorbing.reweighted_elbo(logits, full, torch.tensor([8, 8]), 16)
    ce = F.cross_entropy(logits, full[:, 0].long(), reduction="none").sum((1, 2))
    assert torch.allclose(half, (0.5 * ce / (math.log(2) * 16)).mean())


def test_the_sampler_unmasks_each_position_once_with_the_call_it_was_unmasked_at():
    calls = []

    def denoiser(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        # certain logits for the token t - 1 at every position: a token shows the step it was drawn at
        calls.append((x.clone(), t.clone()))
        return (F.one_hot(t - 1, 20).float() * 1e4)[:, :, None, None].expand(-1, -1, *x.shape[2:])

    tokens = absorbing.sample(denoiser, 6, (3, 3), mask_id=20, steps=9, seed=1)
    assert [int(t[0]) for _, t in calls] == list(range(9, 0, -1))
    assert tokens.shape == (6, 1, 3, 3) and tokens.dtype == torch.int64 and (tokens < 20).all()
    first_input = calls[0][0]
    assert (first_input == 20).all()  # all masks at the start
    for x, t in calls:  # a position fixed before a call keeps its token through the end
        fixed = x != 20
        assert torch.equal(x[fixed].long(), tokens[fixed])
        assert ((x[fixed] >= t[0]).all())  # drawn at an earlier (larger) step
    again = absorbing.sample(denoiser, 6, (3, 3), mask_id=20, steps=9, seed=1)
    assert torch.equal(tokens, again)


def test_a_shard_of_the_absorbing_sampler_holds_the_same_tokens_as_the_whole_run():
    """Each image's mask and token draws come from its own stream (``image_noise``)."""
    weights = torch.randn(8, 20, generator=torch.Generator().manual_seed(0))

    def denoiser(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:  # per-image logits from the tokens
        return torch.einsum("bchw,ck->bkhw", torch.nn.functional.one_hot(x.long()[:, 0], 21)[..., :8]
                            .permute(0, 3, 1, 2).float(), weights) + t.view(-1, 1, 1, 1) * 0.1

    whole = absorbing.sample(denoiser, 7, (3, 3), mask_id=20, steps=9, temperature=2.0, seed=5)
    shard = absorbing.sample(denoiser, 3, (3, 3), mask_id=20, steps=9, temperature=2.0, seed=5, first=4)
    assert torch.equal(shard, whole[4:]) and len(set(map(tuple, whole.reshape(7, -1).tolist()))) > 1


@pytest.mark.slow
def test_networks_built_from_spikingjelly_itself_give_the_same_outputs_in_snc(tmp_path):
    """SpikingJelly 2.0's own layers and LIFNode in the public code's module tree (``tools/
    spikingjelly_public_vq.py``, in its side venv), saved as the public code saves, loaded by snc."""
    import subprocess

    import numpy as np

    from nir_frameworks import ROOT

    python = subprocess.run([str(ROOT / "tools" / "bootstrap_spikingjelly_venv.sh")], capture_output=True,
                            text=True, check=True).stdout.strip().splitlines()[-1]
    subprocess.run([str(ROOT / python), str(ROOT / "tools" / "spikingjelly_public_vq.py"), str(tmp_path)],
                   capture_output=True, text=True, check=True)
    vq = load_checkpoint(tmp_path / "model.pth", arch="spiking-diffusion-vqsvae",
                         config={"in_dim": 1, "embedding_dim": 16, "num_embeddings": K}).model
    sdid = load_checkpoint(tmp_path / "diff_model.pth", arch="spiking-diffusion-sdid",
                           config={"n_channel": 1, "num_embeddings": K}).model
    with np.load(tmp_path / "outputs.npz") as data:
        sj = {k: torch.from_numpy(data[k]) for k in data.files}
    with torch.no_grad():
        z = vq.encode(sj["image"])
        e, recon, indices = vq(sj["image"])
        logits = sdid(sj["x_t"], sj["t"])
    assert 0.02 < sj["z"].mean() < 0.98 and 0.02 < sj["e"].mean() < 0.98
    assert torch.equal(z, sj["z"]) and torch.equal(e, sj["e"]) and torch.equal(indices, sj["indices"])
    assert torch.allclose(recon, sj["recon"], atol=1e-6, rtol=0) and torch.allclose(logits, sj["logits"], atol=1e-5)


@pytest.mark.slow
def test_digits_vq_trains_both_stages_deterministically_and_samples(tmp_path):
    from snc import api

    reports = []
    first = api.train("digits-vq", steps=12, seed=3,
                      on_step=lambda step, total, loss: reports.append((step, total, loss)))
    assert [r[0] for r in reports] == list(range(36)) and {r[1] for r in reports} == {36}
    vq_losses, sdid_losses = [r[2] for r in reports[:12]], [r[2] for r in reports[12:]]
    assert vq_losses[-1] < vq_losses[0] and all(math.isfinite(v) for v in sdid_losses)  # 12 steps of warm-up
    with torch.random.fork_rng():  # the trainer's initial weights: seed 3
        torch.manual_seed(3)
        untrained = build_model(*preset("digits-vq")).sdid.state_dict()
    assert not torch.equal(untrained["conv1.0.weight"], first.model.sdid.state_dict()["conv1.0.weight"])
    meta = first.meta
    assert first.arch == "spiking-diffusion-vq" and meta["vqsvae_steps"] == 12 and meta["sdid_steps"] == 24
    assert 1 <= meta["codes_used"] <= 64 and meta["train_reconstruction_mse"] > 0
    again = api.train("digits-vq", steps=12, seed=3)
    for (name, a), b in zip(first.model.state_dict().items(), again.model.state_dict().values()):
        assert torch.equal(a, b), name
    save_checkpoint(tmp_path / "vq.pt", first.arch, first.model, meta)
    images = load_checkpoint(tmp_path / "vq.pt").model.sample(3, seed=0)
    assert images.shape == (3, 1, 8, 8) and torch.isfinite(images).all()


def test_the_shipped_digits_vq_reconstructs_and_samples_digits():
    from snc import api
    from snc.models import shipped_checkpoint
    from snc.models.data import digits

    ckpt = load_checkpoint(shipped_checkpoint("digits-vq"))
    assert ckpt.arch == "spiking-diffusion-vq" and ckpt.meta["preset"] == "digits-vq"
    model, images = ckpt.model, digits("heldout")[0]
    with torch.no_grad():
        recon = model.images(model.tokens(images))
    assert ((recon - images) ** 2).mean() < 0.06  # measured 0.048 in [-1, 1] pixels
    quality = api.evaluate(model.sample(128, 0.65, seed=0))
    assert quality.fdd < 0.15 * quality.noise, quality  # n = 256: FDD 32.4, noise 570.8
