"""A locally generated packet to a local address crosses output → postrouting → (lo) prerouting →
input, as the kernel sends it: an input drop policy and an `iifname lo` prerouting drop apply."""

import json
import subprocess

import pytest

from tests.explain.explain_helpers import seed_lab_with
from tests.helpers.cli import why_route

DROPS = {
    "input": "add table ip t; add chain ip t in { type filter hook input priority 0; policy drop; }",
    "prerouting": "add table ip t; add chain ip t pre { type filter hook prerouting priority 0; }; "
                  "add rule ip t pre iifname lo icmp type echo-request drop",
}


@pytest.fixture(scope="module")
def lab():
    with seed_lab_with("slow", ()) as state:
        yield state


def _own_ping(lab):
    doc = json.loads(why_route("10.10.149.4", "--proto", "icmp", "--netns", lab.ns("route"), "--json").stdout)
    real = lab.run("route", ["ping", "-n", "-c", "1", "-W", "1", "10.10.149.4"], check=False)
    return doc, real.returncode == 0


def test_a_ping_to_an_own_address_crosses_four_hooks(lab):
    doc, answered = _own_ping(lab)
    assert answered and doc["verdict"] == "delivered-locally"
    assert [h["hook"] for h in doc["netfilter"]] == ["output", "postrouting", "prerouting", "input"]


@pytest.mark.parametrize("hook", sorted(DROPS))
def test_drops_on_the_way_back_in_apply(lab, hook):
    lab.run("route", ["nft", DROPS[hook]])
    try:
        doc, answered = _own_ping(lab)
    finally:
        subprocess.run(["ip", "netns", "exec", lab.ns("route"), "nft", "delete table ip t"], check=True)
    assert not answered
    assert doc["verdict"] == "dropped" and doc["verdict_reason"].startswith(f"dropped in {hook}")
