"""What the seed lab cannot show, on tests/trace/tracelab.py's lab: IPv6 policy routing, the table
lookups of locally generated flows (made by their socket, before the first hook), and a forwarded
packet dropped by strict rp_filter — each compared with the simulation."""

import pytest

from tests.trace import tracelab
from tests.trace.trace_helpers import RunningTrace, flow_to

ICMP, UDP, ICMPV6 = 1, 17, 58
LOCAL, MAIN, POLICY = 255, 254, tracelab.POLICY_TABLE


@pytest.fixture(scope="module")
def lab(router_lab):
    return router_lab


def _tried(doc):
    return [(t["table_id"], t["result"]) for t in doc["tables_tried"]]


def test_ipv6_policy_routing_the_source_rule_decides(lab):
    """The client's IPv6 source rule sends its ping out by isp2 (table 100), not by main's isp1."""
    trace = RunningTrace("--netns", lab.ns("router"), tracelab.CLIENT6, tracelab.INTERNET6, "--count", "1",
                         "--rules").started()
    lab.run("client", ["ping", "-n", "-6", "-c1", "-W1", tracelab.INTERNET6], check=False)
    docs, summary = trace.finish()
    doc = flow_to(docs, tracelab.INTERNET6, ICMPV6)
    assert (doc["flow"]["family"], doc["flow"]["src"], doc["flow"]["iif"]) == (6, tracelab.CLIENT6, "r0")
    assert doc["origin"] == "forwarded"
    assert _tried(doc) == [(LOCAL, "EAGAIN"), (POLICY, "ok")]
    assert doc["rule"]["priority"] == tracelab.SOURCE_RULE
    assert (doc["dev"], doc["gateway"]) == ("r2", "2001:db8:3::2")
    assert doc["egress"]["dev"] == "r2" and doc["nat"] == []
    assert [h["hook"] for h in doc["hooks"]] == ["prerouting", "forward", "postrouting"]
    # --rules (nftables tracing, IPv6 too): the first packet is not yet established, so the stateful
    # forward chain's policy let it through.
    forward = doc["hooks"][1]["rules"]
    assert [(r["table"], r["chain"], r["rule"], r["verdict"]) for r in forward] == \
        [("firewall", "forward", "policy accept", "accept")]
    assert doc["reply_seen"] is True
    assert doc["sim"]["agrees"], doc["sim"]["differences"]
    assert doc["sim"]["rule"] == tracelab.SOURCE_RULE
    assert {"fib6", "netfilter"} <= set(summary["probes"])


def test_local_flows_carry_the_lookups_their_socket_made(lab):
    """The DNS rule sends the router's own queries out by isp2: its table lookups happen in sendto(),
    before the packet reaches the first hook, and are reported with the flow."""
    trace = RunningTrace("--netns", lab.ns("router"), "--proto", "udp", "--dport", "53", "--count", "2").started()
    tracelab.send_udp(lab, "router", 53, tracelab.INTERNET4, tracelab.INTERNET6)
    docs, _summary = trace.finish()
    for address, source, gateway in ((tracelab.INTERNET4, "203.0.113.1", "203.0.113.2"),
                                     (tracelab.INTERNET6, "2001:db8:3::1", "2001:db8:3::2")):
        doc = flow_to(docs, address, UDP)
        assert doc["origin"] == "local-out" and doc["flow"]["iif"] is None
        assert _tried(doc) == [(LOCAL, "EAGAIN"), (POLICY, "ok")], doc
        assert doc["rule"]["priority"] == tracelab.DNS_RULE
        assert (doc["dev"], doc["gateway"]) == ("r2", gateway)
        assert (doc["egress"]["dev"], doc["egress"]["src"], doc["egress"]["dport"]) == ("r2", source, 53)
        assert doc["sim"]["agrees"], doc["sim"]["differences"]


def test_strict_rp_filter_drop_has_its_reason_and_the_simulation_predicts_it(lab):
    """The client sends from an address of isp1's subnet: strict rp_filter drops it on r0. Then
    rp_filter is turned off behind the simulation's back: the kernel forwards, the simulation (on the
    state at start) still predicts the drop, and says it disagrees."""
    trace = RunningTrace("--netns", lab.ns("router"), "--proto", "icmp", tracelab.SPOOFED, tracelab.INTERNET4,
                         "--count", "2", "--reply-wait", "0.2").started()
    ping = ["ping", "-n", "-c1", "-W1", "-I", tracelab.SPOOFED, tracelab.INTERNET4]
    lab.run("client", ping, check=False)
    try:
        lab.run("router", ["sysctl", "-q", "-w", "net.ipv4.conf.all.rp_filter=0"])
        lab.run("client", ping, check=False)
    finally:
        lab.run("router", ["sysctl", "-q", "-w", "net.ipv4.conf.all.rp_filter=1"])
    docs, _summary = trace.finish()
    dropped, forwarded = sorted(docs, key=lambda d: d["verdict"])
    assert dropped["verdict"] == "dropped" and forwarded["verdict"] == "forwarded"
    assert dropped["drop"]["reason"] == "IP_RPFILTER"
    assert dropped["drop"]["after_hook"] == "prerouting" and "+0x" in dropped["drop"]["function"]
    assert [(h["hook"], h["verdict"]) for h in dropped["hooks"]] == [("prerouting", "accept")]
    # The decision's lookups only: the reverse (source validation) lookup is not the decision.
    assert _tried(dropped) == [(LOCAL, "EAGAIN"), (MAIN, "ok")] and dropped["rule"]["priority"] == 32766
    assert dropped["sim"]["agrees"], dropped["sim"]["differences"]
    assert forwarded["egress"]["dev"] == "r1"
    assert forwarded["sim"]["agrees"] is False
    assert "verdict: kernel forwarded, simulation dropped-rp-filter" in forwarded["sim"]["differences"]


