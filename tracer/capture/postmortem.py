"""`why-route postmortem`: read captures, pair each connection's sides across NAT, measure, judge,
and tie what went wrong to the configuration (the explanation of the flow on the snapshot).

    run = postmortem.run(source, snapshot=None, flow=None)   # a Report
    report.connections                                       # worst first
    postmortem.to_dict(report) (the CLI emits it as JSON) / postmortem.text(report)
"""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass, field

from tracer.capture import pcapio, tcp
from tracer.capture.connection import Connection, conntrack_mapping, pair
from tracer.capture.suspects import catalogue
from tracer.errors import UsageError, WhyRouteError

VERDICT_RANK = {"failed": 0, "stalled": 1, "slow": 2, "ok": 3}
CAPTURE_FILE, SNAPSHOT_FILE, CONNTRACK_FILE, META_FILE = "capture.pcapng", "snapshot.json", "conntrack.events", \
    "capture.json"


@dataclass
class Report:
    source: str
    capture: pcapio.Capture
    analysis: tcp.Analysis
    connections: list[Connection]
    state: object = None
    snapshot: str | None = None
    conntrack: str | None = None
    notes: list[str] = field(default_factory=list)


# ---------------------------------------------------------------- inputs

def _inputs(source: str, snapshot: str | None) -> tuple[str, str | None, str | None]:
    if os.path.isdir(source):
        capture = os.path.join(source, CAPTURE_FILE)
        if not os.path.exists(capture):
            found = sorted(f for f in os.listdir(source) if f.endswith((".pcap", ".pcapng")))
            if not found:
                raise UsageError(f"{source}: no {CAPTURE_FILE} (nor any .pcap/.pcapng) in this directory")
            capture = os.path.join(source, found[0])
        snap = snapshot or (os.path.join(source, SNAPSHOT_FILE)
                            if os.path.exists(os.path.join(source, SNAPSHOT_FILE)) else None)
        events = os.path.join(source, CONNTRACK_FILE)
        return capture, snap, events if os.path.exists(events) else None
    if not os.path.exists(source):
        raise UsageError(f"{source}: no such file or directory")
    return source, snapshot, None


def parse_flow(text: str):
    """--flow "SRC DST [SPORT] [DPORT]" → a predicate on (src, dst) address texts and ports."""
    parts = text.split()
    if not parts or len(parts) > 4:
        raise UsageError('--flow takes "SRC DST [SPORT [DPORT]]" (addresses, or * for any)')
    for p in parts[:2]:
        if p != "*":
            try:
                ipaddress.ip_address(p)
            except ValueError:
                raise UsageError(f"--flow: invalid address {p!r}") from None
    return parts


def _flow_matches(parts, conn: Connection) -> bool:
    for side in conn.sides:
        for a, b in ((side.client, side.server), (side.server, side.client)):
            want = [a[0], b[0], str(a[1]), str(b[1])]
            if all(p == "*" or p == w for p, w in zip(parts, want, strict=False)):
                return True
    return False


# ---------------------------------------------------------------- the configuration

class Context:
    """What suspects ask about the configuration, per connection (cached)."""

    def __init__(self, state):
        self.state = state
        self._explained: dict = {}
        self._findings: dict = {}

    def _explain(self, client: str, server: str, dport: int, sport: int, iif: str | None):
        if self.state is None:
            return None
        key = (client, server, dport, iif)
        if key not in self._explained:
            from tracer.flow import make_flow
            from tracer.sim.explain import explain

            try:
                links = {link.name for link in self.state.links}
                flow = make_flow(server, client, iif=iif if iif in links else None, proto="tcp", sport=sport,
                                 dport=dport)
                self._explained[key] = explain(self.state, flow)
            except WhyRouteError:
                self._explained[key] = None
        return self._explained[key]

    def explanation(self, conn: Connection):
        if conn.explanation is None:
            side = conn.first
            # the interface the requests arrived on; none seen (only replies captured): inferred
            iif = conn.names[0] if side.h[0].packets else None
            conn.explanation = self._explain(side.client[0], side.server[0], side.server[1], side.client[1], iif)
        return conn.explanation

    def findings(self, conn: Connection) -> list:
        explanation = self.explanation(conn)
        if explanation is None:
            return []
        key = id(explanation)
        if key not in self._findings:
            from tracer.checks.engine import flow_findings

            self._findings[key] = flow_findings(explanation)
        return self._findings[key]

    def finding(self, conn: Connection, rule_id: str):
        return next((f for f in self.findings(conn) if f.id == rule_id), None)

    def mtu(self, name: str | None) -> int | None:
        if self.state is None or name is None:
            return None
        link = self.state.link(name)
        return link.mtu if link else None

    def device(self, conn: Connection, name: str) -> str:
        """`name` if the snapshot has such a device (a capture file's only interface is named after the
        file), else the flow's egress device from the explanation, else DEV."""
        if self.state is not None and self.state.link(name) is not None:
            return name
        explanation = self.explanation(conn)
        if explanation is not None and explanation.egress is not None and explanation.egress.dev:
            return explanation.egress.dev
        return "DEV"

    def egress_mtu(self, conn: Connection, d: int) -> int | None:
        """The MTU of the interface direction d leaves the router by."""
        if conn.paired:
            return self.mtu(conn.name_of(conn.downstream(d)))
        explanation = self.explanation(conn)
        if d == 0 and explanation is not None and explanation.egress is not None:
            link = self.state.link(explanation.egress.dev)
            return link.mtu if link else explanation.egress.mtu
        return None

    def predict(self, side, name: str):
        """The tuple this side's connection has after the router (explanation's NAT and egress)."""
        explanation = self._explain(side.client[0], side.server[0], side.server[1], side.client[1], name)
        if explanation is None or explanation.egress is None or explanation.egress.dev == name:
            return None
        e = explanation.egress
        sport = e.sport if e.sport not in (None, explanation.flow.sport) else side.client[1]
        dport = e.dport if e.dport not in (None, explanation.flow.dport) else side.server[1]
        return (e.src or side.client[0], sport, e.dst, dport)


