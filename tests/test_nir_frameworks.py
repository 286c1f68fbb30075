"""Conformance with norse and snnTorch: their own networks, simulation and exporters, compiled by snc.

Every network of ``nir_frameworks.CASES`` is simulated in its framework, exported with the framework's
exporter and compiled by snc; its output spikes on snc's NIR reference and on Lava floating_pt must equal
the framework's (>= 99.9 %: their discretisations are Lava's), the emulator must equal Lava fixed_pt
exactly (every population's spikes and the output), and fixed_pt may differ only by quantization.
"""

from __future__ import annotations

import numpy as np
import pytest

from nir_frameworks import CASES, conform

IDS = [f"{c.framework}-{c.network}-{c.neuron}".replace(" ", "_") for c in CASES]


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_reference_and_emulator_follow_the_framework(case):
    result = conform(case, (("reference", None), ("emu", None)))
    assert 0.05 < result.rate < 0.5  # the comparison means something
    assert result.agreement["reference"] >= 0.999
    assert result.agreement["emu"] >= 0.99  # quantization of weights and decays


@pytest.mark.lava
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_lava_floating_pt_equals_the_framework_and_emulator_equals_fixed_pt(case):
    result = conform(case, (("lava", "float"), ("lava", "fixed"), ("emu", None)))
    assert result.agreement["lava:float"] >= 0.999
    assert result.agreement["lava:fixed"] >= 0.99
    assert np.array_equal(result.outputs["emu"], result.outputs["lava:fixed"])
    for name, spikes in result.spikes["lava:fixed"].items():
        assert np.array_equal(result.spikes["emu"][name], spikes), name
