"""Conformance with SpikingJelly 2.0: its own networks, simulation and ``export_to_nir``, compiled by snc.

SpikingJelly runs in ``.venv-spikingjelly`` (Python >= 3.11; ``tools/bootstrap_spikingjelly_venv.sh``
makes it on first use, about a minute): ``nir_frameworks.spikingjelly_exports`` writes each network's NIR
file and the spikes SpikingJelly computed; here snc compiles the files and runs them.
"""

from __future__ import annotations

import numpy as np
import pytest

from nir_frameworks import conform_spikingjelly, spikingjelly_exports

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    return spikingjelly_exports(tmp_path_factory.mktemp("spikingjelly"))


def test_reference_and_emulator_follow_spikingjelly(exports):
    assert len(exports) == 5
    for case, stem in exports:
        result = conform_spikingjelly(case, stem, (("reference", None), ("emu", None)))
        assert 0.05 < result.rate < 0.5, case.neuron  # the comparison means something
        assert result.agreement["reference"] >= 0.999, (case.network, case.neuron)
        assert result.agreement["emu"] >= 0.98, (case.network, case.neuron)  # 8-bit weights and decays


@pytest.mark.lava
def test_lava_floating_pt_equals_spikingjelly_and_emulator_equals_fixed_pt(exports):
    for case, stem in exports:
        result = conform_spikingjelly(case, stem, (("lava", "float"), ("lava", "fixed"), ("emu", None)))
        assert result.agreement["lava:float"] >= 0.999, (case.network, case.neuron)
        assert np.array_equal(result.outputs["emu"], result.outputs["lava:fixed"])
        for name, spikes in result.spikes["lava:fixed"].items():
            assert np.array_equal(result.spikes["emu"][name], spikes), name
