"""Key flows of a host and the facts of a flow's explanation, for lint's before → after and for verify.

The explanation itself comes from tracer.sim.explain (pure, from a HostState);
this module only picks the flows worth showing and reads the JSON contract.
"""

from __future__ import annotations

from tracer.checks.context import context_for
from tracer.model import AF_INET, TABLE_MAIN, HostState

INTERNET = {4: "8.8.8.8", 6: "2001:4860:4860::8888"}
MAX_FLOWS = 12


def key_flows(*states: HostState) -> list[tuple[str, str]]:
    """(src, dst) pairs: the sources of `from` rules and the first host of each connected LAN subnet,
    towards 8.8.8.8 and towards the gateway of each table's default route."""
    sources: list[str] = []
    destinations: dict[int, list[str]] = {4: [INTERNET[4]], 6: [INTERNET[6]]}
    for state in states:
        sources += [_host_in(state, r.src, r.src_len) for r in state.rules if r.src and r.src_len]
    for state in states:
        wan = {nh.dev for r in state.routes if r.dst_len == 0 for nh in r.nexthops}
        for route in state.routes:
            if route.dst_len == 0 and route.gateway:
                destinations[_family(route.gateway)].append(route.gateway)
            link = state.link(route.dev)
            if (route.table == TABLE_MAIN and route.protocol == "kernel" and route.type == "unicast"
                    and route.dev not in wan and link is not None and not link.pointopoint
                    and "LOOPBACK" not in link.flags and route.dst_len < (30 if route.family == AF_INET else 126)):
                sources.append(_host_in(state, route.dst, route.dst_len))
    flows = []
    for src in dict.fromkeys(s for s in sources if s):
        for dst in dict.fromkeys(destinations[_family(src)]):
            if dst != src:
                flows.append((src, dst))
    return flows[:MAX_FLOWS]


def _family(address: str) -> int:
    return 6 if ":" in address else 4


def _host_in(state: HostState, address: str, length: int) -> str | None:
    return context_for(state).representative_host(address, length)


def explain_doc(state: HostState, src: str | None, dst: str, **options) -> dict:
    """The JSON-contract dict of one flow, computed from `state` alone."""
    from tracer.sim.explain import explain, make_flow

    return explain(state, make_flow(dst, src, **options)).to_dict()


def facts(doc: dict) -> dict:
    """What users assert about a flow, read from its explanation."""
    decision = doc.get("decision") or {}
    egress = doc.get("egress") or {}
    rule = decision.get("rule") or {}
    nat = doc.get("nat") or []
    return {
        "verdict": doc.get("verdict"),
        "leaves_via": egress.get("dev"),
        "source": egress.get("src"),
        "gateway": egress.get("gateway") or decision.get("gateway"),
        "table": decision.get("table"),
        "table_id": decision.get("table_id"),
        "rule": rule.get("priority"),
        "nat": nat[0]["type"] if nat else None,
        "error": decision.get("error"),
    }


def summary(doc: dict) -> str:
    """One line: where the flow goes and why."""
    f = facts(doc)
    if f["verdict"] not in ("forwarded", "sent"):
        reason = doc.get("verdict_reason") or f["error"] or ""
        return f"{f['verdict']}" + (f": {reason}" if reason else "")
    parts = [f"leaves {f['leaves_via']}" + (f" via {f['gateway']}" if f["gateway"] else "")]
    parts.append(f"table {f['table']} (rule {f['rule']})" if f["rule"] is not None else f"table {f['table']}")
    parts.append(f"source {f['source']}" + (f" ({f['nat']})" if f["nat"] else ""))
    fell = [f"rule {r['priority']} matched but fell through ({r['reason']})"
            for r in doc.get("rules") or () if r.get("matched") and r.get("reason") and r["priority"] != f["rule"]
            and "lookup local" not in (r.get("text") or "")]
    return ", ".join(parts + fell)
