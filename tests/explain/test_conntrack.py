"""Existing conntrack entries in an explanation: matched by protocol, named as the rule that made
them, and a disagreement with today's rules said (and found by WR022 for that flow)."""

from pathlib import Path

from tracer.checks.engine import flow_findings
from tracer.collect import snapshot
from tracer.flow import make_flow
from tracer.output import text
from tracer.sim.explain import explain

RULE_FIXTURES = Path(__file__).resolve().parents[1] / "rules" / "fixtures"


def _stale():
    """The seed's MacBook pinged 8.8.8.8 before the SNAT rule was added: its ICMP entry has no NAT."""
    return snapshot.load(str(RULE_FIXTURES / "WR022" / "bad.json"))


def test_a_flow_without_protocol_matches_no_entry_and_says_why():
    e = explain(_stale(), make_flow("8.8.8.8", "192.168.1.169"))
    assert e.conntrack is None
    assert any("conntrack holds icmp entries for 192.168.1.169 → 8.8.8.8" in n for n in e.notes)


def test_a_stale_entry_applies_and_the_difference_with_the_rules_is_said():
    e = explain(_stale(), make_flow("8.8.8.8", "192.168.1.169", proto="icmp"))
    assert e.conntrack is not None
    assert e.egress.src == "192.168.1.169"  # the entry's mapping: no NAT, as the kernel keeps doing
    assert any("the current rules would map it to 123.150.232.74" in n for n in e.notes), e.notes
    assert "WR022" in [f.id for f in flow_findings(e)]
    assert "conntrack -D -p icmp -s 192.168.1.169 -d 8.8.8.8" in text.render(e.with_findings(flow_findings(e)))


def test_a_masquerade_entry_stays_masquerade():
    from tracer.model import ConntrackEntry

    slow = snapshot.load(str(Path(__file__).resolve().parent / "fixtures" / "slow-route.json"))
    entry = ConntrackEntry(proto=1, orig_src="192.168.1.169", orig_dst="8.8.8.8", reply_src="8.8.8.8",
                           reply_dst="10.10.149.4", text="icmp src=192.168.1.169 dst=8.8.8.8 …")
    e = explain(slow.replace(conntrack=(entry,)), make_flow("8.8.8.8", "192.168.1.169", proto="icmp"))
    (nat,) = e.nat
    assert (nat.rewrite.type, nat.rewrite.to, nat.by_conntrack) == ("masquerade", "10.10.149.4", True)
    assert not any("current rules would" in n for n in e.notes)
