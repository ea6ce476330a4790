"""TCP analysis depth on crafted packets (scapy), each checked in `postmortem --json` and against
tshark on the same file: IPv6 extension headers (hop-by-hop, routing, destination options, an
atomic fragment header) skipped to reach TCP; IPv4 and IPv6 fragments reassembled (a segment
counts once, at its last fragment, as tshark does); VLAN tags, Linux cooked and raw-IP captures;
TCP timestamps as an RTT source; SACK-aware loss accounting. Then a real capture in two
namespaces of the test's own (timestamps, SACK and IPv6 extension headers against tshark)."""

import json
import subprocess

import pytest
from scapy.all import (
    IP,
    TCP,
    CookedLinux,
    Dot1AD,
    Dot1Q,
    Ether,
    IPv6,
    IPv6ExtHdrDestOpt,
    IPv6ExtHdrFragment,
    IPv6ExtHdrHopByHop,
    IPv6ExtHdrRouting,
    Raw,
    fragment,
    fragment6,
    wrpcap,
)

from tests.helpers.cli import why_route
from tests.postmortem import oracle
from tracer.capture import pcapio

T0 = 1_700_000_000.0
MSS = 1000
C6, S6, C4, S4 = "fd00::1", "fd00::2", "10.7.0.1", "10.7.0.2"


def _ether():
    """Explicit addresses: scapy would otherwise resolve them (ARP, neighbour discovery) on the host."""
    return Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")



def _postmortem(path) -> dict:
    result = why_route("postmortem", str(path), "--json")
    assert result.returncode in (0, 1), result.stderr
    doc = json.loads(result.stdout)
    assert len(doc["connections"]) == 1, [c["flow"] for c in doc["connections"]]
    return doc["connections"][0]


def _tshark(path, *fields, display="tcp") -> list[list[str]]:
    argv = ["tshark", "-n", "-r", str(path), "-Y", display, "-T", "fields", "-E", "separator=\t"]
    for f in fields:
        argv += ["-e", f]
    out = subprocess.run(argv, capture_output=True, text=True, check=True, timeout=60).stdout
    return [line.split("\t") for line in out.splitlines()]


def _ip(v6: bool, to_server: bool, extensions: bool):
    if not v6:
        return IP(src=C4, dst=S4) if to_server else IP(src=S4, dst=C4)
    ip = IPv6(src=C6, dst=S6) if to_server else IPv6(src=S6, dst=C6)
    if extensions:
        ip = ip / IPv6ExtHdrHopByHop() / IPv6ExtHdrRouting(addresses=[]) / IPv6ExtHdrDestOpt() / IPv6ExtHdrFragment()
    return ip


def _tcp(to_server: bool, flags: str, seq: int, ack: int, options=()):
    sport, dport = (40000, 80) if to_server else (80, 40000)
    return TCP(sport=sport, dport=dport, flags=flags, seq=seq, ack=ack, window=502, options=list(options))


def _packets(v6: bool = False, *, extensions: bool = False, fragmented: bool = False):
    """(packets, add): add(time, to_server, flags, seq, ack, payload, options) appends one segment
    (as fragments of 600 bytes when `fragmented`), the handshake already in (10 ms + 1 ms)."""
    out = []

    def add(t, to_server, flags, seq, ack, payload=b"", options=()):
        tcp = _tcp(to_server, flags, seq, ack, options)
        packet = _ether() / _ip(v6, to_server, extensions) / tcp / (Raw(payload) if payload else b"")
        pieces = [packet]
        if fragmented and payload:
            pieces = (fragment6(_ether() / IPv6(src=C6, dst=S6) / IPv6ExtHdrFragment() / tcp / Raw(payload), 600)
                      if v6 else fragment(packet, fragsize=600))
            pieces = [p if p.haslayer(Ether) else _ether() / p for p in pieces]
        for i, p in enumerate(pieces):
            p.time = t + i * 1e-5
            out.append(p)

    sack_permitted = [("SAckOK", b"")]
    add(T0, True, "S", 1000, 0, options=sack_permitted)
    add(T0 + 0.010, False, "SA", 5000, 1001, options=sack_permitted)
    add(T0 + 0.011, True, "A", 1001, 5001)
    return out, add


