import dataclasses
import json

import pytest
import torch

import snc.models as m
from snc.models.neurons import IFNeuron, NeuronConfig

from conftest import DATA, make_model


def test_cifar10_preset_matches_reference_state_dict_layout():
    ref = json.loads((DATA / "reference_state_dicts.json").read_text())["sddpm_cifar10_T4"]
    arch, config = m.preset("cifar10-sddpm")
    with torch.device("meta"):
        model = m.build_model(arch, config)
    shapes = {k: list(v.shape) for k, v in model.state_dict().items()}
    assert shapes == ref["state_dict"]
    assert sum(p.numel() for p in model.parameters()) == ref["params_including_frozen_time_table"]


def test_cifar10_tsm_matches_reference_state_dict_layout():
    ref = json.loads((DATA / "reference_state_dicts.json").read_text())["sdm_tsm_cifar10_T8"]
    _, config = m.preset("cifar10-sddpm")
    with torch.device("meta"):
        model = m.build_model("spiking-unet-tsm", dataclasses.replace(config, timestep=8))
    shapes = {k: list(v.shape) for k, v in model.state_dict().items()}
    assert shapes == ref["state_dict"]
    assert sum(p.numel() for p in model.parameters()) == ref["params_including_frozen_time_table"] == 66_696_949


def test_if_neuron_integrates_fires_strictly_above_threshold_and_hard_resets():
    x = torch.tensor([0.6, 0.4, 0.5, 0.6, 1.5, 0.2]).view(6, 1)
    s = IFNeuron(NeuronConfig())(x).view(-1).tolist()
    # v: 0.6, 1.0 (not > 1), 1.5 -> spike, reset; 0.6; 2.1 -> spike; 0.2
    assert s == [0, 0, 1, 0, 1, 0]
    s_eq = IFNeuron(NeuronConfig(fire_at_threshold=True))(x).view(-1).tolist()
    assert s_eq[:2] == [0, 1]


def test_leaky_neuron_decays():
    x = torch.tensor([0.8, 0.0, 0.5]).view(3, 1)
    s = IFNeuron(NeuronConfig(decay=0.5))(x).view(-1).tolist()
    assert s == [0, 0, 0]  # 0.8, 0.4, 0.7
    assert IFNeuron(NeuronConfig(decay=1.0))(x).view(-1).tolist() == [0, 0, 1]


def test_surrogate_gradient_flows_through_spikes():
    x = torch.full((4, 2, 3), 0.4, requires_grad=True)
    IFNeuron()(x).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


@pytest.mark.parametrize("preset", ["digits-unet", "digits-mlp"])
def test_forward_shapes_and_host_split(preset):
    model = make_model(preset)
    x = torch.randn(3, 1, 8, 8)
    t = torch.tensor([0, 500, 999])
    eps = model(x, t)
    assert eps.shape == x.shape
    split = model.decode(model.core(model.encode(x), model.time_biases(t)))
    assert torch.equal(eps, split)


def test_ann_twin_has_same_layout_and_no_spiking_neurons():
    arch, config = m.preset("digits-unet")
    twin = m.ann_twin(config)
    ann = m.build_model(arch, twin)
    snn = m.build_model(arch, config)
    assert not any(isinstance(mod, IFNeuron) for mod in ann.modules())
    assert {k: v.shape for k, v in ann.state_dict().items()} == {k: v.shape for k, v in snn.state_dict().items()}
    assert ann(torch.randn(2, 1, 8, 8), torch.tensor([1, 2])).shape == (2, 1, 8, 8)


def test_config_validation():
    with pytest.raises(ValueError):
        m.UNetConfig(img_size=10, ch_mult=(1, 2, 2))
    with pytest.raises(ValueError):
        dataclasses.replace(m.UNetConfig(), spiking=False)  # the ANN twin needs timestep=1
