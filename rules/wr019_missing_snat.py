from tracer.checks.base import Check, Fix
from tracer.checks.context import is_private
from tracer.checks.fixes import snat_command


class MissingSnat(Check):
    """Forwarded traffic leaves with a source the far side cannot answer (no SNAT)

    ## What it checks
    For each forwarded flow the host is evidently meant to carry — from each
    non-local `from` rule source and from a host of each private connected
    IPv4 subnet, entering on the interface of its subnet, to an Internet
    address (TCP to port 443) — and for the flow asked about in `why-route
    SRC DST`: the FIB simulation gives the egress interface O and the
    netfilter model (prerouting, forward, postrouting) the NAT. It is an
    error when the packet is accepted, its source is private (RFC 1918,
    CGNAT, ULA), no SNAT or MASQUERADE rewrites it, and the source is neither
    an address of O, nor in a subnet of O, nor in a prefix this host routes
    through O (then the far side can route it back).

    ## Why it breaks forwarding
    The packet leaves, so traffic counters and `tcpdump` on the router look
    fine — but the next hop (an ISP, a VPN server) has no route back to
    192.168.1.169: the replies never come (the seed's `ultimate-nosnat`, and
    ArchLinux in `faster`, where the MacBook's packets leave ArchLinux's
    `ppp0` unchanged).

    ## Example
    ```
    ip route add default via 123.150.232.1 dev ppp0 table sunusroute
    ip rule add from 192.168.1.169 table sunusroute
    # no: iptables -t nat -A POSTROUTING -o ppp0 -j SNAT --to-source 123.150.232.74
    ```

    ## Fix
    Source-NAT the traffic leaving O: `iptables -t nat -A POSTROUTING -o ppp0
    -j SNAT --to-source 123.150.232.74`, or `-j MASQUERADE` when O's address
    is dynamic (PPP, DHCP), which the fix proposes for such interfaces.
    When O is a tunnel this host terminates (a WireGuard, Tailscale, OpenVPN
    or GRE device), routing a LAN into it unmasqueraded is often deliberate —
    the far end may route the LAN back, which nothing on this host shows —
    so the finding is only a warning.
    """

    id = "WR019"
    severity = "error"
    title = "missing SNAT for forwarded traffic"
    requires = frozenset({"netfilter"})

    def check(self, ctx):
        groups: dict[str, list] = {}
        for flow in ctx.derived_flows:
            if self._broken(ctx, flow):
                groups.setdefault(flow.oif, []).append(flow)
        for oif, flows in sorted(groups.items()):
            yield self._finding(ctx, oif, flows)

    def flow_check(self, ctx, flow):
        if self._broken(ctx, flow):
            yield self._finding(ctx, flow.oif, [flow])

    @staticmethod
    def _broken(ctx, flow) -> bool:
        oif = flow.oif
        return (oif is not None and oif != flow.iif and flow.post is not None
                and not flow.snat and flow.out_src == flow.src and is_private(flow.src)
                and not ctx.source_routed_back_via(flow.src, oif))

    def _finding(self, ctx, oif, flows):
        state = ctx.state
        own = ", ".join(a.local for a in state.addresses_of(oif, 4)) or "none"
        sources = "; ".join(f"{f.src} ({f.why}) to {f.dst}: {f.decision_text(state)}" for f in flows)
        message = (f"forwarded traffic leaves {oif} with a private source the far side cannot route back, and no "
                   f"SNAT/MASQUERADE applies: {sources}. {oif}'s own address: {own}; the replies never come back")
        dynamic = ctx.dynamic_reason(oif)
        fixes = Fix.steps(snat_command(ctx, oif))
        if dynamic and ctx.primary_address(oif):
            message += f" ({dynamic}: MASQUERADE follows its address)"
            fixes = Fix.alternatives(*fixes, snat_command(ctx, oif, masquerade=False) + "   # if the address is static")
        tunnel = ctx.tunnel_reason(oif)
        if tunnel:
            # A LAN reaching a VPN or overlay unmasqueraded is often meant: the far end may
            # route the LAN back (WireGuard: the peer's AllowedIPs); nothing here can tell.
            message += (f". But {tunnel}, a tunnel this host terminates: this works if its far end routes "
                        f"{', '.join(dict.fromkeys(f.src for f in flows))} back through the tunnel (WireGuard: "
                        f"the peer's AllowedIPs include it); if not, source-NAT it")
            return self.finding(message, fixes, severity="warning", dev=oif, sources=[f.src for f in flows])
        return self.finding(message, fixes, dev=oif, sources=[f.src for f in flows])
