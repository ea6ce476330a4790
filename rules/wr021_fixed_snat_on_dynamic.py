from tracer.checks.base import Check
from tracer.checks.fixes import nat_replace_command, rule_accepts_oif


class FixedSnatOnDynamic(Check):
    """Fixed SNAT on an interface whose address is dynamic (use MASQUERADE)

    ## What it checks
    Every SNAT rule (a fixed `--to-source` / `snat to` address) reachable
    from postrouting whose output-interface match names an interface that
    gets its address dynamically: a PPP device (kind `ppp`, or named
    `ppp…`), or one whose routes were installed by DHCP or router
    advertisements (route protocol `dhcp`/`ra`).

    ## Why it breaks forwarding
    The rule is right until the link reconnects with a new address (PPP and
    DHCP leases change): from then on every forwarded packet leaves with the
    old address as its source, and no reply comes back. MASQUERADE takes the
    interface's current address for each new connection and forgets the
    mappings when the interface goes down.

    ## Example
    ```
    iptables -t nat -A POSTROUTING -o ppp0 -j SNAT --to-source 123.150.232.74
    ```

    ## Fix
    Replace the rule by MASQUERADE:
    `iptables -t nat -R POSTROUTING 1 -o ppp0 -j MASQUERADE`.
    """

    id = "WR021"
    severity = "warning"
    title = "fixed SNAT on a dynamic interface"
    requires = frozenset({"netfilter"})

    def check(self, ctx):
        for nat in ctx.ruleset.nat_rules():
            if nat.type != "snat" or "postrouting" not in nat.hooks:
                continue
            for oif in sorted(ctx.links):
                reason = ctx.dynamic_reason(oif)
                if reason is None or not rule_accepts_oif(nat.conditions, oif):
                    continue
                message = (f"{nat.text} source-NATs traffic leaving {oif} to the fixed address {nat.addr}, but "
                           f"{reason}: after a reconnection with a new address the rule keeps writing the old one")
                yield self.finding(message, nat_replace_command(nat, masquerade=True), dev=oif, rule=nat.text)

