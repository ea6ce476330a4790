from tracer.capture import ties
from tracer.capture.suspects import Suspect


class LossBeyondRouter(Suspect):
    """Segments left the router and were sent again: lost beyond it

    ## What it detects
    Retransmissions, seen on the interface where the data leaves the router, of
    segments that had already left it (not repairs of holes the router made).
    With one capture point: retransmissions of segments seen leaving it.

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
            return self.raise_(min(75, 40 + 2 * loss.beyond), summary, evidence=loss.evidence, config=config,
                               fix=[f"check the uplink behind {dev}; shape slightly below its rate: "
                                    f"tc qdisc replace dev {dev} root cake bandwidth RATE"])
        return None
