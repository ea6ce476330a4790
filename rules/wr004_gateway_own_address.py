from tracer.checks.base import Check
from tracer.checks.context import table_arg


class GatewayIsOwnAddress(Check):
    """A route's gateway is one of this host's own addresses

    ## What it checks
    Every unicast route (outside the `local` table) whose nexthop gateway is
    an address configured on this host. On a device with `NOARP` or
    `POINTOPOINT` (PPP, tunnels) the finding is informational; on a device
    that resolves neighbours (Ethernet, veth, bridge) it is an error.

    ## Why it breaks forwarding
    The kernel accepts a local gateway and then treats the route as a device
    route: the next hop becomes each packet's own destination. On a
    point-to-point, no-ARP link that is harmless — every frame reaches the
    peer anyway, as in the seed's `faster` solution
    (`ip route add default via 180.134.135.173 dev ppp0 table SunusRules`,
    ArchLinux's own ppp0 address). On Ethernet the host ARPs for every remote
    destination (8.8.8.8) on the link; nobody answers unless the real gateway
    does proxy-ARP, so traffic dies in INCOMPLETE neighbour entries.

    ## Example
    ```
    ip route add default via 180.134.135.173 dev ppp0 table SunusRules   # 180.134.135.173 is ppp0's own address
    ```

    ## Fix
    Use the peer (or the real gateway) as `via`, or drop `via` on a
    point-to-point link:
    `ip route replace default via 180.134.135.1 dev ppp0 table SunusRules`.
    """

    id = "WR004"
    severity = "error"
    title = "gateway is this host's own address"

    def check(self, ctx):
        state = ctx.state
        for (gw, dev), use in sorted(ctx.gateways.items(), key=lambda kv: (kv[0][0], kv[0][1] or "")):
            if not ctx.is_local(gw):
                continue
            link = ctx.links.get(dev)
            owner = next((a.ifname for a in state.addresses if a.local == gw), "?")
            peers = [c.address.peer for c in ctx.connected_on(dev or "") if c.address.peer]
            if link is not None and (link.noarp or link.pointopoint):
                kind = "POINTOPOINT" if link.pointopoint else "NOARP"
                severity = "info"
                effect = (f"{dev} is {kind}, so this is harmless: the kernel treats the route as a device route "
                          f"and every packet reaches the far end of {dev} anyway")
            else:
                severity = "error"
                effect = (f"{dev} resolves neighbours (ARP/ND), so the host ARPs for every destination itself "
                          f"and nothing answers unless the real gateway does proxy-ARP: traffic is dropped")
            message = f"{use.routes_text(state)}: gateway {gw} is this host's own address (on {owner}); {effect}"
            fixes = []
            for route in use.sample:
                if peers:
                    fixes.append(f"ip route replace {route.prefix} via {peers[0]} dev {dev}"
                                 f"{table_arg(state, route.table)}")
                elif severity == "info":
                    fixes.append(f"ip route replace {route.prefix} dev {dev}{table_arg(state, route.table)}")
                else:
                    fixes.append(f"ip route replace {route.prefix} via GATEWAY dev {dev}{table_arg(state, route.table)}"
                                 f"   # GATEWAY: the router on {dev}'s subnet")
            yield self.finding(message, fixes, severity=severity, gateway=gw, dev=dev)
