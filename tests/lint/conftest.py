"""Fixtures for lint/replay/verify tests against the real kernel.

The seed lab is built once per module with a random prefix and torn down
afterwards; snapshots of its Route node in the variants the tests need are
written to a temporary directory.
"""

from __future__ import annotations

import os
import shutil

import pytest

from tests.lab.lab_helpers import new_prefix
from tests.lint.lint_helpers import replay_leftovers
from tracer.collect import snapshot
from tracer.collect.live import collect_state
from tracer.lab import builder


@pytest.fixture(scope="session")
def kernel():
    if os.geteuid() != 0:
        pytest.skip("replay tests need root (network namespaces)")
    for tool in ("ip", "nft", "iptables"):
        if shutil.which(tool) is None:
            pytest.skip(f"`{tool}` is not installed")


@pytest.fixture(scope="module")
def seed(kernel, tmp_path_factory):
    """{variant: snapshot path} of the seed lab's Route node, for slow, ultimate and ultimate-nosnat."""
    prefix = new_prefix("l")
    directory = tmp_path_factory.mktemp("seed")
    paths = {}
    try:
        for variant in ("slow", "ultimate", "ultimate-nosnat"):
            lab = builder.up(variant=variant, prefix=prefix)
            paths[variant] = str(directory / f"route-{variant}.json")
            snapshot.save(collect_state(lab.ns("route")), paths[variant])
    finally:
        builder.down(prefix)
    yield paths
    assert not replay_leftovers(os.getpid())
