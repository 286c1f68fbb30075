"""The emulator against Lava's fixed_pt process models: every step's spikes, u, v and readout.

Random netlists (hypothesis: Dense, Sparse with dense/conv/identity ops,
DelaySparse delays, Lava Conv with stride and padding, LIF and LIFReset,
recurrent loops, delay lines, extreme parameters, and snc's TSM processes:
per-step gains, biases and host currents over several calls), a netlist built to hit
every wrap and saturation, and the compiled digits U-Net and MLP over
several diffusion steps. Lava always runs as real processes, stopped in
``finally`` (context managers); conftest's autouse fixture checks none is left.
"""

from __future__ import annotations

import ast
import json
from dataclasses import fields, is_dataclass, replace
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy import sparse

from snc.compiler.linear import LinearOp
from snc.compiler.netlist import Netlist, NeuronGroup, ReadoutPort, Synapse, netlist_currents
from snc.errors import SncError
from snc import api
from snc.models.checkpoint import shipped_checkpoint
from snc.runtime.backends import emu_synapses, emulator, netlist_backend
from snc.runtime.backends.devices import exact_float_ops
from snc.runtime.backends.emu_synapses import lava_weights
from snc.runtime.backends.emulator import EmuNetwork
from snc.runtime.backends.lava import LavaNetwork

from conftest import compile_model, deploy, make_model, run_snc
from test_cli import _clean_error, _ok


def _assert_same_trace(lava, emu, net: Netlist) -> None:
    for name in net.groups:
        for key in ("spikes", "u", "v"):
            a, b = getattr(lava, key)[name], getattr(emu, key)[name]
            assert a.shape == b.shape, (name, key)
            bad = np.argwhere(a != b)
            assert bad.size == 0, f"{name}.{key} differs first at (step, image, neuron) {tuple(bad[0])}: " \
                                  f"lava {a[tuple(bad[0])]}, emu {b[tuple(bad[0])]}"
    assert np.array_equal(lava.readout, emu.readout)


def _run_both(net: Netlist, batch: int, steps: int, currents: dict[str, np.ndarray]) -> None:
    emu = EmuNetwork(net, batch, record=True).trace(steps, currents)
    with LavaNetwork(net, batch, record=True) as lava:
        _assert_same_trace(lava.trace(steps, currents), emu, net)


# --- Lava's weight rules ---------------------------------------------------------------------------
@pytest.mark.parametrize("low,high", [(-300, 300), (0, 400), (-400, 0), (-256, 255), (0, 0)])
@pytest.mark.parametrize("bits", [8, 7, 5, 1])
def test_weight_clipping_and_truncation_equal_lavas(low, high, bits):
    from lava.utils.weightutils import clip_weights, determine_sign_mode, truncate_weights

    w = np.random.default_rng(bits).integers(low, high + 1, (40, 30))
    w[::3] = 0  # implicit zeros of a sparse matrix must not change the sign mode
    for m in (w, sparse.csr_matrix(w)):
        mode = determine_sign_mode(m)
        lava = truncate_weights(clip_weights(m, mode, num_bits=8), mode, bits)
        lava = lava.toarray() if sparse.issparse(lava) else lava
        assert np.array_equal(lava_weights(w, bits), lava)


