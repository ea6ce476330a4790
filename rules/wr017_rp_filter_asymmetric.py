from tracer.checks.base import Check
from tracer.checks.fixes import sysctl_set


class RpFilterAsymmetric(Check):
    """Strict rp_filter drops traffic that policy routing sends back another way

    ## What it checks
    For each interface O with effective `rp_filter` = 1 (the maximum of
    `all` and O) that is the egress of a forwarded flow derived from the
    policy (see WR019), the FIB simulation routes the *reply* as it arrives on
    O (from the remote address to the flow's original source, after
    conntrack undoes the SNAT) and, for each IPv4 address of O, a new
    connection from the Internet to that address. The kernel's strict
    reverse-path check (`fib_validate_source`) drops such a packet (`EXDEV`
    when forwarding, `EINVAL` for local delivery) when the route back to its
    source does not leave by O.

    ## Why it breaks forwarding
    Policy routing makes the path asymmetric: the route back to 8.8.8.8 is
    decided by `main` (the slow uplink) while the packet came in on `ppp0`.
    In strict mode the replies, or connections to the router's own `ppp0`
    address, are silently dropped (`nstat` shows `IPReversePathFilter`).

    ## Example
    ```
    sysctl -w net.ipv4.conf.all.rp_filter=1
    ip route add default via 123.150.232.1 dev ppp0 table sunusroute
    ip rule add from 192.168.1.169 table sunusroute
    # 8.8.8.8 → 123.150.232.74 arriving on ppp0: the route back to 8.8.8.8 is main's, via eth0.2
    ```

    ## Fix
    Use loose mode (`sysctl -w net.ipv4.conf.all.rp_filter=2` and
    `net.ipv4.conf.ppp0.rp_filter=2`; the effective value is the maximum of
    the two), or make the path symmetric (for the router's own address:
    `ip rule add from 123.150.232.74 lookup sunusroute`).
    """

    id = "WR017"
    severity = "error"
    title = "strict rp_filter with asymmetric policy routing"

    def check(self, ctx):
        yield from super().check(ctx)
        checked = set()
        for flow in ctx.derived_flows:
            oif = flow.oif
            if oif is None or oif in checked or flow.dropped_by or ctx.rp_filter(oif) != 1:
                continue
            checked.add(oif)
            table = ctx.state.table_name(flow.result.table) if flow.result.table is not None else "TABLE"
            for address in ctx.state.addresses_of(oif, 4):
                result = ctx.route(address.local, src=flow.dst, iif=oif)
                if ctx.rp_filter_drop(result):
                    yield self._finding(ctx, oif, f"new connections to this host's address {address.local}",
                                        flow.dst, address.local, severity="warning",
                                        extra=f"ip rule add from {address.local} lookup {table}")

    def flow_check(self, ctx, flow):
        oif = flow.oif
        if oif is None or flow.dropped_by or ctx.rp_filter(oif) != 1:
            return
        reply = ctx.route(flow.src, src=flow.dst, iif=oif, proto=flow.proto, sport=flow.dport, dport=flow.sport)
        if ctx.rp_filter_drop(reply):
            yield self._finding(ctx, oif, f"replies to forwarded traffic from {flow.src} ({flow.why})",
                                flow.dst, flow.src, severity="error")

    def _finding(self, ctx, oif, what, remote, target, *, severity, extra=None):
        where = "net.ipv4.conf.all.rp_filter" if ctx.conf("all", "rp_filter") == 1 else f"rp_filter on {oif}"
        message = (f"{what} arrive on {oif}, but the route back to {remote} (from {target}) does not leave by "
                   f"{oif}, and strict {where}=1 drops them")
        # A symmetric path fixes it; loose mode alone lets the packet in, but
        # its answer still leaves by the other path (checked in the lab).
        fixes = ([extra] if extra else []) + [sysctl_set("all", "rp_filter", 2), sysctl_set(oif, "rp_filter", 2)]
        return self.finding(message, fixes, severity=severity, dev=oif, target=target)
