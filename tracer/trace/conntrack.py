"""Conntrack events from ctnetlink (NFNLGRP_CONNTRACK_NEW/UPDATE/DESTROY), read with an own raw
netlink parser: a flow's NAT mapping (both tuples) and whether its replies came (IPS_SEEN_REPLY).

The socket is opened inside the traced namespace, with a 64 MB receive buffer (the 208 KB
default overflows under tens of thousands of new flows per second); every ENOBUFS is counted as
lost events (the kernel does not say how many: each overflow counts one), and said in the summary.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import struct
import time

from tracer.trace import netlink
from tracer.trace.collectors import Collector
from tracer.trace.events import ConntrackEvent, FlowId, Tuple

NFNL_SUBSYS_CTNETLINK = 1
IPCTNL_MSG_CT_NEW, IPCTNL_MSG_CT_DELETE = 0, 2
NFNLGRP_CONNTRACK_NEW, NFNLGRP_CONNTRACK_UPDATE, NFNLGRP_CONNTRACK_DESTROY = 1, 2, 3
GROUPS = (NFNLGRP_CONNTRACK_NEW, NFNLGRP_CONNTRACK_UPDATE, NFNLGRP_CONNTRACK_DESTROY)
# With the netfilter probe, which reads each flow's conntrack entry (both tuples, the status) at every
# hook and notes its first reply, a NEW or DESTROY event adds nothing, and each costs the kernel a
# netlink message in the packet's path and why-route a parse (about a tenth of what a new flow costs
# both): only the updates are heard, which say a reply came (a check on the probe's reply note).
GROUPS_BESIDE_HOOKS = (NFNLGRP_CONNTRACK_UPDATE,)
NLM_F_CREATE = 0x400
RECEIVE_BUFFER = 64 << 20
CTA_TUPLE_ORIG, CTA_TUPLE_REPLY, CTA_STATUS = 1, 2, 3
CTA_TUPLE_IP, CTA_TUPLE_PROTO = 1, 2
CTA_IP_V4_SRC, CTA_IP_V4_DST, CTA_IP_V6_SRC, CTA_IP_V6_DST = 1, 2, 3, 4
CTA_PROTO_NUM, CTA_PROTO_SRC_PORT, CTA_PROTO_DST_PORT, CTA_PROTO_ICMP_ID, CTA_PROTO_ICMPV6_ID = 1, 2, 3, 4, 7
ADDRESSES = ((CTA_IP_V4_SRC, CTA_IP_V4_DST), (CTA_IP_V6_SRC, CTA_IP_V6_DST))
ECHO_IDS = {1: CTA_PROTO_ICMP_ID, 58: CTA_PROTO_ICMPV6_ID}  # ICMP, ICMPv6: the echo id is the flow's sport


def _tuple(blob: bytes) -> tuple[int, Tuple] | None:
    parts = netlink.attributes(blob)
    ip = netlink.attributes(parts.get(CTA_TUPLE_IP, b""))
    proto = netlink.attributes(parts.get(CTA_TUPLE_PROTO, b""))
    found = next(((src, dst) for src, dst in ADDRESSES if src in ip and dst in ip), None)
    if found is None or CTA_PROTO_NUM not in proto:
        return None  # a family we do not trace
    src, dst = found
    number = proto[CTA_PROTO_NUM][0]

    def port(kind: int) -> int:
        value = proto.get(kind)
        return struct.unpack("!H", value[:2])[0] if value else 0

    echo = ECHO_IDS.get(number)
    sport = port(echo) if echo else port(CTA_PROTO_SRC_PORT)
    dport = 0 if echo else port(CTA_PROTO_DST_PORT)
    # ipaddress's text, as the probes' events have it (the same flow must have the same name)
    return number, Tuple(str(ipaddress.ip_address(ip[src])), str(ipaddress.ip_address(ip[dst])), sport, dport)


def parse(data: bytes, netns: int, now_ns: int = 0) -> list[ConntrackEvent]:
    """Every conntrack event in one datagram (several netlink messages)."""
    events = []
    for subsystem, message, flags, _family, attrs in netlink.messages(data):
        if subsystem != NFNL_SUBSYS_CTNETLINK or message not in (IPCTNL_MSG_CT_NEW, IPCTNL_MSG_CT_DELETE):
            continue
        orig = _tuple(attrs.get(CTA_TUPLE_ORIG, b""))
        reply = _tuple(attrs.get(CTA_TUPLE_REPLY, b""))
        if orig and reply:
            status = struct.unpack("!I", attrs[CTA_STATUS][:4])[0] if CTA_STATUS in attrs else 0
            what = "destroy" if message == IPCTNL_MSG_CT_DELETE else "new" if flags & NLM_F_CREATE else "update"
            proto, o = orig
            events.append(ConntrackEvent(now_ns, FlowId(netns, proto, o.src, o.dst, o.sport, o.dport),
                                         what, o, reply[1], status))
    return events


class ConntrackSource:
    """The open ctnetlink socket of a session: poll() returns the events its inbox received since
    the last call."""

    name = "conntrack"

    def __init__(self, sock: socket.socket, netns: int, options):
        self.inbox = netlink.Inbox(sock)
        self.netns = netns
        self.options = options

    @property
    def lost(self) -> int:
        return self.inbox.overflows

    def _wanted(self, event: ConntrackEvent) -> bool:
        o, f = self.options, event.flow
        return ((not o.src or o.src == f.src) and (not o.dst or o.dst == f.dst) and (not o.proto or o.proto == f.proto)
                and (o.sport is None or o.sport == f.sport) and (o.dport is None or o.dport == f.dport))

    def poll(self) -> list[ConntrackEvent]:
        now = time.monotonic_ns()
        return [e for data in self.inbox.take() for e in parse(data, self.netns, now) if self._wanted(e)]


class ConntrackCollector(Collector):
    name = "conntrack"
    part = None
    what = ("ctnetlink events NEW/UPDATE/DESTROY (NAT mapping, replies seen); beside the netfilter probe, "
            "UPDATE only (replies seen)")
    event = "conntrack"

    def can_run(self) -> str | None:
        if self.name in self.disabled:
            return "disabled (--without conntrack or WHYROUTE_TRACE_DISABLE)"
        if os.geteuid() != 0:
            return "needs root (CAP_NET_ADMIN) to listen to conntrack events"
        if not os.path.exists("/proc/sys/net/netfilter/nf_conntrack_max"):
            return "conntrack is not loaded (module nf_conntrack), so there are no conntrack events"
        return None

    def open(self, undo, options, state, netns_inode: int, hooks_traced: bool = False) -> ConntrackSource:
        try:
            sock = netlink.subscribed_socket(options.netns, GROUPS_BESIDE_HOOKS if hooks_traced else GROUPS,
                                             RECEIVE_BUFFER)
        except OSError as error:
            from tracer.trace.kernel import KernelError

            raise KernelError(f"ctnetlink socket: {error.strerror}") from None
        undo.callback(sock.close)
        return ConntrackSource(sock, netns_inode, options)