def test_a_drop_in_a_prerouting_chain_still_reports_the_hook_it_happened_in(lab):
    """Before conntrack the probe only notes a packet (its first position at prerouting): a chain
    that drops it there leaves the drop probe to report that position."""
    lab.run("router", ["nft", "add table inet early; add chain inet early pre "
                              "{ type filter hook prerouting priority -150 ; } ; "
                              "add rule inet early pre udp dport 9999 meta mark set 7 drop"])
    try:
        trace = RunningTrace("--netns", lab.ns("router"), "--dport", "9999", "--proto", "udp", "--count", "1",
                             "--reply-wait", "0.2").started()
        tracelab.send_udp(lab, "client", 9999, tracelab.INTERNET4)
        docs, _summary = trace.finish()
    finally:
        lab.run("router", ["nft", "delete", "table", "inet", "early"])
    doc = flow_to(docs, tracelab.INTERNET4, UDP)
    assert doc["verdict"] == "dropped" and doc["drop"]["reason"] == "NETFILTER_DROP"
    assert [(h["hook"], h["verdict"], h["mark"]) for h in doc["hooks"]] == [("prerouting", "drop", 0)]
    assert doc["flow"]["iif"] == "r0" and doc["drop"]["after_hook"] == "prerouting"
    assert doc["tables_tried"] == []  # never routed
    assert doc["sim"]["agrees"], doc["sim"]["differences"]


def test_an_icmpv6_error_about_a_forwarded_flow_is_reported_on_it(lab):
    """The client's datagram to a closed port of the internet's IPv6 address: its port unreachable
    (ICMPv6 type 1 code 4) comes back through the router, which conntrack relates to the flow."""
    trace = RunningTrace("--netns", lab.ns("router"), tracelab.CLIENT6, tracelab.INTERNET6, "--proto", "udp",
                         "--dport", "33434", "--count", "1").started()
    tracelab.send_udp(lab, "client", 33434, tracelab.INTERNET6)
    docs, _summary = trace.finish()
    doc = flow_to(docs, tracelab.INTERNET6, UDP)
    assert (doc["flow"]["family"], doc["flow"]["dport"], doc["egress"]["dev"]) == (6, 33434, "r2")
    assert doc["icmp_errors"] == [{"type": 1, "code": 4, "from": tracelab.INTERNET6, "hook": "prerouting"}]
    assert doc["reply_seen"] is False and doc["reply_drop"] is None


@pytest.mark.parametrize("attach", ["tp_btf", "raw_tracepoint"])
def test_tracepoint_probes_work_as_tp_btf_and_as_raw_tracepoints(lab, attach):
    """tp_btf where the kernel takes it (this one does); raw tracepoints otherwise, or with
    `--without tp_btf`: the same table lookups and the same drop either way, IPv4 and IPv6."""
    without = ["--without", "tp_btf"] if attach == "raw_tracepoint" else []
    trace = RunningTrace("--netns", lab.ns("router"), "--proto", "icmp", tracelab.SPOOFED, tracelab.INTERNET4,
                         "--count", "1", "--reply-wait", "0.2", *without).started()
    assert f"fib ({attach}), fib6 ({attach}), drop ({attach})" in trace.stderr, trace.stderr
    lab.run("client", ["ping", "-n", "-c1", "-W1", "-I", tracelab.SPOOFED, tracelab.INTERNET4], check=False)
    docs, summary = trace.finish()
    (doc,) = docs
    assert doc["drop"]["reason"] == "IP_RPFILTER" and _tried(doc) == [(LOCAL, "EAGAIN"), (MAIN, "ok")]
    assert summary["attached_as"] == {"fib": attach, "fib6": attach, "drop": attach}
    six = RunningTrace("--netns", lab.ns("router"), tracelab.CLIENT6, tracelab.INTERNET6, "--count", "1",
                       *without).started()
    lab.run("client", ["ping", "-n", "-6", "-c1", "-W1", tracelab.INTERNET6], check=False)
    docs, _summary = six.finish()
    assert _tried(flow_to(docs, tracelab.INTERNET6, ICMPV6)) == [(LOCAL, "EAGAIN"), (POLICY, "ok")]
