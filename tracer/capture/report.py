"""`postmortem --report report.html`: one self-contained page — the connection table, and for each
connection that is not ok its suspects, decision path and a time–sequence graph (Stevens/tcptrace
style: data segments, the ACK line, the receive window, retransmissions marked, the receiver's SACK
blocks as short bars above the ACK line; the router's two sides overlaid) over an RTT-over-time
panel (data/ACK samples and TCP timestamp samples, per interface), drawn by matplotlib as inline SVG.

The graphs need per-packet points, which the streaming analysis does not keep: a second pass over
the capture (decoded as the analysis decodes it) collects them for the graphed connections only
(at most MAX_POINTS per side and kind). Its RTT samples are tcptrace's: every ACK that acknowledges
exactly the end of a segment sent once (Karn's rule) — more than the analysis's one timed segment
per round trip, as a graph wants; and every timestamp echo, paired as the analysis pairs them.
"""

from __future__ import annotations

import html
import io
import ipaddress
from collections import deque

from tracer.capture import decode, pcapio, ties
from tracer.capture.postmortem import Report, to_dict
from tracer.capture.render import rtt_rows, sack_lines
from tracer.errors import EnvironmentProblem

MAX_GRAPHS = 20
MAX_POINTS = 20_000
MAX_PENDING = 4096  # timed TSvals and sent segments awaiting their echo or ACK, per side
COLOURS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd"]
SACK_COLOURS = ["#8e44ad", "#e67e22", "#16a085", "#7f8c8d"]
_M = 0xFFFFFFFF
SYN, ACK = 0x02, 0x10


class _Series:
    """One side's points for the graphs, the data direction's sequence numbers relative to `base`."""

    __slots__ = ("data", "retrans", "acks", "window", "sacks", "base", "top", "wscale", "rtt_data", "rtt_far",
                 "rtt_near", "_sent", "_resent", "_timed", "_newest")

    def __init__(self, base: int | None, wscale: int):
        self.data, self.retrans, self.acks, self.window, self.sacks = [], [], [], [], []
        self.rtt_data, self.rtt_far, self.rtt_near = [], [], []  # (time of the answer, seconds)
        self.base, self.top, self.wscale = base, 0, wscale
        self._sent: deque = deque()  # (relative end, time) of segments sent once, in order
        self._resent: set[int] = set()  # ends of segments sent again: their ACK is ambiguous
        self._timed: list[dict] = [{}, {}]  # per sender (0 data, 1 ACKs): TSval -> when it first passed
        self._newest: list[int | None] = [None, None]

    def segment(self, sender: int, t: float, seq: int, ack: int, flags: int, win: int, seglen: int, tsval: int,
                tsecr: int, sack) -> None:
        """One segment: `sender` 0 from the data's sender, 1 from its receiver."""
        if tsval >= 0:
            self._timestamps(sender, t, tsval, tsecr if flags & ACK else -1)
        if sender == 0:
            if self.base is None:
                self.base = seq
            if seglen > 0:
                self._data(t, (seq - self.base) & _M, seglen)
            return
        if not flags & ACK:
            return
        base = self.base if self.base is not None else ack
        rel = (ack - base) & _M
        if rel >= 1 << 31:
            return
        self._acked(t, rel)
        if len(self.acks) < MAX_POINTS:
            self.acks.append((t, rel))
            self.window.append((t, rel + (win if flags & SYN else win << self.wscale)))
        for left, right in sack:
            start, end = (left - base) & _M, (right - base) & _M
            if start < end < 1 << 31 and len(self.sacks) < MAX_POINTS:
                self.sacks.append((t, start, end))

    def _data(self, t: float, rel: int, seglen: int) -> None:
        end = rel + seglen
        if end <= self.top:
            self._resent.add(end)
            if len(self.retrans) < MAX_POINTS:
                self.retrans.append((t, rel, end))
            return
        if len(self.data) < MAX_POINTS:
            self.data.append((t, rel, end))
        self.top = end
        self._sent.append((end, t))
        if len(self._sent) > MAX_PENDING:
            self._sent.popleft()

    def _acked(self, t: float, rel: int) -> None:
        sent = self._sent
        while sent and sent[0][0] <= rel:
            end, when = sent.popleft()
            if end == rel and end not in self._resent and len(self.rtt_data) < MAX_POINTS:
                self.rtt_data.append((t, t - when))

    def _timestamps(self, sender: int, t: float, tsval: int, tsecr: int) -> None:
        newest = self._newest[sender]
        if newest is None or 0 < (tsval - newest) & _M < 1 << 31:
            timed = self._timed[sender]
            timed.setdefault(tsval, t)
            if len(timed) > MAX_PENDING:
                del timed[next(iter(timed))]
            self._newest[sender] = tsval
        peer = self._timed[1 - sender]
        if tsecr > 0 and tsecr in peer:
            # the data sender's TSval echoed by the receiver: the far end's RTT; the reverse, the near end's
            samples = self.rtt_far if sender == 1 else self.rtt_near
            when = peer.pop(tsecr)
            if len(samples) < MAX_POINTS:
                samples.append((t, t - when))


