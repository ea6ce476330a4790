"""The configuration objects a suspect ties to, taken from the explanation of the flow on the
snapshot: the deciding ip rule, the table and route, the egress device and its MTU, NAT, and the
netfilter rules (by family, table, chain and handle) that can drop or reject the connection's packets.
"""

from __future__ import annotations

import ipaddress

from tracer.flow import RouteQuery
from tracer.model import TABLE_LOCAL, TABLE_MAIN
from tracer.sim import fib
from tracer.sim.explain import ruleset_of
from tracer.sim.explanation import Explanation
from tracer.vocab import AF_INET, IPPROTO


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


def path_drop_rules(explanation: Explanation | None, *, certain: bool = False) -> list[dict]:
    """Rules on the flow's own path (its hook traversals) that drop or reject it, or may (not when
    `certain`: only those whose every selector matched)."""
    if explanation is None:
        return []
    out, seen = [], set()
    # every outcome: a random pick (numgen, statistic) forks the path, one branch dropping
    steps = [step for outcome in explanation.outcomes for step in outcome.hook_steps]
    for step in steps:
        for visit in step.traversal.chains:
            for rv in visit.steps:
                key = (visit.family, visit.table, visit.chain, rv.handle)
                if rv.verdict in ("drop", "reject") and rv.matched is not False and key not in seen and (
                        rv.matched or not certain):
                    seen.add(key)
                    out.append({"kind": f"{visit.source} rule", "family": visit.family, "table": visit.table,
                                "chain": visit.chain, "hook": visit.hook,
                                "handle": rv.nft_handle if rv.nft_handle is not None else rv.handle,
                                "text": rv.text, "why": "drops this flow" if rv.matched else "may drop this flow"})
    return out


RP_FILTER_MODES = {1: "strict", 2: "loose"}


def reverse_path_drop(state, client: tuple, server: tuple, arrival: str, client_dev: str) -> dict | None:
    """Whether the router's reverse-path filter drops the server's replies arriving on `arrival`:
    the FIB simulation routes a reply as it arrives (conntrack has undone the SNAT: its destination
    is the LAN client) and, when rp_filter refuses it, returns the sysctl and the route back to the
    server that fails validation (the kernel's reverse lookup: from the client to the server, as
    if coming in on `client_dev`, the device the reply would be forwarded to)."""
    if state is None or state.link(arrival) is None or ":" in server[0]:
        return None
    reply = fib.route_input(state, RouteQuery(family=AF_INET, dst=client[0], src=server[0], iif=arrival,
                                              proto=IPPROTO["tcp"], sport=server[1], dport=client[1]))
    if reply.drop_reason != "IP_RPFILTER":
        return None
    key = f"net.ipv4.conf.{arrival}.rp_filter"
    own, every = state.conf(AF_INET, arrival, "rp_filter"), state.conf(AF_INET, "all", "rp_filter")
    effective = fib.conf_or(state, arrival, "rp_filter")
    sysctl = {"kind": "sysctl", "key": key, "value": own, "all": every, "effective": effective,
              "text": f"{key} = {own}, net.ipv4.conf.all.rp_filter = {every}: effective {effective} "
                      f"({RP_FILTER_MODES.get(effective, 'off')}, the larger of the two)"}
    back = fib.route_input(state, RouteQuery(family=AF_INET, dst=server[0], src=client[0], iif=client_dev,
                                             proto=IPPROTO["tcp"], sport=client[1], dport=server[1]))
    out = [sysctl]
    if back.rule is not None:
        out.append({"kind": "ip rule", "priority": back.rule.priority, "text": fib.rule_text(state, back.rule)})
    if back.route is not None:
        table = state.table_name(back.table) if back.table is not None else None
        out.append({"kind": "route back", "table": table, "table_id": back.table, "dev": back.dev,
                    "text": f"{server[0]} from {client[0]}: {fib.route_text(state, back.route)} (table {table})",
                    "why": reply.error_reason})
    return {"reason": reply.error_reason, "config": out}


def table_leaving_by(state, dst: str, dev: str) -> str | None:
    """A table (main first) whose most specific route to dst leaves by dev: where a policy rule
    can send a flow so that it leaves by the interface its replies come back on."""
    if state is None:
        return None
    address = ipaddress.ip_address(dst)
    index = fib.index_for(state)
    tables = [t for family, t in index.tables() if family == AF_INET and t != TABLE_LOCAL]
    for table in sorted(tables, key=lambda t: (t != TABLE_MAIN, t)):
        routes = [r for r in index.table(AF_INET, table).routes
                  if r.type == "unicast" and address in ipaddress.ip_network(f"{r.dst}/{r.dst_len}", strict=False)]
        if routes:
            best = max(routes, key=lambda r: (r.dst_len, -r.metric))
            if any(nh.dev == dev for nh in best.nexthops):
                return state.table_name(table)
    return None


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
