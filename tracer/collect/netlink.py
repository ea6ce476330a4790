"""A small rtnetlink client: dumps and route queries, parsed straight into the model.

Why not pyroute2 here: a full internet table is a million routes, and parsing
them through pyroute2's generic message classes takes minutes, while these
struct-based parsers read only the attributes the model keeps. It also lets us
send the route-query attributes pyroute2's rtmsg lacks (RTA_UID, RTA_IP_PROTO,
RTA_SPORT, RTA_DPORT) and read table ids from RTA_TABLE/FRA_TABLE rather than
the 8-bit header field that caps at 252.
"""

from __future__ import annotations

import errno
import os
import socket
import struct

from tracer.model import Address, Link, Neighbour, Nexthop, Route, Rule
from tracer.vocab import AF_INET, AF_INET6

NETLINK_ROUTE = 0
NETLINK_GET_STRICT_CHK = 12
SOL_NETLINK = 270

NLM_F_REQUEST = 0x1
NLM_F_ACK = 0x4
NLM_F_DUMP = 0x300
NLMSG_ERROR = 2
NLMSG_DONE = 3

RTM_NEWLINK, RTM_GETLINK = 16, 18
RTM_NEWADDR, RTM_GETADDR = 20, 22
RTM_NEWROUTE, RTM_GETROUTE = 24, 26
RTM_NEWNEIGH, RTM_GETNEIGH = 28, 30
RTM_NEWRULE, RTM_GETRULE = 32, 34

RTM_F_LOOKUP_TABLE = 0x1000
RTM_F_FIB_MATCH = 0x2000

_NLMSGHDR = struct.Struct("=IHHII")
_RTATTR = struct.Struct("=HH")
_IFINFOMSG = struct.Struct("=BxHiII")
_IFADDRMSG = struct.Struct("=BBBBI")
_RTMSG = struct.Struct("=BBBBBBBBI")
_NDMSG = struct.Struct("=BxxxiHBB")
_RTNEXTHOP = struct.Struct("=HBBi")

_FAMILY = {socket.AF_INET: AF_INET, socket.AF_INET6: AF_INET6}
_KERNEL_FAMILY = {AF_INET: socket.AF_INET, AF_INET6: socket.AF_INET6}

_IFF_NAMES = (
    (0x1, "UP"), (0x2, "BROADCAST"), (0x8, "LOOPBACK"), (0x10, "POINTOPOINT"),
    (0x40, "RUNNING"), (0x80, "NOARP"), (0x100, "PROMISC"), (0x400, "MASTER"),
    (0x800, "SLAVE"), (0x1000, "MULTICAST"), (0x10000, "LOWER_UP"), (0x20000, "DORMANT"),
)
_OPERSTATES = ("UNKNOWN", "NOTPRESENT", "DOWN", "LOWERLAYERDOWN", "TESTING", "DORMANT", "UP")

ROUTE_TYPES = ("unspec", "unicast", "local", "broadcast", "anycast", "multicast",
               "blackhole", "unreachable", "prohibit", "throw", "nat", "xresolve")
ROUTE_PROTOCOLS = {0: "unspec", 1: "redirect", 2: "kernel", 3: "boot", 4: "static", 8: "gated",
                   9: "ra", 10: "mrt", 11: "zebra", 12: "bird", 13: "dnrouted", 14: "xorp",
                   15: "ntk", 16: "dhcp", 17: "mrouted", 18: "keepalived", 42: "babel",
                   99: "openr", 186: "bgp", 187: "isis", 188: "ospf", 189: "rip", 192: "eigrp"}
RULE_ACTIONS = {1: "lookup", 2: "goto", 3: "nop", 6: "blackhole", 7: "unreachable", 8: "prohibit"}
_NUD_STATES = ((0x01, "INCOMPLETE"), (0x02, "REACHABLE"), (0x04, "STALE"), (0x08, "DELAY"),
               (0x10, "PROBE"), (0x20, "FAILED"), (0x40, "NOARP"), (0x80, "PERMANENT"))

RTNH_F_DEAD, RTNH_F_ONLINK, RTNH_F_LINKDOWN = 0x1, 0x4, 0x10
FIB_RULE_INVERT = 0x2
# IFLA_BR_NF_CALL_IPTABLES, _IP6TABLES, _ARPTABLES (u8 each) in a bridge's IFLA_INFO_DATA.
_BRIDGE_NF_CALL = ((36, "iptables"), (37, "ip6tables"), (38, "arptables"))


class NetlinkError(OSError):
    pass