def _upload(v6: bool, *, extensions: bool = False, fragmented: bool = False):
    """A 6-segment upload (segment 3 sent twice), as the client sees it."""
    out, add = _packets(v6, extensions=extensions, fragmented=fragmented)
    for i in range(6):
        add(T0 + 0.012 + i * 0.001, True, "PA", 1001 + i * MSS, 5001, b"y" * MSS)
    add(T0 + 0.040, True, "PA", 1001 + 2 * MSS, 5001, b"y" * MSS)  # segment 3 again
    add(T0 + 0.050, False, "A", 5001, 1001 + 6 * MSS)
    return out


@pytest.mark.parametrize("v6,extensions,fragmented", [(True, True, False), (True, False, True), (False, False, True)],
                         ids=["ipv6-extension-headers", "ipv6-fragments", "ipv4-fragments"])
def test_tcp_is_reached_through_extension_headers_and_fragments(tmp_path, v6, extensions, fragmented):
    path = tmp_path / "x.pcap"
    wrpcap(str(path), _upload(v6, extensions=extensions, fragmented=fragmented))
    conn = _postmortem(path)
    assert conn["flow"]["lan"] == {"src": C6 if v6 else C4, "sport": 40000, "dst": S6 if v6 else S4, "dport": 80}
    assert conn["bytes"]["to_server"] == 6 * MSS and conn["bytes"]["sent_to_server"] == 7 * MSS
    assert conn["retransmissions"]["x.pcap"]["to_server"] == 1
    assert conn["handshake"]["x.pcap"]["initial_rtt_ms"] == pytest.approx(11.0, abs=0.01)
    # tshark (which reassembles fragments) sees the same segments, retransmissions and handshake
    assert oracle.disagreements(str(path)) == []
    lengths = [int(length) for (length,) in _tshark(path, "tcp.len")]
    assert sum(lengths) == conn["bytes"]["sent_to_server"] and sum(1 for n in lengths if n) == 7


@pytest.mark.parametrize("link", ["vlan", "linux-cooked", "raw-ip"])
def test_tcp_is_reached_through_each_link_layer(tmp_path, link):
    def relinked(packet):
        ip = packet[IP]
        if link == "vlan":  # 802.1ad outside, 802.1Q inside
            return _ether() / Dot1AD(vlan=10) / Dot1Q(vlan=20) / ip
        if link == "linux-cooked":
            return CookedLinux(pkttype=0, lladdrtype=1, lladdrlen=6, proto=0x0800) / ip
        return ip

    path = tmp_path / "l.pcap"
    packets = []
    for p in _upload(False):
        q = relinked(p)
        q.time = p.time
        packets.append(q)
    wrpcap(str(path), packets, linktype={"vlan": 1, "linux-cooked": 113, "raw-ip": 101}[link])
    conn = _postmortem(path)
    assert conn["flow"]["lan"] == {"src": C4, "sport": 40000, "dst": S4, "dport": 80}
    assert conn["bytes"]["sent_to_server"] == 7 * MSS and conn["retransmissions"]["l.pcap"]["to_server"] == 1
    assert oracle.disagreements(str(path)) == []


def _timestamped(server_delay: float, client_delay: float):
    """A 40-segment upload with TCP timestamps: the server echoes each TSval `server_delay` after
    the segment passed, the client the server's `client_delay` after its ACK passed."""
    events = []
    tsval = 100
    for i in range(40):
        t = T0 + i * 0.001
        events.append((t, True, i, tsval + i))
        events.append((t + server_delay, False, i, 500 + i))
    events.sort()
    out, echo_at = [], {}
    for t, to_server, i, value in events:
        if to_server:
            # the client echoes the newest server TSval whose ACK passed `client_delay` ago
            echo = max((v for v, seen in echo_at.items() if seen + client_delay <= t + 1e-9), default=0)
            tcp = _tcp(True, "PA", 1001 + i * MSS, 5001, [("NOP", None), ("NOP", None), ("Timestamp", (value, echo))])
            p = _ether() / IP(src=C4, dst=S4) / tcp / Raw(b"y" * MSS)
        else:
            tcp = _tcp(False, "A", 5001, 1001 + (i + 1) * MSS,
                       [("NOP", None), ("NOP", None), ("Timestamp", (value, 100 + i))])
            p = _ether() / IP(src=S4, dst=C4) / tcp
            echo_at[value] = t
        p.time = t
        out.append(p)
    return out


