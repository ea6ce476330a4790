"""tshark as the oracle: its tcp.analysis.* flags counted per connection and interface."""

from __future__ import annotations

import subprocess
from collections import defaultdict

FIELDS = ["frame.interface_name", "tcp.stream", "ip.src", "tcp.srcport", "ip.dst", "tcp.dstport", "tcp.flags.syn",
          "tcp.flags.ack", "tcp.analysis.retransmission", "tcp.analysis.fast_retransmission",
          "tcp.analysis.spurious_retransmission", "tcp.analysis.duplicate_ack", "tcp.analysis.zero_window",
          "tcp.analysis.initial_rtt", "ipv6.src", "ipv6.dst"]


def tshark_counts(path: str) -> dict[tuple, dict]:
    """{(interface name, client, client port, server, server port): counts} from tshark's analysis."""
    argv = ["tshark", "-n", "-r", path, "-Y", "tcp", "-T", "fields", "-E", "occurrence=f", "-E", "separator=\t"]
    for f in FIELDS:
        argv += ["-e", f]
    out = subprocess.run(argv, capture_output=True, text=True, check=True, timeout=300).stdout
    streams: dict[str, dict] = defaultdict(lambda: {"retransmissions": 0, "dup_acks": 0, "zero_windows": 0,
                                                    "initial_rtt": None, "key": None})
    for line in out.splitlines():
        (iface, stream, src, sport, dst, dport, syn, ack, retrans, fast, spurious, dup, zero,
         irtt, src6, dst6) = (line.split("\t") + [""] * len(FIELDS))[:len(FIELDS)]
        src, dst = src or src6, dst or dst6
        s = streams[stream]
        if s["key"] is None:
            # the client sent the first packet, unless it is a SYN/ACK
            if syn == "1" and ack == "1":
                s["key"] = (iface, dst, int(dport), src, int(sport))
            else:
                s["key"] = (iface, src, int(sport), dst, int(dport))
        if retrans or fast or spurious:
            s["retransmissions"] += 1
        if dup:
            s["dup_acks"] += 1
        if zero:
            s["zero_windows"] += 1
        if irtt and s["initial_rtt"] is None:
            s["initial_rtt"] = float(irtt)
    return {s["key"]: s for s in streams.values()}


def ours(path: str) -> dict[tuple, dict]:
    from tracer.capture import pcapio, tcp

    capture = pcapio.read(path)
    analysis = tcp.analyse(capture)
    out = {}
    for side in analysis.sides:
        name = capture.interfaces[side.iface].name if capture.format == "pcapng" else ""
        out[(name, *side.tuple)] = {
            "retransmissions": side.h[0].retransmissions + side.h[1].retransmissions,
            "dup_acks": side.h[0].dupacks + side.h[1].dupacks,
            "zero_windows": side.h[0].zero_windows + side.h[1].zero_windows,
            "initial_rtt": side.first_rtt or None,
        }
    return out


def disagreements(path: str) -> list[str]:
    theirs, mine = tshark_counts(path), ours(path)
    problems = []
    if set(theirs) != set(mine):
        problems.append(f"connections differ: only tshark {sorted(set(theirs) - set(mine))[:3]}, "
                        f"only why-route {sorted(set(mine) - set(theirs))[:3]}")
    for key in sorted(set(theirs) & set(mine)):
        t, m = theirs[key], mine[key]
        for what in ("retransmissions", "dup_acks", "zero_windows"):
            if abs(t[what] - m[what]) > 0.02 * max(t[what], 1):
                problems.append(f"{key}: {what} tshark {t[what]}, why-route {m[what]}")
        if (t["initial_rtt"] is None) != (m["initial_rtt"] is None) or (
                t["initial_rtt"] is not None and abs(t["initial_rtt"] - m["initial_rtt"]) > 0.001):
            problems.append(f"{key}: initial RTT tshark {t['initial_rtt']}, why-route {m['initial_rtt']}")
    return problems


def totals(counts: dict) -> dict:
    return {k: sum(c[k] for c in counts.values()) for k in ("retransmissions", "dup_acks", "zero_windows")}
