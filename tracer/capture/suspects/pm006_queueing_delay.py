from tracer.capture import ties
from tracer.capture.suspects import Suspect


class QueueingDelay(Suspect):
    """RTT grows with the transfer: a full queue on the path (bufferbloat)

    ## What it detects
    RTT samples (data to its ACK) of a transfer whose 95th percentile is more
    than four times the minimum and at least 50 ms above it, the far side's
    RTT much larger than the near side's.

    ## Why the connection suffers
    A large buffer in front of a slower link fills during a bulk transfer:
    every packet waits behind it, interactive traffic on the same link too.

    ## Ties to
    The route and egress device the flow leaves by (the link whose queue fills
    is at or beyond it).

    ## Fix
    Shape just below the bottleneck's rate with a queue manager that keeps the
    queue short: `tc qdisc replace dev DEV root cake bandwidth RATE` (or
    `fq_codel` behind an `htb`/`tbf` at RATE).
    """

    id = "PM006"
    title = "queueing delay (bufferbloat)"

    def detect(self, conn, ctx):
        side = conn.last
        for d in (0, 1):
            samples = side.h[d].rtt
            if len(samples) < 10:
                continue
            ordered = sorted(samples)
            low, p95 = ordered[0], ordered[int(0.95 * (len(ordered) - 1))]
            if p95 < 4 * low or p95 - low < 0.05:
                continue
            name = conn.name_of(side)
            hs = conn.first.handshake or {}
            near = hs.get("to_client")
            text = (f"RTT {'to the server' if d == 0 else 'to the client'} measured on {name}: min "
                    f"{low * 1000:.1f} ms, p95 {p95 * 1000:.1f} ms")
            if near is not None:
                text += f"; LAN side (handshake) {near * 1000:.1f} ms"
            config = ties.route(ctx.explanation(conn))
            dev = ctx.device(conn, name)
            return self.raise_(65, text, evidence=[(None, None, name, text)], config=config,
                               fix=[f"tc qdisc replace dev {dev} root cake bandwidth RATE   # RATE just below the "
                                    "bottleneck's"])
        return None
