import ipaddress

from tracer.capture import ties
from tracer.capture.suspects import Suspect


class MissingSnat(Suspect):
    """SYNs leave the uplink with a private source and nothing comes back

    ## What it detects
    The client's SYNs cross the router and leave by an interface with the
    client's own private address as source (no NAT between the two sides), and
    no SYN/ACK ever returns.

    ## Why the connection suffers
    The far side cannot route a reply to a private address: the connection
    never opens (the client retries its SYN and times out).

    ## Ties to
    The route that sends the flow out that interface and the rules-engine
    finding WR019 (missing SNAT), with its exact fix.

    ## Fix
    The SNAT/MASQUERADE rule of WR019, e.g.
    `iptables -t nat -A POSTROUTING -o ppp0 -j SNAT --to-source 123.150.232.74`.
    """

    id = "PM004"
    title = "missing SNAT: no reply to a private source"

    def detect(self, conn, ctx):
        if conn.handshake_done or not conn.syn_seen or conn.first.h[1].packets:
            return None
        out = conn.last
        client = out.client[0]
        try:
            private = ipaddress.ip_address(client).is_private
        except ValueError:
            return None
        if not private or (conn.paired and out.client != conn.first.client):
            return None
        if not conn.paired:
            explanation = ctx.explanation(conn)
            if explanation is None or explanation.nat:
                return None
        name = conn.name_of(out)
        evidence = [(out.h[0].syn_number, out.h[0].first_syn, name,
                     f"SYN left {name} with source {client} (private, not translated)")]
        evidence.append((None, None, name, f"{out.h[0].syns} SYN(s), no SYN/ACK"))
        explanation = ctx.explanation(conn)
        config = ties.route(explanation)
        fixes, findings = [], []
        wr019 = ctx.finding(conn, "WR019")
        if wr019 is not None:
            config.append({"kind": "finding", "id": "WR019", "text": wr019.message})
            fixes.extend(wr019.fix)
            findings.append("WR019")
        else:
            fixes.append(f"iptables -t nat -A POSTROUTING -o {name} -j MASQUERADE")
        return self.raise_(95, f"SYNs leave {name} with the private source {client}; no reply comes back",
                           evidence=evidence, config=config, fix=fixes, findings=findings)
