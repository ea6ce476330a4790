"""Helpers of the explanation tests (a module of its own: every test folder has a conftest)."""

import json

from lab_helpers import missing_requirements
from tracer.__main__ import main

MISSING = missing_requirements()


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    """The CLI in-process, as a user runs it; returns (exit status, stdout, stderr)."""
    capsys.readouterr()
    status = main(list(argv))
    out, err = capsys.readouterr()
    return status, out, err


def explain_json(capsys, *argv: str) -> dict:
    status, out, err = run_cli(capsys, *argv, "--json")
    assert status == 0, err
    return json.loads(out)
