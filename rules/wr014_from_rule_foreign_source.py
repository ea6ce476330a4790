import ipaddress

from tracer.checks.base import Check
from tracer.checks.context import rule_text
from tracer.vocab import prefix_text


class FromRuleForeignSource(Check):
    """A `from` rule selects a source that is neither local nor on a connected subnet

    ## What it checks
    Every rule with a `from` prefix (not inverted) must overlap a local
    address, a connected subnet of this host, or a prefix that a non-default
    route of `main` covers (a LAN behind another router). Otherwise no
    packet this host sends or forwards can carry that source.

    ## Why it breaks forwarding
    The rule never matches, so the policy it implements does not exist. It is
    almost always a typo in the address (the seed alone prints
    `1123.150.232.1` and `123.150.108.1` for `123.150.232.1`) or a source
    that has since been renumbered. Packets from such a source would also be
    dropped as martians by `rp_filter`.

    ## Example
    ```
    ip rule add from 192.168.11.169 table sunusroute   # the LAN is 192.168.1.0/24
    ```

    ## Fix
    Correct the source (`ip rule del priority 32765 && ip rule add from
    192.168.1.169 table sunusroute priority 32765`), or delete the rule.
    """

    id = "WR014"
    severity = "warning"
    title = "`from` rule for a source neither local nor connected"

    def check(self, ctx):
        state = ctx.state
        for rule in ctx.rules:
            if not rule.src or rule.invert or rule.src_len == 0:
                continue
            net = ipaddress.ip_network(f"{rule.src}/{rule.src_len}", strict=False)
            if any(c.network.version == net.version and c.network.overlaps(net) for c in ctx.connected):
                continue
            if any(ipaddress.ip_address(a) in net for a in ctx.local_addresses
                   if ipaddress.ip_address(a).version == net.version):
                continue
            route = ctx.covering_route(rule.family, 254, rule.src, rule.src_len)
            if route is not None and route.dst_len > 0:
                continue
            subnets = ", ".join(f"{c.network} ({c.ifname})" for c in ctx.connected if c.network.version == net.version)
            message = (f"rule {rule_text(rule, state)} selects {prefix_text(rule.src, rule.src_len, rule.family)}, "
                       f"which is neither a local address nor in a connected subnet ({subnets or 'none'}) nor "
                       f"routed to a known network: the rule can never match (a typo?)")
            ip = "ip -6" if rule.family == 6 else "ip"
            yield self.finding(message, f"{ip} rule del priority {rule.priority}", rule=rule.priority, src=rule.src)
