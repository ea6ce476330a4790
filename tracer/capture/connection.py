"""Connections across the router: the sides of one TCP connection seen on several interfaces
(before and after NAT) paired into one `Connection`, and what is measured on it.

Pairing, in order of trust: the conntrack events of the capture (orig → reply
tuple), the NAT the explanation of the flow predicts on the snapshot, the same
4-tuple on another interface (no NAT), and last the client's initial sequence
number towards the same server (NAT keeps sequence numbers) within a few seconds.
"""

from __future__ import annotations

import re
import statistics
from collections import defaultdict
from dataclasses import dataclass, field

from tracer.capture.tcp import Icmp, Side

PAIR_WINDOW = 5.0  # seconds between the two sides' first packets


# ---------------------------------------------------------------- conntrack events

_TUPLE = re.compile(r"src=(\S+) dst=(\S+) sport=(\d+) dport=(\d+)")


def conntrack_mapping(lines) -> dict[tuple, tuple]:
    """`conntrack -E` lines → {orig tuple: the same connection's tuple after NAT}, both as
    (client, client port, server, server port) the way the packets carry them."""
    out: dict[tuple, tuple] = {}
    for line in lines:
        if " tcp " not in line:
            continue
        found = _TUPLE.findall(line)
        if len(found) < 2:
            continue
        (osrc, odst, osp, odp), (rsrc, rdst, rsp, rdp) = found[0], found[1]
        orig = (osrc, int(osp), odst, int(odp))
        # replies come from rsrc:rsp to rdst:rdp; the connection's other side is their reverse
        other = (rdst, int(rdp), rsrc, int(rsp))
        out[orig] = other
        out[other] = orig
    return out


# ---------------------------------------------------------------- statistics

def rtt_summary(samples: list[float]) -> dict | None:
    if not samples:
        return None
    ordered = sorted(samples)
    p95 = ordered[min(len(ordered) - 1, int(round(0.95 * (len(ordered) - 1))))]
    return {"samples": len(ordered), "min": ordered[0], "median": statistics.median(ordered), "p95": p95}


@dataclass
class Loss:
    """Where the segments of one direction were lost, from the router's two sides."""

    direction: str  # "to_server" | "to_client"
    inside: int  # arrived at the router, never left it (repaired holes on the leaving side)
    beyond: int  # left the router and were sent again (not repairs of inside losses)
    before: int  # never reached the router (repaired holes on the arriving side)
    # (a retransmission of data the receiver had SACKed is no loss: not counted beyond)
    evidence: list[tuple] = field(default_factory=list)  # (number, time, interface, text)


@dataclass
class Connection:
    sides: list[Side]  # in the order the packets cross the router: arriving side first
    names: list[str]  # interface name of each side
    pairing: str  # conntrack | explanation | same tuple | sequence numbers | one side
    capture_end: float
    epoch: int = 0  # the capture's: times are seconds since this whole second
    icmp: list[tuple[Icmp, str]] = field(default_factory=list)  # (message, interface name)
    # filled in by the post-mortem
    verdict: str = "ok"
    reasons: list[str] = field(default_factory=list)
    suspects: list = field(default_factory=list)
    findings: list = field(default_factory=list)
    explanation: object = None
    egress_mtu: int | None = None

    @property
    def first(self) -> Side:
        return self.sides[0]

    @property
    def last(self) -> Side:
        """The side where the client's packets leave the router (the requests' egress)."""
        leaving = [s for s in self.sides[1:] if s.h[0].packets]
        return leaving[-1] if leaving else self.sides[-1]

    @property
    def reply_side(self) -> Side:
        """The side where the server's packets arrive at the router (normally the requests' egress)."""
        others = [s for s in self.sides[1:] if s.h[1].packets]
        if not others:
            return self.last
        if self.last in others:
            return max(others, key=lambda s: (s.h[1].packets, s is self.last))
        return max(others, key=lambda s: s.h[1].packets)

    @property
    def asymmetric(self) -> bool:
        return self.paired and self.reply_side is not self.last

    @property
    def paired(self) -> bool:
        return len(self.sides) > 1

    @property
    def start(self) -> float:
        return min(s.first for s in self.sides)

    @property
    def end(self) -> float:
        return max(s.last for s in self.sides)

    @property
    def lan(self) -> tuple:
        return self.first.tuple

    @property
    def wan(self) -> tuple:
        return self.last.tuple

    # ------------------------------------------------------------ direction helpers
    def upstream(self, d: int) -> Side:
        """The side where direction d's segments arrive at the router."""
        return self.first if d == 0 else self.reply_side

    def downstream(self, d: int) -> Side:
        return self.last if d == 0 else self.first

    def name_of(self, side: Side) -> str:
        return self.names[self.sides.index(side)]

    @property
    def handshake_done(self) -> bool:
        return self.first.ack_time is not None or (self.first.synack_time is not None
                                                    and self.first.h[1].payload > 0)

    @property
    def syn_seen(self) -> bool:
        return self.first.h[0].syns > 0

    def losses(self, d: int) -> Loss:
        up, down = self.upstream(d), self.downstream(d)
        hu, hd = up.h[d], down.h[d]
        direction = "to_server" if d == 0 else "to_client"
        if not self.paired:
            ev = [(n, t, self.names[0], f"{kind} of seq {s}, {length} bytes")
                  for n, t, s, length, _ipl, kind, _f in hu.ev_retrans if kind != "ooo"]
            before = sum(1 for g in hu.gaps if g[4] is not None)
            return Loss(direction, 0, max(0, hu.resends - hu.filled - hu.spurious_retransmissions), before, ev)
        # A hole is a real loss only once the sender repairs it: a hole never repaired is a packet
        # the capture missed (it reached the receiver). A loss before the router repairs holes on
        # both sides; one inside it, only on the leaving side.
        repaired_down = [g for g in hd.gaps if g[4] is not None]
        repaired_up = sum(1 for g in hu.gaps if g[4] is not None)
        inside = max(0, len(repaired_down) - repaired_up)
        beyond = max(0, hd.resends - hd.filled - hd.spurious_retransmissions)
        evidence = []
        name_down, name_up = self.name_of(down), self.name_of(up)
        for start, stop, number, t, filled in repaired_down[:10]:
            evidence.append((number, t, name_down, f"hole: seq {start}..{stop} arrived on {name_up} but "
                             f"never left on {name_down} (repaired by #{filled})"))
        for n, t, s, length, _ipl, kind, filled in hd.ev_retrans:
            if kind != "ooo" and not filled:
                evidence.append((n, t, name_down, f"{kind} of seq {s} ({length} bytes) that had left the router"))
        return Loss(direction, inside, beyond, repaired_up, evidence[:20])

    def rtt(self) -> dict:
        """RTT at the capture point, each side: to_server (the far side's delay as the router
        sees it) and to_client (the near side's), from data/ACK pairs and from TCP timestamps."""
        out = {}
        for side, name in zip(self.sides, self.names, strict=True):
            out[name] = {"to_server": rtt_summary(side.h[0].rtt), "to_client": rtt_summary(side.h[1].rtt),
                         "timestamps": {"to_server": rtt_summary(side.h[0].ts_rtt),
                                        "to_client": rtt_summary(side.h[1].ts_rtt)}}
        return out

    def stall(self) -> dict | None:
        """Outstanding data with no acknowledgement progress for ≥ 1 s at the end, or one
        segment sent three times or more."""
        side = self.first
        for d in (0, 1):
            h, peer = side.h[d], side.h[1 - d]
            waiting = h.outstanding(peer) > 0 and h.payload > 0
            since = h.progress if h.progress is not None else (h.ev_data[0][1] if h.ev_data else side.first)
            idle = self.capture_end - since
            if waiting and h.fin is None and peer.rst is None and h.rst is None and idle >= 1.0:
                return {"direction": "to_server" if d == 0 else "to_client", "since": since, "idle": idle,
                        "outstanding": h.outstanding(peer), "sent_max": h.retrans_max}
        return None


