"""Shared fixtures for the netfilter tests: fixture loading and the namespace lab."""

import json
import pathlib

import pytest

from tests.netfilter import nflab

FIXTURES = pathlib.Path(__file__).resolve().parent / "fixtures"


@pytest.fixture
def raw_fixture():
    def load(name: str) -> dict:
        return json.loads((FIXTURES / f"{name}.json").read_text())
    return load


@pytest.fixture
def lab(request):
    """A fresh client/router/server namespace trio, always deleted afterwards."""
    why = nflab.can_run()
    if why:
        print(f"skipping kernel test: {why}")
        pytest.skip(why)
    ipv6 = bool(getattr(request, "param", False))
    lab = nflab.Lab(ipv6=ipv6)
    request.addfinalizer(lab.down)
    lab.up()
    return lab
