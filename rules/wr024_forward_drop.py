from tracer.checks.base import Check
from tracer.checks.fixes import forward_accept_commands


class ForwardDrop(Check):
    """The FORWARD hook drops traffic the routing policy sends out

    ## What it checks
    For each forwarded flow the host is evidently meant to carry (see
    WR019: policy sources and private subnets to an Internet address, TCP
    SYN to port 443) and for the flow asked about, the netfilter model walks
    the forward hook with the flow's input and output interfaces. It is an
    error when a rule or a chain policy drops or rejects it.

    ## Why it breaks forwarding
    The routing is right and the packet never leaves: a default-drop
    FORWARD policy (Docker sets one, firewall packages often do) without an
    accept rule for the new uplink. Routing tools (`ip route get`) show a
    perfect path; only the filter counters move.

    ## Example
    ```
    iptables -P FORWARD DROP
    iptables -A FORWARD -i br-lan -o eth0.2 -j ACCEPT     # nothing for ppp0
    ```

    ## Fix
    Accept the flow and its replies in the chain that dropped it:
    `iptables -I FORWARD -i br-lan -o ppp0 -s 192.168.1.169 -j ACCEPT` and
    `iptables -I FORWARD -i ppp0 -o br-lan -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT`.
    """

    id = "WR024"
    severity = "error"
    title = "FORWARD drops the flow"

    def flow_check(self, ctx, flow):
        hook = flow.forward
        if hook is None or hook.verdict not in ("drop", "reject"):
            return
        message = (f"forwarded traffic from {flow.src} ({flow.why}) to {flow.dst} is routed out {flow.oif} "
                   f"({flow.decision_text(ctx.state)}) but the forward hook {hook.verdict}s it: {hook.decided_by}")
        if hook.uncertain:
            message += " (uncertain: " + "; ".join(hook.uncertain_reasons[:2]) + ")"
        yield self.finding(message, forward_accept_commands(ctx, hook, flow.iif, flow.oif, flow.src),
                           src=flow.src, dev=flow.oif, decided_by=hook.decided_by)
