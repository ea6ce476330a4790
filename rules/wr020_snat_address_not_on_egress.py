from tracer.checks.base import Check
from tracer.checks.fixes import nat_replace_command, rule_accepts_oif


class SnatAddressNotOnEgress(Check):
    """SNAT rewrites to an address that is not on the egress interface

    ## What it checks
    Every SNAT rule reachable from postrouting whose output-interface match
    (`-o X` / `oifname "X"`) names an existing interface, and every SNAT that
    a derived or explained forwarded flow (see WR019) actually gets: the
    address it rewrites to (the first of a range) must be an address of the
    egress interface, or in a prefix routed back through it. An address on
    another interface is an error; one that is not on this host at all is an
    error; one on `lo` or a dummy device (a routed block) is a warning.

    ## Why it breaks forwarding
    The replies go to the SNAT address. The far side of `ppp0` routes
    `123.150.232.74` (ppp0's address) back to this host; it has no reason to
    route `10.10.149.4` (the slow uplink's address) here — the replies go
    elsewhere or nowhere. A copied rule after a renumbering, or a rule
    written for the other uplink, does exactly this.

    ## Example
    ```
    iptables -t nat -A POSTROUTING -o ppp0 -j SNAT --to-source 10.10.149.4   # eth0.2's address
    ```

    ## Fix
    Replace the bad rule where it stands (a rule appended after it would
    never be reached: the bad one matches first), by its rule number or
    handle: `iptables -t nat -R POSTROUTING 1 -o ppp0 -j SNAT --to-source
    123.150.232.74` — or `-j MASQUERADE` when the egress address is dynamic
    (PPP, DHCP), when it has none, or when the rule serves several egress
    interfaces (nft: `nft replace rule ip nat postrouting handle 7 oifname
    "ppp0" masquerade`).
    """

    id = "WR020"
    severity = "error"
    title = "SNAT to an address not on the egress interface"
    requires = frozenset({"netfilter"})

    def check(self, ctx):
        seen = set()
        for nat in ctx.ruleset.nat_rules():
            if nat.type != "snat" or not nat.addr or "postrouting" not in nat.hooks:
                continue
            for oif in ctx.links:
                if rule_accepts_oif(nat.conditions, oif):
                    finding = self._judge(ctx, oif, nat.addr.split("-")[0], nat, nat.conditions)
                    if finding is not None and (oif, nat.text) not in seen:
                        seen.add((oif, nat.text))
                        yield finding
        for flow in ctx.derived_flows:
            for f in self.flow_check(ctx, flow):
                key = (f.objects.get("dev"), f.objects.get("rule"))
                if key not in seen:
                    seen.add(key)
                    yield f

    def flow_check(self, ctx, flow):
        for rewrite in flow.snat:
            if rewrite.type == "snat" and rewrite.to and flow.oif:
                conditions = next((n.conditions for n in ctx.ruleset.nat_rules()
                                   if (n.family, n.table, n.chain, n.handle) ==
                                   (rewrite.family, rewrite.table, rewrite.chain, rewrite.handle)), ())
                finding = self._judge(ctx, flow.oif, rewrite.to, rewrite, conditions)
                if finding is not None:
                    yield finding

    def _judge(self, ctx, oif, address, rule, conditions):
        text = getattr(rule, "text", None) or rule.rule
        if ctx.source_routed_back_via(address, oif):
            return None
        state = ctx.state
        owner = next((a.ifname for a in state.addresses if a.local == address), None)
        own = ", ".join(a.local for a in state.addresses_of(oif, 4)) or "no address"
        if owner is None:
            where, severity = "not an address of this host", "error"
        elif owner == "lo" or (ctx.links.get(owner) and ctx.links[owner].kind == "dummy"):
            where, severity = f"on {owner} (a routed block?)", "warning"
        else:
            where, severity = f"the address of {owner}", "error"
        message = (f"{text} rewrites traffic leaving {oif} to {address}, {where}; {oif} has {own}, and the far side "
                   f"of {oif} has no reason to route {address} back here")
        right = ctx.primary_address(oif)
        egresses = [name for name in ctx.links if name != "lo" and rule_accepts_oif(conditions, name) is not False]
        masquerade = right is None or ctx.dynamic_reason(oif) is not None or len(egresses) > 1
        fix = nat_replace_command(rule, masquerade=masquerade, address=right)
        return self.finding(message, fix, severity=severity, dev=oif, rule=text, address=address)
