"""What `why-route trace` prints besides the flows: the probe check, the start line, the summary."""

from __future__ import annotations

import platform

from tracer.trace.collectors import Collector, Offer


def check_doc(collectors: list[Collector], others: list[Offer]) -> dict:
    probes = []
    for c in collectors:
        why = c.can_run()
        offered = why is None or why.startswith(("disabled", "opt-in"))
        probes.append({"name": c.name, "probe": c.what, "offered": offered, "used": why is None, "why": why,
                       "as": c.attach_as() if why is None else None})
    what = {"tp_btf": "BTF-typed tracepoints for fib, fib6 and drop (their arguments read without helper calls)"}
    for o in others:
        probes.append({"name": o.name, "probe": what.get(o.name, o.name), "offered": o.offered, "used": o.used,
                       "why": o.why})
    return {"type": "check", "kernel": platform.release(), "probes": probes}


def check_text(doc: dict) -> str:
    lines = [f"why-route trace: probes on kernel {doc['kernel']}"]
    width = max(len(p["name"]) for p in doc["probes"])
    for p in doc["probes"]:
        state = (f"used ({p['as']})" if p.get("as") else "used" if p["used"] else "not tried" if p["offered"] is None
                 else "offered, not used" if p["offered"] else "unavailable")
        lines.append(f"  {p['name']:<{width}}  {state:<17}  {p['probe']}")
        if p["why"]:
            lines.append(f"  {'':<{width}}  {'':<17}  why: {p['why']}")
    return "\n".join(lines)


def _probes(names: list[str], attached_as: dict[str, str]) -> str:
    return ", ".join(f"{n} ({attached_as[n]})" if n in attached_as else n for n in names) or "none"


def start_line(netns: str | None, what: str, summary) -> str:
    where = f"netns {netns}" if netns else "this host"
    line = f"why-route trace: {where}, {what}; probes: {_probes(summary.probes, summary.attached_as)}"
    if summary.unavailable:
        line += "; unavailable: " + "; ".join(f"{n} ({why})" for n, why in summary.unavailable.items())
    return line + " — Ctrl-C to stop"


def summary_text(doc: dict) -> str:
    text = (f"why-route trace: {doc['flows']} flows, {doc['events']} events, {doc['lost']} lost, "
            f"{doc['duration']} s; probes: {_probes(doc['probes'], doc.get('attached_as', {}))}")
    if doc.get("not_compared"):
        text += f"; {doc['not_compared']} not compared with the simulation (too far behind the kernel)"
    if doc.get("unavailable"):
        text += "; unavailable: " + "; ".join(f"{n} ({why})" for n, why in doc["unavailable"].items())
    return text
