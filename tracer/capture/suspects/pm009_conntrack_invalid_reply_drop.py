import dataclasses
import ipaddress

from tracer.capture import ties
from tracer.capture.suspects import Suspect
from tracer.errors import WhyRouteError
from tracer.flow import make_flow
from tracer.sim.explain import PacketVariant, explain

# The reply as the router's conntrack takes it when it never saw the request: no entry, so a
# SYN/ACK is INVALID (and a later segment too when nf_conntrack_tcp_loose is 0); and the same
# reply as part of a connection the router tracked, to tell the INVALID drop from any other.
UNTRACKED_REPLY = PacketVariant(ct_state="invalid", length=60, conntrack=False, reply=True,
                                through_forward_only=True)
TRACKED_REPLY = dataclasses.replace(UNTRACKED_REPLY, ct_state="established")


class ConntrackInvalidReplyDrop(Suspect):
    """The router drops the replies as conntrack INVALID: the requests never crossed it

    ## What it detects
    The server's packets of a connection arrive at the router (seen in the
    capture: the SYN/ACK, sent again and again, or data sent again) and none is
    seen leaving toward the client, while no packet from the client to the
    server appears on any captured interface: the requests reach the server by
    another path (another gateway on the LAN, or the host's own uplink). The
    simulation of such a reply on the snapshot, with conntrack state `invalid`
    (the router has no entry for a connection whose SYN it never saw), is
    dropped by a rule that lets the same reply through when the connection is
    tracked: the `ct state invalid drop` that OpenWrt's fw4 and most stateful
    firewalls put in their forward chain.

    ## Why the connection suffers
    Conntrack creates an entry from a connection's first packet, the client's
    SYN. A SYN/ACK with no entry is INVALID (and, with
    `nf_conntrack_tcp_loose=0`, so is every later segment): the rule drops each
    one, the client never gets an answer and the connection never opens. The
    server keeps resending its SYN/ACK until it gives up.

    ## Ties to
    The netfilter rule that drops the reply as INVALID (family, table, chain,
    handle and text, from the walk of the reply through the snapshot's
    ruleset), and the ip rule and route that would take the reply to the client
    (the device the replies never leave by).

    ## Fix
    Make the routing symmetric, so that the requests cross the router the
    replies come back through: on the client, route the server (or the whole
    default) via the router's address on its LAN (`ip route replace SERVER via
    ROUTER`), or change the policy rule that sends its requests out another
    gateway; or, where the other path is wanted, have the far side route the
    replies back that way. Loosening the INVALID drop is the wrong fix: the
    replies would pass, but the router still never tracks the connection (no
    NAT, no stateful filtering for it), and the rule is what keeps unsolicited
    and forged segments out.
    """

    id = "PM009"
    title = "conntrack drops the replies as INVALID"

    def detect(self, conn, ctx):
        if ctx.state is None or conn.paired or conn.first.h[0].packets:
            return None
        side, arrival = conn.first, conn.names[0]
        replies = side.h[1]
        # the server repeating itself: none of it reached the client
        if replies.syns < 2 and replies.retrans_max < 2:
            return None
        client, server = side.client, side.server
        explained = _reply_walks(ctx.state, client, server, arrival)
        if explained is None:
            return None
        untracked, tracked = explained
        let_through = {_key(r) for r in ties.path_drop_rules(tracked)}
        invalid = [{**r, "why": "drops the reply as ct state invalid: conntrack has no entry for a connection "
                                "whose request never crossed the router"}
                   for r in ties.path_drop_rules(untracked, certain=True) if _key(r) not in let_through]
        if not invalid or tracked.verdict == "dropped":
            return None
        towards = _device(tracked)
        evidence = []
        if replies.syn_number is not None:
            evidence.append((replies.syn_number, replies.first_syn, arrival,
                             f"SYN/ACK from {server[0]}:{server[1]} to {client[0]}:{client[1]} arrived on "
                             f"{arrival} (sent {replies.syns} times)"))
        elif replies.ev_data:
            number, time = replies.ev_data[0][:2]
            evidence.append((number, time, arrival, f"data from {server[0]}:{server[1]} to {client[0]}:{client[1]} "
                             f"arrived on {arrival} (one segment sent {replies.retrans_max} times)"))
        evidence.append((None, None, towards or arrival,
                         f"none of the {replies.packets} packets from {server[0]} seen leaving toward {client[0]}"
                         + (f" (by {towards}, the route to it)" if towards else "")
                         + f"; no packet from {client[0]} to {server[0]} on any captured interface"))
        rule = invalid[0]
        summary = (f"replies from {server[0]} arrive on {arrival} for a connection whose requests never crossed the "
                   f"router: conntrack has no entry, so they are INVALID and {_name(rule)} drops them")
        return self.raise_(96, summary, evidence=evidence, config=invalid + ties.route(tracked),
                           fix=_fixes(ctx.state, client[0], server[0], arrival, towards, rule))


def _key(rule: dict) -> tuple:
    return rule["family"], rule["table"], rule["chain"], rule["handle"]


def _name(rule: dict) -> str:
    return f"{rule['kind']} {rule['family']} {rule['table']} {rule['chain']} handle {rule['handle']}"


def _reply_walks(state, client: tuple, server: tuple, arrival: str):
    """The reply (server → client, arriving where it was seen) walked untracked and tracked."""
    iif = arrival if state.link(arrival) is not None else None
    try:
        flow = make_flow(client[0], server[0], iif=iif, proto="tcp", sport=server[1], dport=client[1])
        return explain(state, flow, UNTRACKED_REPLY), explain(state, flow, TRACKED_REPLY)
    except WhyRouteError:
        return None


def _device(explanation) -> str | None:
    """The device the routing decision sends the reply out of (the walk stops after forward)."""
    route = explanation.decision.route if explanation.decision is not None else None
    devices = [nh.dev for nh in route.nexthops if nh.dev] if route is not None else []
    return devices[0] if len(devices) == 1 else None


def _router_address(state, dev: str | None, client: str) -> str | None:
    """The router's address on the client's subnet (the gateway the client should use)."""
    if dev is None:
        return None
    host = ipaddress.ip_address(client)
    for a in state.addresses_of(dev, 4):
        if host in ipaddress.ip_network(f"{a.local}/{a.prefixlen}", strict=False):
            return a.local
    return None


def _fixes(state, client: str, server: str, arrival: str, towards: str | None, rule: dict) -> list[str]:
    router = _router_address(state, towards, client)
    fixes = []
    if router is not None:
        fixes.append(f"ip route replace {server} via {router}   # on {client}: its requests to {server} through "
                     f"this router, the way the replies come back (or fix the policy rule that sends them elsewhere)")
    fixes.append(f"# or route the replies to {client} back by the gateway its requests leave by: the far side sends "
                 f"them to this router's {arrival}")
    fixes.append(f"# not a fix: accepting INVALID ({_name(rule)}) lets the replies through, but the router "
                 "still never tracks the connection, and the rule keeps unsolicited segments out")
    return fixes
