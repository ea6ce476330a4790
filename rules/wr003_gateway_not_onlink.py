from tracer.checks.base import Check
from tracer.checks.context import table_arg
from tracer.model import SCOPE_LINK


class GatewayNotOnLink(Check):
    """A route's gateway is not on-link on its device

    ## What it checks
    For every unicast route (outside the `local` table) with a gateway G on a
    device D that has no point-to-point peer (those are WR005): G must be
    inside a prefix of one of D's addresses, or covered by a link-scope
    (`scope link`, no gateway) route on D in `main` or the route's own table,
    or the nexthop must carry the `onlink` flag. IPv6 link-local gateways are
    always on-link. Gateways that are this host's own addresses are WR004.

    ## Why it breaks forwarding
    The kernel resolves the gateway's link-layer address on D. A gateway
    outside every subnet of D is not answered by ARP/ND (no neighbour on that
    link owns it), so packets wait in an INCOMPLETE neighbour entry and are
    dropped. The kernel checks this when the route is added, but the state
    drifts: an address removed or renumbered afterwards leaves the route in
    place, and snapshots or replayed scripts can hold such routes.

    ## Example
    ```
    ip addr add 10.9.0.2/24 dev eth1
    ip route add 172.16.0.0/12 via 10.9.0.1 dev eth1
    ip addr del 10.9.0.2/24 dev eth1      # the route stays, its gateway is now off-link
    ```

    ## Fix
    Point the route at the device whose subnet holds the gateway
    (`ip route replace 172.16.0.0/12 via 10.9.0.1 dev eth2`), restore the
    address, or — if the gateway really is on that link — mark it `onlink`.
    """

    id = "WR003"
    severity = "error"
    title = "gateway not on-link on its device"

    def check(self, ctx):
        state = ctx.state
        for (gw, dev), use in sorted(ctx.gateways.items(), key=lambda kv: (kv[0][0], kv[0][1] or "")):
            if dev is None or use.nexthop.onlink or ctx.is_local(gw) or gw.lower().startswith("fe80:"):
                continue
            if any(c.address.peer for c in ctx.connected_on(dev)):
                continue
            if _on_link(ctx, gw, dev, use):
                continue
            subnets = ", ".join(str(c.network) for c in ctx.connected_on(dev)) or "no address"
            other = ctx.connected_containing(gw)
            message = (f"gateway {gw} of {use.routes_text(state)} is not in any subnet of {dev} ({subnets}): "
                       f"nothing on that link answers for it, so the packets are dropped unresolved")
            fixes = []
            for route in use.sample:
                if other is not None:
                    fixes.append(f"ip route replace {route.prefix} via {gw} dev {other.ifname}"
                                 f"{table_arg(state, route.table)}")
                else:
                    fixes.append(f"ip route replace {route.prefix} via {gw} dev {dev} onlink"
                                 f"{table_arg(state, route.table)}"
                                 f"   # only if {gw} really is on {dev}'s link")
            if other is not None:
                message += f"; {gw} is in {other.network} on {other.ifname}"
            yield self.finding(message, fixes, gateway=gw, dev=dev)


def _on_link(ctx, gw: str, dev: str, use) -> bool:
    family = use.sample[0].family
    if any(gw in c for c in ctx.connected_on(dev, family)):
        return True
    for table in {254, *(r.table for r in use.sample)}:
        route = ctx.covering_route(family, table, gw)
        if route is not None and route.scope == SCOPE_LINK and route.gateway is None and route.dev == dev:
            return True
    return False