def test_tcp_timestamps_give_the_rtt_on_each_side(tmp_path):
    path = tmp_path / "ts.pcap"
    wrpcap(str(path), _timestamped(server_delay=0.005, client_delay=0.0015))
    conn = _postmortem(path)
    stamps = conn["rtt"]["ts.pcap"]["timestamps"]
    assert stamps["to_server"]["samples"] == 40
    assert stamps["to_server"]["min"] == pytest.approx(5.0, abs=0.01)
    assert stamps["to_server"]["p95"] == pytest.approx(5.0, abs=0.01)
    # the client's echo leaves with its next segment: 1.5 ms after the ACK, rounded up to the 1 ms pacing
    assert stamps["to_client"]["samples"] >= 30
    assert stamps["to_client"]["min"] == pytest.approx(2.0, abs=0.01)
    # tshark reads the same TSval/TSecr pairs
    rows = _tshark(path, "tcp.srcport", "tcp.options.timestamp.tsval", "tcp.options.timestamp.tsecr")
    assert len({r[1] for r in rows if r[0] == "40000"}) == 40 and {r[2] for r in rows if r[0] == "80"} == \
        {str(100 + i) for i in range(40)}


def _sacked_upload():
    """10 segments; segment 3 lost beyond the capture point; the server's duplicate ACKs SACK
    4…k; the client fast-retransmits 3 and, needlessly, 6 (already SACKed)."""
    out, add = _packets()
    for i in range(10):
        add(T0 + 0.021 + i * 0.001, True, "PA", 1001 + i * MSS, 5001, b"y" * MSS)
    for i in range(10):
        t = T0 + 0.031 + i * 0.001
        if i < 2:
            add(t, False, "A", 5001, 1001 + (i + 1) * MSS)
        elif i > 2:
            add(t, False, "A", 5001, 1001 + 2 * MSS,
                options=[("NOP", None), ("NOP", None), ("SAck", (1001 + 3 * MSS, 1001 + (i + 1) * MSS))])
    add(T0 + 0.0405, True, "PA", 1001 + 2 * MSS, 5001, b"y" * MSS)  # the lost one: a real loss
    # (later than one handshake RTT after the highest segment: tshark calls it a retransmission, not out-of-order)
    add(T0 + 0.045, True, "PA", 1001 + 5 * MSS, 5001, b"y" * MSS)  # SACKed already: not lost
    add(T0 + 0.050, False, "A", 5001, 1001 + 10 * MSS)
    return out


def test_a_retransmission_of_sacked_data_is_no_loss(tmp_path):
    path = tmp_path / "sack.pcap"
    wrpcap(str(path), _sacked_upload())
    conn = _postmortem(path)
    retransmissions = conn["retransmissions"]
    assert retransmissions["sack.pcap"]["to_server"] == 2
    assert retransmissions["sack.pcap"]["sacked"] == {"to_server": 1, "to_client": 0}
    assert retransmissions["sack.pcap"]["sack_holes"] == {"to_server": 1, "to_client": 0}
    assert retransmissions["where"]["to_server"]["beyond_router"] == 1
    # tshark counts both retransmissions and reads the same SACK blocks
    assert oracle.disagreements(str(path)) == []
    blocks = [r for r in _tshark(path, "tcp.options.sack_le", "tcp.options.sack_re") if r[0]]
    assert [(int(le), int(re)) for le, re in blocks] == [(3001, (i + 1) * MSS + 1) for i in range(3, 10)]


