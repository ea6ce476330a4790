"""Helpers of the lint/replay/verify tests (a unique module name: each test directory has a conftest)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tracer.lint.replay import ETC_NETNS, NAME_PREFIX, NETNS_RUN_DIR

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
