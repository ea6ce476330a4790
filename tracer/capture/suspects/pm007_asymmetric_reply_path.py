from tracer.capture import ties
from tracer.capture.suspects import Suspect
from tracer.checks.fixes import sysctl_set


class AsymmetricReplyPath(Suspect):
    """Replies come back on another interface than the requests left by

    ## What it detects
    On a connection seen on several interfaces of the router, the client's
    packets leave by one interface and the server's replies arrive on another.
    Worse when the replies that arrive are never forwarded to the client (the
    handshake never completes): conntrack (INVALID) or a rule dropped them; a
    drop the snapshot's reverse-path filter explains is PM008, and this suspect
    then ranks below it as the asymmetry behind it.

    ## Why the connection suffers
    The far side routes replies to the router's address by another uplink (its
    own routing, or an address that belongs to another link). Strict reverse-path
    filtering drops replies arriving where the router would not send; stateful
    firewalls on either path see only half of the connection; the two directions
    get different delays and losses.

    ## Ties to
    The ip rule, table and route that send the requests out (from the explanation of
    the flow), the source address the requests carry after NAT, and the
    rules-engine findings about reverse-path filtering (WR017) and reply paths (WR025).

    ## Fix
    Make both directions use one uplink: SNAT the requests to the address of the
    interface they leave by, or route them out where the replies return. Where the
    asymmetry is wanted, loose reverse-path filtering on the replies' interface:
    `sysctl -w net.ipv4.conf.IFACE.rp_filter=2`.
    """

    id = "PM007"
    title = "asymmetric reply path"
    shown_when_ok = True

    def detect(self, conn, ctx):
        if not conn.paired or not conn.asymmetric:
            return None
        out, back = conn.last, conn.reply_side
        out_name, back_name = conn.name_of(out), conn.name_of(back)
        evidence = []
        if out.h[0].syn_number:
            evidence.append((out.h[0].syn_number, out.h[0].first_syn, out_name,
                             f"SYN from {out.client[0]} left on {out_name}"))
        first_reply = back.h[1].ev_data[0] if back.h[1].ev_data else None
        if back.h[1].syn_number is not None:
            evidence.append((back.h[1].syn_number, back.h[1].first_syn, back_name,
                             f"SYN/ACK from {back.server[0]} arrived on {back_name}"))
        elif first_reply:
            evidence.append((first_reply[0], first_reply[1], back_name, f"reply data arrived on {back_name}"))
        dropped = not conn.handshake_done and back.h[1].packets > 0
        # a drop the reverse-path filter explains is PM008's; this one is left with the asymmetry
        rp_filter = dropped and ties.reverse_path_drop(ctx.state, conn.first.client, conn.first.server, back_name,
                                                       conn.names[0]) is not None
        if dropped and not rp_filter:
            evidence.append((None, None, conn.names[0], f"no reply ever reached {conn.first.client[0]}: dropped "
                             f"by the router after arriving on {back_name} (rp_filter or conntrack INVALID)"))
        explanation = ctx.explanation(conn)
        config = ties.route(explanation) + ties.nat(explanation)
        findings, fixes = [], []
        for rule_id in ("WR017", "WR025"):
            finding = ctx.finding(conn, rule_id)
            if finding is not None:
                config.append({"kind": "finding", "id": rule_id, "text": finding.message})
                findings.append(rule_id)
                fixes.extend(finding.fix)
        dev = ctx.device(conn, out_name)
        source = out.client[0]
        own = ctx.state is not None and any(a.local == source for a in ctx.state.addresses_of(dev, 4))
        if own:
            fixes.append(f"the requests already carry {dev}'s own address {source}: the far side routes it back by "
                         f"another path — fix its route to {source}, or send these requests out {back_name}")
        else:
            fixes.append(f"SNAT the requests to {dev}'s own address so that replies come back on {dev}, or send "
                         f"them out {back_name}")
        fixes.append(f"{sysctl_set(back_name, 'rp_filter', 2)}   # if the asymmetry is intended")
        summary = (f"requests leave on {out_name}, replies arrive on {back_name}"
                   + ("; the replies never reach the client" if dropped else "")
                   + (" (rp_filter: PM008)" if rp_filter else ""))
        return self.raise_(92 if dropped and not rp_filter else 60, summary, evidence=evidence, config=config,
                           fix=fixes, findings=findings)