def test_a_resent_segment_stamped_just_before_the_highest_is_a_retransmission(tmp_path):
    # Merged captures can stamp a segment a microsecond before the one ahead of it. Wireshark's
    # time since the highest segment is unsigned: "negative" is not within the out-of-order window.
    out, add = _packets()
    for i in range(4):
        add(T0 + 0.012 + i * 0.001, True, "PA", 1001 + i * MSS, 5001, b"y" * MSS)
    add(T0 + 0.015 - 1e-6, True, "PA", 1001 + MSS, 5001, b"y" * MSS)  # segment 2 again, 1 µs "early"
    add(T0 + 0.020, False, "A", 5001, 1001 + 4 * MSS)
    path = tmp_path / "early.pcap"
    wrpcap(str(path), out)
    assert _postmortem(path)["retransmissions"]["early.pcap"]["to_server"] == 1
    assert oracle.disagreements(str(path)) == []



def test_a_resend_exactly_one_handshake_rtt_after_the_highest_is_a_retransmission(tmp_path):
    # Times since the epoch as floats are exact to about 0.24 µs: these two 1 ms intervals compute
    # as 999.93 µs and 1000.17 µs. tshark compares the stamps exactly: not less, so not out of order.
    start = T0 + 2e-6
    out = []

    def add(t, to_server, flags, seq, ack, payload=b""):
        packet = _ether() / _ip(False, to_server, False) / _tcp(to_server, flags, seq, ack, ()) / \
            (Raw(payload) if payload else b"")
        packet.time = t
        out.append(packet)

    add(start, True, "S", 1000, 0)
    add(start + 0.0005, False, "SA", 5000, 1001)
    add(start + 0.001, True, "A", 1001, 5001)  # handshake RTT: 1 ms
    add(start + 0.004, True, "PA", 1001, 5001, b"y" * MSS)
    add(start + 0.005, True, "PA", 1001 + MSS, 5001, b"y" * MSS)  # the highest
    add(start + 0.006, True, "PA", 1001, 5001, b"y" * MSS)  # the first again, 1 ms after the highest
    add(start + 0.010, False, "A", 5001, 1001 + 2 * MSS)
    path = tmp_path / "exact.pcap"
    wrpcap(str(path), out)
    retransmissions = _postmortem(path)["retransmissions"]["exact.pcap"]
    assert (retransmissions["to_server"], retransmissions["out_of_order"]) == (1, 0)
    assert oracle.disagreements(str(path)) == []



def test_retransmissions_the_receiver_reports_twice_do_not_make_a_connection_slow(tmp_path):
    # A sender that re-sends data already delivered (its timer fired while the ACKs were late):
    # the receiver D-SACKs each copy (RFC 2883: a SACK block below its ACK). tshark counts them,
    # and so does the JSON, but they were not lost: the verdict stays ok.
    out, add = _packets()
    for i in range(10):
        add(T0 + 0.012 + i * 0.001, True, "PA", 1001 + i * MSS, 5001, b"y" * MSS)
    add(T0 + 0.025, False, "A", 5001, 1001 + 10 * MSS)
    for i in range(4):
        seq = 1001 + (6 + i) * MSS
        add(T0 + 0.030 + i * 0.001, True, "PA", seq, 5001, b"y" * MSS)  # again: already delivered
        add(T0 + 0.0305 + i * 0.001, False, "A", 5001, 1001 + 10 * MSS,
            options=[("NOP", None), ("NOP", None), ("SAck", (seq, seq + MSS))])
    path = tmp_path / "dsack.pcap"
    wrpcap(str(path), out)
    conn = _postmortem(path)
    retransmissions = conn["retransmissions"]["dsack.pcap"]
    assert (retransmissions["to_server"], retransmissions["dsacks"]["to_server"]) == (4, 4)
    assert oracle.disagreements(str(path)) == []
    assert conn["verdict"] == "ok", conn["reasons"]
    assert conn["retransmissions"]["where"]["to_server"]["beyond_router"] == 0


