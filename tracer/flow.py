"""The flow: what the user asks about, its identity, and the routing questions asked of it.

- `Flow` is the question (`why-route SRC DST --dport 443 …`), validated by `make_flow`.
- `FlowKey` is the hashable identity of a packet flow (5-tuple plus iif and
  mark): what the simulator, the kernel cross-check, trace events and pcap
  analysis correlate on.
- `RouteQuery` is one routing lookup (struct flowi): what the simulator
  computes and what the kernel is asked (RTM_GETROUTE); `RouteAnswer` is the
  kernel's reply.
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass

from tracer.errors import FlowError
from tracer.vocab import AF_INET, AF_INET6, IPPROTO, PORT_PROTOCOLS, TCP, family_of, protocol_name


@dataclass(frozen=True)
class FlowKey:
    family: int
    proto: int
    src: str | None
    dst: str
    sport: int | None = None
    dport: int | None = None
    iif: str | None = None
    mark: int = 0


@dataclass(frozen=True)
class Flow:
    """What the user asked about. src None: a locally generated flow, source selected."""

    dst: str
    src: str | None = None
    iif: str | None = None
    oif: str | None = None
    proto: int = 0
    sport: int | None = None
    dport: int | None = None
    mark: int = 0
    tos: int = 0
    uid: int | None = None

    @property
    def family(self) -> int:
        return AF_INET6 if ":" in self.dst else AF_INET

    @property
    def key(self) -> FlowKey:
        return FlowKey(self.family, self.proto, self.src, self.dst, self.sport, self.dport, self.iif, self.mark)


@dataclass(frozen=True)
class RouteQuery:
    """One FIB lookup, as `ip route get` takes it (interfaces by name)."""

    family: int
    dst: str
    src: str | None = None
    iif: str | None = None
    oif: str | None = None
    mark: int = 0
    tos: int = 0
    proto: int = 0
    sport: int | None = None
    dport: int | None = None
    uid: int | None = None


@dataclass(frozen=True)
class RouteAnswer:
    """The kernel's answer to a RouteQuery: the route it resolved (RTM_GETROUTE) and
    the route entry that matched (RTM_F_FIB_MATCH), or the errno it refused with."""

    text: str
    error: str | None = None  # errno name (ENETUNREACH, …) when the kernel refused
    type: str | None = None
    dev: str | None = None
    gateway: str | None = None
    prefsrc: str | None = None
    table: int | None = None
    route: str | None = None  # the matched route's prefix (fibmatch)
    nexthops: tuple[tuple[str | None, str | None], ...] = ()  # (gateway, dev) of the matched route
    fibmatch_error: str | None = None


# ---------------------------------------------------------------- validation

def parse_protocol(text: str | None) -> int:
    if text is None or text == "":
        return 0
    if text.isdigit() and 0 <= int(text) <= 255:
        return int(text)
    number = IPPROTO.get(text.lower(), 256)
    if number <= 255:
        return number
    raise FlowError("proto", f"unknown protocol {text!r}: use tcp, udp, icmp, sctp or a number 0-255")


def parse_number(text: str | int | None, field: str, what: str, maximum: int) -> int | None:
    if text is None:
        return None
    if isinstance(text, bool):
        raise FlowError(field, f"invalid {what} {text!r}: expected a number")
    try:
        value = text if isinstance(text, int) else int(text, 0)
    except ValueError:
        raise FlowError(field, f"invalid {what} {text!r}: expected a number") from None
    if not 0 <= value <= maximum:
        raise FlowError(field, f"invalid {what} {text!r}: out of range 0-{maximum}")
    return value


def _address(text: str) -> tuple[int, str]:
    """(IP version, canonical text) of an address; ValueError if it is none. A dotted quad
    already in canonical form skips ipaddress (a batch parses two per line)."""
    try:
        if socket.inet_ntop(socket.AF_INET, socket.inet_pton(socket.AF_INET, text)) == text:
            return 4, text
    except (OSError, TypeError):
        pass
    address = ipaddress.ip_address(text)
    return address.version, str(address)


def make_flow(dst: str, src: str | None = None, *, iif=None, oif=None, proto=None, sport=None,
              dport=None, mark=None, tos=None, uid=None) -> Flow:
    """Validate user input into a Flow; every problem is one FlowError naming the field."""
    addresses = []
    for field, label, text in (("dst", "destination", dst), ("src", "source", src)):
        if text is None:
            continue
        try:
            addresses.append(_address(text))
        except ValueError:
            raise FlowError(field, f"invalid {label} address {text!r}") from None
    if len({version for version, _text in addresses}) > 1:
        raise FlowError("src", f"source {src} and destination {dst} are of different IP versions")
    protocol = parse_protocol(proto)
    sport_n = parse_number(sport, "sport", "source port", 65535)
    dport_n = parse_number(dport, "dport", "destination port", 65535)
    has_ports = sport_n is not None or dport_n is not None
    if has_ports and protocol and protocol not in PORT_PROTOCOLS:
        raise FlowError("proto", f"ports need {{proto}} tcp, udp or sctp, not {protocol_name(protocol)}")
    if has_ports and not protocol:
        protocol = TCP
    return Flow(dst=addresses[0][1], src=addresses[1][1] if src is not None else None,
                iif=iif, oif=oif, proto=protocol, sport=sport_n, dport=dport_n,
                mark=parse_number(mark, "mark", "mark", 0xFFFFFFFF) or 0,
                tos=parse_number(tos, "tos", "tos/dsfield", 255) or 0,
                uid=parse_number(uid, "uid", "uid", 0xFFFFFFFF))


__all__ = ["Flow", "FlowKey", "RouteQuery", "RouteAnswer", "make_flow", "parse_protocol", "family_of"]
