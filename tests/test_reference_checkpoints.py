"""Checkpoints of the public SDDPM / SDM code: loading, forward equality, errors, compile.

The cross-check is ``reference_forward``: the reference models' forward pass
written here straight from a state_dict with torch.nn.functional, following
the public code's semantics (SpikingJelly IFNode: v += x, spike at
v >= threshold, hard reset to 0; TSM: p[t] times the conv output, bias
included, before BN; the Conv3d tail and the 0.8-weighted sum over steps).
It imports none of snc's model classes.
"""

import json

import pytest
import torch
import torch.nn.functional as F

from snc.errors import CheckpointError, SncError
from snc.models.checkpoint import load_checkpoint

from conftest import DATA, HostilePickle, run_snc
from test_cli import _clean_error, _ok

TINY = {"T": 50, "ch": 8, "ch_mult": [1, 2], "attn": [], "num_res_blocks": 1, "dropout": 0.1, "timestep": 4,
        "img_ch": 3, "img_size": 8}


# --- the reference layout and forward pass, from the public constructors' logic ---------------------------
def _blocks(cfg):
    """(name, kind, in_ch, out_ch) of every U-Net layer in the reference constructor's order."""
    ch, mult, n = cfg["ch"], cfg["ch_mult"], cfg["num_res_blocks"]
    blocks, chs, now = [], [ch], ch
    for level, m in enumerate(mult):
        for _ in range(n):
            blocks.append((f"downblocks.{len(blocks)}", "res", now, ch * m))
            now = ch * m
            chs.append(now)
        if level != len(mult) - 1:
            blocks.append((f"downblocks.{len(blocks)}", "down", now, now))
            chs.append(now)
    blocks += [(f"middleblocks.{i}", "res", now, now) for i in range(2)]
    ups = []
    for level, m in reversed(list(enumerate(mult))):
        for _ in range(n + 1):
            ups.append((f"upblocks.{len(ups)}", "res", chs.pop() + now, ch * m))
            now = ch * m
        if level != 0:
            ups.append((f"upblocks.{len(ups)}", "up", now, now))
    return blocks + ups


def reference_layout(cfg, tsm):
    """Key -> shape of a ``Spk_UNet`` (tsm False) or ``Spk_UNet_TSM`` (tsm True) state_dict."""
    ch, img_ch, steps, tdim = cfg["ch"], cfg.get("img_ch", 3), cfg["timestep"], cfg["ch"] * 4
    layout = {"time_embedding.timembedding.0.weight": (cfg["T"], ch),
              "time_embedding.timembedding.1.weight": (tdim, ch), "time_embedding.timembedding.1.bias": (tdim,),
              "time_embedding.timembedding.3.weight": (tdim, tdim), "time_embedding.timembedding.3.bias": (tdim,)}

    def conv(name, cin, cout, k=3):
        prefix = f"{name}.tsmconv" if tsm else name
        layout.update({f"{prefix}.weight": (cout, cin, k, k), f"{prefix}.bias": (cout,)})
        if tsm:
            layout[f"{name}.tsmp"] = (steps, 1, 1, 1, 1)

    def bn(name, c):
        layout.update({f"{name}.weight": (c,), f"{name}.bias": (c,), f"{name}.running_mean": (c,),
                       f"{name}.running_var": (c,), f"{name}.num_batches_tracked": ()})

    conv("conv", img_ch, ch), bn("bn", ch), conv("conv_identity", ch, ch), bn("bn_identity", ch)
    for name, kind, cin, cout in _blocks(cfg):
        if kind == "res":
            layout.update({f"{name}.temb_proj.1.weight": (cout, tdim), f"{name}.temb_proj.1.bias": (cout,)})
            conv(f"{name}.conv1", cin, cout), bn(f"{name}.bn1", cout)
            conv(f"{name}.conv2", cout, cout), bn(f"{name}.bn2", cout)
            if cin != cout:
                conv(f"{name}.shortcut", cin, cout, k=1)
        else:
            conv(f"{name}.conv", cin, cout), bn(f"{name}.bn", cout)
    bn("tail_bn", ch), conv("tail_conv", ch, img_ch)
    layout.update({"T_output_layer.weight": (img_ch, img_ch, 3, 3, 1), "T_output_layer.bias": (img_ch,)})
    bn("last_bn", img_ch)
    return layout


