from tracer.capture import ties
from tracer.capture.suspects import Suspect


class LossBeyondRouter(Suspect):
    """Segments left the router and were sent again: lost beyond it

    ## What it detects
    Retransmissions, seen on the interface where the data leaves the router, of
    segments that had already left it (not repairs of holes the router made).
    With one capture point: retransmissions of segments seen leaving it. A
    retransmission of data the receiver had already SACKed is no loss (the
    sender's timer or scoreboard was wrong, the data had arrived): it is not
    counted, and the evidence says how many there were. The holes the
    receiver signalled by SACK, in the ACKs passing that interface, are the
    receiver's own word that data which had left the router never arrived.

    ## Why the connection suffers
    Loss on the uplink or further on costs retransmissions and congestion
    window; the router forwards everything it receives.

    ## Ties to
    The route and egress device (the uplink, its gateway) the explanation of the
    flow chooses.

    ## Fix
    Not this router's configuration: check the uplink (the line, the modem, the
    provider). A shaper slightly below the uplink's rate (`tc qdisc replace dev
    DEV root cake bandwidth RATE`) avoids losses in the provider's queue.
    """

    id = "PM005"
    title = "loss beyond the router"

    def detect(self, conn, ctx):
        for d in (0, 1):
            loss = conn.losses(d)
            sent = conn.downstream(d).h[d].data_packets
            if loss.beyond < 2 or not sent or loss.beyond < 0.005 * sent:
                continue
            down = conn.downstream(d)
            name = conn.name_of(down)
            config = ties.route(ctx.explanation(conn))
            summary = (f"{loss.beyond} segment(s) {loss.direction.replace('_', ' ')} left {name} and were sent "
                       f"again ({100.0 * loss.beyond / sent:.1f}% of {sent}): lost beyond the router")
            dev = ctx.device(conn, name)
            h = down.h[d]
            evidence = []
            if h.sack_holes:
                evidence.append((None, None, name, f"the receiver's SACK blocks, passing {name}, signalled "
                                 f"{h.sack_holes} hole(s): data that had left the router did not arrive"))
            if h.sacked_retrans:
                summary += f"; {h.sacked_retrans} more re-sent data the receiver had SACKed (spurious, not counted)"
                evidence.append((None, None, name, f"{h.sacked_retrans} retransmission(s) of data the receiver had "
                                 "SACKed: it had arrived, no loss"))
            score = min(75, 40 + 2 * loss.beyond + (5 if h.sack_holes else 0))
            return self.raise_(score, summary, evidence=evidence + loss.evidence, config=config,
                               fix=[f"check the uplink behind {dev}; shape slightly below its rate: "
                                    f"tc qdisc replace dev {dev} root cake bandwidth RATE"])
        return None
