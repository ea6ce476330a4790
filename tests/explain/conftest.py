"""Seed-lab fixtures for explanation tests: one lab per variant, torn down after the module."""

import pytest

from tests.explain.explain_helpers import MISSING
from tests.lab.lab_helpers import LabsByVariant


@pytest.fixture(scope="session")
def kernel_lab():
    if MISSING:
        pytest.skip(MISSING)


@pytest.fixture(scope="session")
def seed_lab(kernel_lab):
    labs = LabsByVariant()
    yield labs
    labs.close()
