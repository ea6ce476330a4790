from tracer.checks.base import Check
from tracer.checks.context import reserved, route_text, rule_text
from tracer.model import TABLE_MAIN
from tracer.vocab import AF_INET

TABLE_MAIN_RULE = 32766  # the default `from all lookup main` rule: wg-quick's rule goes before it


class TableUnused(Check):
    """A routing table holds routes but no rule looks it up

    ## What it checks
    Every non-reserved table holding routes of a family must be the target
    of at least one `lookup` rule of that family, unless an `l3mdev` rule
    exists (VRF tables are looked up through it).

    ## Why it breaks forwarding
    The routes are never used: the second half of the seed's recipe (`ip
    rule add from … table T`) was forgotten, failed, or was lost at reboot
    (rules are not persistent unless a network tool re-creates them), so the
    traffic meant for the table follows `main`.

    When the table's default route goes into a tunnel device (wg0,
    tailscale0 …), the traffic meant for the tunnel leaks past it, out by
    main's default route; the finding names where it goes. With wg-quick's
    `lookup main suppress_prefixlength 0` rule still there, the missing rule
    is the other half of that pair, `not fwmark T lookup T` (wg-quick marks
    its own packets with the table's number T), and the fix is exactly it.

    ## Example
    ```
    ip route add default via 123.150.232.1 dev ppp0 table sunusroute
    # missing: ip rule add from 192.168.1.169 table sunusroute

    ip -4 rule del not fwmark 51820 table 51820    # wg-quick's tunnel rule, by hand or a network manager
    ip route get 8.8.8.8     # 8.8.8.8 via 192.168.1.1 dev eth0: past the tunnel
    ```

    ## Fix
    Add the rule that selects the traffic for the table:
    `ip rule add from 192.168.1.169 table sunusroute`; for wg-quick's
    table, its rule after the suppress rule:
    `ip -4 rule add not fwmark 51820 table 51820 priority 32765`.
    """

    id = "WR029"
    severity = "warning"
    title = "table with routes but no rule"

    def check(self, ctx):
        state = ctx.state
        if any(r.l3mdev for r in ctx.rules):
            return
        used = ctx.tables_looked_up()
        for (family, table), routes in sorted(ctx.routes_by_table.items()):
            if reserved(table) or (family, table) in used:
                continue
            name = state.table_name(table)
            shown = ", ".join(route_text(r, state) for r in routes[:2])
            shown += f" and {len(routes) - 2} more" if len(routes) > 2 else ""
            unused = f"table {name} holds {shown}, but no {'IPv6 ' if family == 6 else ''}rule looks it up"
            ip = "ip -6" if family == 6 else "ip"
            fix = f"{ip} rule add from SOURCE lookup {name}   # SOURCE: the traffic meant for it"
            tunnel = _tunnel_default(ctx, routes) if family == AF_INET else None
            leak = _tunnel_leak(ctx, table, tunnel) if tunnel is not None else None
            if leak is None:
                yield self.finding(f"{unused}: these routes are never used", fix, table=table)
                continue
            message, wg_quick_fix = leak
            yield self.finding(f"{unused}: {message}", wg_quick_fix or fix, table=table)


def _tunnel_default(ctx, routes):
    """The tunnel device a table's default route goes into, or None."""
    for route in routes:
        if route.dst_len == 0 and route.type == "unicast" and ctx.tunnel_reason(route.dev):
            return route.dev
    return None


def _tunnel_leak(ctx, table: int, tunnel: str) -> tuple[str, str | None] | None:
    """Where the traffic meant for a tunnel's unused default-route table goes instead, and
    the fix when wg-quick's other rule shows that its `not fwmark` rule is the one missing;
    None when that traffic goes into a tunnel anyway (another table routes it there)."""
    state = ctx.state
    dst = ctx.probe_destination(AF_INET)
    instead = ctx.route(dst)
    if ctx.tunnel_reason(instead.dev):
        return None
    if instead.error is None:
        via = f" via {instead.gateway}" if instead.gateway else ""
        rule = f", rule {rule_text(instead.rule, state)}" if instead.rule else ""
        where = f"leaks past it, out {instead.dev}{via} (to {dst}{rule})"
    else:
        where = f"is not routed at all ({dst}: {instead.error})"
    message = f"its default route goes into the tunnel device {tunnel}, and the traffic meant for the tunnel {where}"
    suppress = next((r for r in ctx.rules_of(AF_INET) if r.action == "lookup" and r.table == TABLE_MAIN
                     and r.suppress_prefixlength == 0 and r.src is None and not (r.fwmark or r.fwmask)), None)
    if suppress is None:
        return message, None
    used = {r.priority for r in ctx.rules_of(AF_INET)}
    priority = next((p for p in range(suppress.priority + 1, TABLE_MAIN_RULE) if p not in used), None)
    message += (f". Rule {rule_text(suppress, state)} is wg-quick's, which adds it with `not fwmark {table} "
                f"lookup {table}` (its own packets carry mark {table}, all others go into the tunnel): that rule "
                f"is missing")
    return message, f"ip -4 rule add not fwmark {table} table {table}" + (f" priority {priority}" if priority else "")
