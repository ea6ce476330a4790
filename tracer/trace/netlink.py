"""Raw nfnetlink, as the trace's sockets read it (ctnetlink events, nftables trace events): a
socket in the traced namespace subscribed to multicast groups, messages and their attributes.
Parsed with struct: fast enough for tens of thousands of events a second (pyroute2 is not)."""

from __future__ import annotations

import collections
import ctypes
import errno
import os
import socket
import struct
from collections.abc import Iterator

from tracer import netns as netns_mod
from tracer.collect.netlink import attributes

NETLINK_NETFILTER = 12
SOL_NETLINK, NETLINK_ADD_MEMBERSHIP = 270, 1
SO_RCVBUFFORCE = 33
NLMSG_HEADER, NFGENMSG = 16, 4


def _frames(data: bytes, least: int) -> Iterator[tuple[int, int, int, int]]:
    """(offset, length, type, flags) of each netlink message of a datagram while `least` bytes of one fit."""
    pos = 0
    while pos + least <= len(data):
        length, kind, flags = struct.unpack_from("=IHH", data, pos)
        if length < NLMSG_HEADER:
            break
        yield pos, length, kind, flags
        pos += (length + 3) & ~3


def messages(data: bytes) -> Iterator[tuple[int, int, int, int, dict[int, bytes]]]:
    """(subsystem, message type, flags, nfgenmsg family, attributes) of each nfnetlink message of a datagram."""
    for pos, length, kind, flags in _frames(data, NLMSG_HEADER + NFGENMSG):
        family = data[pos + NLMSG_HEADER]
        yield kind >> 8, kind & 0xFF, flags, family, attributes(data, pos + NLMSG_HEADER + NFGENMSG, pos + length)


def message_count(data: bytes) -> int:
    """How many netlink messages a datagram holds (their headers walked, nothing parsed)."""
    return sum(1 for _ in _frames(data, NLMSG_HEADER))


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


# PyDLL keeps the GIL through the call: a non-blocking recv is a microsecond, whereas releasing and
# taking the GIL back around each one lets a busy main thread hold the reader off for 5 ms a datagram.
_LIBC = ctypes.PyDLL(None, use_errno=True)
MSG_DONTWAIT = 0x40
DATAGRAM_MAX = 1 << 17


class Inbox:
    """The datagrams a socket received, copied out by drain() (the session's drain thread, every few
    milliseconds, so that the socket's buffer does not overflow while the main loop is busy) and
    handed over by take(). Each ENOBUFS (the kernel dropped messages) counts one overflow. At most
    `limit` bytes are held between two take()s: the messages of a datagram beyond are dropped and
    counted (`dropped`), rather than held until the router runs out of memory."""

    def __init__(self, sock: socket.socket, limit: int = 1 << 30):
        self.sock = sock
        self.limit = limit
        self.overflows = self.dropped = 0
        # bytes appended by drain() and removed by take(): each written by one thread only, no lock
        self._appended = self._taken = 0
        self._datagrams: collections.deque[bytes] = collections.deque()
        self._buffer = ctypes.create_string_buffer(DATAGRAM_MAX)

    def drain(self) -> None:
        fd, buffer = self.sock.fileno(), self._buffer
        while True:
            size = _LIBC.recv(fd, buffer, DATAGRAM_MAX, MSG_DONTWAIT)
            if size >= 0:
                datagram = ctypes.string_at(buffer, size)
                if self._appended - self._taken + size > self.limit:
                    self.dropped += message_count(datagram)
                else:
                    self._datagrams.append(datagram)
                    self._appended += size
                continue
            code = ctypes.get_errno()
            if code == errno.ENOBUFS:
                self.overflows += 1
            elif code in (errno.EAGAIN, errno.EINTR):
                return
            else:
                raise OSError(code, os.strerror(code))

    def take(self) -> list[bytes]:
        taken = []
        while self._datagrams:
            taken.append(self._datagrams.popleft())
        self._taken += sum(map(len, taken))
        return taken
