"""The wire lab (tests/sim/nfwire.py), one per test module, always removed afterwards."""

import pytest

from tests.sim import nfwire


@pytest.fixture(scope="module")
def wire_lab():
    why = nfwire.can_run()
    if why:
        print(f"skipping kernel test: {why}")
        pytest.skip(why)
    with nfwire.WireLab() as lab:
        yield lab
