from tracer.checks.base import Check


class GatewayNeighbourFailed(Check):
    """A gateway's neighbour entry is FAILED or INCOMPLETE

    ## What it checks
    For every (gateway, device) pair used by a unicast route, the neighbour
    table (`ip neigh`, live state only) must not hold that gateway on that
    device in state `FAILED` or `INCOMPLETE`.

    ## Why it breaks forwarding
    The kernel resolves the gateway's link-layer address before it can send.
    FAILED means the last resolution got no answer (the gateway is down, on
    another VLAN, or filtered); INCOMPLETE means resolution is under way and
    unanswered so far. Every packet through that route is queued and then
    dropped, typically seen as "Destination Host Unreachable" from this host.

    ## Example
    ```
    $ ip neigh show 10.10.149.1
    10.10.149.1 dev eth0.2 FAILED
    ```

    ## Fix
    Check that the gateway is up and on that link (`arping -I eth0.2 -c 3
    10.10.149.1`), correct the route's gateway or device, then flush the stale
    entry so the kernel retries at once: `ip neigh flush dev eth0.2 to 10.10.149.1`.
    """

    id = "WR006"
    severity = "error"
    title = "gateway neighbour FAILED/INCOMPLETE"

    def check(self, ctx):
        state = ctx.state
        neigh = {(n.address, n.ifname): n.state for n in state.neighbours}
        for (gw, dev), use in sorted(ctx.gateways.items(), key=lambda kv: (kv[0][0], kv[0][1] or "")):
            nud = neigh.get((gw, dev))
            if nud is None or not ({"FAILED", "INCOMPLETE"} & set(nud.split("|"))):
                continue
            message = (f"gateway {gw} on {dev} is {nud} in the neighbour table: it does not answer "
                       f"{'ARP' if ':' not in gw else 'neighbour discovery'}, "
                       f"so {use.routes_text(state)} drops its traffic")
            fixes = [f"arping -I {dev} -c 3 {gw}" if ":" not in gw else f"ndisc6 {gw} {dev}",
                     f"ip neigh flush dev {dev} to {gw}"]
            yield self.finding(message, fixes, gateway=gw, dev=dev, state=nud)
