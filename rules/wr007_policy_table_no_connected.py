from tracer.checks.base import Check
from tracer.checks.context import reserved, route_text, rule_text, table_arg
from tracer.vocab import AF_INET


class PolicyTableNoConnected(Check):
    """A source-policy table lacks the host's connected routes

    ## What it checks
    For every IPv4 `from` rule (not inverted) that looks up a non-reserved,
    non-empty table, and every connected subnet of this host (an address
    prefix on an interface other than `lo`): traffic from the rule's source
    (a representative host of its prefix, entering on the interface of its
    subnet) to that subnet must leave by the subnet's own interface, as the
    FIB simulation computes it with every rule in order. The subnet holding
    the source itself is skipped unless the source is a local address.

    ## Why it breaks forwarding
    The table holds a default route but not the connected routes that `main`
    gets automatically, so the policy source's traffic to the router's other
    networks (the modem's subnet, another LAN, the router's own uplink
    subnet) leaves by the table's default uplink instead, where it is dropped
    or comes back from the wrong side. LARTC's split-access recipe adds the
    connected routes to every table for this reason.

    ## Example
    ```
    ip route add default via 123.150.232.1 dev ppp0 table sunusroute
    ip rule add from 192.168.1.169 table sunusroute
    # 192.168.1.169 → 10.10.149.1 (the modem on eth0.2) now leaves by ppp0
    ```

    ## Fix
    Copy the connected routes into the table:
    `ip route add 10.10.149.0/24 dev eth0.2 src 10.10.149.4 table sunusroute`, or put
    `ip rule add to 10.10.149.0/24 lookup main priority 100` before the policy rules.
    """

    id = "WR007"
    severity = "warning"
    title = "policy table lacks connected routes"

    def check(self, ctx):
        state = ctx.state
        seen = set()
        for rule in ctx.rules_of(AF_INET):
            if (not rule.src or rule.invert or rule.action != "lookup" or reserved(rule.table)
                    or not ctx.table_has_routes(AF_INET, rule.table)):
                continue
            host = ctx.representative_host(rule.src, rule.src_len) or rule.src
            local = ctx.is_local(host)
            home = ctx.connected_containing(host)
            iif = None if local or home is None else home.ifname
            if (rule.table, iif, local) in seen:
                continue
            seen.add((rule.table, iif, local))
            for c in ctx.connected:
                if c.family != AF_INET or (not local and host in c):
                    continue
                target = ctx.representative_host(str(c.network.network_address), c.network.prefixlen)
                if target is None:
                    target = c.address.peer or str(c.network.network_address)
                result = ctx.route(target, src=host, iif=iif)
                if result.error is None and result.dev == c.ifname:
                    continue
                went = (f"fails ({result.error})" if result.error else
                        f"leaves by {route_text(result.route, state) if result.route else result.dev}")
                message = (f"table {state.table_name(rule.table)} (rule {rule_text(rule, state)}) has no route for "
                           f"the connected subnet {c.network} on {c.ifname}: traffic from {host} to {target} {went} "
                           f"instead of going out {c.ifname}")
                fix = f"ip route add {c.network} dev {c.ifname} src {c.address.local}{table_arg(state, rule.table)}"
                yield self.finding(message, fix, rule=rule.priority, subnet=str(c.network), dev=c.ifname)
