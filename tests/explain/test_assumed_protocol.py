"""A flow asked without a protocol while an ip rule selects one: the answer says what it assumed
(UDP, as `ip route get` does), agrees with the kernel on that, and shows the other outcome."""

import json

import pytest

from tests.explain.explain_helpers import MISSING
from tests.helpers.cli import why_route
from tests.lab.lab_helpers import new_prefix
from tracer.lab import builder

SETUP = ("ip route add default via 123.150.232.1 dev ppp0 table 100",
         "ip rule add from 192.168.1.169 ipproto udp lookup 100 pref 100")


@pytest.fixture(scope="module")
def lab():
    if MISSING:
        pytest.skip(MISSING)
    prefix = new_prefix()
    state = builder.up(variant="slow", prefix=prefix)
    try:
        for command in SETUP:
            state.run("route", ["sh", "-c", command])
        yield state
    finally:
        builder.down(prefix)


def test_the_assumption_is_said_and_the_other_outcome_shown(lab):
    result = why_route("192.168.1.169", "8.8.8.8", "--netns", lab.ns("route"), "--json")
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["flow"]["proto"] == "udp" and doc["egress"]["dev"] == "ppp0"
    assert doc["choices"][0]["kind"] == "assumed" and doc["share"] is None
    assert "`ip route get` assumes udp" in doc["choices"][0]["text"]
    assert doc["kernel"]["agrees"], doc["kernel"]["differences"]
    (tcp,) = doc["alternatives"]
    assert tcp["choices"][0]["text"] == "protocol tcp" and tcp["egress"]["dev"] == "eth0.2"
    text = why_route("192.168.1.169", "8.8.8.8", "--netns", lab.ns("route"), no_color=True).stdout
    assert "    if  protocol tcp: forwarded — leaves eth0.2 via 10.10.149.1" in text


def test_a_given_protocol_is_not_an_assumption(lab):
    doc = json.loads(why_route("192.168.1.169", "8.8.8.8", "--proto", "tcp", "--netns", lab.ns("route"),
                               "--json").stdout)
    assert doc["choices"] == [] and doc["alternatives"] == [] and doc["egress"]["dev"] == "eth0.2"
