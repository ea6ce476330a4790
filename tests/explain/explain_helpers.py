"""Helpers of the explanation tests."""

import json

from tests.helpers.cli import why_route_in_process
from tests.lab.lab_helpers import missing_requirements

MISSING = missing_requirements()


def explain_json(capsys, *argv: str) -> dict:
    """The explanation `why-route ARGV --json` prints (run in-process), parsed."""
    status, out, err = why_route_in_process(capsys, *argv, "--json")
    assert status == 0, err
    return json.loads(out)
