from tracer.checks.base import Check
from tracer.checks.context import rule_text


class RuleMissingDevice(Check):
    """A rule selects an input or output interface that does not exist

    ## What it checks
    Every rule with `iif NAME` or `oif NAME` (other than `lo`) where no
    interface of that name exists on the host.

    ## Why it breaks forwarding
    The kernel keeps such a rule but it never matches until a device of that
    name appears (rules follow names, not indexes). For a PPP or VPN device
    that is normal while the link is down — and a silent policy bypass: while
    `ppp0` is absent, the traffic the rule was meant to catch follows the
    later rules. For a renamed device (eth0 → enp1s0) it is dead forever.

    ## Example
    ```
    ip rule add iif eth1 lookup isp2      # the device is called enp2s0
    ```

    ## Fix
    Use the current name (`ip rule del priority 100 && ip rule add iif enp2s0
    lookup isp2 priority 100`), or delete the rule.
    """

    id = "WR028"
    severity = "warning"
    title = "rule names an interface that does not exist"
    shown_per_rule = True

    def check(self, ctx):
        state = ctx.state
        for rule in ctx.rules:
            for kind, name in (("iif", rule.iif), ("oif", rule.oif)):
                if not name or name == "lo" or name in ctx.links:
                    continue
                message = (f"rule {rule_text(rule, state)} selects {kind} {name}, but there is no interface {name} "
                           f"(interfaces: {', '.join(sorted(ctx.links))}): the rule never matches until it appears")
                ip = "ip -6" if rule.family == 6 else "ip"
                yield self.finding(message, f"{ip} rule del priority {rule.priority}", rule=rule.priority, dev=name)
