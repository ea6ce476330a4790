"""The wire lab (tests/sim/nfwire.py), one per test module, always removed afterwards: also
when SIGTERM or SIGHUP ends the run (tracer.netns.Teardown turns them into an exception)."""

import pytest

from tests.sim import nfwire
from tracer import netns


@pytest.fixture(scope="module")
def wire_lab():
    why = nfwire.can_run()
    if why:
        print(f"skipping kernel test: {why}")
        pytest.skip(why)
    with netns.Teardown(), nfwire.WireLab() as lab:
        yield lab