def test_one_d_sack_block_covering_a_run_of_resent_segments_counts_each_of_them(tmp_path):
    # Seen in the lab on a loaded host: segments delayed on another CPU's backlog, the sender re-sends
    # the run (RACK), and the receiver's next ACK D-SACKs the whole run in one block. Each copy in
    # it was not needed; the one segment not covered by any D-SACK is still counted as needed.
    out, add = _packets()
    for i in range(20):
        add(T0 + 0.012 + i * 0.001, True, "PA", 1001 + i * MSS, 5001, b"y" * MSS)
    add(T0 + 0.035, False, "A", 5001, 1001 + 20 * MSS)
    for i in range(6):
        add(T0 + 0.040 + i * 0.001, True, "PA", 1001 + (14 + i) * MSS, 5001, b"y" * MSS)  # again
    add(T0 + 0.047, False, "A", 5001, 1001 + 20 * MSS,
        options=[("NOP", None), ("NOP", None), ("SAck", (1001 + 15 * MSS, 1001 + 20 * MSS))])
    path = tmp_path / "dsack-run.pcap"
    wrpcap(str(path), out)
    conn = _postmortem(path)
    retransmissions = conn["retransmissions"]["dsack-run.pcap"]
    assert (retransmissions["to_server"], retransmissions["dsacks"]["to_server"]) == (6, 5)
    assert oracle.disagreements(str(path)) == []
    assert conn["verdict"] == "ok", conn["reasons"]


@pytest.mark.parametrize("after_highest_ns,kind", [(999_999, "out_of_order"), (1_000_000, "to_server"),
                                                    (-1, "to_server")],
                         ids=["1-ns-inside-the-rtt", "exactly-the-rtt", "1-ns-before-the-highest"])
def test_nanosecond_stamps_decide_out_of_order_as_tshark_does(tmp_path, after_highest_ns, kind):
    # dumpcap writes nanosecond stamps. As float seconds since 1970 they are exact only to 256 ns;
    # tshark compares the intervals in whole nanoseconds: a resend 1 ns inside the handshake RTT
    # after the highest segment is out of order, one exactly the RTT after it is retransmitted, and
    # one stamped before the highest is retransmitted (the interval is unsigned).
    epoch, rtt = 1_764_650_000, 1_000_000  # (ns)
    frames = []

    def add(ns, to_server, flags, seq, ack, payload=b""):
        frames.append((ns, bytes(_ether() / _ip(False, to_server, False) / _tcp(to_server, flags, seq, ack, ())
                                 / (Raw(payload) if payload else b""))))

    start = 123_456_789
    add(start, True, "S", 1000, 0)
    add(start + 500_000, False, "SA", 5000, 1001)
    add(start + rtt, True, "A", 1001, 5001)
    add(start + 4_000_000, True, "PA", 1001, 5001, b"y" * MSS)
    add(start + 5_000_000, True, "PA", 1001 + MSS, 5001, b"y" * MSS)  # the highest
    add(start + 5_000_000 + after_highest_ns, True, "PA", 1001, 5001, b"y" * MSS)
    add(start + 10_000_000, False, "A", 5001, 1001 + 2 * MSS)
    path = tmp_path / "ns.pcapng"
    with pcapio.PcapngWriter(str(path)) as out:
        out.add_interface("eth0", 1, per_second=10 ** 9)
        for ns, frame in sorted(frames):
            out.packet(0, ns / 1e9, frame, epoch=epoch)
    counts = _postmortem(path)["retransmissions"]["eth0"]
    assert {k: counts[k] for k in ("to_server", "out_of_order")} == {
        "to_server": int(kind == "to_server"), "out_of_order": int(kind == "out_of_order")}
    assert oracle.disagreements(str(path)) == []


