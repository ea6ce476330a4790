"""`postmortem --report report.html`: one self-contained page — the connection table, and for each
connection that is not ok its suspects, decision path and a time–sequence graph (Stevens/tcptrace
style: data segments, the ACK line, the receive window, retransmissions marked; the router's two
sides overlaid), drawn by matplotlib as inline SVG.

The graphs need per-packet points, which the streaming analysis does not keep: a second pass over
the capture collects them for the graphed connections only (at most MAX_POINTS per side).
"""

from __future__ import annotations

import html
import io
import struct

from tracer.capture import pcapio, ties
from tracer.capture.postmortem import Report, to_dict
from tracer.errors import EnvironmentProblem

MAX_GRAPHS = 20
MAX_POINTS = 20_000
COLOURS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd"]
_IP4TCP = struct.Struct("!BBHHHBBH4s4sHHIIBBH").unpack_from


class _Series:
    __slots__ = ("data", "retrans", "acks", "window", "base", "ackbase", "top", "wscale")

    def __init__(self, base: int | None, ackbase: int | None, wscale: int):
        self.data, self.retrans, self.acks, self.window = [], [], [], []
        self.base, self.ackbase, self.top, self.wscale = base, ackbase, 0, wscale


def _points(report: Report, conns) -> dict:
    """{(iface, src, sport, dst, dport) of the data direction: _Series} for the graphed sides."""
    import socket

    wanted: dict[tuple, tuple] = {}
    for conn in conns:
        d = 0 if conn.first.h[0].payload >= conn.first.h[1].payload else 1
        for side in conn.sides:
            c, s = side.client, side.server
            fwd = (c, s) if d == 0 else (s, c)
            key = (side.iface, socket.inet_aton(fwd[0][0]), fwd[0][1], socket.inet_aton(fwd[1][0]), fwd[1][1])
            series = _Series(side.h[d].isn, None, side.h[1 - d].wscale if side.scaled else 0)
            wanted[key] = ("data", series)
            wanted[(key[0], key[3], key[4], key[1], key[2])] = ("ack", series)
    capture = pcapio.read(report.capture.path)
    for _n, ts, iface, buf, off, caplen, _o in capture.packets():
        lt = capture.interfaces[iface].linktype if iface < len(capture.interfaces) else 1
        if lt == 1:
            if caplen < 54 or buf[off + 12] != 8 or buf[off + 13] != 0:
                continue
            off += 14
        elif lt == 113:
            off += 16
        elif lt not in (101, 12, 228):
            continue
        if buf[off] != 0x45 or buf[off + 9] != 6:
            continue
        (_v, _t, ip_len, _i, _f, _ttl, _p, _s, src, dst, sport, dport, seq, ack, offx, flags,
         win) = _IP4TCP(buf, off)
        found = wanted.get((iface, src, sport, dst, dport))
        if found is None:
            continue
        role, series = found
        if role == "data":
            seglen = ip_len - 20 - (offx >> 4) * 4
            if series.base is None:
                series.base = seq
            rel = (seq - series.base) & 0xFFFFFFFF
            if seglen > 0 and len(series.data) < MAX_POINTS:
                if rel + seglen <= series.top:
                    series.retrans.append((ts, rel, rel + seglen))
                else:
                    series.data.append((ts, rel, rel + seglen))
                series.top = max(series.top, rel + seglen)
        elif flags & 0x10 and len(series.acks) < MAX_POINTS:
            base = series.base if series.base is not None else ack
            rel = (ack - base) & 0xFFFFFFFF
            if rel < 1 << 31:
                series.acks.append((ts, rel))
                series.window.append((ts, rel + (win << series.wscale if not flags & 0x02 else win)))
    return {key: found[1] for key, found in wanted.items() if found[0] == "data"}


def _graph(conn, series_by_side: list, names: list[str], t0: float) -> str:
    import matplotlib

    matplotlib.use("svg")
    from matplotlib import pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 4.2))
    for i, (series, name) in enumerate(zip(series_by_side, names, strict=True)):
        colour = COLOURS[i % len(COLOURS)]
        if series.data:
            ax.vlines([p[0] - t0 for p in series.data], [p[1] for p in series.data], [p[2] for p in series.data],
                      colors=colour, linewidth=1.2, label=f"data on {name}")
        if series.acks:
            ax.step([p[0] - t0 for p in series.acks], [p[1] for p in series.acks], where="post", color=colour,
                    alpha=0.6, linewidth=0.9, label=f"ACK on {name}")
            ax.step([p[0] - t0 for p in series.window], [p[1] for p in series.window], where="post", color=colour,
                    alpha=0.35, linestyle="--", linewidth=0.8, label=f"receive window on {name}")
        if series.retrans:
            ax.scatter([p[0] - t0 for p in series.retrans], [p[1] for p in series.retrans], marker="x",
                       color="black" if i == 0 else "#ff7f0e", s=28, zorder=5,
                       label=f"retransmission on {name}")
    for suspect in conn.suspects[:1]:
        for number, t, _iface, _text in suspect.evidence[:10]:
            if t is not None and number:
                ax.axvline(t - t0, color="#aaaaaa", linewidth=0.5, zorder=0)
    ax.set_xlabel("seconds since the connection's first packet")
    ax.set_ylabel("relative sequence number (bytes)")
    ax.legend(fontsize=7, loc="upper left")
    ax.grid(alpha=0.25)
    fig.tight_layout()
    out = io.StringIO()
    fig.savefig(out, format="svg")
    plt.close(fig)
    svg = out.getvalue()
    return svg[svg.index("<svg"):]


