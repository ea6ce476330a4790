"""Fixtures of the real-tools corpus: per module, the tool's labs (one per
state: healthy, or a named breakage), built on first use under a fresh prefix
and removed after the module even on failure."""

import pytest

from tests.realtools.realtools_lab import MISSING, ToolLabs


@pytest.fixture(scope="module")
def tool_lab(request):
    """`tool_lab(state)`: the module's TOPOLOGY with its `install(lab, state)` applied."""
    if MISSING:
        pytest.skip(MISSING)
    labs = ToolLabs(request.module.TOPOLOGY, request.module.install)
    yield labs
    labs.close()
