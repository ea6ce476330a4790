from tracer.checks.base import Check, Fix
from tracer.checks.context import reserved, route_text, rule_text, table_arg
from tracer.vocab import prefix_text


class RuleTableNoRoute(Check):
    """A policy rule's table has no route for the traffic the rule selects

    ## What it checks
    For every `lookup` rule of a non-reserved table that holds routes (empty
    tables are WR001), and that does not use `suppress_prefixlength` or
    `suppress_ifgroup`: the table must hold a route (of any type, `throw`
    included) whose prefix contains the rule's whole destination selector —
    the rule's `to` prefix, or everything (`0.0.0.0/0`, i.e. a default route)
    for a rule without `to`. A rule that selects all traffic (no selector
    at all, like Tailscale's `5270: from all lookup 52`) is not checked: it
    lays a table of specific routes (the peers) over `main`, and falling
    through for everything else is its purpose.

    ## Why it breaks forwarding
    A lookup that finds no route falls through to the next rule, so the
    traffic the rule was written for quietly follows `main` for every
    destination the table lacks: half of the policy works, the rest leaves by
    the wrong uplink with the wrong source address. A `throw` or
    `unreachable` route covering the selector is an explicit decision and
    passes this check.

    ## Example
    ```
    ip rule add from 192.168.1.169 table fast
    ip route add 10.0.0.0/8 via 123.150.232.1 dev ppp0 table fast   # no default route in "fast"
    ```

    ## Fix
    Add the missing route to the table (the finding proposes the route `main`
    uses for that traffic when it goes through the same uplink), or a
    `throw` route if falling through is intended:
    `ip route add default via 123.150.232.1 dev ppp0 table fast`.
    """

    id = "WR002"
    severity = "warning"
    title = "rule's table has no route for the traffic it selects"
    shown_per_rule = True

    def check(self, ctx):
        state = ctx.state
        for rule in ctx.rules:
            if (rule.action != "lookup" or rule.l3mdev or reserved(rule.table)
                    or rule.suppress_prefixlength >= 0 or rule.suppress_ifgroup >= 0
                    or not ctx.table_has_routes(rule.family, rule.table) or _selects_all(rule)):
                continue
            dst = rule.dst or ("0.0.0.0" if rule.family == 4 else "::")
            if ctx.covering_route(rule.family, rule.table, dst, rule.dst_len if rule.dst else 0) is not None:
                continue
            name = state.table_name(rule.table)
            wanted = prefix_text(rule.dst, rule.dst_len, rule.family) if rule.dst else "default"
            message = (f"rule {rule_text(rule, state)}: table {name} has routes but none for {wanted}, "
                       f"so the traffic the rule selects falls through to the later rules for every "
                       f"destination the table lacks")
            main = ctx.covering_route(rule.family, 254, dst, rule.dst_len if rule.dst else 0)
            gateways = {r.dev: r for r in ctx.table_routes(rule.family, rule.table) if r.gateway}
            fixes = []
            if main is not None:
                message += f" (main decides them: {route_text(main, state)})"
            for dev, r in sorted(gateways.items()):
                fixes.append(f"ip route add {wanted} via {r.gateway} dev {dev}{table_arg(state, rule.table)}")
            if not fixes:
                fixes.append(f"ip route add {wanted} via GATEWAY dev DEVICE{table_arg(state, rule.table)}")
            fixes.append(f"ip route add throw {wanted}{table_arg(state, rule.table)}"
                         "   # if falling through is intended")
            # a route for the traffic, or a throw route that hands it on: pick one
            yield self.finding(message, Fix.alternatives(*fixes), rule=rule.priority, table=rule.table)


def _selects_all(rule) -> bool:
    """A catch-all rule: no selector of any kind (an overlay of specific routes over the later tables)."""
    return (not rule.src and not rule.dst and not rule.iif and not rule.oif and not rule.fwmark and not rule.fwmask
            and not rule.tos and not rule.ipproto and rule.sport is None and rule.dport is None
            and rule.uidrange is None and not rule.invert)
