"""Seed-lab fixtures for explanation tests: one lab per variant, torn down after the module."""

import json

import pytest

from lab_helpers import leftovers, missing_requirements, new_prefix
from tracer.__main__ import main
from tracer.lab import builder

MISSING = missing_requirements()


@pytest.fixture(scope="session")
def kernel_lab():
    if MISSING:
        pytest.skip(MISSING)


class SeedLabs:
    """Builds each variant once (lazily) under its own prefix."""

    def __init__(self):
        self.labs: dict[str, builder.LabState] = {}

    def __call__(self, variant: str) -> builder.LabState:
        if variant not in self.labs:
            self.labs[variant] = builder.up(variant=variant, prefix=new_prefix())
        return self.labs[variant]

    def close(self):
        for state in self.labs.values():
            builder.down(state.prefix)
            assert not leftovers(state.prefix)


@pytest.fixture(scope="session")
def seed_lab(kernel_lab):
    labs = SeedLabs()
    yield labs
    labs.close()


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
