from tracer.checks.base import Check
from tracer.checks.context import rule_text
from tracer.checks.fixes import sysctl_set


class FwmarkWithoutSrcValidMark(Check):
    """fwmark policy routing with rp_filter but without src_valid_mark

    ## What it checks
    When an IPv4 rule selects by `fwmark`, every interface that a table of
    such a rule routes out of (its nexthop devices) must not combine an
    effective `rp_filter` of 1 or 2 (max of `all` and the interface) with
    `src_valid_mark` = 0 (neither `all` nor the interface set).

    ## Why it breaks forwarding
    The reverse-path check ignores the packet mark unless `src_valid_mark`
    is set: the route back to the sender is computed as for an unmarked
    packet, i.e. by `main`. Replies that the mark (restored from `connmark`)
    should route through the marked uplink are judged against the wrong
    path and dropped with EXDEV in strict mode — in loose mode too, when
    only the marked table has a route back.

    ## Example
    ```
    iptables -t mangle -A PREROUTING -i ppp0 -j CONNMARK --restore-mark
    ip rule add fwmark 0x2 table fast
    sysctl net.ipv4.conf.all.rp_filter             # = 1
    sysctl net.ipv4.conf.all.src_valid_mark        # = 0
    ```

    ## Fix
    `sysctl -w net.ipv4.conf.all.src_valid_mark=1` (or set it on the uplink).
    """

    id = "WR018"
    severity = "warning"
    title = "fwmark routing with rp_filter but without src_valid_mark"

    def check(self, ctx):
        state = ctx.state
        uplinks: dict[str, str] = {}
        for rule in ctx.rules_of(4):
            if not (rule.fwmark or rule.fwmask) or rule.action != "lookup":
                continue
            for dev in sorted(ctx.table_devs.get((4, rule.table), ())):
                uplinks.setdefault(dev, rule_text(rule, state))
        for dev, rule in sorted(uplinks.items()):
            rp = ctx.rp_filter(dev)
            if rp == 0 or ctx.src_valid_mark(dev):
                continue
            message = (f"rule {rule} routes marked traffic out of {dev}, where rp_filter is {rp} and src_valid_mark "
                       f"is 0: the reverse-path check of packets arriving on {dev} ignores their mark and judges "
                       f"them against the unmarked route, dropping replies of the marked flows")
            yield self.finding(message, [sysctl_set("all", "src_valid_mark", 1)], dev=dev)
