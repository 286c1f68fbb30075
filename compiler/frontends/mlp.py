"""The spiking MLP family (``spiking-mlp``): export and host program.

The graph: ``input`` (the image, the same every step) -> ``flatten`` ->
per hidden layer an ``Affine`` (``hidden.<i>.fc``) and its IF neurons, which
also read ``temb.hidden.<i>`` (the host's time-embedding bias) -> the
``readout`` Affine -> ``output`` (the readout currents; the host averages
them over the steps). A plain NIR graph: no extension nodes.
"""

from __future__ import annotations

import nir
import numpy as np
import torch

from snc.models.mlp import SpikingMLP

from .base import Family, HostProgram
from .nir_builder import as_array, builder_for

ARCHS = ("spiking-mlp",)
INPUTS = ("input: analog image, the same every spiking step; temb.hidden.<i>: host-computed time-embedding bias, "
          "constant over the spiking steps")


@torch.no_grad()
def export(model: SpikingMLP, arch: str) -> nir.NIRGraph:
    b = builder_for(model)
    cfg = model.config
    shape = np.array([cfg.img_ch, cfg.img_size, cfg.img_size])
    prev = b.add("input", nir.Input(input_type=shape))
    prev = b.add("flatten", nir.Flatten(input_type={"input": shape}, start_dim=0, end_dim=-1), prev)
    for i, layer in enumerate(model.hidden):
        fc = b.add(f"hidden.{i}.fc", nir.Affine(weight=as_array(layer.fc.weight), bias=as_array(layer.fc.bias)), prev)
        width = layer.fc.out_features
        temb = b.add(f"temb.hidden.{i}", nir.Input(input_type=np.array([width])))
        prev = b.neuron(f"hidden.{i}.neuron", layer.neuron, (width,), fc, temb)
    out = b.add("readout", nir.Affine(weight=as_array(model.readout.weight), bias=as_array(model.readout.bias)), prev)
    b.add("output", nir.Output(output_type=np.array([model.readout.out_features])), out)
    return b.graph(arch, cfg.timestep, INPUTS, **{"snc.layout": "tensor"})


MLPHost = HostProgram  # the default inputs: the image and each hidden layer's time-embedding bias


FAMILY = Family(ARCHS, export, MLPHost)
