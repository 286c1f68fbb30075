import h5py
import nir
import numpy as np
import pytest
import torch

from snc.compiler.nir_io import NearestUpsample2d, node_arrays, read_graph, write_graph
from snc.errors import GraphError
from snc.models.neurons import NeuronConfig
from snc.compiler.nir_reference import NIRReference

from conftest import export, host_of, make_model


def core_inputs(model, graph, x, t):
    return host_of(model, graph).core_inputs(x, t, None)


def _roundtrip(tmp, model):
    graph = export(model)
    write_graph(tmp / "g.nir", graph)
    return graph, read_graph(tmp / "g.nir")


@pytest.mark.parametrize("preset", ["digits-mlp", "digits-unet"])
def test_round_trip_parameters_are_bit_identical(tmp, preset):
    graph, back = _roundtrip(tmp, make_model(preset))
    assert set(graph.nodes) == set(back.nodes)
    assert sorted(graph.edges) == sorted(back.edges)
    for name, node in graph.nodes.items():
        assert type(back.nodes[name]) is type(node)
        a, b = node_arrays(node), node_arrays(back.nodes[name])
        assert a.keys() == b.keys()
        for key in a:
            assert np.array_equal(a[key], b[key]), (name, key)
            if np.issubdtype(a[key].dtype, np.floating):
                assert a[key].dtype == b[key].dtype, (name, key)
    assert back.metadata["snc.dt"] == pytest.approx(1e-4)


def test_mlp_is_plain_nir_readable_by_stock_reader(tmp):
    _roundtrip(tmp, make_model("digits-mlp"))
    stock = nir.read(str(tmp / "g.nir"))
    assert {type(n).__name__ for n in stock.nodes.values()} <= {"Input", "Output", "Flatten", "Affine", "IF"}


def test_unet_uses_extension_nodes_that_only_snc_reads(tmp):
    graph, back = _roundtrip(tmp, make_model("digits-unet"))
    assert any(isinstance(n, NearestUpsample2d) for n in back.nodes.values())
    with pytest.raises(AssertionError):
        nir.read(str(tmp / "g.nir"))


def test_unet_graph_structure(tmp):
    graph = export(make_model("digits-unet"))
    kinds = {type(n).__name__ for n in graph.nodes.values()}
    assert "BatchNorm" not in kinds and kinds <= {"Input", "Output", "Conv2d", "IF", "Scale", "NearestUpsample2d"}
    # the concat of the first up block is split by input part, not concatenated
    assert {"upblocks.0.conv1.main", "upblocks.0.conv1.skip", "upblocks.0.neuron1.skip"} <= set(graph.nodes)
    # host-side parts enter as Input nodes, one per residual block, and leave as one Output
    temb = [n for n in graph.inputs if n.startswith("temb.")]
    assert len(temb) == sum(1 for _ in make_model("digits-unet").resblocks())
    assert list(graph.outputs) == ["output"]
    for node in graph.nodes.values():
        if isinstance(node, nir.IF):
            assert node.r.shape == node.v_threshold.shape == tuple(node.output_type["output"])


@pytest.mark.parametrize(
    "preset,neuron",
    [
        ("digits-mlp", NeuronConfig()),
        ("digits-unet", NeuronConfig()),
        ("digits-unet", NeuronConfig(decay=0.75)),
        ("digits-mlp", NeuronConfig(threshold=0.5, fire_at_threshold=True)),
    ],
)
def test_reference_executor_equals_torch_core(tmp, preset, neuron):
    model = make_model(preset, neuron=neuron, timestep=6).double()
    _, graph = _roundtrip(tmp, model)
    g = torch.Generator().manual_seed(1)
    x = torch.randn((5, 1, 8, 8), generator=g, dtype=torch.float64) * 1.5
    t = torch.tensor([0, 10, 250, 600, 999])
    expected = model.core(model.encode(x), model.time_biases(t))
    out = NIRReference(graph).run(core_inputs(model, graph, x, t))["output"]
    assert out.shape == expected.reshape(out.shape).shape
    assert torch.allclose(out, expected.reshape(out.shape), rtol=0, atol=1e-9)


def test_threshold_ties_follow_the_model_comparison(tmp):
    """A membrane landing exactly on the threshold spikes only with fire_at_threshold."""
    for fire in (False, True):
        model = make_model("digits-mlp", neuron=NeuronConfig(fire_at_threshold=fire)).double()
        with torch.no_grad():
            layer = model.hidden[0]
            layer.fc.weight.zero_()
            layer.fc.bias.fill_(0.5)  # v = 0.5, 1.0 (tie) ...
            layer.temb_proj[1].weight.zero_()
            layer.temb_proj[1].bias.zero_()
        _, graph = _roundtrip(tmp, model)
        x, t = torch.zeros(1, 1, 8, 8, dtype=torch.float64), torch.tensor([3])
        spikes = NIRReference(graph).run(core_inputs(model, graph, x, t), record=True)["hidden.0.neuron"]
        torch_spikes = model.hidden[0](model.encode(x).flatten(2), model.time_biases(t)["hidden.0"])
        assert torch.equal(spikes, torch_spikes)
        assert spikes[1].max().item() == (1.0 if fire else 0.0)


def test_unknown_node_type_is_one_clear_error(tmp):
    _roundtrip(tmp, make_model("digits-mlp"))
    with h5py.File(tmp / "g.nir", "r+") as f:
        del f["node/nodes/readout/type"]
        f["node/nodes/readout"].create_dataset("type", data="Softmax", dtype=h5py.string_dtype())
    with pytest.raises(GraphError, match=r"unknown NIR node type\(s\): readout \(Softmax\)"):
        read_graph(tmp / "g.nir")


def test_non_finite_parameters_are_refused(tmp):
    _roundtrip(tmp, make_model("digits-mlp"))
    with h5py.File(tmp / "g.nir", "r+") as f:
        w = f["node/nodes/hidden.0.fc/weight"]
        data = w[()]
        data[0, 0] = np.nan
        w[...] = data
    with pytest.raises(GraphError, match="hidden.0.fc.weight"):
        read_graph(tmp / "g.nir")


def test_not_a_nir_file(tmp):
    (tmp / "x.nir").write_bytes(b"garbage")
    with pytest.raises(GraphError, match="not a readable NIR file"):
        read_graph(tmp / "x.nir")


def test_ann_twin_does_not_export():
    import dataclasses

    from snc.errors import SncError
    import snc.models as m

    arch, config = m.preset("digits-mlp")
    ann = m.build_model(arch, dataclasses.replace(config, spiking=False, timestep=1)).eval()
    with pytest.raises(SncError, match="ANN twin"):
        export(ann)
