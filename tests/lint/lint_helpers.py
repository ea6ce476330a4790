"""Helpers of the lint/replay/verify tests: their fixtures and the replay namespaces left behind."""

from __future__ import annotations

import os
from pathlib import Path

from tracer.lint.replay import NAME_PREFIX
from tracer.netns import ETC_NETNS, NETNS_RUN_DIR

FIXTURES = Path(__file__).parent / "fixtures"


def replay_leftovers(pid: int | None = None) -> list[str]:
    """Replay namespaces and /etc/netns dirs that exist (of process `pid`, or of any process)."""
    start = f"{NAME_PREFIX}{pid}-" if pid else NAME_PREFIX
    found = []
    for directory in (NETNS_RUN_DIR, ETC_NETNS):
        if directory.is_dir():
            found += [str(directory / n) for n in os.listdir(directory) if n.startswith(start)]
    return found
