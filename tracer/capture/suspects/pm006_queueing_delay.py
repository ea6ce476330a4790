from tracer.capture import ties
from tracer.capture.connection import rtt_summary
from tracer.capture.suspects import Suspect, rtt_text

MIN_SAMPLES = 10
SOURCES = (("rtt", "data/ACK pairs"), ("ts_rtt", "TCP timestamps"))


def _grows(samples) -> dict | None:
    """The summary of `samples` if their p95 is ≥ 4 × and ≥ 50 ms above their minimum."""
    if len(samples) < MIN_SAMPLES:
        return None
    low, high = min(samples), max(samples)
    if high < 4 * low or high - low < 0.05:  # (the p95 cannot be either: no need to sort)
        return None
    summary = rtt_summary(samples)
    return summary if summary["p95"] >= 4 * low and summary["p95"] - low >= 0.05 else None


class QueueingDelay(Suspect):
    """RTT grows with the transfer: a full queue on the path (bufferbloat)

    ## What it detects
    RTT samples, measured where the data leaves the router, whose 95th
    percentile is more than four times the minimum and at least 50 ms above
    it, from either source: data segments to their ACK, or TCP timestamps
    (TSval to the first TSecr echoing it, as ePPing pairs them; only in a
    direction that carries data: a pure ACK's TSval is echoed when the other
    end next sends, so its samples hold that end's own delay). Timestamps
    still measure while the sender retransmits — a retransmitted segment's
    ACK is ambiguous and gives no data/ACK sample (Karn's rule), so exactly
    when the queue is fullest the data/ACK samples go missing. The evidence
    quotes both sources (samples, min, median, p95) and the LAN side's RTT
    (handshake, and the client's timestamp echoes) to compare with.

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
        name = conn.name_of(side)
        for d in (0, 1):
            # A direction without payload (ACKs only) is echoed only when the other end next sends:
            # its timestamp samples hold that end's own delay (a busy server), not the path's.
            sources = SOURCES if side.h[d].data_packets else SOURCES[:1]
            growing = [(label, found) for attr, label in sources if (found := _grows(getattr(side.h[d], attr)))]
            if not growing:
                continue
            measured = [(label, rtt_summary(getattr(side.h[d], attr))) for attr, label in SOURCES]
            label, worst = max(growing, key=lambda found: found[1]["p95"])
            towards = "to the server" if d == 0 else "to the client"
            text = (f"RTT {towards} measured on {name}: min {worst['min'] * 1000:.1f} ms, p95 "
                    f"{worst['p95'] * 1000:.1f} ms ({label})")
            evidence = [(None, None, name, f"{source} {towards}: {rtt_text(summary)}")
                        for source, summary in measured if summary]
            if [source for source, _ in growing] == [SOURCES[1][1]] and side.h[d].resends:
                evidence.append((None, None, name, f"the data/ACK pairs miss it: {side.h[d].resends} "
                                 "retransmitted segment(s) give no sample (Karn's rule); timestamps do"))
            near = (conn.first.handshake or {}).get("to_client")
            echoes = rtt_summary(conn.first.h[1].ts_rtt) if d == 0 else None  # the client's echoes
            parts = ([f"handshake {near * 1000:.1f} ms"] if near is not None else []) + \
                ([f"timestamps median {echoes['median'] * 1000:.1f} ms"] if echoes else [])
            if parts:
                text += f"; client side on {conn.names[0]}: {', '.join(parts)}"
            config = ties.route(ctx.explanation(conn))
            dev = ctx.device(conn, name)
            return self.raise_(65, text, evidence=evidence, config=config,
                               fix=[f"tc qdisc replace dev {dev} root cake bandwidth RATE   # RATE just below the "
                                    "bottleneck's"])
        return None
