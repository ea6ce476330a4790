"""Running the CLI in tests: in a process of its own, as a user runs it, or in
this process where start-up time would dominate (many quick error cases)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tracer.__main__ import main

REPO_ROOT = Path(__file__).resolve().parents[2]


def why_route_argv() -> list[str]:
    """The command that starts the CLI: the venv's `why-route` script, else `python -m tracer`."""
    script = Path(sys.executable).with_name("why-route")
    return [str(script)] if script.exists() else [sys.executable, "-m", "tracer"]


def why_route(*args: str, input: str | None = None, env: dict[str, str] | None = None, no_color: bool = False,
              cwd: str | Path = REPO_ROOT, timeout: float = 120, **options) -> subprocess.CompletedProcess:
    """The CLI as a user runs it, output captured as text.

    It starts in the repository root, so relative paths such as
    tests/rules/fixtures/… work. `env` adds to this process's environment;
    `no_color` sets NO_COLOR=1; other options (user, group, preexec_fn, …) go
    to subprocess.run."""
    environment = {**os.environ, **(env or {}), **({"NO_COLOR": "1"} if no_color else {})}
    return subprocess.run([*why_route_argv(), *args], input=input, capture_output=True, text=True,
                          env=environment, cwd=cwd, timeout=timeout, **options)


def why_route_in_process(capsys, *args: str) -> tuple[int, str, str]:
    """The CLI called in this process; (exit status, stdout, stderr) as pytest's capsys captured them."""
    capsys.readouterr()
    status = main(list(args))
    out, err = capsys.readouterr()
    return status, out, err