def random_state_dict(cfg, tsm, seed):
    """Random weights in the reference layout: BN statistics and TSM scales away from identity."""
    g = torch.Generator().manual_seed(seed)
    layout = reference_layout(cfg, tsm)
    norms = {key.rpartition(".")[0] for key in layout if key.endswith(".running_var")}
    sd = {}
    for key, shape in layout.items():
        module, _, name = key.rpartition(".")
        if module in norms:
            sd[key] = {"weight": lambda: torch.rand(shape, generator=g) + 0.5,
                       "bias": lambda: torch.rand(shape, generator=g) * 0.2 - 0.1,
                       "running_mean": lambda: torch.rand(shape, generator=g) * 0.4 - 0.2,
                       "running_var": lambda: torch.rand(shape, generator=g) * 1.5 + 0.5,
                       "num_batches_tracked": lambda: torch.tensor(1000)}[name]()
        elif name == "tsmp":
            sd[key] = torch.rand(shape, generator=g) + 0.5
        elif name == "bias":
            sd[key] = torch.randn(shape, generator=g) * 0.2
        else:  # ~ N(0, 2 / fan_in): enough drive for spikes through every layer
            fan_in = int(torch.tensor(shape[1:]).prod())
            sd[key] = torch.randn(shape, generator=g) * (2.0 / fan_in) ** 0.5
    return sd


def save_reference_checkpoint(path, net, ema=None):
    """The public code's file layout: state_dicts plus optimizer state, step and sampling noise."""
    optim = {"state": {0: {"step": torch.tensor(7.0), "exp_avg": torch.zeros(3), "exp_avg_sq": torch.zeros(3)}},
             "param_groups": [{"lr": 2e-4, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0,
                               "amsgrad": False, "params": [0]}]}
    ckpt = {"net_model": net, "optim": optim, "step": 4500, "x_T": torch.randn(4, 3, 8, 8)}
    if ema is not None:
        ckpt["ema_model"] = ema
    torch.save(ckpt, path)
    return path


