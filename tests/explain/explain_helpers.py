"""Helpers of the explanation tests."""

import json
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

import pytest

from tests.helpers.cli import why_route_in_process
from tests.lab.lab_helpers import missing_requirements, new_prefix
from tracer.lab import builder

MISSING = missing_requirements()


def explain_json(capsys, *argv: str) -> dict:
    """The explanation `why-route ARGV --json` prints (run in-process), parsed."""
    status, out, err = why_route_in_process(capsys, *argv, "--json")
    assert status == 0, err
    return json.loads(out)


@contextmanager
def seed_lab_with(variant: str, commands: Iterable[str] = ()) -> Iterator[builder.LabState]:
    """A seed lab of its own (`variant`), with `commands` run on its router; removed afterwards."""
    if MISSING:
        pytest.skip(MISSING)
    prefix = new_prefix()
    state = builder.up(variant=variant, prefix=prefix)
    try:
        for command in commands:
            state.run("route", ["sh", "-c", command])
        yield state
    finally:
        builder.down(prefix)