def attributes(data: bytes, offset: int = 0, end: int | None = None) -> dict[int, bytes]:
    """Parse a run of netlink attributes in data[offset:end] into {type: payload} (last one
    wins, as in the kernel; the nested and byte-order flags dropped from the type)."""
    out = {}
    end = len(data) if end is None else end
    while offset + 4 <= end:
        length, kind = _RTATTR.unpack_from(data, offset)
        if length < 4:
            break
        out[kind & 0x3FFF] = data[offset + 4:offset + length]
        offset += (length + 3) & ~3
    return out


def _u32(raw: bytes | None, default: int = 0) -> int:
    return struct.unpack("=I", raw[:4])[0] if raw else default


def _addr(family: int, raw: bytes | None) -> str | None:
    return socket.inet_ntop(family, raw) if raw else None


def _pack_attr(kind: int, payload: bytes) -> bytes:
    length = 4 + len(payload)
    return _RTATTR.pack(length, kind) + payload + b"\0" * ((4 - length % 4) % 4)


class RtnlSocket:
    """One NETLINK_ROUTE socket, bound to the network namespace it was opened in."""

    def __init__(self):
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_ROUTE)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        self.sock.setsockopt(SOL_NETLINK, NETLINK_GET_STRICT_CHK, 1)
        self.sock.bind((0, 0))
        self.seq = 0
        self.names: dict[int, str] = {}

    def close(self):
        self.sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _send(self, msg_type: int, flags: int, payload: bytes) -> int:
        self.seq += 1
        header = _NLMSGHDR.pack(_NLMSGHDR.size + len(payload), msg_type, flags | NLM_F_REQUEST, self.seq, 0)
        self.sock.send(header + payload)
        return self.seq

    def _messages(self, seq: int):
        """Yield (type, data, payload_offset) for the reply to request `seq`."""
        recv = self.sock.recv
        while True:
            data = recv(1 << 20)
            offset = 0
            while offset + 16 <= len(data):
                length, kind, _flags, msg_seq, _pid = _NLMSGHDR.unpack_from(data, offset)
                if length < 16:
                    return
                if msg_seq == seq:
                    if kind == NLMSG_DONE:
                        return
                    if kind == NLMSG_ERROR:
                        code = struct.unpack_from("=i", data, offset + 16)[0]
                        if code:
                            raise NetlinkError(-code, os.strerror(-code))
                        return
                    yield kind, data[offset:offset + length], 16
                offset += (length + 3) & ~3

    def dump(self, msg_type: int, payload: bytes):
        return self._messages(self._send(msg_type, NLM_F_DUMP, payload))

    def request(self, msg_type: int, payload: bytes):
        # The ack (an NLMSG_ERROR with code 0) marks the end of a non-dump reply.
        return list(self._messages(self._send(msg_type, NLM_F_ACK, payload)))

    # --- dumps -------------------------------------------------------------

    def links(self) -> list[Link]:
        rows = []
        for _kind, data, off in self.dump(RTM_GETLINK, _IFINFOMSG.pack(0, 0, 0, 0, 0)):
            _family, _type, index, flags, _change = _IFINFOMSG.unpack_from(data, off)
            rows.append((index, flags, attributes(data, off + _IFINFOMSG.size)))
        self.names = {index: attrs[3].rstrip(b"\0").decode() for index, _flags, attrs in rows}
        return [self._link(index, flags, attrs) for index, flags, attrs in rows]

    def _link(self, index: int, flags: int, attrs: dict[int, bytes]) -> Link:
        kind = None
        nf_call: tuple[str, ...] = ()
        if 18 in attrs:  # IFLA_LINKINFO → IFLA_INFO_KIND, IFLA_INFO_DATA
            info = attributes(attrs[18], 0)
            if 1 in info:
                kind = info[1].rstrip(b"\0").decode()
            if kind == "bridge" and 2 in info:
                options = attributes(info[2], 0)
                nf_call = tuple(tool for attr, tool in _BRIDGE_NF_CALL if options.get(attr, b"\0")[:1] != b"\0")
        mac = attrs.get(1)
        operstate = attrs.get(16, b"\0")[0]
        return Link(
            index=index,
            name=self.names[index],
            kind=kind,
            flags=tuple(name for bit, name in _IFF_NAMES if flags & bit),
            mtu=_u32(attrs.get(4), 1500),
            master=self.names.get(_u32(attrs[10])) if 10 in attrs else None,
            mac=":".join(f"{b:02x}" for b in mac) if mac else None,
            operstate=_OPERSTATES[operstate] if operstate < len(_OPERSTATES) else str(operstate),
            group=_u32(attrs.get(27)),
            l3mdev_master=kind == "vrf",
            nf_call=nf_call,
        )

    def addresses(self) -> list[Address]:
        names = self.names
        out = []
        for kernel_family in (socket.AF_INET, socket.AF_INET6):
            for _kind, data, off in self.dump(RTM_GETADDR, _IFADDRMSG.pack(kernel_family, 0, 0, 0, 0)):
                family, prefixlen, flags, scope, index = _IFADDRMSG.unpack_from(data, off)
                attrs = attributes(data, off + _IFADDRMSG.size)
                address = _addr(family, attrs.get(1))
                local = _addr(family, attrs.get(2)) or address
                if 8 in attrs:
                    flags = _u32(attrs[8])
                out.append(Address(
                    family=_FAMILY[family],
                    ifname=names.get(index, str(index)),
                    local=local,
                    prefixlen=prefixlen,
                    peer=address if address != local else None,
                    scope=scope,
                    secondary=bool(flags & 0x01),
                ))
        return out

    def rules(self) -> list[Rule]:
        out = []
        for kernel_family in (socket.AF_INET, socket.AF_INET6):
            for _kind, data, off in self.dump(RTM_GETRULE, _RTMSG.pack(kernel_family, 0, 0, 0, 0, 0, 0, 0, 0)):
                out.append(_parse_rule(data, off))
        return out

    def routes(self, family: int | None = None, table: int | None = None) -> list[Route]:
        """All routes (of one family and/or one table) — read from RTA_TABLE."""
        out = []
        families = (family,) if family else (AF_INET, AF_INET6)
        for fam in families:
            payload = _RTMSG.pack(_KERNEL_FAMILY[fam], 0, 0, 0, 0, 0, 0, 0, 0)
            if table is not None:
                payload += _pack_attr(15, struct.pack("=I", table))
            for _kind, data, off in self.dump(RTM_GETROUTE, payload):
                route = parse_route(data, off, self.names)
                if route is not None:
                    out.append(route)
        return out

    def neighbours(self) -> list[Neighbour]:
        names = self.names
        out = []
        for kernel_family in (socket.AF_INET, socket.AF_INET6):
            for _kind, data, off in self.dump(RTM_GETNEIGH, _NDMSG.pack(kernel_family, 0, 0, 0, 0)):
                family, index, state, _flags, _type = _NDMSG.unpack_from(data, off)
                attrs = attributes(data, off + _NDMSG.size)
                if 1 not in attrs:
                    continue
                lladdr = attrs.get(2)
                out.append(Neighbour(
                    ifname=names.get(index, str(index)),
                    address=_addr(family, attrs[1]),
                    lladdr=":".join(f"{b:02x}" for b in lladdr) if lladdr else None,
                    state="|".join(n for bit, n in _NUD_STATES if state & bit) or "NONE",
                ))
        return out

    # --- the kernel's own answer --------------------------------------------

    def route_get(self, *, family: int, dst: str, src: str | None = None, iif: int | None = None,
                  oif: int | None = None, mark: int | None = None, uid: int | None = None,
                  proto: int | None = None, sport: int | None = None, dport: int | None = None,
                  tos: int = 0, fibmatch: bool = False) -> Route:
        """RTM_GETROUTE for one flow; raises NetlinkError with the kernel's errno."""
        kfam = _KERNEL_FAMILY[family]
        full = 32 if family == AF_INET else 128
        # IPv6 refuses RTM_F_LOOKUP_TABLE (inet6_rtm_valid_getroute_req) and reports the table anyway.
        flags = RTM_F_FIB_MATCH if fibmatch else (RTM_F_LOOKUP_TABLE if family == AF_INET else 0)
        payload = _RTMSG.pack(kfam, full, full if src else 0, tos, 0, 0, 0, 0, flags)
        payload += _pack_attr(1, socket.inet_pton(kfam, dst))
        if src:
            payload += _pack_attr(2, socket.inet_pton(kfam, src))
        for kind, value in ((3, iif), (4, oif), (16, mark), (25, uid)):
            if value is not None:
                payload += _pack_attr(kind, struct.pack("=I", value))
        if proto is not None:
            payload += _pack_attr(27, struct.pack("=B", proto))
        for kind, port in ((28, sport), (29, dport)):
            if port is not None:
                payload += _pack_attr(kind, struct.pack("!H", port))
        for _kind, data, off in self.request(RTM_GETROUTE, payload):
            route = parse_route(data, off, self.names, keep_cloned=True)
            if route is not None:
                return route
        raise NetlinkError(errno.ENETUNREACH, os.strerror(errno.ENETUNREACH))


