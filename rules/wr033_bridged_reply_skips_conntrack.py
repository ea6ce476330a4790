import ipaddress
import re

from tracer.checks.base import Check, Fix
from tracer.checks.context import context_for
from tracer.checks.fixes import native_nft_chain, uses_only_native_nft
from tracer.vocab import AF_INET

_DPORT = re.compile(r"dport (\d+)$")
# How many jumps up from a DNAT rule its chain's callers are followed, and how many
# original destinations one DNAT rule is tried with (kube-proxy: one per service).
_MAX_DEPTH = 8
_MAX_DESTINATIONS = 4


class BridgedReplySkipsConntrack(Check):
    """A DNAT sends a bridge's client to a host on the same bridge, whose bridged reply skips iptables

    ## What it checks
    For each forwarded IPv4 flow that enters on a bridge B, is DNATed in
    prerouting to an address on B's own subnet, leaves by B again and keeps
    a source on B's subnet (not masqueraded to this host): whether frames B
    bridges go through iptables. They do when br_netfilter is loaded and
    `net.bridge.bridge-nf-call-iptables` is 1 in the namespace, or B has its
    own `nf_call_iptables` option on. The host-wide check walks such a flow
    for every prerouting DNAT rule whose target is on a bridge's subnet, from
    a host of that subnet to each destination address (and port) the rule or
    the rules jumping to its chain match. A state that does not say whether
    br_netfilter is loaded (an older snapshot) is not judged.

    ## Why it breaks forwarding
    The request is routed: it reaches this host's address or a service
    address, conntrack DNATs it and routing sends it back out B to the
    target. The target answers the client directly — same subnet, same
    bridge — so the reply is bridged, never routed; without bridge netfilter
    it never meets conntrack, whose un-DNAT would have turned its source back
    into the address the client connected to. The client receives a reply
    from the target's own address and port, matches it to no socket (a TCP
    client answers with a reset), and the connection times out. This is
    Kubernetes' hairpin breakage when br_netfilter is missing (kubeadm's
    preflight "bridge-nf-call-iptables contents are not set to 1"), and a
    home router's port forward tried from its own LAN.

    ## Example
    ```
    sysctl -w net.bridge.bridge-nf-call-iptables=0
    iptables -t nat -A PREROUTING -d 10.96.0.40 -p tcp --dport 80 -j DNAT --to-destination 10.244.1.3:8080
    # pod 10.244.1.2 on cni0 → 10.96.0.40:80: 10.244.1.3 answers from 10.244.1.3:8080, bridged
    ```

    ## Fix
    Let bridged IPv4 traffic through iptables
    (`sysctl -w net.bridge.bridge-nf-call-iptables=1`, after `modprobe
    br_netfilter` if it is not loaded; persist both in /etc/sysctl.d and
    /etc/modules-load.d), or only on that bridge (`ip link set cni0 type
    bridge nf_call_iptables 1`), or masquerade the hairpin so that the
    target answers this host (`iptables -t nat -I POSTROUTING -s
    10.244.1.0/24 -d 10.244.1.3 -o cni0 -j MASQUERADE`).
    """

    id = "WR033"
    severity = "error"
    title = "DNAT to the client's own bridge: the bridged reply skips conntrack"
    requires = frozenset({"netfilter"})

    def check(self, ctx):
        for flow in _hairpin_flows(ctx):
            yield from self.flow_check(ctx, flow)

    def flow_check(self, ctx, flow):
        bridge = flow.iif
        link = ctx.links.get(bridge)
        if link is None or link.kind != "bridge" or flow.oif != bridge or flow.dropped_by:
            return
        if ctx.state.bridge_calls_iptables(bridge) is not False:  # True, or not known
            return
        prerouting = flow.explanation.hook("prerouting")
        dnat = [n for n in prerouting.nat if n.field == "dst"] if prerouting is not None else []
        client, subnets = flow.out_src, ctx.connected_on(bridge, AF_INET)
        if not dnat or client is None or ctx.is_local(client):
            return  # masqueraded to this host: the reply comes back to it and is un-NATed there
        rewrite = dnat[-1]
        subnet = next((c for c in subnets if client in c and rewrite.to in c), None)
        if subnet is None:
            return
        asked = f"{flow.dst}:{flow.dport}" if flow.dport else flow.dst
        target = f"{rewrite.to}:{rewrite.to_port}" if rewrite.to_port else rewrite.to
        message = (f"connections from {client} on bridge {bridge} to {asked} are DNATed to {target} "
                   f"({rewrite.family} {rewrite.table} {rewrite.chain}: {rewrite.rule}), which is on {bridge} too "
                   f"({subnet.network}): {rewrite.to} answers {client} directly through the bridge, and bridged "
                   f"IPv4 skips iptables here ({_why_skipped(ctx, bridge)}), so conntrack never turns the reply's "
                   f"source back into {asked}; {client} drops it and the connection times out")
        yield self.finding(message, _fixes(ctx, bridge, subnet.network, rewrite.to), bridge=bridge,
                           src=client, target=rewrite.to)


