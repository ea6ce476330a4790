"""`postmortem --annotate OUT.pcapng`: the capture again, with a pcapng comment (Wireshark's
`frame.comment`) on the first packet of each connection (its verdict, RTT by source, SACK, decision
path, and each suspect's summary) and on each packet a suspect names as evidence."""

from __future__ import annotations

from tracer.capture import pcapio, ties
from tracer.capture.postmortem import Report, connection_dict
from tracer.capture.render import RTT_SOURCES, sack_groups


def decision_path(conn) -> str:
    parts = [ties.describe(t) for t in ties.route(conn.explanation) + ties.nat(conn.explanation)]
    return "; ".join(parts)


def measured(conn) -> list[str]:
    """The RTT (median per interface, direction and source) and what SACK showed, in brief."""
    doc = connection_dict(conn)
    rtt = []
    for name, by_source in doc["rtt"].items():
        for d in ("to_server", "to_client"):
            found = [f"{r['median']:.1f} ms ({source})" for source, pick in RTT_SOURCES if (r := pick(by_source, d))]
            if found:
                rtt.append(f"{name}→{d[3:]} {' '.join(found)}")
    out = [f"RTT median: {', '.join(rtt)}"] if rtt else []
    for names, end, holes, sacked in sack_groups(doc["retransmissions"]):
        parts = [f"{holes} hole(s) signalled"] if holes else []
        if sacked:
            parts.append(f"{sacked} retransmission(s) of SACKed data (not lost)")
        out.append(f"SACK on {' and '.join(names)} to the {end}: {', '.join(parts)}")
    return out


def comments(report: Report) -> dict[int, list[str]]:
    out: dict[int, list[str]] = {}
    for conn in report.connections:
        c, s = conn.lan[0:2], conn.lan[2:4]
        head = f"why-route: {c[0]}:{c[1]} -> {s[0]}:{s[1]} {conn.verdict.upper()}"
        if conn.reasons:
            head += f" ({'; '.join(conn.reasons)})"
        head += "".join(f"; {part}" for part in measured(conn))
        path = decision_path(conn)
        if path:
            head += f"; decision path: {path}"
        for side in conn.sides:
            out.setdefault(side.number_first, []).append(head)
        out[conn.first.number_first] += [f"why-route {found.id} {found.title}: {found.summary}"
                                         for found in conn.suspects]
        for suspect in conn.suspects:
            for number, _t, _iface, text in suspect.evidence:
                if number:
                    out.setdefault(number, []).append(f"why-route {suspect.id} {suspect.title}: {text}")
    return out


def write(report: Report, path: str) -> int:
    """Write the annotated copy; returns the number of comments."""
    notes = comments(report)
    capture = pcapio.read(report.capture.path)
    written = 0
    with pcapio.PcapngWriter(path) as out:
        declared = 0
        for number, ts, iface, buf, off, caplen, origlen in capture.packets():
            while declared <= iface and declared < len(capture.interfaces):
                i = capture.interfaces[declared]
                out.add_interface(i.name, i.linktype, i.description, per_second=i.per_second)
                declared += 1
            text = notes.get(number)
            if text:
                written += 1
            out.packet(iface, ts, buf[off:off + caplen], origlen, "\n".join(text) if text else None,
                       epoch=capture.epoch)
    return written