def _late_upload(ids: str, rtt: float = 0.00015, delay: float = 0.0055):
    """A 20-segment upload, the handshake RTT `rtt`; segments 5, 8, 11 and 14 arrive `delay` late,
    after those sent behind them. The client numbers its packets in sending order, as Linux does:
    `ids` "sending order" (they are late originals), "re-sent" (they are re-sends, numbered when
    re-sent: the originals were lost) or "zero" (IDs say nothing, as some systems send)."""
    late = {4, 7, 10, 13}
    sends = [(T0, T0, True, "S", 1000, 0, b""), (T0 + rtt * 2 / 3, T0 + rtt * 2 / 3, False, "SA", 5000, 1001, b""),
             (T0 + rtt, T0 + rtt, True, "A", 1001, 5001, b"")]  # (sent, arrived, to server, …)
    for i in range(20):
        sent = T0 + rtt + 0.003 + i * 0.001
        arrived = sent + (delay if i in late else 0)
        sends.append((arrived if ids == "re-sent" and i in late else sent, arrived, True, "PA", 1001 + i * MSS, 5001,
                      b"y" * MSS))
    sends.append((T0 + rtt + 0.040, T0 + rtt + 0.040, False, "A", 5001, 1001 + 20 * MSS, b""))
    out, ident = [], 100
    for _sent, arrived, to_server, flags, seq, ack, payload in sorted(sends):
        src, dst = (C4, S4) if to_server else (S4, C4)
        number = 0 if ids == "zero" or not to_server else ident
        ident += to_server
        packet = (_ether() / IP(src=src, dst=dst, id=number, flags="DF") / _tcp(to_server, flags, seq, ack)
                  / (Raw(payload) if payload else b""))
        packet.time = arrived
        out.append(packet)
    out.sort(key=lambda p: p.time)
    return out


@pytest.mark.parametrize("ids,reordered,verdict", [("sending order", 4, "ok"), ("re-sent", 0, "slow"),
                                                   ("zero", 0, "slow")])
def test_late_originals_told_from_retransmissions_by_their_ip_ids(tmp_path, ids, reordered, verdict):
    # tshark calls each late segment a retransmission (it came more than the RTT after the highest
    # segment);
    # the counts say so too, and `reordered` says which of them were originals arriving late.
    path = tmp_path / "late.pcap"
    wrpcap(str(path), _late_upload(ids))
    conn = _postmortem(path)
    counts = conn["retransmissions"]["late.pcap"]
    assert (counts["to_server"], counts["reordered"]["to_server"]) == (4, reordered)
    assert conn["verdict"] == verdict, conn["reasons"]
    lost = conn["retransmissions"]["where"]["to_server"]
    assert lost["beyond_router"] + lost["before_router"] == (0 if reordered else 4)
    assert oracle.disagreements(str(path)) == []


@pytest.mark.parametrize("ids,early,verdict", [("re-sent", 3, "slow"), ("sending order", 0, "ok"), ("zero", 0, "ok")])
def test_re_sends_within_the_rtt_are_retransmissions_though_tshark_calls_them_out_of_order(tmp_path, ids, early,
                                                                                           verdict):
    # a LAN sender repairs a loss within the handshake RTT (10 ms here) of its highest segment:
    # tshark calls such a segment out-of-order whatever it is; a newer IP ID says it was re-sent
    # (the first of the four comes before the IDs have stepped up often enough to be trusted)
    path = tmp_path / "early.pcap"
    wrpcap(str(path), _late_upload(ids, rtt=0.010, delay=0.0015))
    conn = _postmortem(path)
    counts = conn["retransmissions"]["early.pcap"]
    assert (counts["to_server"], counts["out_of_order"], counts["early"]["to_server"]) == (0, 4, early)
    assert conn["verdict"] == verdict, conn["reasons"]
    if early:
        assert conn["reasons"] == ["3 retransmissions to the server (15.0% of 20 segments, 3 within the RTT of "
                                   "the highest segment, which tshark calls out-of-order (IP IDs newer than the "
                                   "highest's))"]
    lost = conn["retransmissions"]["where"]["to_server"]
    assert lost["beyond_router"] + lost["before_router"] == early
    assert oracle.disagreements(str(path)) == []


# ---------------------------------------------------------------- a real capture

DROP = """
table inet pmdepth {
    chain arriving { type filter hook input priority 0; policy accept;
                     tcp dport 5001 meta length > 500 numgen inc mod 33 == 0 drop; }
}
"""
SERVER = r"""
import socket, sys
s = socket.socket(socket.AF_INET6)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("::", 5001)); s.listen(4); s.settimeout(20)
print("listening", flush=True)
for _ in range(2):
    c, _ = s.accept()
    while c.recv(65536):
        pass
    c.close()
"""
CLIENT = r"""
import socket, sys
for address, family in (("10.98.0.2", socket.AF_INET), ("fd98::2", socket.AF_INET6)):
    s = socket.socket(family)
    if family == socket.AF_INET6:  # every segment then carries a hop-by-hop and a destination options header
        pad = b"\x00\x00\x01\x04\x00\x00\x00\x00"
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_HOPOPTS, pad)
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_DSTOPTS, pad)
    s.settimeout(20)
    s.connect((address, 5001))
    s.sendall(b"y" * 600_000)
    s.close()
"""
SIZE = 600_000