def _why_skipped(ctx, bridge: str) -> str:
    if not ctx.state.br_netfilter:
        return "br_netfilter is not loaded: there is no net.bridge.bridge-nf-call-iptables"
    return f"net.bridge.bridge-nf-call-iptables = 0 and {bridge} has no nf_call_iptables option"


def _fixes(ctx, bridge: str, subnet, target: str) -> Fix:
    load = "" if ctx.state.br_netfilter else "modprobe br_netfilter && "
    chain = native_nft_chain(ctx, "postrouting", "nat") if uses_only_native_nft(ctx) else None
    if chain is not None:
        masquerade = (f'nft insert rule {chain.family} {chain.table} {chain.name} ip saddr {subnet} '
                      f'ip daddr {target} oifname "{bridge}" masquerade')
    else:
        masquerade = f"iptables -t nat -I POSTROUTING -s {subnet} -d {target} -o {bridge} -j MASQUERADE"
    return Fix.alternatives(f"{load}sysctl -w net.bridge.bridge-nf-call-iptables=1",
                            f"{load}ip link set {bridge} type bridge nf_call_iptables 1", masquerade)


def _hairpin_flows(ctx):
    """For each prerouting DNAT rule whose target is on a bridge that bridges IPv4 past
    iptables: the new connections from a host of that bridge's subnet to the destinations
    the rule (or a rule jumping to its chain) matches, every outcome where the path forks."""
    bridges = [name for name, link in sorted(ctx.links.items())
               if link.kind == "bridge" and ctx.state.bridge_calls_iptables(name) is False]
    if not bridges:
        return
    for rule in ctx.ruleset.nat_rules():
        if rule.type != "dnat" or rule.family != "ip" or "prerouting" not in rule.hooks or not rule.addr:
            continue
        target = rule.addr.split("-")[0]
        for bridge in bridges:
            subnet = next((c for c in ctx.connected_on(bridge, AF_INET) if target in c), None)
            client = _client(ctx, subnet.network, target) if subnet is not None else None
            if client is None:
                continue
            for dst, dport in _destinations(ctx, rule):
                yield from ctx.flow_outcomes(client, dst, bridge, dport=dport,
                                             why=f"a host of {bridge} through the DNAT to {target}")


def _client(ctx, network, target: str) -> str | None:
    """A host of `network` that is neither this host nor the DNAT's target."""
    for offset in range(1, min(network.num_addresses - 1, 16)):
        host = str(network.network_address + offset)
        if host != target and not ctx.is_local(host):
            return host
    return None


def _destinations(ctx, nat_rule) -> list[tuple[str, int | None]]:
    """(destination address, port) the packets a DNAT rule rewrites were sent to: from the
    `ip daddr ADDRESS` / `-d ADDRESS` and dport matches of the rule and of the rules on
    the way to it from a base chain (kube-proxy's KUBE-SERVICES → KUBE-SVC → KUBE-SEP)."""
    chain = ctx.ruleset.chain(nat_rule.source, nat_rule.family, nat_rule.table, nat_rule.chain)
    rule = next((r for r in chain.rules if r.id == nat_rule.handle), None) if chain is not None else None
    if rule is None:
        return []
    found: dict[tuple[str, int | None], None] = {}

    def walk(chain, conds, depth):
        dst = next((c.eq_value for c in conds if getattr(c, "eq_attr", None) == "dst_i"), None)
        if dst is not None:
            ports = [int(m.group(1)) for c in conds if c.field.endswith("dport") and (m := _DPORT.search(c.text))]
            found[(str(ipaddress.IPv4Address(dst)), ports[0] if ports else None)] = None
            return
        if depth == _MAX_DEPTH or len(found) >= _MAX_DESTINATIONS:
            return
        for caller, jump in callers.get(chain.key, ()):
            walk(caller, (*conds, *jump.conds), depth + 1)

    callers = ctx.state.derived(_callers)
    walk(chain, rule.conds, 0)
    return list(found)[:_MAX_DESTINATIONS]


def _callers(state) -> dict:
    """chain key → [(chain, rule)] of the rules that jump or go to it."""
    ruleset = context_for(state).ruleset
    out: dict = {}
    for caller in ruleset.chains.values():
        for rule in caller.rules:
            for item in rule.items:
                if getattr(item, "kind", None) in ("jump", "goto") and getattr(item, "target", None):
                    key = (caller.source, caller.family, caller.table, item.target)
                    out.setdefault(key, []).append((caller, rule))
    return out
