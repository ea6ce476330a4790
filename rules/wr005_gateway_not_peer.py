from tracer.checks.base import Check
from tracer.checks.context import table_arg


class GatewayNotPeer(Check):
    """A route on a point-to-point device names a gateway other than the peer

    ## What it checks
    Every unicast route whose nexthop device has a point-to-point address
    (`ip addr add A peer P`) and whose gateway is neither this host's own
    address (WR004) nor inside the peer prefix of that device. The kernel only
    accepts such a route with `onlink`.

    ## Why it breaks forwarding
    On a real point-to-point link every packet reaches the peer whatever the
    gateway says, so the route "works" — but the gateway is a typo or a stale
    value (the seed prints `123.150.108.1` and `1123.150.232.1` for the peer
    `123.150.232.1`). The mistake surfaces when the link is replaced by a
    multi-access one (PPPoE → DHCP Ethernet), when a tool derives the real
    next hop from the route (monitoring, failover scripts, `ip route get`
    output), or when the peer changes at reconnection.

    ## Example
    ```
    ip route add default via 123.150.108.1 dev ppp0 onlink table sunusroute   # peer is 123.150.232.1
    ```

    ## Fix
    Use the peer as the gateway (or no gateway):
    `ip route replace default via 123.150.232.1 dev ppp0 table sunusroute`.
    """

    id = "WR005"
    severity = "warning"
    title = "gateway differs from the point-to-point peer"

    def check(self, ctx):
        state = ctx.state
        for (gw, dev), use in sorted(ctx.gateways.items(), key=lambda kv: (kv[0][0], kv[0][1] or "")):
            if dev is None or ctx.is_local(gw):
                continue
            peers = [c for c in ctx.connected_on(dev) if c.address.peer]
            if not peers or any(gw in c for c in peers):
                continue
            peer = peers[0].address.peer
            message = (f"{use.routes_text(state)}: gateway {gw} is not the peer of {dev} ({peer}); packets still "
                       f"reach {peer} on a point-to-point link, but the route says otherwise")
            fixes = [f"ip route replace {r.prefix} via {peer} dev {dev}{table_arg(state, r.table)}" for r in use.sample]
            yield self.finding(message, fixes, gateway=gw, dev=dev, peer=peer)
