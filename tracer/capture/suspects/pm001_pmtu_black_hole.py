from tracer.capture import ties
from tracer.capture.suspects import Suspect


class PmtuBlackHole(Suspect):
    """Segments too big for the egress MTU are dropped and the sender never learns why

    ## What it detects
    Segments of one direction whose IP length exceeds the MTU of the interface they
    must leave by arrive at the router (seen on the arriving interface) and never
    leave it (none that size on the leaving interface), they are sent again and
    again, and no ICMP "fragmentation needed" reaches the sender. With one side
    only: segments above the egress MTU retransmitted with no ICMP in return.

    ## Why the connection suffers
    The SYN announced an MSS for a 1500-byte path. The router cannot forward a
    DF segment larger than the egress MTU; it should answer with ICMP
    "fragmentation needed" so the sender lowers its segment size (path-MTU
    discovery). When that ICMP is dropped (an output or forward rule) or never
    generated, the sender retransmits the same full-size segment until it gives
    up: the handshake and small requests work, the transfer stalls.

    ## Ties to
    The ip rule, table and route that send the flow to the small-MTU device (from
    the explanation of the flow), the device's MTU, the rules-engine finding
    WR026 (no MSS clamping on that device) and the rule that drops the ICMP.

    ## Fix
    Clamp the MSS of SYNs leaving the device (WR026's fix, in this host's tool:
    `iptables -t mangle -A FORWARD -o ppp0 -p tcp --tcp-flags SYN,RST SYN -j TCPMSS --clamp-mss-to-pmtu`
    or nft `tcp flags syn tcp option maxseg size set rt mtu`), or let ICMP
    destination-unreachable through (delete the dropping rule by its handle).
    """

    id = "PM001"
    title = "path-MTU black hole"

    def detect(self, conn, ctx):
        for d in (0, 1):
            found = self._direction(conn, ctx, d)
            if found:
                return found
        return None

    def _direction(self, conn, ctx, d):
        up, down = conn.upstream(d), conn.downstream(d)
        hu = up.h[d]
        out_name = conn.name_of(down) if conn.paired else None
        mtu = ctx.egress_mtu(conn, d)
        if mtu is None or hu.max_len <= mtu:
            return None
        too_big = sum(n for length, n in hu.big.items() if length > mtu)
        if conn.paired:
            hd = down.h[d]
            if hd.max_len > mtu or too_big < 2:
                return None
        else:
            retransmitted_big = [e for e in hu.ev_retrans if e[4] > mtu]
            if not retransmitted_big:
                return None
        frag_needed = [(m, name) for m, name in conn.icmp if m.frag_needed]
        reached_sender = [(m, name) for m, name in frag_needed if name == conn.name_of(up)]
        if reached_sender and not conn.stall():
            return None
        sender = up.client if d == 0 else up.server
        evidence = [(n, t, conn.name_of(up), f"{length}-byte IP packet from {sender[0]} (> MTU {mtu})")
                    for n, t, length in hu.big_first[:5] if length > mtu]
        evidence += [(n, t, conn.name_of(up), f"{kind} of seq {s}: {ipl}-byte packet sent again")
                     for n, t, s, _len, ipl, kind, _f in hu.ev_retrans[:5] if ipl > mtu]
        if conn.paired:
            evidence.append((None, None, out_name, f"no packet above {mtu} bytes ever left on {out_name}"))
        if frag_needed and not reached_sender:
            m, name = frag_needed[0]
            evidence.append((m.number, m.time, name, f"{m.text} seen on {name} but it never reached {sender[0]}"))
        elif not frag_needed:
            evidence.append((None, None, None, "no ICMP fragmentation-needed seen on any interface"))
        mss = up.h[d].mss
        if mss:
            evidence.append((up.h[d].syn_number, up.h[d].first_syn, conn.name_of(up),
                             f"SYN announced MSS {mss}: IP packets up to {mss + 40} bytes, egress MTU {mtu}"))
        explanation = ctx.explanation(conn)
        config = ties.route(explanation)
        findings, fixes = [], []
        wr026 = ctx.finding(conn, "WR026")
        if wr026 is not None:
            config.append({"kind": "finding", "id": "WR026", "text": wr026.message})
            findings.append("WR026")
            fixes.extend(wr026.fix)
        blocking = ties.icmp_blocking_rules(ctx.state)
        config.extend(blocking)
        for rule in blocking:
            fixes.append(f"nft delete rule {rule['family']} {rule['table']} {rule['chain']} handle {rule['handle']}"
                         "   # or let ICMP destination-unreachable through")
        if not fixes:
            fixes.append(f"clamp the MSS to the path MTU on {out_name or 'the egress device'}")
        dev = out_name or (explanation.egress.dev if explanation and explanation.egress else "the egress device")
        summary = (f"{too_big} segment(s) above {dev}'s MTU {mtu} from {sender[0]} "
                   + ("never left the router" if conn.paired else "were retransmitted")
                   + ("; the ICMP fragmentation-needed is dropped" if blocking else
                      "; no ICMP fragmentation-needed reached the sender"))
        return self.raise_(95, summary, evidence=evidence, config=config, fix=fixes, findings=findings)