def _in(ns: str, *argv: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", "netns", "exec", ns, *argv], capture_output=True, text=True, check=True,
                          timeout=30, **kwargs)


@pytest.fixture(scope="module")
def real_capture(kernel_lab, tmp_path_factory):
    """Two namespaces joined by a veth pair (nothing else), every 33rd data segment dropped on arrival
    at the server; an IPv4 and an IPv6 upload captured by tcpdump on the client's side."""
    import sys
    import time

    from tracer import netns

    path = tmp_path_factory.mktemp("depth") / "real.pcap"
    with netns.Teardown() as undo:
        client, server = netns.owned_name("wrpmc"), netns.owned_name("wrpms")
        undo.namespace(client)
        undo.namespace(server)
        subprocess.run(["ip", "link", "add", "c0", "netns", client, "type", "veth", "peer", "name", "s0", "netns",
                        server], check=True, capture_output=True)
        for ns, dev, v4, v6 in ((client, "c0", "10.98.0.1/24", "fd98::1/64"), (server, "s0", "10.98.0.2/24",
                                                                                "fd98::2/64")):
            _in(ns, "ip", "link", "set", "lo", "up")
            _in(ns, "ip", "addr", "add", v4, "dev", dev)
            _in(ns, "ip", "-6", "addr", "add", v6, "dev", dev, "nodad")
            _in(ns, "ip", "link", "set", dev, "up")
            _in(ns, "ethtool", "-K", dev, "tso", "off", "gso", "off", "gro", "off")
        _in(server, "nft", "-f", "-", input=DROP)
        dump = subprocess.Popen(["ip", "netns", "exec", client, "tcpdump", "-i", "c0", "-n", "--immediate-mode", "-U",
                                 "-s", "200", "-w", str(path)], stderr=subprocess.PIPE, text=True)
        # (no "tcp" filter: BPF does not walk IPv6 extension headers, it would miss those segments)
        undo.callback(lambda: dump.poll() is None and (dump.kill(), dump.wait()))
        assert "listening on" in dump.stderr.readline()
        sink = subprocess.Popen(["ip", "netns", "exec", server, sys.executable, "-c", SERVER], stdout=subprocess.PIPE,
                                text=True)
        undo.callback(lambda: sink.poll() is None and (sink.kill(), sink.wait()))
        assert sink.stdout.readline().strip() == "listening"
        _in(client, sys.executable, "-c", CLIENT)
        sink.wait(timeout=20)
        time.sleep(0.2)
        dump.send_signal(2)
        dump.wait(timeout=10)
    return path


def _pping(path) -> dict:
    """The ePPing pairing, on tshark's dissection: {(stream, sender port): [RTT samples in s]}: a TSval
    newer than all before from its sender is timed, the first echo (TSecr) from the peer stops it."""
    rows = _tshark(path, "tcp.stream", "tcp.srcport", "frame.time_epoch", "tcp.options.timestamp.tsval",
                   "tcp.options.timestamp.tsecr", "tcp.flags.ack")
    newest, pending, samples = {}, {}, {}
    for stream, sport, time, tsval, tsecr, ack in rows:
        if not tsval:
            continue
        me = (stream, sport)
        if me not in newest or 0 < (int(tsval) - newest[me]) % 2**32 < 2**31:
            pending.setdefault(me, {}).setdefault(int(tsval), float(time))
            newest[me] = int(tsval)
        peer = next((k for k in pending if k[0] == stream and k != me), None)
        if ack == "1" and int(tsecr) and peer and int(tsecr) in pending[peer]:
            samples.setdefault(peer, []).append(float(time) - pending[peer].pop(int(tsecr)))
    return samples