# ---------------------------------------------------------------- judging

def judge(conn: Connection) -> None:
    """verdict (ok, slow, stalled, failed) and its reasons, from the measurements."""
    first = conn.first
    reasons = []
    if not conn.syn_seen and first.h[1].syns and not any(side.h[0].packets for side in conn.sides):
        conn.verdict = "failed"
        conn.reasons = [f"the SYN/ACK was sent {first.h[1].syns} time(s) and no packet from the client was seen"]
        return
    if conn.syn_seen and not conn.handshake_done:
        if first.h[1].rst is not None:
            reasons.append("the SYN was answered by a reset")
        elif any(m.type == 3 for m, _ in conn.icmp):
            reasons.append("the SYN was answered by ICMP destination-unreachable")
        else:
            reasons.append(f"no SYN/ACK after {first.h[0].syns} SYN(s)")
        conn.verdict, conn.reasons = "failed", reasons
        return
    stall = conn.stall()
    if stall:
        conn.verdict = "stalled"
        conn.reasons = [f"{stall['outstanding']} bytes {stall['direction'].replace('_', ' ')} unacknowledged for "
                        f"{stall['idle']:.1f} s at the end"
                        + (f", one segment sent {stall['sent_max']} times" if stall["sent_max"] > 1 else "")]
        return
    for d, what in ((0, "to the server"), (1, "to the client")):
        h = first.h[d]
        # the retransmissions the receiver did not need (SACKed or D-SACKed: late, not lost) and
        # the late originals do not make a connection slow, though tshark counts them all
        needed = h.resends - h.spurious_retransmissions
        if h.data_packets and needed >= 3 and needed > 0.01 * h.data_packets:
            detail = [f"{h.early} within the RTT of the highest segment, which tshark calls out-of-order (IP IDs "
                      "newer than the highest's)"] if h.early else []
            if h.sacked_retrans:
                detail.append(f"{h.sacked_retrans} of data the receiver had SACKed")
            if h.dsacks:
                detail.append(f"{h.dsacks} the receiver reported receiving twice (D-SACK)")
            if h.late:
                detail.append(f"{h.late} original(s) arriving late (reordered: IP IDs older than the highest's)")
            share = 100.0 * h.resends / h.data_packets
            reasons.append(f"{h.resends} retransmissions {what} ({share:.1f}% of {h.data_packets} segments"
                           f"{''.join(', ' + d for d in detail)})")
        closed = h.zero_window_time(conn.capture_end)
        if h.zero_windows and closed >= max(0.05, 0.05 * (conn.end - conn.start)):
            reasons.append(f"the {'client' if d == 0 else 'server'}'s receive window was closed {closed:.2f} s "
                           f"({h.zero_windows} zero window(s))")
    duration = conn.end - conn.start
    for side in conn.sides:
        for d in (0, 1):
            if duration > 0.5 and side.h[d].wl_time > 0.3 * duration:
                reasons.append(f"receive-window limited {100 * side.h[d].wl_time / duration:.0f}% of the time")
                break
    if any(s.id == "PM006" for s in conn.suspects):
        reasons.append("RTT grows with the transfer (queueing)")
    # (a reset after data is how many applications close: reported in `resets`, not judged)
    conn.verdict = "slow" if reasons else "ok"
    conn.reasons = reasons


