"""Fixtures for lint/replay/verify tests against the real kernel.

The seed lab is built once per module with a random prefix and torn down
afterwards; snapshots of its Route node in the variants the tests need are
written to a temporary directory.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tracer import snapshot
from tracer.collect.live import collect_state
from tracer.lab import builder
from tracer.replay import ETC_NETNS, NAME_PREFIX, NETNS_RUN_DIR

FIXTURES = Path(__file__).parent / "fixtures"


def why_route(*args: str, input: str | None = None, timeout: float = 60, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tracer", *args], capture_output=True, text=True, input=input,
                          timeout=timeout, env={**os.environ, "NO_COLOR": "1"}, **kwargs)


def replay_leftovers(pid: int | None = None) -> list[str]:
    """Replay namespaces and /etc/netns dirs that exist (of process `pid`, or of any process)."""
    start = f"{NAME_PREFIX}{pid}-" if pid else NAME_PREFIX
    found = []
    for directory in (NETNS_RUN_DIR, ETC_NETNS):
        if directory.is_dir():
            found += [str(directory / n) for n in os.listdir(directory) if n.startswith(start)]
    return found


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
    prefix = "l" + secrets.token_hex(2)
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
