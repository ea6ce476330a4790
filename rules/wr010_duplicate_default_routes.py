from tracer.checks.base import Check, Fix
from tracer.checks.context import route_text, table_arg


class DuplicateDefaultRoutes(Check):
    """Several default routes with the same metric in one table

    ## What it checks
    Each IPv4 routing table may hold at most one unicast default route per
    (TOS, metric). Several are possible with `ip route append` or when
    different tools (DHCP, PPP, scripts) each add theirs. (IPv6 merges
    same-metric routes into one multipath route by itself.)

    ## Why it breaks forwarding
    This is not load balancing: the kernel uses one of them — the first in
    the table; in `main` it fails over between them only by neighbour
    reachability. Which uplink carries the traffic, and so which source
    address the replies must come back to, depends on insertion order and
    ARP state, and changes under the user's feet.

    ## Example
    ```
    ip route append default via 10.10.149.1 dev eth0.2
    ip route append default via 123.150.232.1 dev ppp0
    ```

    ## Fix
    Delete the extra routes and make the remaining one a multipath route (or
    re-add the extras with a higher metric, as backups):
    `ip route replace default nexthop via 10.10.149.1 dev eth0.2 nexthop via 123.150.232.1 dev ppp0`.
    """

    id = "WR010"
    severity = "warning"
    title = "several default routes with the same metric"

    def check(self, ctx):
        state = ctx.state
        for (family, table), routes in sorted(ctx.defaults.items()):
            if family != 4:
                continue
            groups = {}
            for r in routes:
                if r.type == "unicast":
                    groups.setdefault((r.tos, r.metric), []).append(r)
            for (_tos, metric), same in sorted(groups.items()):
                if len(same) < 2:
                    continue
                name = state.table_name(table)
                listed = "; ".join(route_text(r, state) for r in same)
                message = (f"table {name} holds {len(same)} default routes with metric {metric}: {listed}. "
                           f"The kernel uses only {route_text(same[0], state)}"
                           + (" (and fails over by neighbour state)" if table == 254 else "")
                           + " — this is not load balancing")
                hops = " ".join(f"nexthop via {r.gateway} dev {r.dev}" if r.gateway else f"nexthop dev {r.dev}"
                                for r in same if r.nexthops)
                suffix = table_arg(state, table)
                deletes = [f"ip route del default via {r.gateway} dev {r.dev} metric {metric}{suffix}"
                           if r.gateway else f"ip route del default dev {r.dev} metric {metric}{suffix}"
                           for r in same[1:]]
                # keep the one the kernel uses, or really balance over all of them
                fixes = Fix.alternatives(" && ".join(deletes), f"ip route replace default {hops}{suffix}")
                yield self.finding(message, fixes, table=table, metric=metric)
