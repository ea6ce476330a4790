"""A connection's later packets as the simulation walks them (later_packet_of): established, with the
ct mark, the source NAT and the MASQUERADE binding its first packet left — on the WR034 fixtures,
snapshots of the lab (`tests/trace/test_path_change.py` checks the same against the kernel)."""

from pathlib import Path

from tracer.collect import snapshot
from tracer.flow import Flow
from tracer.sim.explain import explain, later_packet_of
from tracer.sim.explanation import NETFILTER_DROP

FIXTURES = Path(__file__).resolve().parent.parent / "rules" / "fixtures" / "WR034"
FLOW = Flow(dst="8.8.8.8", src="192.168.1.169", iif="br-lan", proto=17, sport=40000, dport=53)


def _first_and_later(kind: str):
    state = snapshot.load(str(FIXTURES / f"{kind}.json"))
    first = explain(state, FLOW)
    return first, explain(state, FLOW, later_packet_of(first))


def test_a_masqueraded_connection_routed_to_another_uplink_is_dropped_by_nat():
    first, later = _first_and_later("bad")  # new connections marked for main: eth0.2, MASQUERADE
    assert (first.egress.dev, first.egress.src) == ("eth0.2", "10.10.149.4")
    variant = later_packet_of(first)
    assert (variant.ct_state, variant.masquerade_dev, variant.snat_to, variant.ct_mark) == (
        "established", "eth0.2", "10.10.149.4", 0)
    assert later.decision.dev == "ppp0" and later.verdict == "dropped" and later.drop_reason == NETFILTER_DROP
    assert "masqueraded on eth0.2 and this packet leaves by ppp0" in later.verdict_reason


def test_the_mark_kept_with_the_connection_keeps_its_later_packets_on_its_uplink():
    first, later = _first_and_later("good")  # CONNMARK --save-mark / --restore-mark around the marking
    assert later_packet_of(first).ct_mark == 1
    assert (later.verdict, later.egress.dev, later.egress.src, later.egress.mark) == (
        "forwarded", "eth0.2", "10.10.149.4", 1)
