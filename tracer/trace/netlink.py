"""Raw nfnetlink, as the trace's sockets read it (ctnetlink events, nftables trace events): a
socket in the traced namespace subscribed to multicast groups, messages and their attributes.
Parsed with struct: fast enough for tens of thousands of events a second (pyroute2 is not)."""

from __future__ import annotations

import errno
import socket
import struct
from collections.abc import Iterator

from tracer import netns as netns_mod
from tracer.collect.netlink import attributes

NETLINK_NETFILTER = 12
SOL_NETLINK, NETLINK_ADD_MEMBERSHIP = 270, 1
SO_RCVBUFFORCE = 33
NLMSG_HEADER, NFGENMSG = 16, 4


def messages(data: bytes) -> Iterator[tuple[int, int, int, int, dict[int, bytes]]]:
    """(subsystem, message type, flags, nfgenmsg family, attributes) of each nfnetlink message of a datagram."""
    pos = 0
    while pos + NLMSG_HEADER + NFGENMSG <= len(data):
        length, kind, flags, _seq, _pid = struct.unpack_from("=IHHII", data, pos)
        if length < NLMSG_HEADER:
            break
        family = data[pos + NLMSG_HEADER]
        yield kind >> 8, kind & 0xFF, flags, family, attributes(data, pos + NLMSG_HEADER + NFGENMSG, pos + length)
        pos += (length + 3) & ~3


def subscribed_socket(netns: str | None, groups: tuple[int, ...], receive_buffer: int) -> socket.socket:
    """A non-blocking NETLINK_NETFILTER socket in `netns`, member of `groups`, with a receive buffer of
    `receive_buffer` bytes (forced past rmem_max: we are root). Raises OSError."""
    with netns_mod.entered(netns):
        sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_NONBLOCK, NETLINK_NETFILTER)
    try:
        try:
            sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, receive_buffer)
        except OSError:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
        sock.bind((0, 0))
        for group in groups:
            sock.setsockopt(SOL_NETLINK, NETLINK_ADD_MEMBERSHIP, group)
    except OSError:
        sock.close()
        raise
    return sock


def receive_all(sock: socket.socket) -> tuple[list[bytes], int]:
    """Every datagram waiting on the socket, and how many overflows (ENOBUFS: events lost) it reported."""
    datagrams, overflows = [], 0
    while True:
        try:
            datagrams.append(sock.recv(1 << 20))
        except BlockingIOError:
            return datagrams, overflows
        except OSError as error:
            if error.errno != errno.ENOBUFS:
                raise
            overflows += 1
