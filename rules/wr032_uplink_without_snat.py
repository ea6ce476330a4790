from tracer.checks.base import Check, Fix
from tracer.checks.context import is_private, is_private_network, reserved, rule_text
from tracer.checks.fixes import snat_command
from tracer.vocab import AF_INET


class UplinkWithoutSnat(Check):
    """An uplink with a default route in a policy table has no SNAT for the sources that use it

    ## What it checks
    For every IPv4 rule that looks up a non-reserved table holding a default
    route (not inverted, not `l3mdev`), the traffic it selects is walked as a
    new forwarded TCP connection to an Internet address: from the rule's
    `from` source, or — for a rule without one (`fwmark`, `iif`, catch-all)
    — from a host of each private connected subnet whose interface the rule
    accepts and that is no uplink itself (no default route leaves by it),
    carrying the rule's fwmark as the marking rules before routing would set
    it (mwan3's balancing marks, say). When the packet leaves by the table's
    default route with a private source and no SNAT/MASQUERADE
    applies, and the far side cannot route the source back (see WR019), it
    is an error. Flows that the whole-host walk already reports (WR019) are
    not repeated: this rule finds the uplinks that only some of the traffic
    uses — the second WAN of a balanced policy, a failover table.

    ## Why it breaks forwarding
    The packets leave the second uplink with the LAN's private address; the
    ISP drops them or the replies never find their way back. With random
    balancing, half of the connections fail — the ones mwan3 happens to put
    on that uplink. On OpenWrt the classic cause is an uplink left out of the
    masquerading zone: `wanb` not in fw4's zone `wan`, so `srcnat_wan`
    never sees its device.

    ## Example
    ```
    ip rule add fwmark 0x200/0x3f00 lookup 2 priority 2002
    ip route add default via 10.0.2.1 dev eth2 table 2
    # fw4: zone wan (masq) holds eth1 only
    ```

    ## Fix
    Source-NAT the uplink: on OpenWrt add the network to the masquerading
    zone (`uci add_list firewall.@zone[1].network=wanb; uci commit firewall;
    fw4 reload`), elsewhere `nft add rule inet fw4 srcnat oifname "eth2"
    masquerade` or `iptables -t nat -A POSTROUTING -o eth2 -j MASQUERADE`.
    """

    id = "WR032"
    severity = "error"
    title = "uplink default route without SNAT"
    requires = frozenset({"netfilter"})

    def check(self, ctx):
        state = ctx.state
        dst = ctx.probe_destination(AF_INET)
        covered = {(f.src, f.oif) for f in ctx.derived_flows}
        groups: dict[str, list] = {}
        seen = set()
        for rule in ctx.rules_of(AF_INET):
            if (rule.action != "lookup" or rule.invert or rule.l3mdev or reserved(rule.table)
                    or not _default_devs(ctx, rule.table)):
                continue
            for host, lan in _sources(ctx, rule):
                mark = rule.fwmark & (rule.fwmask or 0xFFFFFFFF)
                key = (rule.table, lan.ifname, mark)  # rules sharing a table and a LAN: the first stands for all
                if key in seen:
                    continue
                seen.add(key)
                for flow in ctx.flow_outcomes(host, dst, lan.ifname, why=f"a host of {lan.network} selected by "
                                              f"rule {rule_text(rule, state)}", mark=mark):
                    if self._unnatted(ctx, flow, _default_devs(ctx, rule.table), covered):
                        groups.setdefault(flow.oif, []).append((rule, flow))
        for oif, hits in sorted(groups.items()):
            yield self._finding(ctx, oif, hits)

    @staticmethod
    def _unnatted(ctx, flow, devs, covered) -> bool:
        oif = flow.oif
        if (oif is None or oif == flow.iif or oif not in devs or (flow.src, oif) in covered
                or flow.post is None or flow.dropped_by):
            return False
        return (not flow.snat and flow.out_src == flow.src and is_private(flow.src)
                and not ctx.source_routed_back_via(flow.src, oif))

    def _finding(self, ctx, oif, hits):
        state = ctx.state
        own = ", ".join(a.local for a in state.addresses_of(oif, AF_INET)) or "none"
        used = "; ".join(f"{flow.src} → {flow.dst} by rule {rule_text(rule, state)} "
                         f"(table {state.table_name(rule.table)})" for rule, flow in hits)
        message = (f"{oif} is an uplink (a default route in a policy table) but traffic that uses it leaves "
                   f"without SNAT/MASQUERADE, with its private source: {used}. {oif}'s own address: {own}; "
                   f"the replies never come back")
        fix = Fix.steps(snat_command(ctx, oif, masquerade=True))
        tunnel = ctx.tunnel_reason(oif)
        severity = None
        if tunnel:
            message += (f". But {tunnel}, a tunnel this host terminates: this works if its far end routes the "
                        f"sources back")
            severity = "warning"
        return self.finding(message, fix, severity=severity, dev=oif, sources=[f.src for _, f in hits])


def _default_devs(ctx, table: int) -> set:
    """The devices of the unicast default routes of a table."""
    return {nh.dev for r in ctx.defaults.get((AF_INET, table), ()) if r.type == "unicast"
            for nh in r.nexthops if nh.dev}


def _sources(ctx, rule):
    """(host, connected subnet) pairs standing for the forwarded traffic a rule selects."""
    if rule.src:
        host = ctx.representative_host(rule.src, rule.src_len)
        lan = ctx.connected_containing(host) if host else None
        if lan is not None and rule.iif in (None, lan.ifname):
            yield host, lan
        return
    uplinks = {nh.dev for routes in ctx.defaults.values() for r in routes for nh in r.nexthops if nh.dev}
    for c in ctx.connected:
        if (c.family != AF_INET or c.network.prefixlen >= 31 or not is_private_network(c.network)
                or rule.iif not in (None, c.ifname) or c.ifname in uplinks):
            continue
        host = ctx.representative_host(str(c.network.network_address), c.network.prefixlen)
        if host is not None:
            yield host, c
