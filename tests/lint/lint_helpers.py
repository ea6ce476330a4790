"""Helpers of the lint/replay/verify tests: their fixtures and the replay namespaces left behind."""

from __future__ import annotations

import os
from pathlib import Path

from tracer.lint.replay import NAME_PREFIX
from tracer.netns import ETC_NETNS, NETNS_RUN_DIR, orphaned

FIXTURES = Path(__file__).parent / "fixtures"


def replay_leftovers(pid: int | None = None) -> list[str]:
    """Replay namespaces and /etc/netns dirs that exist (of process `pid`, or of any process)."""
    start = f"{NAME_PREFIX}{pid}-" if pid else NAME_PREFIX
    found = []
    for directory in (NETNS_RUN_DIR, ETC_NETNS):
        if directory.is_dir():
            found += [str(directory / n) for n in os.listdir(directory) if n.startswith(start)]
    return found


def orphaned_leftovers() -> list[str]:
    """Replay namespaces (probe sinks included) left by a process that is gone: what a finished
    command left behind. Another test process's live replay is not one (test runs may overlap)."""
    return orphaned([path.rsplit("/", 1)[1] for path in replay_leftovers()], NAME_PREFIX)
