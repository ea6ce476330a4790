"""A small lab for what the seed lab lacks: IPv6 policy routing, a local flow decided by a non-main
table, a strict rp_filter drop. Documentation prefixes only (RFC 5737 / RFC 3849, and 100.64.0.1 as
"the internet"), veth pairs inside the lab's namespaces, traffic only between them.

    client (c0) --- (r0) router (r1) --- isp1     main: default via isp1
                             (r2) --- isp2        table 100: default via isp2

    rule 1000 (IPv6): from the client's 2001:db8:1::2 lookup 100
    rule 1001 (IPv4 and IPv6): ipproto udp dport 53 lookup 100      DNS leaves by isp2
    rp_filter strict on the router; the client also owns 198.51.100.77 (isp1's subnet)
    a stateful nft forward chain on the router (so conntrack runs, for IPv4 and IPv6)

Both ISPs own INTERNET4 and INTERNET6, so that each answers whichever way a flow leaves.
"""

from __future__ import annotations

from tracer.lab import builder
from tracer.lab import topology as topo

INTERNET4, INTERNET6 = "100.64.0.1", "2001:db8:ff::1"
CLIENT6 = "2001:db8:1::2"
SPOOFED = "198.51.100.77"  # the client's, but the router routes it to isp1: strict rp_filter drops it
POLICY_TABLE, SOURCE_RULE, DNS_RULE = 100, 1000, 1001


def topology() -> topo.Topology:
    def uplink(address4: str, address6: str) -> dict:
        return {"interfaces": {"u0": {"addresses": [f"{address4}/24", f"{address6}/64"]},
                               "lo": {"addresses": [f"{INTERNET4}/32", f"{INTERNET6}/128"]}},
                "routes": [{"to": "default", "via": address4.rsplit(".", 1)[0] + ".1"},
                           {"to": "default", "via": address6.rsplit(":", 1)[0] + ":1"}]}

    return topo.from_dict({
        "name": "tracelab",
        "sysctl": {f"net.ipv6.conf.{scope}.{knob}": value for scope in ("all", "default")
                   for knob, value in (("disable_ipv6", 0), ("accept_dad", 0))},
        "nodes": {
            "client": {"interfaces": {"c0": {"addresses": ["192.0.2.2/24", f"{CLIENT6}/64"]},
                                      "lo": {"addresses": [f"{SPOOFED}/32"]}},
                       "routes": [{"to": "default", "via": "192.0.2.1"}, {"to": "default", "via": "2001:db8:1::1"}]},
            "router": {
                "forwarding": True,
                "sysctl": {"net.ipv6.conf.all.forwarding": 1, "net.ipv4.conf.all.rp_filter": 1},
                "interfaces": {"r0": {"addresses": ["192.0.2.1/24", "2001:db8:1::1/64"]},
                               "r1": {"addresses": ["198.51.100.1/24", "2001:db8:2::1/64"]},
                               "r2": {"addresses": ["203.0.113.1/24", "2001:db8:3::1/64"]}},
                "routes": [{"to": "default", "via": "198.51.100.2"}, {"to": "default", "via": "2001:db8:2::2"},
                           {"to": "default", "via": "203.0.113.2", "table": POLICY_TABLE},
                           {"to": "default", "via": "2001:db8:3::2", "table": POLICY_TABLE}],
                # A stateful firewall, as routers have: conntrack then runs for both families.
                "run": ["nft add table inet firewall",
                        "nft 'add chain inet firewall forward { type filter hook forward priority 0 ; }'",
                        "nft add rule inet firewall forward ct state established,related accept",
                        f"ip -6 rule add from {CLIENT6} lookup {POLICY_TABLE} priority {SOURCE_RULE}",
                        f"ip rule add ipproto udp dport 53 lookup {POLICY_TABLE} priority {DNS_RULE}",
                        f"ip -6 rule add ipproto udp dport 53 lookup {POLICY_TABLE} priority {DNS_RULE}"],
            },
            "isp1": uplink("198.51.100.2", "2001:db8:2::2"),
            "isp2": uplink("203.0.113.2", "2001:db8:3::2"),
        },
        "links": [{"ends": ["client:c0", "router:r0"]}, {"ends": ["isp1:u0", "router:r1"]},
                  {"ends": ["isp2:u0", "router:r2"]}],
    }, source=__file__)


def up(prefix: str) -> builder.LabState:
    lab = builder.up(topology(), prefix=prefix)
    # Neighbours resolved before any trace: the first traced packet then leaves at once.
    for address in (INTERNET4, INTERNET6):
        lab.run("client", ["ping", "-n", "-c1", "-W2", address], check=False)
    for address in ("198.51.100.2", "203.0.113.2", "2001:db8:2::2", "2001:db8:3::2"):
        lab.run("router", ["ping", "-n", "-c1", "-W2", address], check=False)
    return lab


def send_udp(lab: builder.LabState, node: str, port: int, *addresses: str) -> None:
    """One UDP datagram to each address from an unbound socket (its route lookup happens in sendto),
    all from one process: the flows start together, without a process start between them."""
    sends = "".join(f"socket.socket(socket.{'AF_INET6' if ':' in a else 'AF_INET'}, socket.SOCK_DGRAM)"
                    f".sendto(b'q', ({a!r}, {port}));" for a in addresses)
    lab.run(node, ["python3", "-c", "import socket;" + sends])
