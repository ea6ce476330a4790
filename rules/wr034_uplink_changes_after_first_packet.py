from tracer.checks.base import Check, Fix
from tracer.checks.context import rule_text
from tracer.checks.fixes import uses_only_native_nft


class UplinkChangesAfterFirstPacket(Check):
    """A connection's later packets leave by another uplink than its first

    ## What it checks
    For the IPv4 traffic this host evidently forwards to the Internet (the
    flows of the other checks: the sources of `from` rules, a host of each
    private connected subnet), the first packet of a new connection and a
    later packet of the same connection (conntrack state established) are
    walked through the chains and the rules. When they leave by different
    devices, it is an error: what routes them — a mark set in prerouting,
    a rule that selects on it — depends on the connection's state, and
    the mark is not kept with the connection (`ct mark`, CONNMARK).

    ## Why it breaks forwarding
    NAT is decided by a connection's first packet. Its later packets leave
    by the other uplink with the first one's source address, which the
    other network does not route back; with MASQUERADE the kernel drops
    them (a masqueraded connection must leave by its own device) and ends
    the connection, so the next packet starts a new one. TCP hangs after
    the handshake; UDP answers stop. mwan3 avoids this by restoring the
    mark from the connection (`CONNMARK --restore-mark`) before it
    balances and saving it after; a hand-made multi-WAN set-up that marks
    with `ct state new` only, or leaves the restore out, does not.

    ## Example
    ```
    nft add rule ip mangle prerouting ip saddr 192.168.1.169 ct state new meta mark set 0x1
    ip rule add fwmark 0x1 lookup main priority 100   # main: default via eth0.2
    ip rule add from 192.168.1.169 lookup 7375         # 7375: default via ppp0
    ```

    ## Fix
    Keep the mark with the connection: restore it first in prerouting,
    before the rules that mark (`meta mark set ct mark`, or
    `iptables -t mangle -I PREROUTING -j CONNMARK --restore-mark`), and
    save it after them (`ct mark set meta mark`, `-j CONNMARK --save-mark`);
    the rule that marks then needs to match new connections only.
    """

    id = "WR034"
    severity = "error"
    title = "a connection's later packets leave by another uplink"
    requires = frozenset({"netfilter"})

    def check(self, ctx):
        seen = set()
        for first in ctx.derived_flows:
            if first.explanation.choices or first.oif is None:
                continue  # a random or multipath fork: the later packets' walk would fork again
            later = ctx.later_packets(first)
            if later.oif is None or later.oif == first.oif or (first.src, first.oif, later.oif) in seen:
                continue
            seen.add((first.src, first.oif, later.oif))
            yield self._finding(ctx, first, later)

    def _finding(self, ctx, first, later):
        state = ctx.state

        def how(path) -> str:
            decision = path.explanation.decision
            rule = f"rule {rule_text(decision.rule, state)}" if decision and decision.rule else "no rule"
            return f"{path.oif} (mark {decision.query.mark:#x}, {rule})" if decision else path.oif

        message = (f"{first.src} → {first.dst} ({first.why}): the first packet of a connection leaves by {how(first)}, "
                   f"its later packets are routed to {how(later)}: what routes them depends on the connection's "
                   f"state, and the mark is not kept with the connection. ")
        egress = later.explanation.egress
        if egress is None:  # NAT dropped them (a masqueraded connection), or a chain did
            message += f"{first.oif}'s NAT binds the connection: {later.explanation.verdict_reason}"
        else:
            message += (f"They leave {later.oif} with the source {egress.src} that NAT gave the first packet, "
                        f"which {later.oif}'s network does not route back")
        return self.finding(message, Fix.steps(*_connmark_commands(ctx)), src=first.src, first_dev=first.oif,
                            later_dev=later.oif)


def _connmark_commands(ctx) -> list[str]:
    """Restore the mark from the connection before prerouting's mangle chains, save it after them."""
    if uses_only_native_nft(ctx):
        return ["nft add table ip whyroute_connmark",
                "nft 'add chain ip whyroute_connmark restore { type filter hook prerouting priority mangle - 1 ; }'",
                "nft add rule ip whyroute_connmark restore meta mark set ct mark",
                "nft 'add chain ip whyroute_connmark save { type filter hook prerouting priority mangle + 1 ; }'",
                "nft add rule ip whyroute_connmark save ct mark set meta mark"]
    return ["iptables -t mangle -I PREROUTING 1 -j CONNMARK --restore-mark",
            "iptables -t mangle -A PREROUTING -j CONNMARK --save-mark"]
