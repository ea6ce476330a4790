from tracer.checks.base import Check
from tracer.checks.context import reserved, route_text


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

    ## Example
    ```
    ip route add default via 123.150.232.1 dev ppp0 table sunusroute
    # missing: ip rule add from 192.168.1.169 table sunusroute
    ```

    ## Fix
    Add the rule that selects the traffic for the table:
    `ip rule add from 192.168.1.169 table sunusroute`.
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
            message = (f"table {name} holds {shown}, but no {'IPv6 ' if family == 6 else ''}rule looks it up: "
                       f"these routes are never used")
            ip = "ip -6" if family == 6 else "ip"
            yield self.finding(message, f"{ip} rule add from SOURCE lookup {name}   # SOURCE: the traffic meant for it",
                               table=table)