def _data_direction(conn) -> int:
    return 0 if conn.first.h[0].payload >= conn.first.h[1].payload else 1


def _points(report: Report, conns) -> dict:
    """{id(side): _Series} for every side of the graphed connections."""
    import numpy as np

    addresses = decode.Addresses()

    def address_id(text: str) -> int:
        address = ipaddress.ip_address(text)
        return int(address) if address.version == 4 else addresses.v6_id(address.packed)

    wanted: dict[tuple, tuple[_Series, int]] = {}  # (iface, src endpoint, dst endpoint) -> (series, sender)
    out = {}
    for conn in conns:
        d = _data_direction(conn)
        for side in conn.sides:
            ends = [(address_id(a), port) for a, port in (side.client, side.server)]
            sender, receiver = (ends[0], ends[1]) if d == 0 else (ends[1], ends[0])
            series = _Series(side.h[d].isn, side.h[1 - d].wscale if side.scaled else 0)
            forward = (side.iface, sender[0] << 16 | sender[1], receiver[0] << 16 | receiver[1])
            wanted[forward] = (series, 0)
            wanted[(side.iface, forward[2], forward[1])] = (series, 1)
            out[id(side)] = series
    endpoints = np.array(sorted({k[1] for k in wanted}), np.int64)
    capture = pcapio.read(report.capture.path)
    linktypes = [i.linktype for i in capture.interfaces]
    reassembly = decode.Reassembly()
    for batch in capture.batches():
        if len(linktypes) <= int(batch.iface.max()):
            linktypes += [1] * (int(batch.iface.max()) + 1 - len(linktypes))
        seg, _icmp = decode.decode(batch, linktypes, addresses, reassembly)
        ep_src, ep_dst = (seg.src << 16) | seg.sport, (seg.dst << 16) | seg.dport
        rows = np.flatnonzero(np.isin(ep_src, endpoints))
        sack = seg.sack or {}
        columns = [c[rows].tolist() for c in (seg.iface, ep_src, ep_dst, seg.time, seg.seq, seg.ack, seg.flags,
                                               seg.win, seg.seglen, seg.tsval, seg.tsecr)]
        for row, iface, src, dst, *fields in zip(rows.tolist(), *columns, strict=True):
            found = wanted.get((iface, src, dst))
            if found is not None:
                found[0].segment(found[1], *fields, sack.get(row, ()))
    return out


