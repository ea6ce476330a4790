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
        for name, rtt in conn["rtt"].items():
            r = rtt["to_server"]
            if r:
                lines.append(f"  RTT to the server on {name}: min {r['min']:.1f} / median {r['median']:.1f} / "
                             f"p95 {r['p95']:.1f} ms ({r['samples']} samples)")
        for direction, where in conn["retransmissions"]["where"].items():
            if any(where.values()) and conn["verdict"] != "failed":  # (a failed one only repeated its SYN)
                lines.append(f"  losses {direction.replace('_', ' ')}: {where['inside_router']} inside the router, "
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


def _fmt(ms) -> str:
    return "?" if ms is None else f"{ms:.1f} ms"
