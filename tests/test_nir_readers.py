"""snc's plain NIR exports read by norse's from_nir and snnTorch's import_from_nir give snc's outputs."""

from __future__ import annotations

import pytest

from nir_frameworks import conv_reader_agreement, mlp_reader_error


@pytest.mark.parametrize("reader", ["norse", "snntorch"])
def test_the_mlp_denoiser_in_the_readers_equals_snc_torch_model(reader, tmp_path):
    assert mlp_reader_error(reader, tmp_path) < 1e-5  # float32 in the reader, float64 in snc


@pytest.mark.parametrize("reader", ["norse", "snntorch"])
def test_a_compiled_conv_net_in_the_readers_spikes_as_snc(reader, tmp_path):
    assert conv_reader_agreement(reader, tmp_path) == 1.0