def run(source: str, snapshot: str | None = None, flow: str | None = None) -> Report:
    capture_path, snapshot_path, events_path = _inputs(source, snapshot)
    state = None
    if snapshot_path:
        from tracer.collect import snapshot as snapshots

        state = snapshots.load(snapshot_path)
    capture = pcapio.read(capture_path)
    analysis = tcp.analyse(capture)
    names = [i.name for i in capture.interfaces]
    mapping = None
    if events_path:
        with open(events_path, errors="replace") as f:
            mapping = conntrack_mapping(f)
    ctx = Context(state)
    connections = pair(analysis.sides, names, analysis.last or 0.0, analysis.icmp, conntrack=mapping,
                       predict=ctx.predict if state is not None else None, epoch=capture.epoch)
    if flow:
        parts = parse_flow(flow)
        connections = [c for c in connections if _flow_matches(parts, c)]
    for conn in connections:
        for suspect in catalogue():
            found = suspect.detect(conn, ctx)
            if found is not None:
                conn.suspects.append(found)
        judge(conn)
        if conn.verdict == "ok":
            conn.suspects = [s for s in conn.suspects if s.score >= 90 or s.shown_when_ok]
            if any(s.score >= 90 for s in conn.suspects):
                conn.verdict = "slow"
                conn.reasons.append(conn.suspects[0].summary)
        conn.suspects.sort(key=lambda s: -s.score)
        if state is not None and conn.verdict != "ok":
            conn.findings = ctx.findings(conn)
    connections.sort(key=lambda c: (VERDICT_RANK[c.verdict], -max((s.score for s in c.suspects), default=0),
                                    c.start))
    report = Report(source, capture, analysis, connections, state, snapshot_path, events_path)
    if state is None:
        report.notes.append("no snapshot: suspects are not tied to the configuration (use --snapshot)")
    for intf in capture.interfaces:
        lost = (intf.dropped or 0) + (intf.os_dropped or 0)
        if lost:
            report.notes.append(f"the capture lost {lost} packet(s) on {intf.name} (kernel or capture buffer): "
                                "holes there are the capture's, not the network's")
    return report


# ---------------------------------------------------------------- output

def _tuple(t: tuple) -> dict:
    return {"src": t[0], "sport": t[1], "dst": t[2], "dport": t[3]}


def _ms(value):
    return None if value is None else round(value * 1000, 3)


def _rtt_ms(summary):
    if summary is None:
        return None
    return {"samples": summary["samples"], **{k: _ms(summary[k]) for k in ("min", "median", "p95")}}


def _evidence(items, base: float) -> list[dict]:
    return [{"packet": n, "time": None if t is None else round(t - base, 6), "interface": i, "text": text}
            for n, t, i, text in items]


def _unique(h) -> int:
    """Bytes of payload, each counted once (the highest sequence number reached, less SYN and FIN)."""
    if h.nextseq < 0:
        return 0
    return max(0, h.nextseq - (1 if h.syns else 0) - (1 if h.fin else 0))