def _graph(conn, series_by_side: list, names: list[str], t0: float, gid: str) -> str:
    """The time–sequence graph, and under it the RTT over time when there are samples. The SVG
    groups carry ids `{gid}-{kind}-{interface}` (kind: data, ack, window, retransmissions, sack,
    rtt-data, rtt-timestamps-far, rtt-timestamps-near)."""
    import matplotlib

    matplotlib.use("svg")
    from matplotlib import pyplot as plt
    from matplotlib.ticker import FuncFormatter, LogLocator

    far, near = ("the server", "the client") if _data_direction(conn) == 0 else ("the client", "the server")
    has_rtt = any(s.rtt_data or s.rtt_far or s.rtt_near for s in series_by_side)
    if has_rtt:
        fig, (ax, rtt_ax) = plt.subplots(2, 1, figsize=(11, 6.4), sharex=True, height_ratios=(2.2, 1))
    else:
        fig, ax = plt.subplots(figsize=(11, 4.2))
    for i, (series, name) in enumerate(zip(series_by_side, names, strict=True)):
        colour = COLOURS[i % len(COLOURS)]

        def tagged(artist, kind, name=name):
            artist.set_gid(f"{gid}-{kind}-{name}")

        if series.data:
            tagged(ax.vlines([p[0] - t0 for p in series.data], [p[1] for p in series.data],
                             [p[2] for p in series.data], colors=colour, linewidth=1.2, label=f"data on {name}"),
                   "data")
        if series.acks:
            (line,) = ax.step([p[0] - t0 for p in series.acks], [p[1] for p in series.acks], where="post",
                              color=colour, alpha=0.6, linewidth=0.9, label=f"ACK on {name}")
            tagged(line, "ack")
            (line,) = ax.step([p[0] - t0 for p in series.window], [p[1] for p in series.window], where="post",
                              color=colour, alpha=0.35, linestyle="--", linewidth=0.8,
                              label=f"receive window on {name}")
            tagged(line, "window")
        if series.sacks:
            tagged(ax.vlines([p[0] - t0 for p in series.sacks], [p[1] for p in series.sacks],
                             [p[2] for p in series.sacks], colors=SACK_COLOURS[i % len(SACK_COLOURS)],
                             linewidth=1.4, alpha=0.5, zorder=1, label=f"SACK blocks on {name}"), "sack")
        if series.retrans:
            tagged(ax.scatter([p[0] - t0 for p in series.retrans], [p[1] for p in series.retrans], marker="x",
                              color="black" if i == 0 else "#ff7f0e", s=28, zorder=5,
                              label=f"retransmission on {name}"), "retransmissions")
        if has_rtt:
            for samples, kind, marker, what in (
                    (series.rtt_data, "rtt-data", "o", f"data/ACK on {name} (to {far})"),
                    (series.rtt_far, "rtt-timestamps-far", "+", f"timestamps on {name} (to {far})"),
                    (series.rtt_near, "rtt-timestamps-near", "1", f"timestamps on {name} (to {near})")):
                if samples:
                    tagged(rtt_ax.scatter([p[0] - t0 for p in samples], [max(p[1], 1e-6) * 1000 for p in samples],
                                          marker=marker, s=9 if marker == "o" else 22, color=colour,
                                          alpha=0.35 if marker == "o" else 0.8, linewidths=0.8, label=what), kind)
    for suspect in conn.suspects[:1]:
        for number, t, _iface, _text in suspect.evidence[:10]:
            if t is not None and number:
                ax.axvline(t - t0, color="#aaaaaa", linewidth=0.5, zorder=0)
    ax.set_ylabel("relative sequence number (bytes)")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1), borderaxespad=0)
    ax.grid(alpha=0.25)
    if has_rtt:
        rtt_ax.set_yscale("log")
        rtt_ax.yaxis.set_major_locator(LogLocator(base=10, numticks=12))
        rtt_ax.yaxis.set_major_formatter(FuncFormatter(lambda y, _pos: f"{y:g}"))
        rtt_ax.set_ylabel("RTT (ms, log scale)")
        rtt_ax.set_xlabel("seconds since the connection's first packet")
        rtt_ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1), borderaxespad=0)
        rtt_ax.grid(alpha=0.25)
    else:
        ax.set_xlabel("seconds since the connection's first packet")
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
        rows = rtt_rows(c["rtt"])
        if rows:
            out.append("<h3>RTT (ms)</h3><table><tr><th></th><th>source</th><th>samples</th><th>min</th>"
                       "<th>median</th><th>p95</th></tr>")
            out += [f"<tr><td>{_e(label)}</td><td>{source}</td><td>{r['samples']}</td><td>{r['min']:.1f}</td>"
                    f"<td>{r['median']:.1f}</td><td>{r['p95']:.1f}</td></tr>" for label, source, r in rows]
            out.append("</table>")
        out += [f"<div>{_e(line)}</div>" for line in sack_lines(c["retransmissions"])]
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
        present = [(series[id(side)], name) for side, name in zip(conn.sides, conn.names, strict=True)
                   if series[id(side)].data or series[id(side)].acks]
        if present:
            out.append("<h3>Time–sequence graph</h3>")
            out.append(_graph(conn, [s for s, _ in present], [n for _, n in present], conn.start, f"c{i}"))
        out.append("</div>")
    out.append("</body></html>")
    return "\n".join(out)


def write(report: Report, path: str) -> None:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise EnvironmentProblem("--report needs matplotlib (apt-get install python3-matplotlib)") from None
    with open(path, "w") as f:
        f.write(render(report))