# --- random netlists -------------------------------------------------------------------------------
@st.composite
def netlists(draw) -> tuple[Netlist, int, int, dict[str, np.ndarray]]:
    """A small random netlist, its batch (1 with a Lava Conv), steps and host currents.

    Every netlist has the same skeleton, so that every example exercises each
    feature: g0 (C, H, W) -conv-> g1 -identity-> g2 (a delay line, a neuron or
    a graded group, whose payloads its synapses multiply) -dense-> g3, an optional second conv g0 -> g1 (like split_signs' halves),
    0-2 recurrent synapses (into the source itself or an earlier group) and a
    readout. Hypothesis draws every kind, geometry and parameter; arrays come
    from a numpy generator it seeds, mixing ordinary values with extremes
    (weights at and beyond 8 bits, the largest biases). T and the depths are
    drawn so that per-step values (StepBiasLIFReset biases, StepGainSparse
    gains, per-step host currents) change within and across calls.
    """
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    groups: list[NeuronGroup] = []
    synapses: list[Synapse] = []
    T, readout_depth = draw(st.integers(1, 3)), draw(st.integers(0, 2))

    def group(shape, kind: str = "neuron") -> NeuronGroup:
        n = int(np.prod(shape))
        name = f"g{len(groups)}"
        if kind == "relay":  # the shape of balance_delays' relays: a delay line
            return NeuronGroup(name, shape, 4095, draw(st.sampled_from([0, 4095])), 1, np.zeros(n, np.int64),
                               np.zeros(n, np.int64))
        if kind == "graded":  # a sum population: payloads into its synapses, maybe a bias per step
            rows = (T, n) if draw(st.booleans()) else (n,)
            return NeuronGroup(name, shape, 0, 0, 0, rng.integers(-4096, 4096, rows), rng.integers(0, 8, rows),
                               depth=draw(st.integers(0, readout_depth)), role="graded",
                               payload_shift=draw(st.sampled_from([0, 12]) | st.integers(0, 12)))
        du = draw(st.sampled_from([4095, 0, 1, 2048]) | st.integers(0, 4095))
        dv = draw(st.sampled_from([0, 4095, 1]) | st.integers(0, 4095))
        vth = draw(st.sampled_from([0, 1, 2**17 - 1]) | st.integers(0, 3000))
        interval = draw(st.sampled_from([0, 3, 5, 7]))
        offset = draw(st.integers(0, max(interval - 1, 0)))
        rows = (T, n) if interval and draw(st.booleans()) else (n,)  # a bias per logical step
        bias_mant = rng.integers(-4096, 4096, rows) * (rng.random(rows) < draw(st.sampled_from([0.0, 0.5, 1.0])))
        return NeuronGroup(name, shape, du, dv, vth, bias_mant.astype(np.int64), rng.integers(0, 8, rows), interval,
                           offset, depth=draw(st.integers(0, readout_depth)))

    def weights(shape) -> np.ndarray:
        style = draw(st.sampled_from(["mixed", "positive", "negative", "even", "extreme"]))
        lo, hi = {"mixed": (-256, 256), "positive": (0, 256), "negative": (-255, 1), "even": (-128, 128),
                  "extreme": (-40000, 40000)}[style]
        w = rng.integers(lo, hi, shape) * (rng.random(shape) < 0.7) * (2 if style == "even" else 1)
        return np.clip(w, -(2**15 - 1), 2**15 - 1).astype(np.int64)

    def synapse(src: NeuronGroup, dst: str, op: LinearOp, kind: str = "sparse") -> Synapse:
        lava_conv = kind == "conv"
        delay = draw(st.integers(0, 4)) if kind == "sparse" else 0
        gain, gain_shift, lag = None, 0, 0
        if kind == "sparse" and delay == 0 and draw(st.booleans()):  # a StepGainSparse, maybe recurrent
            lag = draw(st.integers(0, 1))
            gain = rng.choice([-4095, -1, 0, 1, 2048, 4095], T) if draw(st.booleans()) else rng.integers(-4095, 4096, T)
            gain_shift = draw(st.sampled_from([0, 12]) | st.integers(0, 12))
            if lag and draw(st.booleans()):  # a recurrent synapse without a gain: only its window
                gain, gain_shift = None, 0
        return Synapse(f"s{len(synapses)}", src.name, dst, kind, op,
                       weight_exp=0 if lava_conv else draw(st.integers(-8, 7)),
                       num_weight_bits=8 if lava_conv else draw(st.sampled_from([8, 7]) | st.integers(1, 8)),
                       delay=delay, gain=gain, gain_shift=gain_shift, lag=lag)

    def dense(src: NeuronGroup, out_shape) -> LinearOp:
        return LinearOp("dense", src.shape, tuple(out_shape), weights((int(np.prod(out_shape)), src.n)))

    g0 = group((draw(st.integers(1, 3)), draw(st.integers(3, 5)), draw(st.integers(3, 5))))
    groups.append(g0)
    conv_kind = draw(st.sampled_from(["sparse", "conv"]))  # Lava Sparse of the conv's matrix, or Lava Conv
    k = draw(st.integers(1, 3))
    stride, padding = draw(st.integers(1, 2)), draw(st.integers(0, k - 1))
    up = 1 if conv_kind == "conv" else draw(st.integers(1, 2))
    out_channels = draw(st.integers(1, 3))
    conv = LinearOp.conv(weights((out_channels, g0.shape[0], k, k)), g0.shape, stride, padding, up)
    conv = replace(conv, weight=conv.weight.astype(np.int64))
    g1 = group(conv.out_shape)
    groups.append(g1)
    synapses.append(synapse(g0, g1.name, conv, conv_kind))
    if draw(st.booleans()):  # a second synapse with the same geometry, as split_signs makes
        synapses.append(synapse(g0, g1.name, replace(conv, weight=weights(conv.weight.shape)), conv_kind))
    g2 = group(g1.shape, draw(st.sampled_from(["neuron", "relay", "graded"])))
    groups.append(g2)
    synapses.append(synapse(g1, g2.name, LinearOp("identity", g1.shape, g1.shape, weights((1,)))))
    g3 = group(draw(st.sampled_from([(5,), (1, 2, 3)])))
    groups.append(g3)
    src = groups[draw(st.integers(0, 2))]
    synapses.append(synapse(src, g3.name, dense(src, g3.shape), draw(st.sampled_from(["sparse", "dense"]))))
    for _ in range(draw(st.integers(0, 2))):
        a, b = sorted(draw(st.lists(st.integers(0, len(groups) - 1), min_size=2, max_size=2)))
        synapses.append(synapse(groups[b], groups[a].name, dense(groups[b], groups[a].shape),
                                draw(st.sampled_from(["sparse", "dense"]))))
    for g in draw(st.lists(st.sampled_from(groups), min_size=1, max_size=2, unique_by=lambda g: g.name)):
        synapses.append(synapse(g, "out", dense(g, (3,))))
    inputs = [g.name for g in groups if g is g0 or draw(st.booleans())]
    net = Netlist("fixed", {g.name: g for g in groups}, synapses, ReadoutPort("out", (3,), 1.0, readout_depth),
                  timestep=T, inputs=dict.fromkeys(inputs, 1.0))
    net.check()
    batch = 1 if conv_kind == "conv" else 2
    currents = {}
    for name in inputs:
        shape = ((T,) if draw(st.booleans()) else ()) + (batch, net.groups[name].n)  # per logical step or constant
        currents[name] = rng.integers(-(2**17) + 1, 2**17, shape).astype(np.float64) * (rng.random(shape) < 0.5)
    return net, batch, draw(st.integers(6, 14)), currents


