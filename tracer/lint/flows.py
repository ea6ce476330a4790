"""Key flows of a host and the facts of a flow's explanation, for lint's before → after and for verify.

The explanation itself comes from tracer.sim.explain (pure, from a HostState);
this module only picks the flows worth showing and reads the typed explanation.
"""

from __future__ import annotations

from tracer.checks.context import context_for
from tracer.flow import make_flow
from tracer.model import TABLE_MAIN, HostState
from tracer.sim.explain import explain
from tracer.sim.explanation import Explanation
from tracer.vocab import AF_INET, family_of

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
                destinations[family_of(route.gateway)].append(route.gateway)
            link = state.link(route.dev)
            if (route.table == TABLE_MAIN and route.protocol == "kernel" and route.type == "unicast"
                    and route.dev not in wan and link is not None and not link.pointopoint
                    and "LOOPBACK" not in link.flags and route.dst_len < (30 if route.family == AF_INET else 126)):
                sources.append(_host_in(state, route.dst, route.dst_len))
    flows = []
    for src in dict.fromkeys(s for s in sources if s):
        for dst in dict.fromkeys(destinations[family_of(src)]):
            if dst != src:
                flows.append((src, dst))
    return flows[:MAX_FLOWS]


def _host_in(state: HostState, address: str, length: int) -> str | None:
    return context_for(state).representative_host(address, length)


def explained(state: HostState, src: str | None, dst: str, **options) -> Explanation:
    """The explanation of one flow, computed from `state` alone."""
    return explain(state, make_flow(dst, src, **options))


def facts(explanation: Explanation) -> dict:
    """What users assert about a flow, read from its explanation."""
    decision = explanation.decision
    egress = explanation.egress
    result = decision.result if decision else None
    table = result.table if result else None
    nat = explanation.nat
    return {
        "verdict": explanation.verdict,
        "leaves_via": egress.dev if egress else None,
        "source": egress.src if egress else None,
        "gateway": (egress.gateway if egress else None) or (result.gateway if result else None),
        "table": explanation.state.table_name(table) if table is not None else None,
        "table_id": table,
        "rule": result.rule.priority if result and result.rule else None,
        "nat": nat[0].rewrite.type if nat else None,
        "error": result.error if result else None,
    }


def summary(explanation: Explanation) -> str:
    """One line: where the flow goes and why."""
    f = facts(explanation)
    if f["verdict"] not in ("forwarded", "sent"):
        reason = explanation.verdict_reason or f["error"] or ""
        return f"{f['verdict']}" + (f": {reason}" if reason else "")
    parts = [f"leaves {f['leaves_via']}" + (f" via {f['gateway']}" if f["gateway"] else "")]
    parts.append(f"table {f['table']} (rule {f['rule']})" if f["rule"] is not None else f"table {f['table']}")
    parts.append(f"source {f['source']}" + (f" ({f['nat']})" if f["nat"] else ""))
    walked = explanation.decision.rules_walked if explanation.decision else ()
    fell = [f"rule {r.rule.priority} matched but fell through ({r.reason})"
            for r in walked if r.matched and r.reason and r.rule.priority != f["rule"] and "lookup local" not in r.text]
    return ", ".join(parts + fell)


def explained_after(state: HostState, before: Explanation) -> tuple[Explanation | None, str | None]:
    """The flow of `before` explained in `state` (after a script): (explanation, None), or (None, why the
    flow cannot even be asked) when its input interface is gone. A forwarded flow keeps the input
    interface it came in on before (inferring it anew would have LAN traffic enter by the WAN once
    the script deletes the LAN's interface or its routes)."""
    flow = before.flow
    if not flow.iif:
        return explained(state, flow.src, flow.dst), None
    if state.link(flow.iif) is None:
        return None, f"its input interface {flow.iif} no longer exists"
    return explained(state, flow.src, flow.dst, iif=flow.iif), None
