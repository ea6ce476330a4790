"""Labs for trace tests: one seed lab per variant for the whole session (read-only tests), and a
fresh one for a test that changes its lab."""

import pytest

from tests.lab.lab_helpers import leftovers, missing_requirements, new_prefix
from tracer.lab import builder

MISSING = missing_requirements()


@pytest.fixture(scope="session")
def kernel_lab():
    if MISSING:
        pytest.skip(MISSING)


class Labs:
    def __init__(self):
        self.labs: dict[str, builder.LabState] = {}

    def __call__(self, variant: str) -> builder.LabState:
        if variant not in self.labs:
            self.labs[variant] = builder.up(variant=variant, prefix=new_prefix("r"))
        return self.labs[variant]

    def close(self):
        for state in self.labs.values():
            builder.down(state.prefix)
            assert not leftovers(state.prefix)


@pytest.fixture(scope="session")
def trace_lab(kernel_lab):
    """trace_lab(variant) → the lab of that variant, shared by tests that do not change it."""
    labs = Labs()
    yield labs
    labs.close()


@pytest.fixture
def own_lab(kernel_lab):
    """own_lab(variant) → a lab for this test alone (it may change it), removed afterwards."""
    labs = Labs()
    yield labs
    labs.close()
