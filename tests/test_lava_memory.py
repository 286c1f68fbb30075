"""Lava's memory estimate: a batch that does not fit is refused before any process starts, naming the
largest that does; snc picks that batch itself when the user left it open (issue 15)."""

from __future__ import annotations

import pytest

from snc import api
from snc.errors import SncError
from snc.runtime.backends import get_backend
from snc.runtime.backends.lava_memory import check_batch, estimate_mb, fitting_batch


@pytest.fixture(scope="module")
def net():
    return api.compile(preset="digits-mlp", modes=("fixed",)).build.netlist("fixed")


@pytest.mark.parametrize("available", [2000.0, 500.0, 100.0])
def test_a_batch_that_does_not_fit_is_refused_naming_the_largest_that_does(net, available):
    fits = fitting_batch(net, available=available)
    assert estimate_mb(net, fits + 1) > available
    if fits:
        assert estimate_mb(net, fits) <= available
        check_batch(net, fits, available=available)  # fits: no error
    with pytest.raises(SncError) as err:
        check_batch(net, fits + 1, available=available)
    message = str(err.value)
    assert f"batch of {fits + 1}" in message and "GB is available" in message
    assert f"the largest batch that fits is {fits}: --batch {fits}" in message if fits else \
        "not even one image fits" in message


def test_the_estimate_grows_with_the_batch_and_snc_picks_a_batch_that_fits(net):
    assert estimate_mb(net, 8) > estimate_mb(net, 1) > 0
    lava = get_backend("lava")
    assert lava.batch_that_fits(net, 4, True) == min(4, fitting_batch(net))
    assert get_backend("emu").batch_that_fits(net, 4, True) == 4  # in-process backends: the caller's
