"""Conntrack events from ctnetlink (NFNLGRP_CONNTRACK_NEW/UPDATE/DESTROY), read with an own raw
netlink parser: a flow's NAT mapping (both tuples) and whether its replies came (IPS_SEEN_REPLY).

The socket is opened inside the traced namespace, with a 64 MB receive buffer (the 208 KB
default overflows under tens of thousands of new flows per second); every ENOBUFS is counted as
lost events (the kernel does not say how many: each overflow counts one), and said in the summary.
"""

from __future__ import annotations

import errno
import os
import socket
import struct
import time

from tracer import netns as netns_mod
from tracer.trace.collectors import Collector
from tracer.trace.events import ConntrackEvent, FlowId, Tuple

NETLINK_NETFILTER = 12
NFNL_SUBSYS_CTNETLINK = 1
IPCTNL_MSG_CT_NEW, IPCTNL_MSG_CT_DELETE = 0, 2
GROUPS = (1 << 0) | (1 << 1) | (1 << 2)  # NFNLGRP_CONNTRACK_NEW, _UPDATE, _DESTROY
NLM_F_CREATE = 0x400
NLMSG_ERROR, NLMSG_DONE = 2, 3
SO_RCVBUFFORCE = 33
RECEIVE_BUFFER = 64 << 20
CTA_TUPLE_ORIG, CTA_TUPLE_REPLY, CTA_STATUS = 1, 2, 3
CTA_TUPLE_IP, CTA_TUPLE_PROTO = 1, 2
CTA_IP_V4_SRC, CTA_IP_V4_DST = 1, 2
CTA_PROTO_NUM, CTA_PROTO_SRC_PORT, CTA_PROTO_DST_PORT, CTA_PROTO_ICMP_ID = 1, 2, 3, 4
NLA_TYPE_MASK = 0x3FFF


def _attributes(data: bytes, pos: int, end: int) -> dict[int, bytes]:
    found = {}
    while pos + 4 <= end:
        length, kind = struct.unpack_from("=HH", data, pos)
        if length < 4:
            break
        found[kind & NLA_TYPE_MASK] = data[pos + 4:pos + length]
        pos += (length + 3) & ~3
    return found


def _tuple(blob: bytes) -> tuple[int, Tuple] | None:
    parts = _attributes(blob, 0, len(blob))
    ip = _attributes(parts.get(CTA_TUPLE_IP, b""), 0, len(parts.get(CTA_TUPLE_IP, b"")))
    proto = _attributes(parts.get(CTA_TUPLE_PROTO, b""), 0, len(parts.get(CTA_TUPLE_PROTO, b"")))
    if CTA_IP_V4_SRC not in ip or CTA_PROTO_NUM not in proto:
        return None  # IPv6 or something we do not trace
    number = proto[CTA_PROTO_NUM][0]

    def port(kind: int) -> int:
        value = proto.get(kind)
        return struct.unpack("!H", value[:2])[0] if value else 0

    sport = port(CTA_PROTO_ICMP_ID) if number == 1 else port(CTA_PROTO_SRC_PORT)
    dport = 0 if number == 1 else port(CTA_PROTO_DST_PORT)
    return number, Tuple(socket.inet_ntoa(ip[CTA_IP_V4_SRC]), socket.inet_ntoa(ip[CTA_IP_V4_DST]), sport, dport)


def parse(data: bytes, netns: int, now_ns: int = 0) -> list[ConntrackEvent]:
    """Every conntrack event in one datagram (several netlink messages)."""
    events = []
    pos = 0
    while pos + 16 <= len(data):
        length, kind, flags, _seq, _pid = struct.unpack_from("=IHHII", data, pos)
        if length < 16:
            break
        subsys, message = kind >> 8, kind & 0xFF
        if subsys == NFNL_SUBSYS_CTNETLINK and message in (IPCTNL_MSG_CT_NEW, IPCTNL_MSG_CT_DELETE):
            attrs = _attributes(data, pos + 20, pos + length)  # nlmsghdr (16) + nfgenmsg (4)
            orig = _tuple(attrs.get(CTA_TUPLE_ORIG, b""))
            reply = _tuple(attrs.get(CTA_TUPLE_REPLY, b""))
            if orig and reply:
                status = struct.unpack("!I", attrs[CTA_STATUS][:4])[0] if CTA_STATUS in attrs else 0
                what = ("destroy" if message == IPCTNL_MSG_CT_DELETE
                        else "new" if flags & NLM_F_CREATE else "update")
                proto, o = orig
                events.append(ConntrackEvent(now_ns, FlowId(netns, proto, o.src, o.dst, o.sport, o.dport),
                                             what, o, reply[1], status))
        pos += (length + 3) & ~3
    return events


class ConntrackSource:
    """The open ctnetlink socket of a session: poll() returns the events read since the last call."""

    def __init__(self, sock: socket.socket, netns: int, options):
        self.sock = sock
        self.netns = netns
        self.options = options
        self.lost = 0

    def _wanted(self, event: ConntrackEvent) -> bool:
        o, f = self.options, event.flow
        return ((not o.src or o.src == f.src) and (not o.dst or o.dst == f.dst) and (not o.proto or o.proto == f.proto)
                and (o.sport is None or o.sport == f.sport) and (o.dport is None or o.dport == f.dport))

    def poll(self) -> list[ConntrackEvent]:
        events = []
        while True:
            try:
                data = self.sock.recv(1 << 20)
            except BlockingIOError:
                return events
            except OSError as error:
                if error.errno == errno.ENOBUFS:
                    self.lost += 1
                    continue
                raise
            events.extend(e for e in parse(data, self.netns, time.monotonic_ns()) if self._wanted(e))


class ConntrackCollector(Collector):
    name = "conntrack"
    part = None
    what = "ctnetlink events NEW/UPDATE/DESTROY (NAT mapping, replies seen)"
    event = "conntrack"

    def can_run(self) -> str | None:
        if self.name in self.disabled:
            return "disabled (--without conntrack or WHYROUTE_TRACE_DISABLE)"
        if os.geteuid() != 0:
            return "needs root (CAP_NET_ADMIN) to listen to conntrack events"
        if not os.path.exists("/proc/sys/net/netfilter/nf_conntrack_max"):
            return "conntrack is not loaded (module nf_conntrack), so there are no conntrack events"
        return None

    def open(self, undo, options, state, netns_inode: int) -> ConntrackSource:
        with netns_mod.entered(options.netns):
            try:
                sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_NONBLOCK, NETLINK_NETFILTER)
            except OSError as error:
                from tracer.trace.kernel import KernelError

                raise KernelError(f"ctnetlink socket: {error.strerror}") from None
        undo.callback(sock.close)
        try:
            sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, RECEIVE_BUFFER)
        except OSError:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER)
        sock.bind((0, GROUPS))
        return ConntrackSource(sock, netns_inode, options)