_U32, _I32, _PORTS, _UIDS = struct.Struct("=I"), struct.Struct("=i"), struct.Struct("=HH"), struct.Struct("=II")


def _parse_rule(data: bytes, off: int) -> Rule:
    family, dst_len, src_len, tos, table, _r1, _r2, action, flags = _RTMSG.unpack_from(data, off)
    attrs = attributes(data, off + _RTMSG.size)
    get = attrs.get
    fwmark = _U32.unpack_from(attrs[10])[0] if 10 in attrs else 0
    fwmask = _U32.unpack_from(attrs[16])[0] if 16 in attrs else (0xFFFFFFFF if fwmark else 0)
    return Rule(
        family=_FAMILY[family],
        priority=_U32.unpack_from(attrs[6])[0] if 6 in attrs else 0,
        action=RULE_ACTIONS.get(action, str(action)),
        table=_U32.unpack_from(attrs[15])[0] if 15 in attrs else table,
        src=_addr(family, get(2)),
        src_len=src_len,
        dst=_addr(family, get(1)),
        dst_len=dst_len,
        iif=attrs[3].rstrip(b"\0").decode() if 3 in attrs else None,
        oif=attrs[17].rstrip(b"\0").decode() if 17 in attrs else None,
        fwmark=fwmark,
        fwmask=fwmask,
        tos=tos,
        ipproto=attrs[22][0] if 22 in attrs else 0,
        sport=_PORTS.unpack_from(attrs[23]) if 23 in attrs else None,
        dport=_PORTS.unpack_from(attrs[24]) if 24 in attrs else None,
        uidrange=_UIDS.unpack_from(attrs[20]) if 20 in attrs else None,
        invert=bool(flags & FIB_RULE_INVERT),
        goto=_U32.unpack_from(attrs[4])[0] if 4 in attrs else None,
        suppress_prefixlength=_I32.unpack_from(attrs[14])[0] if 14 in attrs else -1,
        suppress_ifgroup=_I32.unpack_from(attrs[13])[0] if 13 in attrs else -1,
        l3mdev=bool(get(19, b"\0")[0]),
        protocol=ROUTE_PROTOCOLS.get(attrs[21][0], str(attrs[21][0])) if 21 in attrs else None,
    )


