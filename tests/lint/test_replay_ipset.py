"""Replay restores ipsets before the iptables rules that match them (`-m set` refuses a missing set)."""

import pytest

from tests.explain.explain_helpers import MISSING
from tests.lab.lab_helpers import new_prefix
from tracer.collect.live import collect_state
from tracer.lab import builder
from tracer.lint.replay import Replay

COMMANDS = ("ipset create lan4 hash:net", "ipset add lan4 192.168.1.0/24",
            "iptables -t nat -A POSTROUTING -m set --match-set lan4 src -o ppp0 -j MASQUERADE")


@pytest.fixture(scope="module")
def route_with_ipset():
    if MISSING:
        pytest.skip(MISSING)
    prefix = new_prefix()
    lab = builder.up(variant="slow", prefix=prefix)
    try:
        for command in COMMANDS:
            lab.run("route", ["sh", "-c", command])
        yield collect_state(lab.ns("route"))
    finally:
        builder.down(prefix)


def test_the_set_and_the_rule_matching_it_come_back(route_with_ipset):
    assert "add lan4 192.168.1.0/24" in route_with_ipset.netfilter["ipset"]["save"]
    with Replay(route_with_ipset) as replay:
        copy = replay.collect()
        assert not [n for n in replay.notes if "ipset" in n or "iptables" in n], replay.notes
    assert "add lan4 192.168.1.0/24" in copy.netfilter["ipset"]["save"]
    assert "--match-set lan4 src" in copy.netfilter["iptables_nft"]["ip"]["save"]
