from tracer.capture import ties
from tracer.capture.suspects import Suspect

MIN_LOSSES = 2  # one lost segment is noise (a busy host's backlog), not a suspect


class LossInsideRouter(Suspect):
    """Segments arrive at the router and never leave it

    ## What it detects
    On a connection seen on both sides of the router, holes in the sequence
    space on the leaving interface (a segment that should have passed did not)
    where the arriving interface had the segment: the router itself lost them.
    The sender's retransmissions repair the holes. Two losses at least: one is noise.
    Where the receiver uses SACK, the holes it signalled (its SACK blocks, in
    the ACKs passing the leaving interface) confirm the data never reached it:
    the router's holes are losses, not packets the capture missed. (The count
    rests on holes, not retransmissions: a retransmission of data the receiver
    had SACKed is no evidence of loss here either.)

    ## Why the connection suffers
    Every lost segment costs the sender a retransmission and halves its
    congestion window: a few percent of loss divides a transfer's speed
    several times over, whatever the uplink's capacity.

    ## Ties to
    The netfilter rules on the flow's path that drop a share of packets at
    random or by rate (nft `numgen random`, iptables `statistic`, `limit`),
    by family, table, chain and handle, and the rules the explanation of the
    flow finds dropping it; else the egress device (its queue discipline).

    ## Fix
    Delete the dropping rule (`nft delete rule FAMILY TABLE CHAIN handle N`),
    or look at the device's queue drops (`tc -s qdisc show dev DEV`).
    """

    id = "PM002"
    title = "loss inside the router"

    def detect(self, conn, ctx):
        if not conn.paired:
            return None
        for d in (0, 1):
            loss = conn.losses(d)
            if loss.inside < MIN_LOSSES:
                continue
            down = conn.downstream(d)
            mtu = ctx.egress_mtu(conn, d)
            if mtu and conn.upstream(d).h[d].max_len > mtu >= down.h[d].max_len:
                continue  # segments too big for the egress: PM001's case
            name_up, name_down = conn.name_of(conn.upstream(d)), conn.name_of(down)
            explanation = ctx.explanation(conn)
            config = ties.random_drop_rules(ctx.state) or ties.path_drop_rules(explanation)
            fixes = [f"nft delete rule {r['family']} {r['table']} {r['chain']} handle {r['handle']}"
                     if r["kind"].startswith("nft") else f"remove: {r['text']}" for r in config]
            config = config + ties.route(explanation)
            if not fixes:
                fixes.append(f"tc -s qdisc show dev {name_down}   # look for queue drops")
            sent = conn.upstream(d).h[d].data_packets or 1
            summary = (f"{loss.inside} segment(s) {loss.direction.replace('_', ' ')} arrived on {name_up} and never "
                       f"left on {name_down} ({100.0 * loss.inside / sent:.1f}% of {sent})")
            if config and "chain" in config[0]:
                summary += f": {ties.describe(config[0])}"
            evidence = loss.evidence
            if down.h[d].sack_holes:
                evidence = [(None, None, name_down, f"the receiver's SACK blocks, passing {name_down}, signalled "
                             f"{down.h[d].sack_holes} hole(s): the segments missing there never reached it")] + evidence
            return self.raise_(min(90, 60 + 5 * loss.inside), summary, evidence=evidence, config=config,
                               fix=fixes)
        return None