def reference_forward(sd, cfg, x, t, fire=lambda v, thr: v >= thr, rates=None):
    """The public models' forward(x, t) from a state_dict; ``rates`` collects each neuron layer's firing rate."""
    steps, thr, batch = cfg["timestep"], cfg.get("global_thres", 1.0), x.shape[0]

    def seq(frames):
        return frames.reshape(steps, batch, *frames.shape[1:])

    def conv(name, frames, stride=1):
        prefix = f"{name}.tsmconv" if f"{name}.tsmp" in sd else name
        w = sd[f"{prefix}.weight"]
        y = F.conv2d(frames, w, sd[f"{prefix}.bias"], stride=stride, padding=w.shape[-1] // 2)
        if f"{name}.tsmp" in sd:
            y = (y.reshape(steps, -1, *y.shape[1:]) * sd[f"{name}.tsmp"]).flatten(0, 1)
        return y

    def bn(name, frames):
        return F.batch_norm(frames, sd[f"{name}.running_mean"], sd[f"{name}.running_var"], sd[f"{name}.weight"],
                            sd[f"{name}.bias"], training=False, eps=1e-5)

    def if_node(h):  # frames out, flattened step-major
        v, spikes = torch.zeros_like(h[0]), []
        for x_t in h:
            v = v + x_t
            s = fire(v, thr).to(h.dtype)
            v = (1.0 - s) * v  # hard reset to v_reset = 0
            spikes.append(s)
        out = torch.stack(spikes)
        if rates is not None:
            rates.append(float(out.mean()))
        return out.flatten(0, 1)

    def swish(h):
        return h * torch.sigmoid(h)

    emb = sd["time_embedding.timembedding.0.weight"][t]
    temb = F.linear(swish(F.linear(emb, sd["time_embedding.timembedding.1.weight"],
                                   sd["time_embedding.timembedding.1.bias"])),
                    sd["time_embedding.timembedding.3.weight"], sd["time_embedding.timembedding.3.bias"])
    h = seq(bn("bn", conv("conv", x.unsqueeze(0).repeat(steps, 1, 1, 1, 1).flatten(0, 1))))
    h = seq(bn("bn_identity", conv("conv_identity", if_node(h))))
    hs = [h]
    for name, kind, cin, cout in _blocks(cfg):
        if kind == "res":
            if name.startswith("upblocks"):
                h = torch.cat([h, hs.pop()], dim=2)
            out = seq(bn(f"{name}.bn1", conv(f"{name}.conv1", if_node(h))))
            proj = F.linear(swish(temb), sd[f"{name}.temb_proj.1.weight"], sd[f"{name}.temb_proj.1.bias"])
            out = out + proj[:, :, None, None]
            out = seq(bn(f"{name}.bn2", conv(f"{name}.conv2", if_node(out))))
            h = out + (seq(conv(f"{name}.shortcut", h.flatten(0, 1))) if cin != cout else h)
        elif kind == "down":
            h = seq(bn(f"{name}.bn", conv(f"{name}.conv", if_node(h), stride=2)))
        else:
            up = F.interpolate(if_node(h), scale_factor=2, mode="nearest")
            h = seq(bn(f"{name}.bn", conv(f"{name}.conv", up)))
        if name.startswith("downblocks"):
            hs.append(h)
    assert not hs
    h = seq(conv("tail_conv", swish(bn("tail_bn", h.flatten(0, 1)))))
    over_time = F.conv3d(h.permute(1, 2, 3, 4, 0), sd["T_output_layer.weight"], sd["T_output_layer.bias"],
                         padding=(1, 1, 0)).permute(4, 0, 1, 2, 3)
    h = swish(seq(bn("last_bn", over_time.flatten(0, 1)))) + h
    coef = torch.pow(0.8, torch.arange(steps - 1, -1, -1)).view(steps, 1, 1, 1, 1)
    return (h * coef).sum(0)


def _inputs(cfg, n=3, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, cfg["img_ch"], cfg["img_size"], cfg["img_size"], generator=g)
    return x, torch.randint(cfg["T"], (n,), generator=g)


def _max_rel_err(a, b):
    return float((a - b).abs().max() / b.abs().max())


# --- loading and forward equality -------------------------------------------------------------------
@pytest.mark.parametrize("name, tsm", [("sddpm_cifar10_T4", False), ("sdm_tsm_cifar10_T8", True)])
def test_the_layout_written_here_is_the_public_one(name, tsm):
    """The cross-check's own layout against the key names and shapes of the public CIFAR-10 checkpoints."""
    ref = json.loads((DATA / "reference_state_dicts.json").read_text())[name]
    cfg = {"T": 1000, "ch": 128, "ch_mult": [1, 2, 2, 4], "num_res_blocks": 2, "timestep": 8 if tsm else 4}
    assert {k: list(v) for k, v in reference_layout(cfg, tsm).items()} == ref["state_dict"]


@pytest.mark.parametrize("arch, weights", [("sddpm", "net"), ("sddpm", "ema"), ("sdm-tsm", "net"),
                                           ("sdm-tsm", "ema")])
def test_reference_checkpoint_forward_equals_the_reference_semantics(tmp, arch, weights):
    cfg = dict(TINY, timestep=5) if arch == "sdm-tsm" else TINY  # TSM: p has one entry per spiking step
    net, ema = (random_state_dict(cfg, arch == "sdm-tsm", seed) for seed in (0, 1))
    path = save_reference_checkpoint(tmp / "ckpt.pt", net, ema)
    ckpt = load_checkpoint(path, arch=arch, config=cfg, weights=weights)
    assert ckpt.arch == {"sddpm": "spiking-unet", "sdm-tsm": "spiking-unet-tsm"}[arch]
    assert ckpt.meta["step"] == 4500 and ckpt.meta["weights"] == weights and not ckpt.model.training
    assert set(ckpt.model.state_dict()) == set(net)  # the layout, key for key

    x, t = _inputs(cfg)
    chosen, other = (net, ema) if weights == "net" else (ema, net)
    rates = []
    expected = reference_forward(chosen, cfg, x, t, rates=rates)
    assert all(0.02 < r < 0.98 for r in rates), rates  # every layer spikes, none saturates: a real test
    with torch.no_grad():
        got = ckpt.model(x, t)
    assert got.shape == x.shape
    assert _max_rel_err(got, expected) < 1e-5
    assert _max_rel_err(reference_forward(other, cfg, x, t), expected) > 1e-2  # the other weights differ


def test_neurons_fire_at_threshold_as_spikingjelly(tmp):
    """A stem current of exactly 0.5 reaches v = 1.0 at step 2: a spike with v >= 1, none with v > 1."""
    net = random_state_dict(TINY, False, 0)
    net["bn.weight"].zero_()
    net["bn.bias"].fill_(0.5)
    path = save_reference_checkpoint(tmp / "ckpt.pt", net)
    model = load_checkpoint(path, arch="sddpm", config=TINY).model
    x, t = _inputs(TINY)
    expected = reference_forward(net, TINY, x, t)
    strict = reference_forward(net, TINY, x, t, fire=lambda v, thr: v > thr)
    assert _max_rel_err(strict, expected) > 1e-2
    with torch.no_grad():
        assert _max_rel_err(model(x, t), expected) < 1e-5


def test_global_threshold_of_the_tsm_constructor(tmp):
    cfg = dict(TINY, global_thres=0.7)
    net = random_state_dict(cfg, True, 0)
    model = load_checkpoint(save_reference_checkpoint(tmp / "c.pt", net), arch="sdm-tsm", config=cfg).model
    x, t = _inputs(cfg)
    with torch.no_grad():
        assert _max_rel_err(model(x, t), reference_forward(net, cfg, x, t)) < 1e-5
    with pytest.raises(SncError, match="unknown keys global_thres"):
        load_checkpoint(tmp / "c.pt", arch="sddpm", config=cfg)  # Spk_UNet has no threshold argument


# --- errors -----------------------------------------------------------------------------------------
def test_missing_extra_and_misshaped_keys_are_all_listed_in_one_error(tmp):
    net = random_state_dict(TINY, False, 0)
    del net["downblocks.0.conv1.weight"], net["last_bn.running_var"]
    net["downblocks.0.attn.qkv.weight"] = torch.zeros(3)
    net["tail_conv.weight"] = torch.zeros(3, 8, 1, 1)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(save_reference_checkpoint(tmp / "c.pt", net), arch="sddpm", config=TINY)
    msg = str(info.value)
    assert "[net_model]" in msg and "\n" not in msg
    for needle in ("missing keys: downblocks.0.conv1.weight, last_bn.running_var",
                   "unexpected keys: downblocks.0.attn.qkv.weight",
                   "wrong shapes: tail_conv.weight (3, 8, 1, 1) (expected (3, 8, 3, 3))"):
        assert needle in msg


def test_an_sddpm_checkpoint_is_not_a_tsm_one(tmp):
    path = save_reference_checkpoint(tmp / "c.pt", random_state_dict(TINY, False, 0))
    with pytest.raises(CheckpointError, match=r"missing keys: .*conv\.tsmp.*unexpected keys: .*conv\.weight"):
        load_checkpoint(path, arch="sdm-tsm", config=TINY)


@pytest.mark.parametrize("change, needle", [
    ({"attn": [1]}, "attention blocks are not supported"),
    ({"ch_mult": "1,2"}, "ch_mult must be a non-empty list"),
    ({"timestep": 0, "ch": 7}, "timestep must be a positive integer, got 0; ch must be even"),
    ({"bogus": 1, "T": None}, "unknown keys bogus"),
    ({"img_size": 7}, "img_size 7 is not divisible"),
])
def test_bad_configs_give_one_error(tmp, change, needle):
    path = save_reference_checkpoint(tmp / "c.pt", random_state_dict(TINY, False, 0))
    with pytest.raises(SncError, match="invalid sddpm config") as info:
        load_checkpoint(path, arch="sddpm", config=dict(TINY, **change))
    assert needle in str(info.value)


def test_missing_config_keys_and_entries(tmp):
    path = save_reference_checkpoint(tmp / "c.pt", random_state_dict(TINY, False, 0))
    with pytest.raises(SncError, match="missing keys T, ch, ch_mult, num_res_blocks, timestep"):
        load_checkpoint(path, arch="sddpm", config={})
    with pytest.raises(SncError, match="needs its constructor's arguments"):
        load_checkpoint(path, arch="sddpm")
    with pytest.raises(CheckpointError, match="no 'ema_model' entry.*holds net_model, optim, step, x_T"):
        load_checkpoint(path, arch="sddpm", config=TINY, weights="ema")
    with pytest.raises(SncError, match="unknown reference architecture 'ddpm'"):
        load_checkpoint(path, arch="ddpm", config=TINY)
    with pytest.raises(SncError, match="unknown weights 'best'"):
        load_checkpoint(path, arch="sddpm", config=TINY, weights="best")
    with pytest.raises(SncError, match="public code only"):
        load_checkpoint(path, config=TINY)


def test_an_snc_checkpoint_read_as_a_reference_one(tmp):
    from snc.models.checkpoint import shipped_checkpoint

    with pytest.raises(CheckpointError, match="an snc checkpoint, not one of the public code"):
        load_checkpoint(shipped_checkpoint("digits-unet"), arch="sddpm", config=TINY)


def test_hostile_reference_pickle_is_refused_and_never_executed(tmp):
    marker = tmp / "pwned"
    torch.save({"net_model": random_state_dict(TINY, False, 0), "optim": HostilePickle(str(marker))}, tmp / "evil.pt")
    with pytest.raises(CheckpointError, match="refused to load"):
        load_checkpoint(tmp / "evil.pt", arch="sddpm", config=TINY)
    assert not marker.exists()


# --- the command line -------------------------------------------------------------------------------
@pytest.mark.lava
@pytest.mark.parametrize("arch,tsm,snc_arch", [("sddpm", False, "spiking-unet"), ("sdm-tsm", True, "spiking-unet-tsm")])
def test_compile_and_verify_a_reference_checkpoint(tmp, arch, tsm, snc_arch):
    # 8x8x1: calibrated and verified on digits; one level (no down/up sampling) halves the Lava time
    cfg = dict(TINY, img_ch=1, ch_mult=[1])
    path = save_reference_checkpoint(tmp / "ckpt.pt", random_state_dict(cfg, tsm, 0))
    (tmp / "cfg.json").write_text(json.dumps(cfg))
    res = json.loads(_ok(run_snc("compile", str(path), "--arch", arch, "--config", str(tmp / "cfg.json"),
                                 "-o", str(tmp / "b"), "--json")).stdout)
    assert res["arch"] == snc_arch and res["calibrated"] and f"{arch} checkpoint" in res["source"]
    host = load_checkpoint(tmp / "b" / "model.pt")  # the build holds the converted snc checkpoint
    assert host.meta["reference_arch"] == arch and host.config.neuron.fire_at_threshold
    report = json.loads(_ok(run_snc("verify", str(tmp / "b"), "-n", "1", "--backends", "lava:float",
                                    "--json")).stdout)
    assert report["agreement"]["lava_float_vs_torch"] >= 0.999
    assert report["output_rel_error"]["lava_float_vs_torch"] <= 1e-3


def test_compile_errors_for_reference_checkpoints(tmp):
    cfg = tmp / "cfg.json"
    cfg.write_text(json.dumps(TINY))
    tsm = save_reference_checkpoint(tmp / "tsm.pt", random_state_dict(TINY, True, 0))
    out = str(tmp / "b")
    _clean_error(run_snc("compile", str(tsm), "--arch", "sdm-tsm", "--config", str(cfg), "--weights", "ema",
                         "-o", out), "no 'ema_model' entry")
    (tmp / "bad.json").write_text("{'T': 1000")
    _clean_error(run_snc("compile", str(tsm), "--arch", "sdm-tsm", "--config", str(tmp / "bad.json"), "-o", out),
                 "not valid JSON")
    _clean_error(run_snc("compile", str(tsm), "--config", str(cfg), "-o", out), "give --arch sddpm|sdm-tsm")
    _clean_error(run_snc("compile", "--preset", "digits-unet", "--arch", "sddpm", "-o", out), "give its path")