def pair(sides: list[Side], names: list[str], capture_end: float, icmp: list[Icmp], *, conntrack=None,
         predict=None, epoch: int = 0) -> list[Connection]:
    """Group sides into connections. `conntrack`: conntrack_mapping(); `predict(side, name)`: the
    tuple the explanation says this side has on another interface, as (interface, tuple) or None."""
    index = {id(s): i for i, s in enumerate(sides)}
    parent = list(range(len(sides)))
    method = [None] * len(sides)

    def find(i):
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    def union(a: Side, b: Side, how: str) -> None:
        if a.iface == b.iface or abs(a.first - b.first) > PAIR_WINDOW:
            return
        ra, rb = find(index[id(a)]), find(index[id(b)])
        if ra != rb:
            parent[rb] = ra
            method[ra] = method[ra] or how

    by_tuple: dict[tuple, list[Side]] = defaultdict(list)
    for s in sides:
        by_tuple[s.tuple].append(s)

    if conntrack:
        for s in sides:
            other = conntrack.get(s.tuple)
            if other and other != s.tuple:
                for o in by_tuple.get(other, ()):
                    union(s, o, "conntrack")
    if predict:
        for s in sides:
            found = predict(s, names[s.iface])
            if found:
                for o in by_tuple.get(found, ()):
                    union(s, o, "explanation")
    for group in by_tuple.values():
        for o in group[1:]:
            union(group[0], o, "conntrack" if conntrack and group[0].tuple in conntrack else "same tuple")
    by_isn: dict[tuple, list[Side]] = defaultdict(list)
    for s in sides:
        if s.h[0].syns and s.h[0].isn is not None:
            by_isn[(s.server, s.h[0].isn)].append(s)
    for group in by_isn.values():
        for o in group[1:]:
            if find(index[id(o)]) != find(index[id(group[0])]):
                union(group[0], o, "sequence numbers")

    groups: dict[int, list[Side]] = defaultdict(list)
    for i, s in enumerate(sides):
        groups[find(i)].append(s)
    icmp_by_inner: dict[tuple, list[Icmp]] = defaultdict(list)
    for m in icmp:
        src, dst, proto, sport, dport = m.inner
        if proto == 6:
            icmp_by_inner[(src, sport, dst, dport)].append(m)
            icmp_by_inner[(dst, dport, src, sport)].append(m)
    out = []
    for root, members in groups.items():
        # one side per interface (the busiest), ordered by when each first saw the client's SYN
        per_iface: dict[int, Side] = {}
        for s in members:
            if s.iface not in per_iface or s.packets > per_iface[s.iface].packets:
                per_iface[s.iface] = s
        chosen = sorted(per_iface.values(),
                        key=lambda s: (s.first if s.h[0].first_syn is None else s.h[0].first_syn, s.first))
        how = (method[root] or "same tuple") if len(chosen) > 1 else "one side"
        conn = Connection(chosen, [names[s.iface] for s in chosen], how, capture_end, epoch)
        seen = set()
        for s in chosen:
            for m in icmp_by_inner.get(s.tuple, ()):
                if m.number not in seen:
                    seen.add(m.number)
                    conn.icmp.append((m, names[m.iface]))
        conn.icmp.sort(key=lambda x: x[0].number)
        out.append(conn)
    return out
