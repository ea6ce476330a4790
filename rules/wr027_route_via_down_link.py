from tracer.checks.base import Check, Fix
from tracer.checks.context import route_text


class RouteViaDownLink(Check):
    """A default route or policy route leaves by a device that is down

    ## What it checks
    Default routes (any table) and every route of a table that a rule looks
    up, other than `main`/`local`: no nexthop may be marked `dead` or
    `linkdown`, and its device must exist and be UP with carrier
    (`LOWER_UP`).

    ## Why it breaks forwarding
    Without carrier the kernel keeps the route (`linkdown`) and, unless
    `ignore_routes_with_linkdown` is set, goes on using it: traffic is sent
    into a dead link instead of failing over. A policy table whose uplink
    went down silently blackholes the sources it selects, while the rest of
    the LAN works.

    ## Example
    ```
    $ ip route show table sunusroute
    default via 123.150.232.1 dev ppp0 linkdown
    ```

    ## Fix
    Bring the link back (`ip link set ppp0 up`, check the cable or the PPP
    daemon), or give the table a fallback:
    `ip route add default via 10.10.149.1 dev eth0.2 metric 100 table sunusroute`,
    and set `net.ipv4.conf.all.ignore_routes_with_linkdown=1`.
    """

    id = "WR027"
    severity = "warning"
    title = "route via a device that is down"

    def check(self, ctx):
        state = ctx.state
        policy_tables = {key for key in ctx.tables_looked_up() if key[1] not in (254, 255)}
        routes = [r for rs in ctx.defaults.values() for r in rs]
        for key in sorted(policy_tables):
            routes += [r for r in ctx.table_routes(*key) if r.dst_len]
        down: dict[str, list] = {}
        for route in routes:
            if route.type != "unicast" or route.table == 255:
                continue
            for nh in route.nexthops:
                link = ctx.links.get(nh.dev)
                if link is None:
                    why = "does not exist"
                elif nh.dead or not link.up:
                    why = "is down"
                elif nh.linkdown or "LOWER_UP" not in link.flags:
                    why = "has no carrier (linkdown)"
                else:
                    continue
                down.setdefault((nh.dev, why), []).append(route)
        for (dev, why), hit in sorted(down.items()):
            shown = ", ".join(route_text(r, state) for r in hit[:3])
            shown += f" and {len(hit) - 3} more" if len(hit) > 3 else ""
            message = f"{dev} {why}, yet {shown} send{'s' if len(hit) == 1 else ''} traffic through it"
            # bring the link up, or have the kernel skip routes over a link without carrier
            yield self.finding(message, Fix.alternatives(f"ip link set {dev} up",
                                                         "sysctl -w net.ipv4.conf.all.ignore_routes_with_linkdown=1"),
                               dev=dev)