def _sack_reference(path) -> dict:
    """SACK holes signalled by the server and retransmissions of SACKed data, on tshark's dissection."""
    argv_fields = ("tcp.stream", "tcp.srcport", "tcp.seq", "tcp.len", "tcp.ack", "tcp.options.sack_le",
                   "tcp.options.sack_re", "tcp.analysis.retransmission", "tcp.analysis.fast_retransmission",
                   "tcp.analysis.spurious_retransmission")
    out = {}
    for stream, sport, seq, length, ack, lefts, rights, *retrans in _tshark(path, *argv_fields):
        state = out.setdefault(stream, {"ranges": [], "high": -1, "holes": 0, "sacked": 0})
        if sport == "5001" and lefts:
            for left, right in zip(map(int, lefts.split(",")), map(int, rights.split(",")), strict=True):
                if left > max(int(ack), state["high"]):
                    state["holes"] += 1
                state["high"] = max(state["high"], right)
                state["ranges"].append((left, right))
        elif sport != "5001" and any(retrans) and int(length):
            start, end = int(seq), int(seq) + int(length)
            state["sacked"] += any(a <= start and end <= b for a, b in state["ranges"])
    return out


def _resent(path, stream: str) -> int:
    """Data segments to the server below the highest sequence number sent before, on tshark's dissection."""
    high, resent = None, 0
    for seq, length in _tshark(path, "tcp.seq", "tcp.len", display=f"tcp.stream == {stream} && tcp.dstport == 5001"):
        if int(length):
            resent += high is not None and int(seq) < high
            high = max(high or 0, int(seq) + int(length))
    return resent


def test_a_real_capture_agrees_with_tshark_on_timestamps_sack_and_ipv6_headers(real_capture):
    result = why_route("postmortem", str(real_capture), "--json")
    assert result.returncode in (0, 1), result.stderr
    doc = json.loads(result.stdout)
    conns = {c["flow"]["lan"]["dst"]: c for c in doc["connections"]}
    assert set(conns) == {"10.98.0.2", "fd98::2"}
    assert all(c["bytes"]["to_server"] == SIZE for c in conns.values())
    # the IPv6 segments carried extension headers, and the counts agree with tshark's analysis
    segments = _tshark(real_capture, "frame.number", display="ipv6 && tcp.len > 0")
    assert segments and segments == _tshark(real_capture, "frame.number",
                                            display="ipv6.hopopts && ipv6.dstopts && tcp.len > 0")
    assert oracle.disagreements(str(real_capture)) == []
    # timestamps: the same pairs as ePPing's on tshark's fields, on both sides
    reference = _pping(real_capture)
    streams = {row[1]: row[0] for row in _tshark(real_capture, "tcp.stream", "ip.dst", display="ip && tcp")}
    stream = streams["10.98.0.2"]
    conn = conns["10.98.0.2"]
    for direction, sender in (("to_server", conn["flow"]["lan"]["sport"]), ("to_client", 5001)):
        theirs = sorted(reference[(stream, str(sender))])
        ours = conn["rtt"]["real.pcap"]["timestamps"][direction]
        assert ours["samples"] == len(theirs) >= 3  # (TSval ticks each ms: a few samples per ms of transfer)
        assert ours["min"] == pytest.approx(theirs[0] * 1000, abs=0.002)
    # every segment re-sent is counted, also those tshark calls out-of-order (re-sent within the
    # handshake RTT of the highest segment: on a veth, most are); seen where they were sent, a
    # segment below the highest sequence number is a re-send
    retransmissions = conn["retransmissions"]["real.pcap"]
    assert retransmissions["to_server"] + retransmissions["early"]["to_server"] == _resent(real_capture, stream) >= 3
    # SACK: the holes the server signalled, and no retransmission of SACKed data counted as lost
    sack = _sack_reference(real_capture)[stream]
    assert sack["holes"] >= 3
    assert retransmissions["sack_holes"]["to_server"] == sack["holes"]
    assert retransmissions["sacked"]["to_server"] == sack["sacked"]
