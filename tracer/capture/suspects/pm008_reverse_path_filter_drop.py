from tracer.capture import ties
from tracer.capture.suspects import Suspect
from tracer.checks.fixes import sysctl_set


class ReversePathFilterDrop(Suspect):
    """The router's reverse-path filter drops the replies that come back by another uplink

    ## What it detects
    The server's replies arrive at the router on another interface than the one
    the requests left by (seen there in the capture), and none of them ever
    leaves toward the client; routing such a reply on the snapshot (its
    destination the client again, conntrack having undone the NAT) fails the
    reverse-path check of the interface it arrived on.

    ## Why the connection suffers
    With `rp_filter=1` (strict), the kernel accepts a packet only if the route
    back to its source leaves by the interface it arrived on. Policy routing
    sends the traffic to that server out the other uplink, so every reply is
    dropped before forwarding (`nstat` counts them as `TcpExtIPReversePathFilter`):
    the handshake never completes, or the transfer stops dead.

    ## Ties to
    The sysctl `net.ipv4.conf.IFACE.rp_filter` of the arrival interface and of
    `all` from the snapshot (the effective value is the larger), and the route
    back to the server that fails validation: the ip rule, table and route the
    kernel's reverse lookup takes (from the client to the server), with the
    device it leaves by.

    ## Fix
    Loose reverse-path filtering on the interface the replies arrive on:
    `sysctl -w net.ipv4.conf.IFACE.rp_filter=2` (interface names with a dot are
    spelt with `/` by sysctl). Or make the return route match: route the
    requests to that server out the interface the replies come back on, e.g.
    `ip rule add from CLIENT to SERVER lookup TABLE` with a table whose route
    to the server leaves there.
    """

    id = "PM008"
    title = "reverse-path filter drops the replies"

    def detect(self, conn, ctx):
        if not conn.asymmetric or conn.first.h[1].packets:
            return None
        back = conn.reply_side
        arrival, client_dev = conn.name_of(back), conn.names[0]
        client, server = conn.first.client, conn.first.server
        drop = ties.reverse_path_drop(ctx.state, client, server, arrival, client_dev)
        if drop is None:
            return None
        replies = back.h[1]
        kind = "SYN/ACK" if replies.syn_number is not None else "reply"
        evidence = []
        if replies.syn_number is not None:
            evidence.append((replies.syn_number, replies.first_syn, arrival,
                             f"SYN/ACK from {back.server[0]} arrived on {arrival} ({replies.syns} in all)"))
        elif replies.ev_data:
            number, time = replies.ev_data[0][:2]
            evidence.append((number, time, arrival, f"reply data from {back.server[0]} arrived on {arrival}"))
        evidence.append((None, None, client_dev, f"no {kind} left toward {client[0]} (0 of the {replies.packets} "
                         f"that arrived on {arrival})"))
        fixes = [sysctl_set(arrival, "rp_filter", 2)]
        table = ties.table_leaving_by(ctx.state, server[0], arrival)
        if table is not None:
            fixes.append(f"ip rule add from {client[0]} to {server[0]} lookup {table}   # or this: requests and "
                         f"replies both by {arrival} (table {table}'s route to {server[0]})")
        summary = (f"replies from {server[0]} arrive on {arrival} and are dropped there: {drop['reason']}")
        return self.raise_(95, summary, evidence=evidence, config=drop["config"], fix=fixes)
