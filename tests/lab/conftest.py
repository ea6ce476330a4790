"""Fixtures for lab tests against the real kernel.

Every module gets its own prefix (so modules and parallel test runs never share
a lab) and the lab is torn down after the module, whatever happened.
"""

import pytest

from tests.lab.lab_helpers import leftovers, missing_requirements, new_prefix
from tracer.lab import builder

MISSING = missing_requirements()


@pytest.fixture(scope="session")
def kernel_lab():
    """Skip (with the reason) where labs cannot be built: not root, or no `ip netns`."""
    if MISSING:
        pytest.skip(MISSING)


def _cleaned_up_prefix():
    prefix = new_prefix()
    yield prefix
    builder.down(prefix)
    assert not leftovers(prefix)


@pytest.fixture(scope="module")
def prefix(kernel_lab):
    """A fresh lab prefix for this module; its lab is removed afterwards even on failure."""
    yield from _cleaned_up_prefix()


@pytest.fixture
def fresh_prefix(kernel_lab):
    """A fresh prefix for one test, its lab removed after it."""
    yield from _cleaned_up_prefix()