def parse_route(data: bytes, off: int, names: dict[int, str], keep_cloned: bool = False) -> Route | None:
    family, dst_len, src_len, tos, table, proto, scope, rtype, flags = _RTMSG.unpack_from(data, off)
    if family not in _FAMILY:
        return None
    if flags & 0x200 and not keep_cloned:  # RTM_F_CLONED: a cache entry, not a route
        return None
    attrs = attributes(data, off + _RTMSG.size)
    full = 32 if family == socket.AF_INET else 128
    dst = _addr(family, attrs.get(1)) or ("0.0.0.0" if family == socket.AF_INET else "::")
    gateway = _addr(family, attrs.get(5))
    if gateway is None and 18 in attrs:  # RTA_VIA (IPv6 gateway of an IPv4 route)
        via = attrs[18]
        gateway = _addr(struct.unpack_from("=H", via)[0], via[2:])
    nexthops: tuple[Nexthop, ...]
    if 9 in attrs:
        nexthops = tuple(_parse_multipath(family, attrs[9], names))
    elif 4 in attrs or gateway:
        oif = _u32(attrs.get(4))
        nexthops = (Nexthop(gateway=gateway, dev=names.get(oif, str(oif)) if oif else None,
                            onlink=bool(flags & RTNH_F_ONLINK), dead=bool(flags & RTNH_F_DEAD),
                            linkdown=bool(flags & RTNH_F_LINKDOWN)),)
    else:
        nexthops = ()
    return Route(
        family=_FAMILY[family],
        table=_u32(attrs.get(15), table),
        dst=dst,
        dst_len=dst_len,
        type=ROUTE_TYPES[rtype] if rtype < len(ROUTE_TYPES) else str(rtype),
        tos=tos,
        metric=_u32(attrs.get(6)),
        protocol=ROUTE_PROTOCOLS.get(proto, str(proto)),
        scope=scope,
        prefsrc=_addr(family, attrs.get(7)),
        nexthops=nexthops,
        src=_addr(family, attrs.get(2)) if src_len or 2 in attrs else None,
        src_len=src_len,
    ) if dst_len <= full else None


def _parse_multipath(family: int, raw: bytes, names: dict[int, str]):
    offset = 0
    while offset + 8 <= len(raw):
        length, flags, hops, index = _RTNEXTHOP.unpack_from(raw, offset)
        if length < 8:
            break
        attrs = attributes(raw[:offset + length], offset + 8)
        yield Nexthop(gateway=_addr(family, attrs.get(5)), dev=names.get(index, str(index)), weight=hops + 1,
                      onlink=bool(flags & RTNH_F_ONLINK), dead=bool(flags & RTNH_F_DEAD),
                      linkdown=bool(flags & RTNH_F_LINKDOWN))
        offset += (length + 3) & ~3
