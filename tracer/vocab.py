"""The words every layer shares: address families, addresses as integers, prefixes, protocols.

One definition each, below the model: the simulator, the collectors, the rules
engine and the renderers all import from here.
"""

from __future__ import annotations

import socket

AF_INET = 4
AF_INET6 = 6

# IP protocol numbers by the names nft and iptables accept (nft's spellings first).
IPPROTO = {
    "icmp": 1, "igmp": 2, "ipip": 4, "tcp": 6, "egp": 8, "udp": 17, "ipv6": 41,
    "gre": 47, "esp": 50, "ah": 51, "icmpv6": 58, "ipv6-icmp": 58, "icmp6": 58,
    "ospf": 89, "pim": 103, "vrrp": 112, "l2tp": 115, "sctp": 132, "dccp": 33,
    "udplite": 136, "comp": 108, "mptcp": 262,
}
IPPROTO_NAMES = {v: k for k, v in reversed(list(IPPROTO.items()))}
TCP, UDP, ICMP, ICMPV6 = 6, 17, 1, 58
# Protocols with ports: the ones the flow dissector reads ports of (proto_ports_offset).
PORT_PROTOCOLS = frozenset((6, 17, 33, 132, 136))
ICMP_PROTOCOLS = frozenset((ICMP, ICMPV6))


def family_of(address: str) -> int:
    return AF_INET6 if ":" in address else AF_INET


def bits(family: int) -> int:
    return 32 if family == AF_INET else 128


def nf_family(family: int) -> str:
    """The netfilter family name of an address family ("ip", "ip6")."""
    return "ip" if family == AF_INET else "ip6"


def addr_int(family: int, text: str) -> int:
    # inet_pton is ~20× faster than ipaddress: a million routes are converted on load.
    if family == AF_INET:
        return int.from_bytes(socket.inet_aton(text), "big")
    return int.from_bytes(socket.inet_pton(socket.AF_INET6, text), "big")


def int_addr(family: int, value: int) -> str:
    if family == AF_INET:
        return socket.inet_ntoa(value.to_bytes(4, "big"))
    return socket.inet_ntop(socket.AF_INET6, value.to_bytes(16, "big"))


def any_addr_int(text: str) -> int:
    """An IPv4 or IPv6 address as an integer, whichever it is (ValueError otherwise)."""
    for family in (socket.AF_INET, socket.AF_INET6):
        try:
            return int.from_bytes(socket.inet_pton(family, text), "big")
        except OSError:
            continue
    raise ValueError(f"{text!r} does not appear to be an IPv4 or IPv6 address")


def prefix_text(address: str | None, length: int, family: int) -> str:
    """A prefix as `ip` prints it: "all" without address, "default" for /0, no /32 or /128."""
    if not address or length == 0:
        return "all" if not address else "default"
    return address if length == bits(family) else f"{address}/{length}"


def protocol_name(number: int) -> str:
    return IPPROTO_NAMES.get(number, str(number))
