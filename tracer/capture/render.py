"""The post-mortem as text: one block per connection, worst first."""

from __future__ import annotations

from tracer.capture import ties
from tracer.capture.postmortem import Report, to_dict

COLOURS = {"failed": "31", "stalled": "31", "slow": "33", "ok": "32"}


def _t(t) -> str:
    return f"{t:9.6f}s" if t is not None else " " * 10


def text(report: Report, *, colour: bool = False, limit: int = 50) -> str:
    doc = to_dict(report)

    def c(s: str, code: str) -> str:
        return f"\033[{code}m{s}\033[0m" if colour else s

    v = doc["verdicts"]
    lines = [f"why-route postmortem: {doc['capture']}: {doc['packets']} packets, {len(doc['connections'])} TCP "
             f"connections: {v['failed']} failed, {v['stalled']} stalled, {v['slow']} slow, {v['ok']} ok"]
    ifaces = ", ".join(f"{i['name']} {i['packets']}" + (f" (kernel drops {i['kernel_drops']})"
                                                         if i["kernel_drops"] else "") for i in doc["interfaces"])
    lines.append(f"  interfaces: {ifaces}")
    if doc["snapshot"]:
        lines.append(f"  configuration: {doc['snapshot']}")
    for note in doc["notes"]:
        lines.append(f"  note: {note}")
    shown = 0
    for conn in doc["connections"]:
        if shown >= limit:
            rest = len(doc["connections"]) - shown
            lines.append(f"\n… {rest} more connection(s) (--json lists all)")
            break
        shown += 1
        lan, wan = conn["flow"]["lan"], conn["flow"]["wan"]
        head = f"{lan['src']}:{lan['sport']} → {lan['dst']}:{lan['dport']}"
        if wan and (wan["src"], wan["sport"]) != (lan["src"], lan["sport"]):
            head += f"  (after NAT {wan['src']}:{wan['sport']}, paired by {conn['flow']['pairing']})"
        elif wan:
            head += f"  (paired by {conn['flow']['pairing']})"
        route = conn["interfaces"]["in"] + (f" → {conn['interfaces']['out']}" if conn["interfaces"]["out"] else "")
        lines.append("")
        lines.append(f"{c(conn['verdict'].upper(), COLOURS[conn['verdict']])}  {head}  [{route}]")
        lines.append(f"  {conn['duration']:.3f} s, {conn['bytes']['to_server']} bytes to the server, "
                     f"{conn['bytes']['to_client']} to the client")
        for reason in conn["reasons"]:
            lines.append(f"  why: {reason}")
        for name, hs in conn["handshake"].items():
            if hs:
                lines.append(f"  handshake on {name}: server {_fmt(hs['server_rtt_ms'])}, client "
                             f"{_fmt(hs['client_rtt_ms'])} ({hs['syns']} SYN)")
        lines += _rtt_table(conn["rtt"])
        lines += [f"  {line}" for line in sack_lines(conn["retransmissions"])]
        for direction, where in conn["retransmissions"]["where"].items():
            if any(where.values()) and conn["verdict"] != "failed":  # (a failed one only repeated its SYN)
                lines.append(f"  losses to the {direction[3:]}: {where['inside_router']} inside the router, "
                             f"{where['beyond_router']} beyond it, {where['before_router']} before it")
        for m in conn["icmp"]:
            lines.append(f"  #{m['packet']} {m['interface']}: {m['text']}")
        for r in conn["resets"]:
            lines.append(f"  #{r['packet']} {r['interface']}: reset by the {r['by']}")
        for s in conn["suspects"]:
            lines.append(f"  {c(s['id'], '1')} {s['title']} (score {s['score']})")
            lines.append(f"      {s['summary']}")
            for e in s["evidence"][:6]:
                where = f"#{e['packet']} " if e["packet"] else ""
                lines.append(f"      evidence: {where}{e['interface'] + ' ' if e['interface'] else ''}"
                             f"{_t(e['time']).strip() + ' ' if e['time'] is not None else ''}{e['text']}")
            for tie in s["config"]:
                lines.append(f"      config: {ties.describe(tie)}")
            for fix in s["fix"]["commands"]:
                lines.append(f"      fix: {fix}")
        for f in conn["findings"]:
            if not any(f["id"] in s["findings"] for s in conn["suspects"]):
                lines.append(f"  finding {f['id']} ({f['severity']}) {f['title']}")
    return "\n".join(lines) + "\n"


RTT_SOURCES = (("data/ACK", lambda rtt, d: rtt[d]), ("timestamps", lambda rtt, d: rtt["timestamps"][d]))


def rtt_rows(rtt_by_interface: dict) -> list[tuple[str, str, dict]]:
    """(label, source, summary) of each RTT with samples, from each interface towards each end
    (`br-lan→server`: from the capture point to the server and back); the label only on the first
    row of its interface and end."""
    rows = []
    for name, rtt in rtt_by_interface.items():
        for d, end in (("to_server", "server"), ("to_client", "client")):
            label = f"{name}→{end}"
            for source, pick in RTT_SOURCES:
                r = pick(rtt, d)
                if r:
                    rows.append((label, source, r))
                    label = ""
    return rows


def _rtt_table(rtt_by_interface: dict) -> list[str]:
    """The RTT by interface, end and source as an aligned table; nothing without samples."""
    rows = rtt_rows(rtt_by_interface)
    if not rows:
        return []
    width = max(len("RTT (ms)") - 2, *(len(label) for label, _, _ in rows))
    out = [f"  {'RTT (ms)':<{width + 2}}  {'source':<10}  {'samples':>7}  {'min':>7}  {'median':>7}  {'p95':>7}"]
    for label, source, r in rows:
        out.append(f"    {label:<{width}}  {source:<10}  {r['samples']:>7}  {r['min']:>7.1f}  {r['median']:>7.1f}  "
                   f"{r['p95']:>7.1f}")
    return out


def sack_groups(retransmissions: dict) -> list[tuple[list[str], str, int, int]]:
    """What SACK showed, per direction: (interfaces, "server" or "client", holes the receiver
    signalled, retransmissions of data it already had). Interfaces that saw the same (the ACKs
    pass both sides of the router) are one group; directions without either are left out."""
    seen: dict[tuple, list[str]] = {}
    for name, r in retransmissions.items():
        if name != "where":
            for d in ("to_server", "to_client"):
                counts = (r["sack_holes"][d], r["sacked"][d])
                if any(counts):
                    seen.setdefault((d[3:], *counts), []).append(name)
    return [(names, end, holes, sacked) for (end, holes, sacked), names in seen.items()]


def sack_lines(retransmissions: dict) -> list[str]:
    """What SACK showed, one sentence a group of sack_groups()."""
    out = []
    for names, end, holes, sacked in sack_groups(retransmissions):
        parts = [f"the receiver signalled {holes} hole(s)"] if holes else []
        if sacked:
            parts.append(f"{sacked} retransmission(s) of data it had SACKed (spurious: not counted as loss)")
        out.append(f"SACK on {' and '.join(names)} to the {end}: {', '.join(parts)}")
    return out


def _fmt(ms) -> str:
    return "?" if ms is None else f"{ms:.1f} ms"
