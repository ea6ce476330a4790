from tracer.checks.base import Check, Fix
from tracer.checks.context import route_text
from tracer.checks.fixes import forward_accept_commands


class ReplyPath(Check):
    """The replies of a forwarded flow are dropped or routed elsewhere

    ## What it checks
    For each forwarded flow (see WR019) that leaves interface O with a
    source the far side can answer (SNATed, or routable back through O): the
    reply — from the remote address to the flow's original source after
    conntrack undoes the NAT, entering on O, an established connection — is
    routed by the FIB simulation and walked through the forward hook. It
    must leave by the interface the flow came in on and be accepted.
    Reverse-path (EXDEV) drops are WR017.

    ## Why it breaks forwarding
    A one-way path: the request leaves, the answer comes back to the router
    and is then dropped by a FORWARD rule that only accepts the outgoing
    direction, or routed out another interface because a rule or table for
    the reply's destination sends it there (a `to` rule, a route in the
    wrong table). Connections hang in SYN_SENT.

    ## Example
    ```
    iptables -P FORWARD DROP
    iptables -A FORWARD -i br-lan -o ppp0 -j ACCEPT      # no rule for the replies
    ```

    ## Fix
    Accept established replies
    (`iptables -I FORWARD -i ppp0 -o br-lan -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT`),
    or route the original source's subnet back to its interface in the
    table that decides the reply.
    """

    id = "WR025"
    severity = "error"
    title = "reply direction dropped or routed elsewhere"

    def flow_check(self, ctx, flow):
        oif = flow.oif
        if oif is None or flow.dropped_by or flow.post is None:
            return
        if not (flow.snat or ctx.source_routed_back_via(flow.out_src, oif)):
            return  # WR019: the replies cannot come back at all
        state = ctx.state
        reply = ctx.flow(flow.dst, flow.src, oif, why=f"reply to {flow.src}", proto=flow.proto,
                         sport=flow.dport, dport=flow.sport, reply=True)
        result = reply.result
        if result is None or ctx.rp_filter_drop(result):  # None: dropped before routing
            return  # WR017
        what = f"replies from {flow.dst} to {flow.src} (for {flow.why}) arriving on {oif}"
        if result.error:
            message = f"{what} cannot be routed: {result.error} ({result.error_reason or 'no route'})"
            fixes = Fix.probe(f"ip route get {flow.src} from {flow.dst} iif {oif}")
        elif result.dev != flow.iif:
            route = route_text(result.route, state) if result.route is not None else f"dev {result.dev}"
            table = state.table_name(result.table) if result.table is not None else "main"
            message = f"{what} are routed out {result.dev} ({route}, table {table}) instead of {flow.iif}"
            lan = ctx.connected_containing(flow.src)
            in_table = "" if result.table == 254 else f" table {table}"
            fixes = ([f"ip route add {lan.network} dev {lan.ifname}{in_table}"]
                     if lan is not None else [])
        elif reply.forward is not None and reply.forward.verdict in ("drop", "reject"):
            message = f"{what} are dropped by the forward hook: {reply.forward.decided_by}"
            fixes = forward_accept_commands(ctx, reply.forward, oif, flow.iif, reply=True)
        else:
            return
        yield self.finding(message, fixes, src=flow.src, dev=oif)
