"""The IF neuron of an ANN-to-SNN conversion (issue 16, SDM eqs. 22-24): reset by subtraction, membrane
v_threshold / 2 at the start of every call (``snc.SubtractiveIF``). For a constant input its spike count is
the quantized ANN's integer activation ``clip(round(T * I / theta), 0, T)`` exactly; Lava floating_pt equals
the NIR reference and the emulator equals Lava fixed_pt."""

from __future__ import annotations

import nir
import numpy as np
import pytest

from snc import api
from snc.compiler.frontends import GraphOptions
from snc.compiler.nir_io import SubtractiveIF, read_graph, write_graph

T = 7  # b = 3 bits
THETA = (0.8, 1.3)


def _graph(seed: int = 0) -> nir.NIRGraph:
    rng = np.random.default_rng(seed)
    n1, n2 = 12, 6

    def neurons(n: int, theta: float) -> SubtractiveIF:
        return SubtractiveIF(r=np.full(n, 1e4), v_threshold=np.full(n, theta), v_initial=np.full(n, theta / 2))

    return nir.NIRGraph(
        nodes={"input": nir.Input(np.array([4])), "fc1": nir.Affine(rng.normal(size=(n1, 4)), 0.1 * rng.normal(size=n1)),
               "if1": neurons(n1, THETA[0]), "fc2": nir.Affine(THETA[0] * rng.normal(size=(n2, n1)), np.zeros(n2)),
               "if2": neurons(n2, THETA[1]), "output": nir.Output(np.array([n2]))},
        edges=[("input", "fc1"), ("fc1", "if1"), ("if1", "fc2"), ("fc2", "if2"), ("if2", "output")],
        metadata={"snc.dt": 1e-4, "snc.timestep": T})


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    path = tmp_path_factory.mktemp("sif") / "g.nir"
    graph = _graph()
    write_graph(path, graph)
    x = np.repeat(np.random.default_rng(1).random((1, 16, 4)) * 2, T, axis=0)  # constant input [T, B, 4]
    build = api.compile(path, graph=GraphOptions(calibration=x)).build
    first = x[0] @ graph.nodes["fc1"].weight.T + graph.nodes["fc1"].bias
    return build, x, np.clip(np.floor(T * first / THETA[0] + 0.5), 0, T)  # eq. 21's integer activation


def test_the_node_survives_a_file_round_trip(tmp_path):
    write_graph(tmp_path / "g.nir", _graph())
    node = read_graph(tmp_path / "g.nir").nodes["if1"]
    assert isinstance(node, SubtractiveIF) and np.allclose(node.v_initial, THETA[0] / 2)


@pytest.mark.parametrize("backend", ["reference", "emu"])
def test_first_layer_spike_counts_are_the_quantized_activations(compiled, backend):
    build, x, expected = compiled
    assert build.netlist("fixed").groups["if1"].subtractive_reset
    counts = api.run(build, x, backend=backend).counts()["if1"]
    assert 0 < expected.mean() < T and np.array_equal(counts, expected)


@pytest.mark.lava
def test_lava_float_equals_the_reference_and_lava_fixed_the_emulator(compiled):
    build, x, expected = compiled
    reference, emu = api.run(build, x, backend="reference"), api.run(build, x, backend="emu")
    lava_float = api.run(build, x, backend="lava", mode="float")
    lava_fixed = api.run(build, x, backend="lava", mode="fixed")
    for name, spikes in reference.spikes.items():
        assert np.array_equal(lava_float.spikes[name], spikes), name
        assert np.array_equal(lava_fixed.spikes[name], emu.spikes[name]), name
    assert np.array_equal(lava_fixed.output, emu.output)
    assert np.array_equal(lava_float.counts()["if1"], expected) and np.array_equal(lava_fixed.counts()["if1"], expected)
