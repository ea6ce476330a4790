"""Flows whose later packets do not take their first packet's way, as in multi-WAN set-ups that mark
packets to pick the uplink but only some of them (mwan3 and hand-made ones restore the mark from
the connection with `ct mark`; without it the packets after the first pick another uplink):

* marked once established: the first packet leaves by ppp0 (SNAT to 123.150.232.74), the later
  ones by eth0.2 (still with that source) — the kernel's postrouting sees them leave there;
* marked while new: the first packet leaves by eth0.2 (MASQUERADE), the later ones are routed to
  ppp0 and dropped by NAT (a masqueraded connection's packets must leave by its device).

The internet node at the end of the first packet's uplink echoes it: the connection is then
established. The simulation of an established packet (with the first packet's ct mark and NAT)
predicts both."""

import contextlib
import json
import subprocess

from tests.rules.fixtures.make_fixtures import MARK_NEW_FOR_MAIN
from tests.trace.trace_helpers import RunningTrace
from tracer.checks import engine
from tracer.collect.live import collect_state

UDP = 17
PORT = 5353


def _mark_when(lab, state: str) -> None:
    lab.run("route", ["nft", "-f", "-"], input=(
        "table ip wrmark {\n chain pre {\n  type filter hook prerouting priority -150;\n"
        f"  ip saddr 192.168.1.169 udp dport {PORT} ct state {state} meta mark set 0x1\n }}\n}}\n"))
    lab.run("route", ["ip", "rule", "add", "fwmark", "0x1", "lookup", "main", "priority", "100"])


ECHO = f"""
import socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("8.8.8.8", {PORT}))
s.settimeout(10)
while True:
    data, peer = s.recvfrom(100)
    s.sendto(data, peer)
"""


@contextlib.contextmanager
def _echo_on(lab, node: str):
    server = subprocess.Popen(["ip", "netns", "exec", lab.ns(node), "python3", "-c", ECHO])
    try:
        lab.run(node, ["sh", "-c", f"for i in $(seq 50); do ss -Hlun | grep -q :{PORT} && exit 0; "
                                          "sleep 0.05; done; exit 1"])
        yield
    finally:
        server.kill()
        server.wait()


def _send(lab, sport: int, pauses: list[float]) -> None:
    """Datagrams from one socket (one flow) of the MacBook to 8.8.8.8, with these pauses between."""
    script = ("import socket, time, sys\n"
              "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
              f"s.bind(('0.0.0.0', {sport}))\n"
              f"for pause in {pauses!r} + [None]:\n"
              f"    s.sendto(b'x', ('8.8.8.8', {PORT}))\n"
              "    if pause is not None:\n"
              "        time.sleep(pause)\n")
    lab.run("macbook", ["python3", "-c", script])


def test_later_packets_leaving_by_another_uplink_are_reported(own_lab):
    lab = own_lab("ultimate")
    _mark_when(lab, "established")
    with _echo_on(lab, "internet2"):
        doc = _traced_flow(lab, 40001)
        text = _text(lab, 40002)
    assert (doc["flow"]["sport"], doc["rule"]["priority"], doc["egress"]["dev"], doc["egress"]["src"]) == (
        40001, 32765, "ppp0", "123.150.232.74")
    assert doc["flow"]["proto"] == UDP and doc["reply_seen"]
    assert doc["path_change"] == {"dev": "eth0.2", "mark": 1} and doc["later_drop"] is None
    # the simulation of the flow's established packets leaves by eth0.2 too: it agrees
    assert doc["sim"]["agrees"], doc["sim"]["differences"]
    assert "LATER PACKETS out eth0.2 (mark 0x1)" in text


def _text(lab, sport: int) -> str:
    trace = RunningTrace("--netns", lab.ns("route"), "--proto", "udp", "--sport", str(sport), "--count", "1",
                         json_lines=False).started()
    _send(lab, sport, [0.01])
    trace.finish()
    return trace.out


def test_later_packets_dropped_by_nat_on_another_uplink_are_reported(own_lab):
    lab = own_lab("ultimate")
    _mark_when(lab, "new")
    with _echo_on(lab, "internet1"):
        doc = _traced_flow(lab, 40003)
    assert (doc["rule"]["priority"], doc["egress"]["dev"], doc["reply_seen"]) == (100, "eth0.2", True)
    assert doc["path_change"] is None
    drop = doc["later_drop"]
    assert (drop["reason"], drop["dev"]) == ("NETFILTER_DROP", "ppp0"), drop
    # the simulation of an established packet, bound by the first packet's MASQUERADE to eth0.2, is
    # routed to ppp0 and dropped by NAT too
    assert doc["sim"]["agrees"], doc["sim"]["differences"]


def test_a_flow_printed_before_its_later_packets_changed_way_gets_a_line_of_its_own(own_lab):
    lab = own_lab("ultimate")
    _mark_when(lab, "established")
    with _echo_on(lab, "internet2"):
        trace = RunningTrace("--netns", lab.ns("route"), "--proto", "udp", "--dport", str(PORT), "--duration",
                             "2").started()
        _send(lab, 40005, [0.5])  # the flow is printed 50 ms after its reply
        docs, summary = trace.finish()
    everything = [json.loads(line) for line in trace.out.splitlines() if line.startswith("{")]
    kinds = [d["type"] for d in everything]
    assert kinds == ["flow", "later", "summary"], kinds
    assert docs[0]["path_change"] is None and docs[0]["egress"]["dev"] == "ppp0"
    later = everything[1]
    assert (later["flow"]["sport"], later["first_dev"], later["path_change"], later["later_drop"]) == (
        40005, "ppp0", {"dev": "eth0.2", "mark": 1}, None)
    assert summary["flows"] == 1


def test_later_packets_leaving_where_the_first_did_report_nothing(trace_lab):
    lab = trace_lab("ultimate")
    with _echo_on(lab, "internet2"):
        doc = _traced_flow(lab, 40007)
    assert doc["egress"]["dev"] == "ppp0" and doc["reply_seen"]
    assert doc["path_change"] is None and doc["later_drop"] is None


def test_the_fix_of_wr034_keeps_later_packets_on_the_first_uplink(own_lab):
    # The kernel judges the rules engine's fix: before it, NAT drops a later packet; after it, none.
    lab = own_lab("ultimate")
    for command in MARK_NEW_FOR_MAIN:
        lab.run("route", ["sh", "-c", command])
    (finding,) = [f for f in engine.run(collect_state(lab.ns("route"))) if f.id == "WR034"]
    with _echo_on(lab, "internet1"):
        before = _traced_flow(lab, 40009)
        for command in finding.fix:
            lab.run("route", ["sh", "-c", command])
        after = _traced_flow(lab, 40010)
    assert before["egress"]["dev"] == "eth0.2" and before["later_drop"]["reason"] == "NETFILTER_DROP"
    assert (after["egress"]["dev"], after["reply_seen"], after["path_change"], after["later_drop"]) == (
        "eth0.2", True, None, None)
    assert not [f for f in engine.run(collect_state(lab.ns("route"))) if f.id == "WR034"]


def _traced_flow(lab, sport: int) -> dict:
    """The flow of three datagrams from `sport`, 10 ms apart: the next ones come while the flow waits
    for its reply's fate."""
    trace = RunningTrace("--netns", lab.ns("route"), "--proto", "udp", "--sport", str(sport), "--count",
                         "1").started()
    _send(lab, sport, [0.01, 0.01])
    docs, _summary = trace.finish()
    (doc,) = docs
    return doc
