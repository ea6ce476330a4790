from tracer.checks.base import Check
from tracer.checks.context import rule_text
from tracer.vocab import AF_INET


class IpForwardOff(Check):
    """IPv4 forwarding is off on a host configured to route

    ## What it checks
    `net.ipv4.ip_forward` must be 1 when the host is evidently meant to
    forward IPv4: an IPv4 `from` rule selects a source that is not a local
    address, an IPv4 rule matches `iif` of a device other than `lo`, or the
    ruleset has SNAT/MASQUERADE rules (which only make sense for forwarded
    traffic) — and the snapshot holds the `ip_forward` value. It is an error
    when ip rules show the routing; a warning when only NAT rules do (tools
    such as tailscaled install them on hosts that forward nothing).

    ## Why it breaks forwarding
    With `ip_forward=0` the kernel answers every packet not addressed to the
    host itself with `EHOSTUNREACH` in the input route lookup
    (`ip_route_input_slow`): the policy rules, tables and NAT rules never
    see forwarded traffic. It is also reset by a reboot if it was only set
    with `sysctl -w`, or by tools that write `all.forwarding`.

    ## Example
    ```
    sysctl net.ipv4.ip_forward      # = 0
    ip rule add from 192.168.1.169 table sunusroute
    ```

    ## Fix
    `sysctl -w net.ipv4.ip_forward=1`, and persist it:
    `echo 'net.ipv4.ip_forward = 1' > /etc/sysctl.d/90-forwarding.conf`.
    """

    id = "WR015"
    severity = "error"
    title = "ip_forward off on a routing host"

    def check(self, ctx):
        value = ctx.state.sysctls.get("net.ipv4.ip_forward")
        if value is None or value != "0":
            return
        evidence = []
        for rule in ctx.rules_of(AF_INET):
            if rule.src and not rule.invert and not ctx.is_local(rule.src):
                evidence.append(f"rule {rule_text(rule, ctx.state)} selects a non-local source")
            elif rule.iif and rule.iif != "lo":
                evidence.append(f"rule {rule_text(rule, ctx.state)} selects traffic arriving on {rule.iif}")
        routing = bool(evidence)
        if ctx.netfilter_known:
            nat = [n for n in ctx.ruleset.nat_rules()
                   if n.type in ("snat", "masquerade") and n.family in ("ip", "inet")]
            evidence.extend(f"NAT rule {n.text}" for n in nat[:3])
        if not evidence:
            return
        message = ("net.ipv4.ip_forward is 0, so this host forwards no IPv4 packet (EHOSTUNREACH), yet it is "
                   "configured to route: " + "; ".join(evidence[:4]))
        if not routing:
            # Tools install NAT rules on hosts that may never forward (tailscaled's ts-postrouting
            # on every node): on their own they only suggest routing.
            message += " (only NAT rules suggest it: harmless if this host is not meant to forward)"
        yield self.finding(message, ["sysctl -w net.ipv4.ip_forward=1",
                                     "echo 'net.ipv4.ip_forward = 1' > /etc/sysctl.d/90-forwarding.conf"],
                           severity="error" if routing else "warning")
