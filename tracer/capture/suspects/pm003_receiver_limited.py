from tracer.capture.suspects import Suspect

ZERO_WINDOW_SIGNIFICANT = 0.05  # seconds the window stays closed, in all


class ReceiverLimited(Suspect):
    """The receiving application does not read: zero windows, not the network

    ## What it detects
    The receiver of a transfer advertises a zero receive window that stays closed
    at least 50 ms in all (and 5 % of the connection's duration): the sender waits,
    probing it. A window closed for a moment is not reported.

    ## Why the connection suffers
    TCP may not send more than the receiver's window. A receiver whose
    application reads slowly lets its buffer fill and closes the window: the
    transfer waits for the application, however fast the path is.

    ## Ties to
    The receiving host and port (no router configuration: the router is not at fault).

    ## Fix
    Nothing on the router. Make the receiving application read faster, or give
    its socket a larger buffer (`net.ipv4.tcp_rmem`, `SO_RCVBUF`).
    """

    id = "PM003"
    title = "receiver-limited (zero window)"

    def detect(self, conn, ctx):
        side = conn.first
        for d in (1, 0):  # half d advertises the window for the other direction's data
            h = side.h[d]
            closed = h.zero_window_time(conn.capture_end)
            if h.zero_windows < 1 or closed < max(ZERO_WINDOW_SIGNIFICANT, 0.05 * (conn.end - conn.start)):
                continue  # a window closed for a moment is how a fast sender meets a reader
            receiver = side.server if d == 1 else side.client
            evidence = [(n, t, conn.name_of(side), f"zero window advertised by {receiver[0]}:{receiver[1]}")
                        for n, t in h.ev_zero[:10]]
            summary = (f"{receiver[0]}:{receiver[1]} advertised a zero window {h.zero_windows} time(s), closed "
                       f"{closed:.2f} s in all: the receiving application reads too slowly")
            config = [{"kind": "host", "text": f"receiver {receiver[0]} port {receiver[1]}"}]
            return self.raise_(70, summary, evidence=evidence, config=config,
                               fix=[f"nothing on the router: the application on {receiver[0]} must read faster "
                                    "(or a larger receive buffer, net.ipv4.tcp_rmem)"])
        return None
