from tracer.checks.base import Check, Fix
from tracer.checks.context import reserved, route_text, rule_text, table_arg
from tracer.vocab import AF_INET


class PolicyCapturesConnected(Check):
    """A policy table or fallback captures a connected subnet

    ## What it checks
    For every connected IPv4 subnet of this host (an address prefix shorter
    than /32 on an interface other than `lo`), the host's own traffic to a
    host of that subnet — routed with every rule in order, no source, no
    mark, as a program's first packet is — must leave by the subnet's own
    interface. It is an error when a rule that looks up a table other than
    `main` and `local` (an inverted `not fwmark` rule, a rule without `from`,
    a catch-all fallback) sends it elsewhere through a route *less* specific
    than the subnet (a default route, typically into a tunnel), or refuses
    it. A route at least as specific as the subnet is deliberate (Tailscale
    routes the café's LAN into its tunnel on purpose when an exit node is
    used without LAN access) and is not reported. Rules with a `from`
    selector are WR007's.

    ## Why it breaks forwarding
    The subnet is on the wire next to the host, but its packets go into the
    tunnel (or the other uplink): the printer, the gateway, the DHCP server
    — and with them the uplink's own subnet, over which a tunnel's encrypted
    packets leave — become unreachable. wg-quick prevents exactly this with
    `ip rule add table main suppress_prefixlength 0` (main decides, except by
    its default route); deleting that rule sends the LAN into wg0.

    ## Example
    ```
    ip rule add not fwmark 51820 table 51820
    ip route add 0.0.0.0/0 dev wg0 table 51820
    # missing: ip rule add table main suppress_prefixlength 0
    ip route get 192.168.1.20      # dev wg0 table 51820
    ```

    ## Fix
    One of: let main's specific routes win first, as wg-quick does —
    `ip rule add table main suppress_prefixlength 0 priority 32764` (just
    before the capturing rule) — or copy the connected route into the table:
    `ip route add 192.168.1.0/24 dev eth0 src 192.168.1.50 table 51820`.
    """

    id = "WR031"
    severity = "error"
    title = "policy table captures a connected subnet"

    def check(self, ctx):
        state = ctx.state
        rules = ctx.rules_of(AF_INET)
        for c in ctx.connected:
            if c.family != AF_INET or c.network.prefixlen >= 32:
                continue
            target = ctx.representative_host(str(c.network.network_address), c.network.prefixlen)
            if target is None:
                continue
            result = ctx.route(target)
            rule = result.rule
            if rule is None or rule.src or (result.error is None and result.dev == c.ifname):
                continue
            if rule.action == "lookup" and (reserved(rule.table) or rule.l3mdev):
                continue
            route = result.route
            if route is not None and route.dst_len >= c.network.prefixlen:
                continue  # a route for (part of) the subnet itself: deliberate
            went = (f"is refused ({result.error})" if result.error else
                    f"leaves by {route_text(route, state) if route is not None else 'dev ' + str(result.dev)}")
            message = (f"rule {rule_text(rule, state)} captures the connected subnet {c.network} on {c.ifname}: "
                       f"this host's traffic to {target} {went} instead of going out {c.ifname}")
            priority = _free_priority(rules, rule.priority)
            fixes = [f"ip rule add table main suppress_prefixlength 0 priority {priority}"] if priority else []
            if rule.action == "lookup":
                fixes.append(f"ip route add {c.network} dev {c.ifname} src {c.address.local}"
                             f"{table_arg(state, rule.table)}")
            yield self.finding(message, Fix.alternatives(*fixes), rule=rule.priority, subnet=str(c.network),
                               dev=c.ifname)


def _free_priority(rules, before: int) -> int | None:
    used = {r.priority for r in rules}
    for p in range(before - 1, 0, -1):
        if p not in used:
            return p
    return None
