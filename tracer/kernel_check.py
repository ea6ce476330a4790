"""Live mode's cross-check: ask the kernel the same routing question (RTM_GETROUTE).

Two questions per flow: the plain route query (device, gateway, source, errno,
table via RTM_F_LOOKUP_TABLE) and RTM_F_FIB_MATCH (the matched route itself).
Any difference is reported, never hidden.
"""

from __future__ import annotations

import errno as errno_mod

from tracer import netns as netns_mod
from tracer.collect.netlink import NetlinkError, RtnlSocket
from tracer.model import AF_INET, Route
from tracer.sim.explain import Decision, Explanation

_COMPARED = ("error", "type", "dev", "gateway", "table")


def _errno_name(exc: NetlinkError) -> str:
    return errno_mod.errorcode.get(exc.errno, str(exc.errno))


def ask(rtnl: RtnlSocket, decision: Decision) -> dict:
    """The kernel's answer to the query behind one simulated decision."""
    q = decision.query
    index = {name: i for i, name in rtnl.names.items()}
    kwargs = dict(family=q.family, dst=q.dst, src=q.src, mark=q.mark or None, uid=q.uid,
                  proto=q.proto or None, sport=q.sport, dport=q.dport, tos=q.tos)
    for key, name in (("iif", q.iif), ("oif", q.oif)):
        if name:
            if name not in index:
                return {"error": "ENODEV", "text": f"interface {name} no longer exists"}
            kwargs[key] = index[name]
    try:
        route = rtnl.route_get(**kwargs)
    except NetlinkError as exc:
        return {"error": _errno_name(exc), "text": f"RTNETLINK answers: {exc.strerror}"}
    answer = {"error": None, "type": route.type, "dev": route.dev, "gateway": route.gateway,
              "prefsrc": route.prefsrc, "table": route.table}
    try:
        matched = rtnl.route_get(fibmatch=True, **kwargs)
        answer["route"] = matched.prefix
        answer["nexthops"] = [{"gateway": h.gateway, "dev": h.dev} for h in matched.nexthops]
    except NetlinkError as exc:  # fibmatch can refuse what the plain query answers
        answer["route"] = None
        answer["fibmatch_error"] = _errno_name(exc)
    answer["text"] = _answer_text(answer, route)
    return answer


def _answer_text(answer: dict, route: Route) -> str:
    words = [answer["type"] if answer["type"] != "unicast" else "", route.dst]
    if answer["gateway"]:
        words += ["via", answer["gateway"]]
    words += ["dev", str(answer["dev"]), "table", str(answer["table"])]
    if answer["prefsrc"]:
        words += ["src", answer["prefsrc"]]
    if answer.get("route"):
        words += ["(fibmatch:", f"{answer['route']})"]
    return " ".join(w for w in words if w)


def compare(decision: Decision, answer: dict) -> list[str]:
    """Differences between our decision and the kernel's answer (empty: agree)."""
    r = decision.result
    ours = {"error": r.error, "type": r.type, "dev": r.dev, "gateway": r.gateway, "table": r.table}
    if answer["error"] or r.error:
        keys = ("error",)
    else:
        keys = _COMPARED
    differences = []
    for key in keys:
        theirs = answer.get(key)
        if key in ("dev", "gateway") and r.nexthop is None and len(r.nexthops) > 1:
            # Multipath with a hash-dependent pick: the kernel's nexthop must be one of ours.
            if not any(getattr(h, key) == theirs for h in r.nexthops):
                differences.append(f"{key}: kernel {theirs}, not among our nexthops")
            continue
        if ours[key] != theirs:
            differences.append(f"{key}: why-route {ours[key]}, kernel {theirs}")
    if not (answer["error"] or r.error):
        # IPv6 source selection is approximated (explain notes it), not compared.
        if decision.query.src is None and decision.query.family == AF_INET and r.prefsrc != answer.get("prefsrc"):
            differences.append(f"source: why-route {r.prefsrc}, kernel {answer.get('prefsrc')}")
        if answer.get("route") and r.route and r.route.prefix != answer["route"]:
            differences.append(f"matched route: why-route {r.route.prefix}, kernel {answer['route']}")
    return differences


def cross_check(explanation: Explanation, netns: str | None) -> Explanation:
    """Attach the kernel's answer for every routing decision of the explanation."""
    if not explanation.decisions:
        return explanation
    with netns_mod.entered(netns), RtnlSocket() as rtnl:
        # The state was read from this kernel a moment ago: its links name the ifindexes.
        rtnl.names = {link.index: link.name for link in explanation.state.links}
        answers = [ask(rtnl, d) for d in explanation.decisions]
    differences = [diff for d, a in zip(explanation.decisions, answers) for diff in compare(d, a)]
    final = answers[-1]
    return explanation.with_kernel({
        **final,
        "agrees": not differences,
        "differences": differences,
        "queries": len(answers),
    })
