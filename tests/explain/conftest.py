"""Seed-lab fixtures for explanation tests: one lab per variant, torn down after the module."""

import pytest

from tests.explain.explain_helpers import MISSING
from tests.lab.lab_helpers import leftovers, new_prefix
from tracer.lab import builder


@pytest.fixture(scope="session")
def kernel_lab():
    if MISSING:
        pytest.skip(MISSING)


class SeedLabs:
    """Builds each variant once (lazily) under its own prefix."""

    def __init__(self):
        self.labs: dict[str, builder.LabState] = {}

    def __call__(self, variant: str) -> builder.LabState:
        if variant not in self.labs:
            self.labs[variant] = builder.up(variant=variant, prefix=new_prefix())
        return self.labs[variant]

    def close(self):
        for state in self.labs.values():
            builder.down(state.prefix)
            assert not leftovers(state.prefix)


@pytest.fixture(scope="session")
def seed_lab(kernel_lab):
    labs = SeedLabs()
    yield labs
    labs.close()
