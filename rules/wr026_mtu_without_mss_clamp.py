from tracer.checks.base import Check
from tracer.checks.fixes import mss_clamp_command


class MtuWithoutMssClamp(Check):
    """A small-MTU uplink carries forwarded TCP without MSS clamping

    ## What it checks
    For each forwarded TCP flow (see WR019, and the flow asked about) that
    is accepted and leaves interface O whose MTU is below 1500 and below the
    MTU of the input interface: some rule in forward or postrouting must
    clamp the MSS of the SYN (iptables `TCPMSS`, nft `tcp option maxseg size
    set`) for packets leaving O. Severity rises to error when the forward
    hook can drop ICMP "fragmentation needed" (the netfilter model's probe
    says so for certain).

    ## Why it breaks forwarding
    The LAN host announces an MSS for a 1500-byte path; the server sends
    full-size segments that do not fit the 1400-byte PPP/VPN link. Path-MTU
    discovery should shrink them, but it depends on ICMP "fragmentation
    needed" getting through — often filtered along the way — so small
    requests work and large transfers stall: the classic "web pages load
    half-way" on PPPoE and VPN uplinks.

    ## Example
    ```
    ip link show ppp0        # mtu 1400
    ip route add default via 123.150.232.1 dev ppp0 table sunusroute
    # no TCPMSS rule
    ```

    ## Fix
    `iptables -t mangle -A FORWARD -o ppp0 -p tcp --tcp-flags SYN,RST SYN -j TCPMSS --clamp-mss-to-pmtu`
    (nft: `tcp flags syn tcp option maxseg size set rt mtu`).
    """

    id = "WR026"
    severity = "error"
    title = "small MTU without MSS clamping"
    requires = frozenset({"netfilter"})

    def check(self, ctx):
        reported = set()
        for flow in ctx.derived_flows:
            for finding in self.flow_check(ctx, flow):
                if finding.objects["dev"] not in reported:
                    reported.add(finding.objects["dev"])
                    yield finding

    def flow_check(self, ctx, flow):
        oif = flow.oif
        if flow.proto != 6 or oif is None or flow.post is None:
            return
        out_link, in_link = ctx.links.get(oif), ctx.links.get(flow.iif)
        if out_link is None or out_link.mtu >= 1500 or (in_link is not None and out_link.mtu >= in_link.mtu):
            return
        if flow.forward.mss_clamp or flow.post.mss_clamp or ctx.ruleset.has_mss_clamp(oif):
            return
        drops = ctx.ruleset.icmp_frag_needed_drops("ip")
        certain = [d for d in drops if d.certain]
        message = (f"forwarded TCP from {flow.src} ({flow.why}) leaves {oif} (MTU {out_link.mtu}, input "
                   f"{flow.iif} MTU {in_link.mtu if in_link else '?'}) and no rule clamps the MSS: large segments "
                   f"depend on path-MTU discovery")
        if drops:
            where = "; ".join(f"{d.family} {d.table} {d.chain}: {d.text}" for d in drops[:2])
            message += (f", and ICMP fragmentation-needed {'is' if certain else 'may be'} dropped in forward "
                        f"({where}): a path-MTU black hole")
        else:
            message += " (a black hole wherever ICMP fragmentation-needed is filtered)"
        yield self.finding(message, mss_clamp_command(ctx, oif), severity="error" if certain else "warning",
                           dev=oif, mtu=out_link.mtu)
