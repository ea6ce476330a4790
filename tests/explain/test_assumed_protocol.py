"""A flow asked without a protocol while an ip rule selects one: the answer says what it assumed
(UDP, as `ip route get` does), agrees with the kernel on that, and shows the other outcome."""

import json

import pytest

from tests.explain.explain_helpers import seed_lab_with
from tests.helpers.cli import why_route

SETUP = ("ip route add default via 123.150.232.1 dev ppp0 table 100",
         "ip rule add from 192.168.1.169 ipproto udp lookup 100 pref 100")


@pytest.fixture(scope="module")
def lab():
    with seed_lab_with("slow", SETUP) as state:
        yield state


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
    assert "    if  protocol tcp: forwarded — leaves eth0.2 as 10.10.149.4 → 8.8.8.8" in text


def test_a_given_protocol_is_not_an_assumption(lab):
    doc = json.loads(why_route("192.168.1.169", "8.8.8.8", "--proto", "tcp", "--netns", lab.ns("route"),
                               "--json").stdout)
    assert doc["choices"] == [] and doc["alternatives"] == [] and doc["egress"]["dev"] == "eth0.2"


def test_ports_and_uid_a_rule_selects_are_said_assumed():
    from pathlib import Path

    from tracer.collect import snapshot
    from tracer.flow import make_flow
    from tracer.model import Rule
    from tracer.sim.explain import explain

    state = snapshot.load(str(Path(__file__).resolve().parent / "fixtures" / "ultimate-route.json"))
    state = state.replace(rules=(*state.rules, Rule(family=4, priority=100, table=7375, dport=(443, 443)),
                                 Rule(family=4, priority=101, table=7375, uidrange=(1000, 2000))))
    notes = explain(state, make_flow("8.8.8.8")).notes
    assert any(n.startswith("ip rule 100 selects on dport, which the flow does not give") for n in notes)
    assert any("uid 0 (root, as `ip route get` run by root)" in n for n in notes)
    assert not [n for n in explain(state, make_flow("8.8.8.8", proto="tcp", dport="443", uid="0")).notes
                if "which the flow does not give" in n]