@pytest.mark.lava
@settings(max_examples=20, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(netlists())
def test_random_netlists_equal_lava_at_every_step(case):
    net, batch, steps, currents = case
    _run_both(net, batch, steps, currents)


@pytest.mark.lava
def test_a_gained_identity_synapse_is_not_a_delay_line():
    """A relay-shaped group fed by a gained (or recurrent) identity synapse must be integrated, not copied."""
    n = 4
    zeros = np.zeros(n, np.int64)
    src = NeuronGroup("a", (n,), 4095, 0, 10, np.full(n, 700), zeros, 7, 1)
    for gain, lag in ((np.array([0, 4095, -4095]), 0), (None, 1)):
        relay = NeuronGroup("b", (n,), 4095, 4095, 1, zeros, zeros)
        ident = LinearOp("identity", (n,), (n,), np.array([2]))
        net = Netlist("fixed", {"a": src, "b": relay},
                      [Synapse("ab", "a", "b", "sparse", ident, gain=gain, gain_shift=12 if lag == 0 else 0, lag=lag),
                       Synapse("out", "b", "r", "sparse", LinearOp("identity", (n,), (n,), np.array([1])))],
                      ReadoutPort("r", (n,), 1.0, 1), timestep=3)
        net.check()
        _run_both(net, 1, 14, {})


def full(shape, value: int) -> np.ndarray:
    return np.full(shape, value, dtype=np.int64)


@pytest.mark.lava
def test_extreme_values_wrap_and_saturate_like_lava():
    """A netlist built to hit every overflow rule: the int32 wrap of ``a_in << 6``, the one-step
    24-bit wrap of u, v's saturation, Conv's 24-bit wrap, floor shifts, even mixed-sign weights."""
    n = 1100
    drive = NeuronGroup("drive", (n,), 4095, 0, 0, full(n, 4095), full(n, 7))  # spikes every step from step 1
    image = NeuronGroup("image", (30, 3, 3), 4095, 0, 0, full(270, 4095), full(270, 7))
    wide = NeuronGroup("wide", (4,), 100, 0, 2**17 - 1, full(4, -4096), full(4, 7), reset_interval=7)
    narrow = NeuronGroup("narrow", (3,), 4095, 5, 50, full(3, 0), full(3, 0))
    conv = NeuronGroup("conv", (2, 1, 1), 4095, 0, 10, full(2, 0), full(2, 0))
    big = np.stack([full(n, 255), full(n, -256), full(n, 127) * (np.arange(n) % 2), full(n, -1)])
    conv_w = np.stack([full((30, 3, 3), 32767), full((30, 3, 3), -32767)])
    synapses = [
        Synapse("wrap32", "drive", "wide", "dense", LinearOp("dense", (n,), (4,), big), weight_exp=7),
        Synapse("u24", "drive", "narrow", "sparse", LinearOp("dense", (n,), (3,), np.stack(
            [full(n, 10), full(n, -10), full(n, 3)])), weight_exp=4),
        Synapse("floor", "drive", "narrow", "sparse", LinearOp("dense", (n,), (3,), full((3, n), -3)), weight_exp=-8),
        Synapse("conv24", "image", "conv", "conv", LinearOp("conv", (30, 3, 3), (2, 1, 1), conv_w)),
        Synapse("conv24-out", "image", "out", "conv", LinearOp("conv", (30, 3, 3), (2, 1, 1), conv_w)),
        Synapse("wide-out", "wide", "out", "sparse", LinearOp("dense", (4,), (2, 1, 1), full((2, 4), 255)), weight_exp=7),
    ]
    net = Netlist("fixed", {g.name: g for g in (drive, image, wide, narrow, conv)}, synapses,
                  ReadoutPort("out", (2, 1, 1), 1.0, 0), timestep=1)
    emu = EmuNetwork(net, record=True).trace(12, {})
    assert emu.v["wide"].min() == -(2**23 - 1)  # saturated
    assert np.abs(emu.u["wide"]).max() > 2**30  # a_in << 6 wrapped at int32: u leaves 24 bits, as in Lava
    a_in = 1100 * 10 * 2**4 + (-3 * 1100 >> 8)  # u24 plus the floor of floor's right shift
    assert emu.u["narrow"][-1, 0, 0] == a_in * 64 - 2**24  # the one-step 24-bit wrap of u
    with LavaNetwork(net, 1, record=True) as lava:
        _assert_same_trace(lava.trace(12, {}), emu, net)


@pytest.mark.lava
def test_graded_payloads_round_saturate_and_wrap_like_lava():
    """Graded groups at the edges: a payload rounded half up, one saturated at 24 bits, a graded mat-vec whose
    int32 sum wraps before its floor shift, a graded group fed by a graded group, and its per-step bias."""
    n = 600
    drive = NeuronGroup("drive", (n,), 4095, 0, 0, full(n, 4095), full(n, 7))  # spikes every step from step 1
    big = NeuronGroup("big", (3,), 0, 0, 0, np.array([0, 0, 1]), full(3, 0), role="graded", payload_shift=1)
    chained = NeuronGroup("chained", (3,), 0, 0, 0, np.array([[5, -7, 4095], [-4096, 3, 1]]), full((2, 3), 7),
                          role="graded", payload_shift=3)
    target = NeuronGroup("target", (2,), 4095, 0, 2**17 - 1, full(2, 0), full(2, 0), reset_interval=5)
    w = np.stack([full(n, 255), full(n, -256), full(n, 3) * (np.arange(n) % 2)])
    synapses = [
        Synapse("drive-big", "drive", "big", "sparse", LinearOp("dense", (n,), (3,), w), weight_exp=7),
        Synapse("big-chained", "big", "chained", "sparse", LinearOp("identity", (3,), (3,), np.array([255])),
                weight_exp=-3, delay=1),
        Synapse("wraps", "big", "target", "sparse", LinearOp("dense", (3,), (2,), np.array([[255, -256, 1],
                                                                                          [-256, 2, 0]])),
                weight_exp=-8),
        Synapse("chained-out", "chained", "out", "sparse", LinearOp("dense", (3,), (2,), full((2, 3), 200))),
    ]
    net = Netlist("fixed", {g.name: g for g in (drive, big, chained, target)}, synapses, ReadoutPort("out", (2,), 1.0, 0),
                  timestep=2, inputs={"chained": 1.0})
    net.check()
    currents = {"chained": np.array([[[3.0, -5.0, 2**17 - 1]]]).repeat(2, axis=0)}
    emu = EmuNetwork(net, record=True).trace(9, currents)
    assert np.abs(emu.spikes["big"]).max() == 2**23 - 1  # saturated
    assert emu.spikes["big"][-1, 0, 2] == 38401  # (300 spikes x 2 (Lava's even mixed-sign 3) << 7) + 1, halved up
    with LavaNetwork(net, 1, record=True) as lava:
        _assert_same_trace(lava.trace(9, currents), emu, net)


# --- compiled models ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def digits_unet(unet_build):
    """The shipped U-Net's build (the session's, compiled as a user would) and its fixed netlist."""
    return unet_build, unet_build.netlist("fixed")


def _call_currents(host, net: Netlist, batch: int, timesteps: list[int]) -> list[dict[str, np.ndarray]]:
    return [netlist_currents(net, host.call_inputs(x.double(), t)) for x, t in host.noisy_inputs(batch, timesteps, 0)]


def _assert_same_calls(lava, emu_nets, calls) -> None:
    for currents in calls:
        reference = lava.call(currents)
        for emu in emu_nets:
            result = emu.call(currents)
            assert np.array_equal(result.readout, reference.readout)
            assert result.spikes.keys() == reference.spikes.keys()
            for name, spikes in reference.spikes.items():
                assert np.array_equal(result.spikes[name], spikes), name


@pytest.mark.lava
def test_digits_unet_calls_and_state_equal_lava(digits_unet):
    """Three calls (diffusion steps 900, 500, 100), then every step's u and v for a few steps."""
    build, net = digits_unet
    calls = _call_currents(build.host, net, 2, [900, 500, 100])
    every_step = EmuNetwork(net, 2, record=True)
    windows = EmuNetwork(net, 2, record=True, windows_only=True)
    assert windows.windowed
    assert len(every_step.lines) == sum(g.role == "relay" for g in net.groups.values())  # all proven delay lines
    with LavaNetwork(net, 2, record=True) as lava:
        _assert_same_calls(lava, [every_step, windows], calls)
        _assert_same_trace(lava.trace(2, calls[0]), every_step.trace(2, calls[0]), net)


@pytest.mark.lava
def test_digits_mlp_calls_and_state_equal_lava():
    dep = deploy(make_model("digits-mlp").double())
    net = compile_model(dep, calibration=2).build.netlist("fixed")
    calls = _call_currents(dep.host, net, 4, [950, 700, 400, 150, 10])
    every_step = EmuNetwork(net, 4, record=True)
    windows = EmuNetwork(net, 4, record=True, windows_only=True)
    assert windows.windowed
    with LavaNetwork(net, 4, record=True) as lava:
        _assert_same_calls(lava, [every_step, windows], calls)
        _assert_same_trace(lava.trace(7, calls[1]), every_step.trace(7, calls[1]), net)


def test_windows_only_needs_a_separable_netlist_and_has_no_trace(digits_unet):
    _, net = digits_unet
    windows = EmuNetwork(net, 1, windows_only=True)
    with pytest.raises(SncError, match="no trace"):
        windows.trace(3, {})
    name = next(iter(net.groups))
    broken = replace(net, groups={**net.groups, name: replace(net.groups[name], reset_offset=0)})
    assert not EmuNetwork(broken, 1, windows_only=True).windowed  # falls back to every step


def test_bad_netlists_are_one_clear_error():
    g = NeuronGroup("a", (2,), 5000, 0, 2**17, np.zeros(2, np.int64), np.full(2, 9))
    op = LinearOp("dense", (2,), (2,), np.full((2, 2), 1.5))
    net = Netlist("fixed", {"a": g}, [Synapse("s", "a", "nowhere", "conv", op, weight_exp=3)],
                  ReadoutPort("out", (2,), 1.0, 0), timestep=1)
    with pytest.raises(SncError) as err:
        EmuNetwork(net)
    message = str(err.value)
    assert "\n" not in message
    for needle in ("du 5000", "vth 131072", "bias_exp", "nowhere"):
        assert needle in message
    with pytest.raises(SncError, match="emulator of Lava fixed_pt"):
        netlist_backend("emu").network(replace(net, mode="float"))


# --- the command line ------------------------------------------------------------------------------
def test_sample_on_emu(unet_build, tmp):
    # snc verify --backends lava,emu of this build: tests/test_cli_compile.py
    res = json.loads(_ok(run_snc("sample", str(unet_build.path), "--backend", "emu", "--steps", "3", "-n", "2",
                                 "-o", str(tmp / "emu.png"), "--json")).stdout)
    assert res["backend"] == "emu" and res["mode"] == "fixed" and np.load(tmp / "emu.npy").shape == (2, 1, 8, 8)
    _ok(run_snc("sample", str(unet_build.path), "--backend", "emu", "--steps", "3", "-n", "2", "--device", "cpu",
                "-o", str(tmp / "cpu.png")))
    assert np.array_equal(np.load(tmp / "cpu.npy"), np.load(tmp / "emu.npy"))


def test_emu_usage_errors(unet_build, tmp):
    build = str(unet_build.path)
    _clean_error(run_snc("sample", build, "--backend", "emu", "--mode", "float", "-o", str(tmp / "x.png")),
                 "emulator of Lava fixed_pt")
    _clean_error(run_snc("sample", str(shipped_checkpoint("digits-unet")), "--backend", "emu"), "needs a build")
    _clean_error(run_snc("verify", build, "--backends", "emu,gpu"), "--backends takes")
    if not torch.cuda.is_available():
        _clean_error(run_snc("verify", build, "--backends", "emu", "--device", "cuda"), "--device cuda: no CUDA device")
    with pytest.raises(SncError, match="--device must be cpu, cuda or cuda:N, not 'gpu'"):
        api.sample(build, backend="emu", device="gpu")
    with pytest.raises(SncError, match="--device cpu: only emu runs on a chosen torch device, not torch$"):
        api.sample(build, backend="torch", device="cpu")
    with pytest.raises(SncError, match="not lava$"):
        api.sample(build, backend="lava", device="cpu")
    with pytest.raises(SncError, match="reference is the float NIR executor on the CPU; it has no --device"):
        api.run(build, np.zeros((2, 1, 8, 8)), backend="reference", device="cpu")


# --- devices -------------------------------------------------------------------------------------------
def _tensors(obj, path: str = "network", seen: set | None = None):
    """(path, tensor) for every torch tensor reachable from ``obj`` through attributes and containers."""
    seen = set() if seen is None else seen
    if id(obj) in seen:
        return
    seen.add(id(obj))
    if isinstance(obj, torch.Tensor):
        yield path, obj
    elif isinstance(obj, dict):
        for key, value in obj.items():
            yield from _tensors(value, f"{path}[{key!r}]", seen)
    elif isinstance(obj, (list, tuple)):
        for i, value in enumerate(obj):
            yield from _tensors(value, f"{path}[{i}]", seen)
    elif is_dataclass(obj) or type(obj).__module__.startswith("snc.runtime"):
        names = [f.name for f in fields(obj)] if is_dataclass(obj) else list(vars(obj))
        for name in names:
            yield from _tensors(getattr(obj, name), f"{path}.{name}", seen)


def _emu_on(device: str, net: Netlist, calls, trace_steps: int):
    """Every call's result on both integration schemes, a trace, and the networks' held tensors."""
    windows = EmuNetwork(net, 2, record=True, windows_only=True, device=device)
    every_step = EmuNetwork(net, 2, record=True, device=device)
    results = [network.call(currents) for currents in calls for network in (windows, every_step)]
    trace = every_step.trace(trace_steps, calls[0])
    return results, trace, list(_tensors(windows)) + list(_tensors(every_step))


def _assert_same_runs(a, b) -> None:
    for x, y in zip(a[0], b[0], strict=True):
        assert np.array_equal(x.readout, y.readout) and x.spikes.keys() == y.spikes.keys()
        assert all(np.array_equal(x.spikes[name], y.spikes[name]) for name in x.spikes)
    for part in ("spikes", "u", "v"):
        assert all(np.array_equal(getattr(a[1], part)[n], getattr(b[1], part)[n]) for n in getattr(a[1], part))
    assert np.array_equal(a[1].readout, b[1].readout)


def test_an_explicit_cpu_device_holds_every_tensor_there_and_changes_nothing(digits_unet):
    build, net = digits_unet
    calls = _call_currents(build.host, net, 2, [900, 100])
    default = EmuNetwork(net, 2, record=True, windows_only=True)
    on_cpu = _emu_on("cpu", net, calls, 2)
    tensors = on_cpu[2]
    assert any(".bundles" in path for path, _ in tensors) and any(".history" in path for path, _ in tensors)
    assert all(t.device == torch.device("cpu") for _, t in tensors)
    assert all(isinstance(s.u, np.ndarray) and isinstance(s.bias, np.ndarray) for s in default.state.values())
    for currents, result in zip(calls, on_cpu[0][::2]):
        expected = default.call(currents)
        assert np.array_equal(result.readout, expected.readout)
        assert all(np.array_equal(result.spikes[name], s) for name, s in expected.spikes.items())
    reports = [api.verify(build, backends=["emu"], n=2, device=device).as_dict() for device in (None, "cpu")]
    assert reports[0] == reports[1] and reports[0]["exact"]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device here")
def test_the_emulator_on_cuda_equals_it_on_the_cpu_bit_for_bit(digits_unet):
    build, net = digits_unet
    calls = _call_currents(build.host, net, 2, [900, 500, 100])
    on_cuda = _emu_on("cuda", net, calls, 3)
    assert all(t.device.type == "cuda" for _, t in on_cuda[2])
    _assert_same_runs(on_cuda, _emu_on("cpu", net, calls, 3))


def test_exact_float_ops_disables_tf32_and_cudnn_and_restores_them():
    before = torch.get_float32_matmul_precision(), torch.backends.cudnn.enabled
    torch.set_float32_matmul_precision("high")  # TF32 allowed, as a user may have set it
    try:
        with exact_float_ops():
            assert torch.get_float32_matmul_precision() == "highest" and not torch.backends.cuda.matmul.allow_tf32
            assert not torch.backends.cudnn.enabled
        assert torch.get_float32_matmul_precision() == "high" and torch.backends.cudnn.enabled == before[1]
    finally:
        torch.set_float32_matmul_precision(before[0])


def test_the_emulator_creates_every_tensor_with_a_device():
    """A tensor made without ``device=`` lands on the CPU, which a CPU-only run cannot notice: every torch
    factory call of the emulator names its device (host numpy enters through ``torch.from_numpy``)."""
    factories = {"zeros", "ones", "empty", "full", "arange", "tensor", "as_tensor", "sparse_coo_tensor", "eye"}
    missing = []
    for module in (emulator, emu_synapses):
        source = Path(module.__file__).read_text()
        for node in ast.walk(ast.parse(source)):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in factories
                    and isinstance(node.func.value, ast.Name) and node.func.value.id == "torch"
                    and not any(k.arg == "device" for k in node.keywords)):
                missing.append(f"{Path(module.__file__).name}:{node.lineno}")
    assert not missing