def connection_dict(conn: Connection, ctx_mtu=None) -> dict:
    first = conn.first
    base = conn.start
    out = {
        "verdict": conn.verdict,
        "reasons": conn.reasons,
        "flow": {"lan": _tuple(conn.lan), "wan": _tuple(conn.wan) if conn.paired else None,
                 "pairing": conn.pairing},
        "interfaces": {"in": conn.names[0], "out": conn.name_of(conn.last) if conn.paired else None},
        "start": round(conn.epoch + conn.start, 6),  # seconds since 1970
        "duration": round(conn.end - conn.start, 6),
        "bytes": {"to_server": _unique(first.h[0]), "to_client": _unique(first.h[1]),
                  "sent_to_server": first.h[0].payload, "sent_to_client": first.h[1].payload},
        "packets": {name: side.packets for side, name in zip(conn.sides, conn.names, strict=True)},
        "handshake": {},
        "rtt": {},
        "retransmissions": {},
        "dup_acks": {},
        "zero_windows": {},
        "window_limited": {},
        "mss": {},
        "icmp": [{"packet": m.number, "time": round(m.time - base, 6), "interface": name, "type": m.type,
                  "code": m.code, "mtu": m.mtu, "from": m.src, "text": m.text} for m, name in conn.icmp],
        "reply_path": None,
        "resets": [],
        "suspects": [],
        "findings": [{"id": f.id, "severity": f.severity, "title": f.title, "message": f.message,
                      "fix": {"kind": f.fix.kind, "commands": list(f.fix)}} for f in conn.findings],
    }
    rtt = conn.rtt()
    for side, name in zip(conn.sides, conn.names, strict=True):
        hs = side.handshake
        out["handshake"][name] = None if hs is None else {
            "syn": None if hs["syn"] is None else round(hs["syn"] - base, 6),
            "syn_ack": None if hs["syn_ack"] is None else round(hs["syn_ack"] - base, 6),
            "ack": None if hs["ack"] is None else round(hs["ack"] - base, 6),
            "syns": hs["syns"], "server_rtt_ms": _ms(hs["to_server"]), "client_rtt_ms": _ms(hs["to_client"]),
            "initial_rtt_ms": _ms(hs["initial_rtt"])}
        out["rtt"][name] = {"to_server": _rtt_ms(rtt[name]["to_server"]), "to_client": _rtt_ms(rtt[name]["to_client"]),
                            "timestamps": {k: _rtt_ms(v) for k, v in rtt[name]["timestamps"].items()}}
        out["retransmissions"][name] = {
            "to_server": side.h[0].retransmissions, "to_client": side.h[1].retransmissions,
            "out_of_order": side.h[0].ooo + side.h[1].ooo,
            "holes": {"to_server": side.h[0].lost, "to_client": side.h[1].lost},
            "sacked": {"to_server": side.h[0].sacked_retrans, "to_client": side.h[1].sacked_retrans},
            "dsacks": {"to_server": side.h[0].dsacks, "to_client": side.h[1].dsacks},
            "reordered": {"to_server": side.h[0].late, "to_client": side.h[1].late},
            "early": {"to_server": side.h[0].early, "to_client": side.h[1].early},
            "sack_holes": {"to_server": side.h[0].sack_holes, "to_client": side.h[1].sack_holes}}
        out["dup_acks"][name] = {"from_server": side.h[1].dupacks, "from_client": side.h[0].dupacks}
        out["zero_windows"][name] = {"from_server": side.h[1].zero_windows, "from_client": side.h[0].zero_windows}
        out["window_limited"][name] = {"to_server": round(side.h[0].wl_time, 6),
                                       "to_client": round(side.h[1].wl_time, 6)}
        out["mss"][name] = {"client": side.h[0].mss, "server": side.h[1].mss, "mtu": ctx_mtu(name) if ctx_mtu else None,
                            "largest_packet": {"to_server": first.h[0].max_len or None,
                                               "to_client": first.h[1].max_len or None}}
        for d, who in ((0, "client"), (1, "server")):
            if side.h[d].rst is not None:
                n, t = side.h[d].rst
                out["resets"].append({"packet": n, "time": round(t - base, 6), "interface": name, "by": who})
    losses = {}
    for d in (0, 1):
        loss = conn.losses(d)
        losses[loss.direction] = {"inside_router": loss.inside, "beyond_router": loss.beyond,
                                  "before_router": loss.before}
    out["retransmissions"]["where"] = losses
    if conn.paired:
        # replies should come back on the interface the requests left by
        replied = conn.reply_side.h[1].packets > 0
        out["reply_path"] = {"requests_leave": conn.name_of(conn.last),
                             "replies_arrive": conn.name_of(conn.reply_side) if replied else None,
                             "asymmetric": replied and conn.asymmetric}
    for s in conn.suspects:
        out["suspects"].append({"id": s.id, "title": s.title, "score": s.score, "summary": s.summary,
                                "evidence": _evidence(s.evidence, base), "config": s.config,
                                "fix": {"kind": "alternatives" if len(s.fix) > 1 else "steps", "commands": s.fix},
                                "findings": s.findings})
    return out


def to_dict(report: Report) -> dict:
    ctx = Context(report.state)
    interfaces = [{"name": i.name, "description": i.description, "packets": n,
                   "kernel_drops": i.dropped, "capture_drops": i.os_dropped}
                  for i, n in zip(report.capture.interfaces, report.analysis.per_interface + [0] * 99,
                                  strict=False)]
    counts = {v: sum(1 for c in report.connections if c.verdict == v) for v in VERDICT_RANK}
    source = {"kind": "snapshot", "name": report.snapshot} if report.snapshot else None
    return {"input": report.source, "source": source, "capture": report.capture.path,
            "snapshot": report.snapshot,
            "conntrack_events": report.conntrack, "packets": report.analysis.packets, "interfaces": interfaces,
            "verdicts": counts, "notes": report.notes,
            "connections": [connection_dict(c, ctx.mtu) for c in report.connections]}

