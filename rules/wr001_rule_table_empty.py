from tracer.checks.base import Check, Fix
from tracer.checks.context import reserved, route_text, rule_text, table_arg
from tracer.vocab import AF_INET


class RuleTableEmpty(Check):
    """A policy rule looks up a table that is missing or empty

    ## What it checks
    Every `ip rule` whose action is `lookup` of a table other than `local`,
    `main` and `default` (and that is not an `l3mdev` rule) must find at least
    one route of the rule's family in that table. A table with no route does
    not exist for the kernel (`ip route show table T` says "FIB table does not
    exist"), whether or not `/etc/iproute2/rt_tables` gives it a name.

    ## Why it breaks forwarding
    `fib_rules_lookup()` treats a lookup that finds nothing as "no match" and
    goes on with the next rule, silently: the traffic the rule selects is
    routed by `main` as if the rule did not exist. This is the seed's bug: the
    route meant for table `sunusroute` was added without `table sunusroute`,
    so it went to `main` (where `ip route add default …` is refused with
    "File exists" when `main` already has a default route) and the MacBook's
    traffic kept leaving by the slow uplink.

    ## Example
    ```
    ip rule add from 192.168.1.169 table sunusroute
    ip route add default via 123.150.232.1 dev ppp0      # no "table": goes to main
    ```
    The finding names the rule, the table, where the traffic goes instead, and
    routes of `main` that look like they were meant for the table.

    ## Fix
    Add the route to the table the rule uses, e.g.
    `ip route add default via 123.150.232.1 dev ppp0 table sunusroute`, and
    delete any copy that went to `main` by mistake. The gateway offered is the
    peer of a point-to-point uplink or a gateway of a `main` route that is not
    the one `main` uses for its default.
    """

    id = "WR001"
    severity = "error"
    title = "rule looks up a missing or empty table"
    shown_per_rule = True

    def check(self, ctx):
        state = ctx.state
        for rule in ctx.rules:
            if rule.action != "lookup" or rule.l3mdev or reserved(rule.table):
                continue
            if ctx.table_has_routes(rule.family, rule.table):
                continue
            name = state.table_name(rule.table)
            table = name if name == str(rule.table) else f"{name} ({rule.table})"
            fam = "IPv4" if rule.family == AF_INET else "IPv6"
            message = (f"rule {rule_text(rule, state)} looks up table {table}, which holds no {fam} route: "
                       f"the kernel treats it as missing and the lookup falls through to the next rules")
            instead = _falls_to(ctx, rule)
            if instead:
                message += f"; {instead}"
            hints, fixes = _meant_for_table(ctx, rule)
            message += ". " + hints
            yield self.finding(message, fixes, rule=rule.priority, table=rule.table, table_name=name)


def _falls_to(ctx, rule) -> str | None:
    """Where the traffic the rule selects goes instead (for a `from` rule of a LAN host)."""
    if rule.family != AF_INET or not rule.src:
        return None
    host = ctx.representative_host(rule.src, rule.src_len) or rule.src
    lan = ctx.connected_containing(host)
    dst = rule.dst or ctx.probe_destination()
    result = ctx.route(dst, src=host, iif=lan.ifname if lan and not ctx.is_local(host) else None)
    if result.error:
        return f"traffic from {host} to {dst} then fails ({result.error})"
    if result.route is None:
        return None
    return (f"traffic from {host} to {dst} is decided by table {ctx.state.table_name(result.table)} instead: "
            f"{route_text(result.route, ctx.state)}")


def _meant_for_table(ctx, rule) -> tuple[str, Fix]:
    state = ctx.state
    suffix = table_arg(state, rule.table)
    name = state.table_name(rule.table)
    main_defaults = sorted(ctx.defaults.get((rule.family, 254), []), key=lambda r: r.metric)
    active_dev = main_defaults[0].dev if main_defaults else None
    strays = [r for r in main_defaults[1:] if r.type == "unicast"]
    hint = (f"Routes meant for it were probably added without `table {name}`: they went to main "
            f"(or were refused there with \"File exists\" when main already had a default route)")
    fixes: list[str] = []
    for stray in strays:
        hint += f"; main holds {route_text(stray, state)}, probably meant for table {name}"
        via = f" via {stray.gateway}" if stray.gateway else ""
        fixes += [f"ip route del default{via} dev {stray.dev} metric {stray.metric}",
                  f"ip route add default{via} dev {stray.dev}{suffix}"]
    if fixes:
        return hint, Fix.steps(*fixes)
    peers = [f"ip route add default via {c.address.peer} dev {c.ifname}{suffix}" for c in ctx.connected
             if c.family == rule.family and c.address.peer and c.ifname != active_dev]
    if peers:  # one default route per table: pick the uplink
        return hint, Fix.alternatives(*peers)
    return hint, Fix.steps(f"ip route add default via GATEWAY dev DEVICE{suffix}")
