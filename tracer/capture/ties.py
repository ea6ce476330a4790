"""The configuration objects a suspect ties to, taken from the explanation of the flow on the
snapshot: the deciding ip rule, the table and route, the egress device and its MTU, NAT, and the
netfilter rules (by family, table, chain and handle) that can drop or reject the connection's packets.
"""

from __future__ import annotations

from tracer.sim import fib
from tracer.sim.explain import ruleset_of
from tracer.sim.explanation import Explanation


def route(explanation: Explanation | None) -> list[dict]:
    """The decision that sends the flow where it goes: rule → table → route → device."""
    if explanation is None or explanation.decision is None:
        return []
    d = explanation.decision
    state = explanation.state
    out = []
    if d.rule is not None:
        out.append({"kind": "ip rule", "priority": d.rule.priority, "text": d.rule_text})
    if d.route is not None:
        table = state.table_name(d.table_id) if d.table_id is not None else None
        out.append({"kind": "route", "table": table, "table_id": d.table_id,
                    "text": f"{fib.route_text(state, d.route)} (table {table})"})
    egress = explanation.egress
    if egress is not None and egress.dev:
        link = state.link(egress.dev)
        out.append({"kind": "device", "dev": egress.dev, "mtu": link.mtu if link else egress.mtu,
                    "text": f"dev {egress.dev} mtu {link.mtu if link else egress.mtu}"
                            + (f" via {egress.gateway}" if egress.gateway else "")})
    return out


def nat(explanation: Explanation | None) -> list[dict]:
    if explanation is None:
        return []
    return [{"kind": "nat", "type": n.rewrite.type, "field": n.rewrite.field, "to": n.rewrite.to,
             "handle": n.rewrite.handle, "text": n.rewrite.rule} for n in explanation.nat]


def _rule_dict(chain, rule, why: str) -> dict:
    handle = rule.nft_handle if rule.nft_handle is not None else rule.id
    return {"kind": f"{chain.source} rule", "family": chain.family, "table": chain.table, "chain": chain.name,
            "hook": chain.hook, "handle": handle, "text": rule.text, "why": why}


def _chains(state, hooks):
    ruleset = ruleset_of(state)
    seen = set()
    for family in ("ip", "inet", "ip6"):
        for hook in hooks:
            for chain in ruleset.base_chains(family, hook):
                if chain.key not in seen:
                    seen.add(chain.key)
                    yield chain
    for chain in ruleset.chains.values():  # chains jumped to from those hooks
        if chain.key not in seen and set(ruleset.reachable.get(chain.key, ())) & set(hooks):
            seen.add(chain.key)
            yield chain


def _drops(rule) -> bool:
    words = rule.text.replace(";", " ").split()
    return "drop" in words or "reject" in words or "DROP" in words or "REJECT" in words or "-j DROP" in rule.text


def icmp_blocking_rules(state) -> list[dict]:
    """Rules in output or forward that drop ICMP destination-unreachable / fragmentation-needed
    (the router's own ICMP errors leave through output; forwarded ones through forward)."""
    if state is None:
        return []
    out = []
    for chain in _chains(state, ("output", "forward")):
        for rule in chain.rules:
            text = rule.text
            if not _drops(rule):
                continue
            lowered = text.lower()
            if ("icmp" in lowered and ("destination-unreachable" in lowered or "frag-needed" in lowered
                                       or "fragmentation-needed" in lowered or "type 3" in lowered
                                       or "packet-too-big" in lowered or lowered.rstrip().endswith("icmp drop")
                                       or "protocol icmp" in lowered or "-p icmp" in lowered)):
                out.append(_rule_dict(chain, rule, "drops ICMP destination-unreachable (fragmentation needed)"))
    return out


def random_drop_rules(state, hooks=("prerouting", "forward", "postrouting", "input", "output")) -> list[dict]:
    """Rules that drop a share of packets at random or by rate (nft numgen random, iptables
    statistic, limit), in the hooks a forwarded packet crosses."""
    if state is None:
        return []
    out = []
    for chain in _chains(state, hooks):
        for rule in chain.rules:
            lowered = rule.text.lower()
            if _drops(rule) and ("numgen random" in lowered or "statistic" in lowered or "limit" in lowered
                                 or "random" in lowered):
                out.append(_rule_dict(chain, rule, "drops a share of the packets it matches"))
    return out


def path_drop_rules(explanation: Explanation | None) -> list[dict]:
    """Rules on the flow's own path (its hook traversals) that drop or reject it, or may."""
    if explanation is None:
        return []
    out, seen = [], set()
    # every outcome: a random pick (numgen, statistic) forks the path, one branch dropping
    steps = [step for outcome in explanation.outcomes for step in outcome.hook_steps]
    for step in steps:
        for visit in step.traversal.chains:
            for rv in visit.steps:
                key = (visit.family, visit.table, visit.chain, rv.handle)
                if rv.verdict in ("drop", "reject") and rv.matched is not False and key not in seen:
                    seen.add(key)
                    out.append({"kind": f"{visit.source} rule", "family": visit.family, "table": visit.table,
                                "chain": visit.chain, "hook": visit.hook,
                                "handle": rv.nft_handle if rv.nft_handle is not None else rv.handle,
                                "text": rv.text, "why": "drops this flow" if rv.matched else "may drop this flow"})
    return out


def describe(tie: dict) -> str:
    """One line for a configuration object."""
    kind = tie["kind"]
    if kind.endswith(" rule") and "chain" in tie:
        return f"{kind} {tie['family']} {tie['table']} {tie['chain']} handle {tie['handle']}: {tie['text']}"
    if kind == "ip rule":
        return f"ip rule {tie['text']}"
    if kind == "finding":
        return f"{tie['id']} {tie['text']}"
    return f"{kind} {tie['text']}"
