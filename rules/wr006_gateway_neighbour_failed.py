from tracer.checks.base import Check, Fix


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
    The finding gives a probe, not a fix: flush the stale entry so the kernel
    resolves the gateway again (`ip neigh flush dev eth0.2 to 10.10.149.1`),
    send to it (`ping -n -c 3 -W 1 -I eth0.2 10.10.149.1`) and look at the new
    state (`ip neigh show 10.10.149.1 dev eth0.2`); only tools every host has.
    If it stays FAILED, bring the gateway up or correct the route's gateway or
    device (WR003, WR005).
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
            # Find out whether the gateway answers now, with tools every host has: drop the
            # stale entry, make the kernel resolve it again, look at the new state.
            ping = "ping -6" if ":" in gw else "ping"
            probe = Fix.probe(f"ip neigh flush dev {dev} to {gw}", f"{ping} -n -c 3 -W 1 -I {dev} {gw}",
                              f"ip neigh show {gw} dev {dev}")
            yield self.finding(message, probe, gateway=gw, dev=dev, state=nud)
