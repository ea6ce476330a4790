"""Labs for trace tests: one seed lab per variant for the whole session (read-only tests), and a
fresh one for a test that changes its lab; and no `why-route trace` a test started outlives it."""

import pytest

from tests.lab.lab_helpers import LabsByVariant, leftovers, missing_requirements, new_prefix
from tests.trace import tracelab
from tests.trace.trace_helpers import STARTED_TRACES
from tracer.lab import builder

MISSING = missing_requirements()


@pytest.fixture(scope="session")
def kernel_lab():
    if MISSING:
        pytest.skip(MISSING)


@pytest.fixture(scope="session")
def trace_lab(kernel_lab):
    """trace_lab(variant) → the lab of that variant, shared by tests that do not change it."""
    labs = LabsByVariant("r")
    yield labs
    labs.close()


@pytest.fixture
def own_lab(kernel_lab):
    """own_lab(variant) → a lab for this test alone (it may change it), removed afterwards."""
    labs = LabsByVariant("r")
    yield labs
    labs.close()


@pytest.fixture(scope="module")
def router_lab(kernel_lab):
    """The tracelab topology (tests/trace/tracelab.py), one for the test module."""
    state = tracelab.up(new_prefix("r"))
    yield state
    builder.down(state.prefix)
    assert not leftovers(state.prefix)


@pytest.fixture(autouse=True)
def no_trace_outlives_its_test():
    yield
    while STARTED_TRACES:
        STARTED_TRACES.pop().kill()
