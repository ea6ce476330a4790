import pytest

from tests.lab.lab_helpers import missing_requirements

MISSING = missing_requirements()


@pytest.fixture(scope="session")
def kernel_lab():
    if MISSING:
        pytest.skip(MISSING)