def _e(text) -> str:
    return html.escape(str(text))


STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; }
table { border-collapse: collapse; font-size: 13px; }
td, th { border: 1px solid #ccc; padding: 3px 7px; text-align: left; vertical-align: top; }
.failed, .stalled { color: #b00; font-weight: bold; } .slow { color: #b60; font-weight: bold; }
.ok { color: #080; } code { background: #f4f4f4; padding: 0 3px; } .conn { margin-top: 2.5em; }
.suspect { border-left: 4px solid #b00; padding-left: 1em; margin: 1em 0; } .dim { color: #666; }
"""


def render(report: Report) -> str:
    doc = to_dict(report)
    graphed = [c for c in report.connections if c.verdict != "ok"][:MAX_GRAPHS]
    series = _points(report, graphed) if graphed else {}
    v = doc["verdicts"]
    out = ["<!DOCTYPE html><html><head><meta charset='utf-8'><title>why-route postmortem</title>",
           f"<style>{STYLE}</style></head><body>",
           f"<h1>why-route postmortem</h1><p>{_e(doc['capture'])}: {doc['packets']} packets, "
           f"{len(doc['connections'])} TCP connections — {v['failed']} failed, {v['stalled']} stalled, "
           f"{v['slow']} slow, {v['ok']} ok.</p>"]
    if doc["snapshot"]:
        out.append(f"<p class='dim'>configuration: {_e(doc['snapshot'])}</p>")
    out.append("<table><tr><th>#</th><th>verdict</th><th>connection (LAN side)</th><th>after NAT</th>"
               "<th>interfaces</th><th>duration</th><th>bytes →/←</th><th>retransmissions (all sides)</th>"
               "<th>top suspect</th></tr>")
    for i, c in enumerate(doc["connections"]):
        lan, wan = c["flow"]["lan"], c["flow"]["wan"]
        retrans = sum(x["to_server"] + x["to_client"] for k, x in c["retransmissions"].items() if k != "where")
        top = c["suspects"][0] if c["suspects"] else None
        anchor = f"<a href='#c{i}'>{i + 1}</a>" if i < len(graphed) else str(i + 1)
        out_if = c["interfaces"]["out"]
        route = _e(c["interfaces"]["in"]) + (" → " + _e(out_if) if out_if else "")
        out.append(f"<tr><td>{anchor}</td><td class='{c['verdict']}'>{c['verdict']}</td>"
                   f"<td>{_e(lan['src'])}:{lan['sport']} → {_e(lan['dst'])}:{lan['dport']}</td>"
                   f"<td>{_e(wan['src']) + ':' + str(wan['sport']) if wan else ''}</td>"
                   f"<td>{route}</td>"
                   f"<td>{c['duration']:.3f} s</td><td>{c['bytes']['to_server']} / {c['bytes']['to_client']}</td>"
                   f"<td>{retrans}</td><td>{_e(top['id'] + ' ' + top['title']) if top else ''}</td></tr>")
    out.append("</table>")
    for i, conn in enumerate(graphed):
        c = doc["connections"][i]
        lan = c["flow"]["lan"]
        out.append(f"<div class='conn' id='c{i}'><h2>{i + 1}. <span class='{c['verdict']}'>{c['verdict']}</span> "
                   f"{_e(lan['src'])}:{lan['sport']} → {_e(lan['dst'])}:{lan['dport']}</h2>")
        for reason in c["reasons"]:
            out.append(f"<div>why: {_e(reason)}</div>")
        path = ties.route(conn.explanation) + ties.nat(conn.explanation)
        if path:
            out.append("<h3>Decision path</h3><ol>" + "".join(f"<li>{_e(ties.describe(t))}</li>" for t in path)
                       + "</ol>")
        for s in c["suspects"]:
            out.append(f"<div class='suspect'><b>{_e(s['id'])} {_e(s['title'])}</b> (score {s['score']})<br>"
                       f"{_e(s['summary'])}<ul>")
            for e in s["evidence"][:8]:
                where = f"#{e['packet']} " if e["packet"] else ""
                when = f"{e['time']:.6f} s " if e["time"] is not None else ""
                out.append(f"<li>evidence: {where}{_e(e['interface'] or '')} {when}{_e(e['text'])}</li>")
            for t in s["config"]:
                out.append(f"<li>config: <code>{_e(ties.describe(t))}</code></li>")
            for f in s["fix"]["commands"]:
                out.append(f"<li>fix: <code>{_e(f)}</code></li>")
            out.append("</ul></div>")
        sides = [series.get(_key(conn, side)) for side in conn.sides]
        if any(sides):
            present = [(s, n) for s, n in zip(sides, conn.names, strict=True) if s is not None]
            out.append("<h3>Time–sequence graph</h3>")
            out.append(_graph(conn, [s for s, _ in present], [n for _, n in present], conn.start))
        out.append("</div>")
    out.append("</body></html>")
    return "\n".join(out)


def _key(conn, side):
    import socket

    d = 0 if conn.first.h[0].payload >= conn.first.h[1].payload else 1
    c, s = side.client, side.server
    fwd = (c, s) if d == 0 else (s, c)
    return (side.iface, socket.inet_aton(fwd[0][0]), fwd[0][1], socket.inet_aton(fwd[1][0]), fwd[1][1])


def write(report: Report, path: str) -> None:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise EnvironmentProblem("--report needs matplotlib (apt-get install python3-matplotlib)") from None
    with open(path, "w") as f:
        f.write(render(report))
