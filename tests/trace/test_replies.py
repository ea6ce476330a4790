"""What happens to a flow's replies: a reply dropped on its way back through the router, and ICMP
errors about the flow (conntrack's related replies) — on the seed lab, with real traffic."""

import pytest

from tests.lab.lab_helpers import ping_from_macbook
from tests.trace.trace_helpers import RunningTrace, flow_to
from tracer.trace import flows

ICMP, UDP = 1, 17
CLOSED_PORT = 33434  # nothing listens there on internet2 (8.8.8.8): it answers port unreachable


def _udp_from_macbook(lab, port: int) -> None:
    lab.run("macbook", ["bash", "-c", f"echo x > /dev/udp/8.8.8.8/{port}"], check=False)


@pytest.mark.parametrize("table,chain,device,after,hook,freed_on", [
    ("filter", "FORWARD", ["-i", "ppp0"], ("prerouting", "last"), "forward", "ppp0"),
    ("mangle", "PREROUTING", ["-i", "ppp0"], ("prerouting", "first"), "prerouting", "ppp0"),
    ("mangle", "POSTROUTING", ["-o", "br-lan"], ("forward", "last"), "postrouting", "br-lan"),
], ids=["forward", "prerouting", "postrouting"])
def test_a_reply_dropped_on_its_way_back_is_reported_with_its_reason_and_hook(own_lab, table, chain, device, after,
                                                                              hook, freed_on):
    lab = own_lab("ultimate")
    lab.run("route", ["iptables", "-t", table, "-A", chain, *device, "-p", "icmp", "--icmp-type", "echo-reply",
                      "-j", "DROP"])
    trace = RunningTrace("--netns", lab.ns("route"), "--proto", "icmp", "--count", "1").started()
    ping = ping_from_macbook(lab)
    docs, summary = trace.finish()
    assert ping.returncode != 0  # the MacBook really got no answer
    doc = flow_to(docs, "8.8.8.8", ICMP)
    assert doc["verdict"] == "forwarded" and doc["egress"]["dev"] == "ppp0"
    assert doc["reply_seen"] is True  # conntrack saw it arrive at the router, before the forward chain
    drop = doc["reply_drop"]
    assert drop["reason"] == "NETFILTER_DROP" and drop["dev"] == freed_on and drop["icmp_error"] is None, drop
    assert "+0x" in drop["function"]
    # where the probes saw it last, and so the hook whose chains dropped it (the flow is forwarded)
    assert ((drop["after_hook"], drop["after_position"]), drop["hook"]) == (after, hook), drop
    line = flows.text_line(doc)
    assert f"reply DROPPED NETFILTER_DROP in {hook} (in " in line, line
    assert doc["icmp_errors"] == []
    assert summary["lost"] == 0


def test_an_icmp_error_about_a_flow_is_reported_on_the_flow(trace_lab):
    lab = trace_lab("ultimate")
    trace = RunningTrace("--netns", lab.ns("route"), "--proto", "udp", "--dport", str(CLOSED_PORT), "--count", "1",
                         json_lines=False).started()
    _udp_from_macbook(lab, CLOSED_PORT)
    trace.finish()
    line = next(line for line in trace.out.splitlines() if f":{CLOSED_PORT}" in line)
    assert "ICMP error type 3 code 3 from 8.8.8.8" in line and "no reply" in line, line


def test_an_icmp_error_dropped_on_its_way_back_is_both_an_error_and_a_dropped_reply(own_lab):
    lab = own_lab("ultimate")
    lab.run("route", ["iptables", "-A", "FORWARD", "-i", "ppp0", "-p", "icmp", "--icmp-type", "port-unreachable",
                      "-j", "DROP"])
    trace = RunningTrace("--netns", lab.ns("route"), "--proto", "udp", "--dport", str(CLOSED_PORT),
                         "--count", "1").started()
    _udp_from_macbook(lab, CLOSED_PORT)
    docs, _summary = trace.finish()
    doc = flow_to(docs, "8.8.8.8", UDP)
    assert doc["flow"]["dport"] == CLOSED_PORT and doc["verdict"] == "forwarded"
    assert doc["reply_seen"] is False  # an ICMP error is no reply
    assert doc["icmp_errors"] == [{"type": 3, "code": 3, "from": "8.8.8.8", "hook": "prerouting"}]
    drop = doc["reply_drop"]
    assert drop["reason"] == "NETFILTER_DROP" and drop["icmp_error"] == {"type": 3, "code": 3, "from": "8.8.8.8"}
    assert (drop["after_hook"], drop["hook"]) == ("prerouting", "forward"), drop
