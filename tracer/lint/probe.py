"""The probe: one real packet of the flow through a replica of the host, watched where it leaves.

    with Replica(state) as replica:            # Replay(state, sinks=True): one veth + sink per interface
        probe = replica.probe(explanation)     # inject, capture, compare
        probe.agrees, probe.observed, probe.differences, probe.cannot_reproduce

A forwarded (or local-in) flow is injected as an Ethernet frame from the sink of its input
interface; a local-out flow is sent by a real socket inside the replica (SO_MARK for the mark,
IP_TOS, SO_BINDTODEVICE for --oif, the socket created under the uid when one is given). The sinks
read every frame with raw AF_PACKET sockets and answer every ARP request, each target address with
a MAC of its own, so that the frame that leaves names the next hop it was sent to. A packet no sink
sees was delivered locally (the replica's Ip InDelivers counter moved) or dropped (an ICMP error or
TCP reset sent back, a socket error, the rp_filter counter, or nothing at all).

The observation is compared with the explanation (with each outcome of a forked path: the probe
says which one the packet took); `cannot_reproduce` says what of the host the replica does not
have, so that an agreement is never claimed beyond it. The replica is never linked to the root
namespace or to a real interface; it and its sinks are removed like any replay (tracer.netns).
IPv4 and IPv6 (the sinks answer neighbour solicitations as they answer ARP; the probe is found
by its IP ID, or its IPv6 flow label, which forwarding and NAT keep).
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import errno
import itertools
import os
import random
import re
import select
import shutil
import socket
import struct
import threading
import time
from dataclasses import dataclass

from tracer import netns
from tracer.collect.netlink import RtnlSocket
from tracer.flow import Flow
from tracer.lint.replay import Replay
from tracer.model import HostState
from tracer.sim.explain import explain
from tracer.sim.explanation import Explanation
from tracer.vocab import AF_INET, ICMP, ICMP_PROTOCOLS, ICMPV6, TCP, UDP, protocol_name

# How long a packet that no sink has seen may still be on its way (the kernel's path is
# synchronous once the frame is written; this covers an ARP round trip through the sink).
QUIET = 0.08
SO_MARK = 36
ETH_IP, ETH_ARP, ETH_IP6 = 0x0800, 0x0806, 0x86DD
PACKET_OUTGOING = 4
DEFAULT_PORTS = {TCP: 80, UDP: 53}
# ICMP errors that end a packet's path (unreachable, time exceeded, parameter problem); a redirect does not.
ICMP_ERRORS = {3: "destination unreachable", 11: "time exceeded", 12: "parameter problem"}
ICMP6_ERRORS = {1: "destination unreachable", 3: "time exceeded", 4: "parameter problem"}
ICMP6_UNREACH_CODES = {0: "no route", 1: "administratively prohibited", 3: "address unreachable",
                       4: "port unreachable", 5: "source address failed policy", 6: "reject route"}
ICMP_UNREACH_CODES = {0: "net unreachable", 1: "host unreachable", 2: "protocol unreachable",
                      3: "port unreachable", 4: "fragmentation needed", 9: "net prohibited",
                      10: "host prohibited", 13: "administratively prohibited"}
_ports = itertools.count(random.randrange(20000, 30000))


@dataclass(frozen=True)
class Observed:
    """What happened to the probe: it left (`dev` and the header as captured), was delivered
    locally, or was dropped (with what the replica said about it, when it said anything)."""

    outcome: str  # "left" | "delivered" | "dropped"
    dev: str | None = None
    src: str | None = None
    dst: str | None = None
    sport: int | None = None
    dport: int | None = None
    nexthop: str | None = None  # the address the replica resolved with ARP (None: no ARP on that link)
    reason: str | None = None  # dropped: the ICMP error, TCP reset or socket error seen, if any

    @property
    def text(self) -> str:
        if self.outcome == "left":
            via = f" to next hop {self.nexthop}" if self.nexthop else ""
            return f"left {self.dev}{via}: {_endpoint(self.src, self.sport)} → {_endpoint(self.dst, self.dport)}"
        if self.outcome == "delivered":
            return "delivered locally"
        return "dropped" + (f" ({self.reason})" if self.reason else " (no interface saw it, not delivered locally)")


@dataclass(frozen=True)
class Probe:
    """The probe of one flow, compared with its explanation."""

    flow: Flow  # the packet as it was sent (ports and protocol filled in where the flow gave none)
    packet: str  # "TCP SYN 192.168.1.169:20001 → 8.8.8.8:443, injected on br-lan"
    observed: Observed | None  # None: not probed (see cannot_reproduce)
    differences: tuple[str, ...]
    cannot_reproduce: tuple[str, ...]
    outcome: int | None = None  # which of the explanation's outcomes the packet took (0: the one explained)
    outcomes: int = 1
    took: str | None = None  # that outcome's choices at the forks, when the path forks
    notes: tuple[str, ...] = ()
    seconds: float = 0.0

    @property
    def agrees(self) -> bool:
        return self.observed is not None and not self.differences


# ------------------------------------------------------------------ packets

def _endpoint(address: str | None, port: int | None) -> str:
    return str(address) if port is None else f"{address}:{port}"


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def _ipv4(src: str, dst: str, proto: int, payload: bytes, *, tos: int, ident: int, ttl: int = 64) -> bytes:
    header = struct.pack("!BBHHHBBH4s4s", 0x45, tos, 20 + len(payload), ident, 0x4000, ttl, proto, 0,
                         socket.inet_aton(src), socket.inet_aton(dst))
    return header[:10] + struct.pack("!H", _checksum(header)) + header[12:] + payload


def _l4(src: str, dst: str, proto: int, segment: bytes, offset: int) -> bytes:
    pseudo = socket.inet_aton(src) + socket.inet_aton(dst) + struct.pack("!BBH", 0, proto, len(segment))
    checksum = _checksum(pseudo + segment)
    return segment[:offset] + struct.pack("!H", checksum) + segment[offset + 2:]


def _ipv6(src: str, dst: str, nexthdr: int, payload: bytes, *, tclass: int, label: int, hops: int = 64) -> bytes:
    first = (6 << 28) | (tclass << 20) | (label & 0xFFFFF)
    return struct.pack("!IHBB", first, len(payload), nexthdr, hops) + socket.inet_pton(socket.AF_INET6, src) \
        + socket.inet_pton(socket.AF_INET6, dst) + payload


def _l4_v6(src: str, dst: str, proto: int, segment: bytes, offset: int) -> bytes:
    pseudo = socket.inet_pton(socket.AF_INET6, src) + socket.inet_pton(socket.AF_INET6, dst) \
        + struct.pack("!IxxxB", len(segment), proto)
    checksum = _checksum(pseudo + segment)
    return segment[:offset] + struct.pack("!H", checksum) + segment[offset + 2:]


def _segment(flow: Flow, checksum) -> bytes:
    """The probe's TCP SYN, UDP datagram or ICMP(v6) echo request; `checksum(proto, segment, offset)`."""
    marker = b"why-route probe"
    if flow.proto == TCP:
        options = struct.pack("!BBH", 2, 4, 1460)  # MSS
        segment = struct.pack("!HHIIBBHHH", flow.sport, flow.dport, random.getrandbits(32), 0,
                              (5 + len(options) // 4) << 4, 0x02, 64240, 0, 0) + options
        return checksum(TCP, segment, 16)
    if flow.proto == UDP:
        return checksum(UDP, struct.pack("!HHHH", flow.sport, flow.dport, 8 + len(marker), 0) + marker, 6)
    echo = 8 if flow.proto == ICMP else 128
    return checksum(flow.proto, struct.pack("!BBHHH", echo, 0, 0, flow.sport, 1) + marker, 2)


def build_packet(flow: Flow, ident: int) -> tuple[int, bytes]:
    """(ethertype, the packet): IPv4 with IP ID `ident`, or IPv6 with flow label `ident`."""
    if flow.family == AF_INET:
        return ETH_IP, build_ipv4(flow, ident)
    segment = _segment(flow, lambda proto, seg, off: _l4_v6(flow.src, flow.dst, proto, seg, off))
    return ETH_IP6, _ipv6(flow.src, flow.dst, flow.proto, segment, tclass=flow.tos, label=ident)


def build_ipv4(flow: Flow, ident: int) -> bytes:
    """The probe as an IPv4 packet: a TCP SYN, a UDP datagram or an ICMP echo request."""
    def checksum(proto: int, segment: bytes, offset: int) -> bytes:
        if proto == ICMP:  # no pseudo-header
            return segment[:offset] + struct.pack("!H", _checksum(segment)) + segment[offset + 2:]
        return _l4(flow.src, flow.dst, proto, segment, offset)
    return _ipv4(flow.src, flow.dst, flow.proto, _segment(flow, checksum), tos=flow.tos, ident=ident)


@dataclass(frozen=True)
class _Header:
    src: str
    dst: str
    proto: int
    ident: int
    sport: int | None
    dport: int | None
    icmp: tuple[int, int] | None  # (type, code)
    tcp_flags: int | None
    inner: _Header | None  # the packet an ICMP error quotes


def parse_ipv4(data: bytes, *, quoted: bool = False) -> _Header | None:
    if len(data) < 20 or data[0] >> 4 != 4:
        return None
    ihl = (data[0] & 0x0F) * 4
    ident, proto = struct.unpack("!H", data[4:6])[0], data[9]
    src, dst = socket.inet_ntoa(data[12:16]), socket.inet_ntoa(data[16:20])
    l4 = data[ihl:]
    sport = dport = flags = icmp = inner = None
    if proto in (TCP, UDP) and len(l4) >= 4:
        sport, dport = struct.unpack("!HH", l4[:4])
        if proto == TCP and len(l4) >= 14:
            flags = l4[13]
    elif proto == ICMP and len(l4) >= 8:
        icmp = (l4[0], l4[1])
        if icmp[0] in (0, 8):
            sport = struct.unpack("!H", l4[4:6])[0]  # the echo identifier stands in for a port
        elif icmp[0] in ICMP_ERRORS and not quoted:
            inner = parse_ipv4(l4[8:], quoted=True)
    return _Header(src, dst, proto, ident, sport, dport, icmp, flags, inner)


def parse_ipv6(data: bytes, *, quoted: bool = False) -> _Header | None:
    """The fixed header and the first header after it (no extension headers: the probe sends none)."""
    if len(data) < 40 or data[0] >> 4 != 6:
        return None
    label = struct.unpack("!I", data[:4])[0] & 0xFFFFF
    proto = data[6]
    src = socket.inet_ntop(socket.AF_INET6, data[8:24])
    dst = socket.inet_ntop(socket.AF_INET6, data[24:40])
    l4 = data[40:]
    sport = dport = flags = icmp = inner = None
    if proto in (TCP, UDP) and len(l4) >= 4:
        sport, dport = struct.unpack("!HH", l4[:4])
        if proto == TCP and len(l4) >= 14:
            flags = l4[13]
    elif proto == ICMPV6 and len(l4) >= 8:
        icmp = (l4[0], l4[1])
        if icmp[0] in (128, 129):
            sport = struct.unpack("!H", l4[4:6])[0]
        elif icmp[0] in ICMP6_ERRORS and not quoted:
            inner = parse_ipv6(l4[8:], quoted=True)
    return _Header(src, dst, proto, label, sport, dport, icmp, flags, inner)


# ------------------------------------------------------------------ the replica

def _host_counters(fd: int) -> dict[str, int]:
    """/proc/net/snmp, netstat or snmp6 read through an fd opened inside the replica: {Group.Name: value}
    (snmp6's `Ip6InDelivers 3` lines as Ip6.InDelivers)."""
    text = os.pread(fd, 1 << 16, 0).decode()
    counters = {}
    lines = text.splitlines()
    if lines and ":" not in lines[0]:
        for line in lines:
            name, _, value = line.strip().partition(" ")
            value = value.strip()
            with contextlib.suppress(ValueError):
                counters[name.replace("Ip6", "Ip6.", 1) if name.startswith("Ip6") else name] = int(value)
        return counters
    for names, values in zip(lines[::2], lines[1::2], strict=False):
        group, _, names = names.partition(":")
        for name, value in zip(names.split(), values.partition(":")[2].split(), strict=False):
            with contextlib.suppress(ValueError):
                counters[f"{group}.{name}"] = int(value)
    return counters


class Replica:
    """A replay of `state` with a sink on every interface, for as many probes as needed (batch, verify)."""

    def __init__(self, state: HostState):
        self.state = state
        self.replay = Replay(state, sinks=True)
        self.sockets: dict[str, socket.socket] = {}
        self.macs: dict[str, bytes] = {}  # the replica's end of each interface
        self.neighbours: dict[bytes, str] = {}  # the MAC a sink answered ARP with → the address asked
        self._answered: dict[str, bytes] = {}
        self._counters: list[int] = []
        self._probes = 0
        self._mark_table = False

    def __enter__(self) -> Replica:
        self.replay.__enter__()
        try:
            self.replay.on_close(_close_all, self.sockets)
            for ifname in self.replay.sinks:
                self.sockets[ifname] = self.replay.sink_socket(ifname)
            with netns.entered(self.replay.name):
                for name in ("snmp", "netstat", "snmp6"):
                    if name == "snmp6" and not os.path.exists("/proc/thread-self/net/snmp6"):
                        continue  # IPv6 off in the kernel
                    fd = os.open(f"/proc/thread-self/net/{name}", os.O_RDONLY | os.O_CLOEXEC)
                    self.replay.on_close(os.close, fd)
                    self._counters.append(fd)
                with RtnlSocket() as rtnl:
                    self.macs = {link.name: bytes.fromhex(link.mac.replace(":", ""))
                                 for link in rtnl.links() if link.mac and link.name in self.replay.sinks}
            # ICMP errors are rate-limited per destination: every probe must be able to get one back.
            self.replay.write_sysctl({"net.ipv4.icmp_ratelimit": "0", "net.ipv4.icmp_msgs_per_sec": "100000",
                                      "net.ipv6.icmp.ratelimit": "0"})
        except BaseException:
            self.replay.close()
            raise
        return self

    def __exit__(self, *exc):
        self.replay.close()

    @property
    def seconds(self) -> float:
        return self.replay.seconds or 0.0

    # --- one probe ------------------------------------------------------------

    def probe(self, explanation: Explanation) -> Probe:
        started = time.monotonic()
        flow, filled = _concrete(explanation.flow)
        compared = explanation
        if filled:
            compared = explain(explanation.state, flow)
        if self._probes:
            self._reset()
        self._probes += 1
        self._drain()
        before = self._read_counters()
        rules_before = self._rule_counters()
        local_out = compared.origin == "local-out"
        if local_out:
            packet, observed = self._send_local(flow)
        else:
            packet, observed = self._inject(flow)
        if observed is None:
            observed = self._classify(flow, before)
        if observed.outcome == "dropped" and rules_before is not None:
            dropper = _dropping_rule(rules_before, self._rule_counters() or {})
            if dropper:
                by = f"by {dropper}, whose counter moved"
                observed = dataclasses.replace(observed, reason=f"{observed.reason}; {by}" if observed.reason else by)
        taken, differences = _compare(compared, observed, flow)
        cannot = _cannot_reproduce(self, compared, observed)
        took = None
        if taken is not None and len(compared.outcomes) > 1:
            took = "; ".join(c.text for c in compared.outcomes[taken].choices) or None
        return Probe(flow, packet, observed, differences, cannot, taken, len(compared.outcomes), took,
                     tuple(filled), time.monotonic() - started)

    def _rule_counters(self) -> dict[tuple, tuple[int, str]] | None:
        """{(table, chain, handle): (packets, the rule as nft prints it)} of the replica's rules that count
        (every iptables-nft rule; a native one with `counter`); None without a ruleset."""
        if not self.state.netfilter:
            return None
        listing = self.replay.run(["nft", "-a", "list", "ruleset"]).stdout
        counters, table, chain = {}, "", ""
        for line in listing.splitlines():
            line = line.strip()
            if line.startswith("table "):
                table = " ".join(line.split()[1:3])
            elif line.startswith("chain "):
                chain = line.split()[1]
            else:
                match = re.search(r"counter packets (\d+) bytes \d+(.*)# handle (\d+)$", line)
                if match:
                    text = re.sub(r"counter packets \d+ bytes \d+ ?", "", line.rsplit(" # handle", 1)[0])
                    counters[(table, chain, int(match.group(3)))] = (int(match.group(1)), text.strip())
        return counters

    def _reset(self) -> None:
        """Forget the previous probe's connection, so that this one is new as well."""
        if shutil.which("conntrack"):
            self.replay.run(["conntrack", "-F"])

    def _drain(self) -> None:
        for s in self.sockets.values():
            with contextlib.suppress(BlockingIOError):
                while s.recv(65535):
                    pass

    def _read_counters(self) -> dict[str, int]:
        counters = {}
        for fd in self._counters:
            counters.update(_host_counters(fd))
        return counters

    def _set_mark(self, ifname: str, mark: int) -> str | None:
        """A forwarded flow asked with a mark: the probe's own first prerouting rule sets it on arrival."""
        script = ("table inet wrprobe {\n  chain arrive {\n    type filter hook prerouting priority -2147483648; "
                  "policy accept;\n  }\n}\nflush chain inet wrprobe arrive\n")
        if mark:
            script += f'add rule inet wrprobe arrive iifname "{ifname}" meta mark set {mark:#x}\n'
        elif not self._mark_table:
            return None
        self._mark_table = True
        result = self.replay.run(["nft", "-f", "-"], input=script)
        if result.returncode:
            return next((line.strip() for line in result.stderr.splitlines() if "Error" in line), "nft failed")
        return None

    def _inject(self, flow: Flow) -> tuple[str, Observed | None]:
        iif = flow.iif
        sock = self.sockets.get(iif)
        text = f"{_packet_text(flow, flow.src)}, injected on {iif}"
        if sock is None:
            return text, Observed("dropped", reason=f"{iif} is not an interface the replica can inject on")
        error = self._set_mark(iif, flow.mark)
        if error:
            return text, Observed("dropped", reason=f"the mark could not be set: {error}")
        ident = random.getrandbits(16 if flow.family == AF_INET else 20) or 1
        ethertype, packet = build_packet(flow, ident)
        sock.send(self.macs.get(iif, b"\xff" * 6) + _sink_mac(sock) + struct.pack("!H", ethertype) + packet)
        return text, self._watch(flow, lambda h: h.ident == ident and _same_kind(h, flow), iif)

    def _send_local(self, flow: Flow) -> tuple[str, Observed | None]:
        text = f"{_packet_text(flow, flow.src or '(source selected)')}, sent by a socket in the replica"
        if flow.uid is not None:
            text += f" owned by uid {flow.uid}"
        kind = {TCP: socket.SOCK_STREAM, UDP: socket.SOCK_DGRAM}.get(flow.proto, socket.SOCK_RAW)
        family = socket.AF_INET if flow.family == AF_INET else socket.AF_INET6
        anywhere = "0.0.0.0" if family == socket.AF_INET else "::"
        with netns.entered(self.replay.name), _fsuid(flow.uid):
            s = socket.socket(family, kind, 0 if kind != socket.SOCK_RAW else flow.proto)
        with s:
            try:
                if flow.mark:
                    s.setsockopt(socket.SOL_SOCKET, SO_MARK, flow.mark)
                if flow.tos and family == socket.AF_INET:
                    s.setsockopt(socket.IPPROTO_IP, socket.IP_TOS, flow.tos)
                elif flow.tos:
                    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_TCLASS, flow.tos)
                if flow.oif:
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, flow.oif.encode())
                if kind != socket.SOCK_RAW:
                    s.bind((flow.src or anywhere, flow.sport))
                elif flow.src:
                    s.bind((flow.src, 0))
            except OSError as exc:
                return text, Observed("dropped", reason=f"the socket could not be set up: {exc.strerror}")
            s.setblocking(False)
            payload = b"why-route probe"
            try:
                if kind == socket.SOCK_STREAM:
                    code = s.connect_ex((flow.dst, flow.dport))
                    if code not in (0, errno.EINPROGRESS, errno.ECONNREFUSED):  # refused: it got there
                        raise OSError(code, os.strerror(code))
                elif kind == socket.SOCK_DGRAM:
                    s.sendto(payload, (flow.dst, flow.dport))
                elif family == socket.AF_INET:
                    body = struct.pack("!BBHHH", 8, 0, 0, flow.sport, 1) + payload
                    s.sendto(body[:2] + struct.pack("!H", _checksum(body)) + body[4:], (flow.dst, 0))
                else:  # the kernel fills in an ICMPv6 checksum
                    s.sendto(struct.pack("!BBHHH", 128, 0, 0, flow.sport, 1) + payload, (flow.dst, 0))
            except OSError as exc:
                return text, Observed("dropped", reason=f"the kernel refused to send it: "
                                      f"{errno.errorcode.get(exc.errno, exc.errno)} ({exc.strerror})")

            return text, self._watch(flow, lambda h: _same_kind(h, flow), None)

    def _watch(self, flow: Flow, ours, iif: str | None) -> Observed | None:
        """Read the sinks until the probe shows up (or an error about it), answering ARP meanwhile;
        None when nothing came within QUIET."""
        by_fd = {s.fileno(): (name, s) for name, s in self.sockets.items()}
        deadline = time.monotonic() + QUIET
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            ready, _, _ = select.select(list(by_fd), [], [], left)
            for fd in ready:
                name, s = by_fd[fd]
                while True:
                    try:
                        frame, address = s.recvfrom(65535)
                    except BlockingIOError:
                        break
                    if address[2] == PACKET_OUTGOING or len(frame) < 14:
                        continue
                    ethertype = struct.unpack("!H", frame[12:14])[0]
                    if ethertype == ETH_ARP:
                        self._answer_arp(s, frame)
                        continue
                    if ethertype == ETH_IP:
                        header = parse_ipv4(frame[14:])
                    elif ethertype == ETH_IP6:
                        header = parse_ipv6(frame[14:])
                        if header is not None and header.icmp and header.icmp[0] == 135:
                            self._answer_ns(s, frame)
                            continue
                    else:
                        continue
                    if header is None:
                        continue
                    if header.inner is not None and ours(header.inner):
                        return Observed("dropped", reason=_icmp_reason(header, name))
                    if (iif is not None and name == iif and header.proto == TCP and header.tcp_flags
                            and header.tcp_flags & 0x04 and header.dst == flow.src and header.dport == flow.sport):
                        return Observed("dropped", reason=f"a TCP reset was sent back out of {name}")
                    if header.inner is None and ours(header):
                        nexthop = self.neighbours.get(frame[0:6])
                        ports = flow.proto not in ICMP_PROTOCOLS
                        return Observed("left", name, header.src, header.dst, header.sport if ports else None,
                                        header.dport if ports else None, nexthop)

    def _mac_for(self, address: str) -> bytes:
        mac = self._answered.get(address)
        if mac is None:
            mac = b"\x02\x77\x70" + struct.pack("!I", len(self._answered) + 1)[1:]
            self._answered[address] = mac
            self.neighbours[mac] = address
        return mac

    def _answer_ns(self, sock: socket.socket, frame: bytes) -> None:
        """Every neighbour solicitation is answered (a solicited, overriding advertisement)."""
        ip6 = frame[14:]
        if len(ip6) < 64:
            return
        asker = socket.inet_ntop(socket.AF_INET6, ip6[8:24])
        target = socket.inet_ntop(socket.AF_INET6, ip6[48:64])
        mac = self._mac_for(target)
        solicited = asker != "::"
        flags = 0x60000000 if solicited else 0x20000000
        body = struct.pack("!BBHI", 136, 0, 0, flags) + ip6[48:64] + struct.pack("!BB", 2, 1) + mac
        to = asker if solicited else "ff02::1"
        body = _l4_v6(target, to, ICMPV6, body, 2)
        packet = _ipv6(target, to, ICMPV6, body, tclass=0, label=0, hops=255)
        sock.send(frame[6:12] + mac + struct.pack("!H", ETH_IP6) + packet)

    def _answer_arp(self, sock: socket.socket, frame: bytes) -> None:
        """Every ARP request is answered, each address asked for with a MAC of its own."""
        arp = frame[14:42]
        if len(arp) < 28 or struct.unpack("!H", arp[6:8])[0] != 1:
            return
        sender_mac, sender_ip, target_ip = arp[8:14], arp[14:18], arp[24:28]
        mac = self._mac_for(socket.inet_ntoa(target_ip))
        reply = struct.pack("!HHBBH", 1, ETH_IP, 6, 4, 2) + mac + target_ip + sender_mac + sender_ip
        sock.send(sender_mac + mac + struct.pack("!H", ETH_ARP) + reply)

    def _classify(self, flow: Flow, before: dict[str, int]) -> Observed:
        after = self._read_counters()

        def moved(key: str) -> int:
            return after.get(key, 0) - before.get(key, 0)
        if moved("Ip.InDelivers" if flow.family == AF_INET else "Ip6.InDelivers") > 0:
            return Observed("delivered")
        if moved("TcpExt.IPReversePathFilter") > 0:
            return Observed("dropped", reason="the reverse path filter (rp_filter) dropped it")
        if moved("IpExt.InNoRoutes") > 0 or moved("Ip.OutNoRoutes") > 0 or moved("Ip6.InNoRoutes") > 0 \
                or moved("Ip6.OutNoRoutes") > 0:
            return Observed("dropped", reason="no route")
        return Observed("dropped")


def _dropping_rule(before: dict, after: dict) -> str | None:
    """The rule that dropped the probe: one whose counter moved and whose verdict ends the packet."""
    for key, (packets, text) in after.items():
        if packets > before.get(key, (0, ""))[0] and re.search(r"\b(drop|reject)\b", text):
            table, chain, handle = key
            return f"{table} {chain} #{handle} `{text}`"
    return None


def _same_kind(h: _Header, flow: Flow) -> bool:
    """A packet of the probe's kind: its protocol, and a SYN or an echo request."""
    if h.proto != flow.proto:
        return False
    if h.proto == TCP:
        return h.tcp_flags is None or h.tcp_flags & 0x12 == 0x02
    if h.proto in ICMP_PROTOCOLS:
        return h.icmp is not None and h.icmp[0] in (8, 128)
    return True


def _close_all(sockets: dict[str, socket.socket]) -> None:
    """Close the sinks' packet sockets side by side: each close waits for an RCU grace period."""
    threads = [threading.Thread(target=s.close) for s in sockets.values()]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    sockets.clear()


def _sink_mac(sock: socket.socket) -> bytes:
    return sock.getsockname()[4][:6]


@contextlib.contextmanager
def _fsuid(uid: int | None):
    """Sockets made inside the block belong to `uid` (sk_uid, what uidrange rules and skuid match)."""
    if uid is None:
        yield
        return
    libc = ctypes.CDLL(None, use_errno=True)
    previous = libc.setfsuid(uid)
    try:
        yield
    finally:
        libc.setfsuid(previous)


def _icmp_reason(header: _Header, dev: str) -> str:
    kind, code = header.icmp
    if header.proto == ICMPV6:
        what = ICMP6_ERRORS[kind]
        if kind == 1:
            what = f"{what}, {ICMP6_UNREACH_CODES.get(code, f'code {code}')}"
        return f"ICMPv6 {what} from {header.src}, sent out of {dev}"
    what = ICMP_ERRORS[kind]
    if kind == 3:
        what = f"{what}, {ICMP_UNREACH_CODES.get(code, f'code {code}')}"
    return f"ICMP {what} from {header.src}, sent out of {dev}"


def _packet_text(flow: Flow, src: str) -> str:
    if flow.proto in ICMP_PROTOCOLS:
        return f"{'ICMP' if flow.proto == ICMP else 'ICMPv6'} echo request {src} → {flow.dst} (id {flow.sport})"
    word = {TCP: "TCP SYN", UDP: "UDP datagram"}[flow.proto]
    return f"{word} {_endpoint(src, flow.sport)} → {_endpoint(flow.dst, flow.dport)}"


def _concrete(flow: Flow) -> tuple[Flow, list[str]]:
    """The flow with what a real packet needs filled in; and what was filled in, said once."""
    notes = []
    proto, sport, dport = flow.proto, flow.sport, flow.dport
    echo = ICMP if flow.family == AF_INET else ICMPV6
    if not proto:
        proto = echo
        notes.append("the flow names no protocol: probed with an echo request (ping)")
    elif proto not in (TCP, UDP, echo):
        proto = echo
        notes.append(f"protocol {protocol_name(flow.proto)} is not probed: an echo request was sent instead")
    if sport is None:
        sport = next(_ports) % 30000 + 20000
    if proto in DEFAULT_PORTS and dport is None:
        dport = DEFAULT_PORTS[proto]
        notes.append(f"the flow names no destination port: probed with {protocol_name(proto)} port {dport}")
    if proto == echo:
        dport = None
    # A source port the probe chose changes no answer (the explanation holds for any); a protocol
    # or destination port it chose may: then the packet sent is explained again (`notes`).
    return dataclasses.replace(flow, proto=proto, sport=sport, dport=dport), notes


# ------------------------------------------------------------------ comparison

def _expected(outcome: Explanation) -> Observed:
    if outcome.leaves and outcome.egress is not None:
        eg = outcome.egress
        return Observed("left", eg.dev, eg.src, eg.dst, eg.sport, eg.dport, eg.gateway or eg.nexthop)
    if outcome.verdict == "delivered-locally":
        return Observed("delivered")
    return Observed("dropped", reason=outcome.verdict)


def _differences(outcome: Explanation, seen: Observed, link_of, sent: Flow) -> list[str]:
    want = _expected(outcome)
    if want.outcome != seen.outcome:
        said = {"left": f"leaves {want.dev}", "delivered": "is delivered locally",
                "dropped": f"is {outcome.verdict}"}[want.outcome]
        return [f"the packet was {seen.text}; the explanation says it {said} ({outcome.verdict_reason})"]
    if seen.outcome != "left":
        return []
    out = []
    if seen.dev != want.dev:
        out.append(f"left {seen.dev}, not {want.dev}")
    for key, label in (("src", "source"), ("dst", "destination")):
        if getattr(seen, key) != getattr(want, key):
            out.append(f"{label} {getattr(seen, key)} on the wire, explained {getattr(want, key)}")
    for key, label in (("sport", "source port"), ("dport", "destination port")):
        explained = getattr(want, key)
        if explained is None and not any(n.rewrite.to_port is not None for n in outcome.nat):
            explained = getattr(sent, key)  # the explanation changes no port: the one sent
        if explained is not None and getattr(seen, key) is not None and getattr(seen, key) != explained:
            out.append(f"{label} {getattr(seen, key)} on the wire, explained {explained}")
    link = link_of(seen.dev)
    if seen.nexthop and want.nexthop and seen.nexthop != want.nexthop and not (link and link.noarp):
        out.append(f"next hop {seen.nexthop} (the address the replica asked ARP for), explained {want.nexthop}")
    return out


def _compare(explanation: Explanation, seen: Observed, sent: Flow) -> tuple[int | None, tuple[str, ...]]:
    """(the outcome the packet took, the differences from the explained one); for a forked path,
    agreement with any outcome is agreement, and says which."""
    link_of = explanation.state.link
    outcomes = explanation.outcomes
    first = _differences(outcomes[0], seen, link_of, sent)
    if not first:
        return 0, ()
    for index, outcome in enumerate(outcomes[1:], 1):
        if not _differences(outcome, seen, link_of, sent):
            return index, ()
    return None, tuple(first)


def _cannot_reproduce(replica: Replica, e: Explanation, seen: Observed) -> tuple[str, ...]:
    """What of the host the replica does not have, for this flow's path: never claim more."""
    state = e.state
    out = [f"not replayed: {note}" for note in replica.replay.notes]
    devices = dict.fromkeys(d for d in (e.flow.iif, e.egress.dev if e.egress else None, seen.dev, e.flow.oif) if d)
    for dev in devices:
        link = state.link(dev)
        if link is None:
            continue
        ports = [other.name for other in state.links if other.master == dev]
        if link.kind and link.kind != "veth":
            extra = f" (its ports {', '.join(ports)} are not enslaved)" if ports else ""
            out.append(f"{dev} is a {link.kind} on the host, a veth in the replica{extra}: "
                       f"what is proper to a {link.kind} is not reproduced")
        elif link.pointopoint:
            out.append(f"{dev} is point-to-point on the host, a veth with arp off in the replica")
    if e.conntrack is not None:
        out.append(f"the conntrack entry the explanation uses is not recreated ({e.conntrack.text}): "
                   "the probe is the first packet of a new connection")
    elif state.conntrack:
        count = len(state.conntrack)
        entries = "conntrack entry is" if count == 1 else f"{count} conntrack entries are"
        out.append(f"the host's {entries} not recreated (none is this flow's; a NAT port the kernel would "
                   "avoid because of one is not avoided)")
    if seen.outcome == "left" and seen.nexthop:
        out.append("neighbours: the sinks answer every ARP request and neighbour solicitation, so a next hop "
                   "that does not answer on the host answers in the replica")
    if any(c.kind == "multipath" for o in e.outcomes for c in o.choices):
        out.append("multipath: the replica's hash seed is its own: the nexthop it picks for this flow may "
                   "not be the host's")
    if e.origin != "local-out" and e.flow.mark:
        out.append(f"mark {e.flow.mark:#x}: set on the packet by the probe's own first prerouting rule "
                   "(a packet arriving from the wire carries none)")
    if state.partial_tables:
        out.append("tables too large to collect were not replayed: routes found only in them are missing")
    return tuple(out)


# ------------------------------------------------------------------ entry points

def probe(explanation: Explanation) -> Probe:
    """One probe in a replica of its own; `seconds` counts the replay too."""
    started = time.monotonic()
    with Replica(explanation.state) as replica:
        result = replica.probe(explanation)
    return dataclasses.replace(result, seconds=time.monotonic() - started)


class Prober:
    """Probes for many explanations of one state (`batch --probe`): the replica is built at the
    first probe and reused by the next ones; removed on exit."""

    def __init__(self, state: HostState):
        self.state = state
        self._stack = contextlib.ExitStack()
        self._replica: Replica | None = None

    def __enter__(self) -> Prober:
        return self

    def __exit__(self, *exc):
        self._stack.close()

    def probe(self, explanation: Explanation) -> Probe:
        started = time.monotonic()
        if self._replica is None:
            self._replica = self._stack.enter_context(Replica(self.state))
        result = self._replica.probe(explanation)
        return dataclasses.replace(result, seconds=time.monotonic() - started)


def probe_outcomes(state: HostState, outcomes: list) -> list:
    """`verify --probe`: each flow expectation's explanation probed in one replica; a probe that
    disagrees makes the expectation fail. [(Outcome, Probe | None)], in order."""
    probed = []
    flows = [o for o in outcomes if o.explanation is not None]
    if not flows:
        return [(o, None) for o in outcomes]
    with Replica(state) as replica:
        for o in outcomes:
            if o.explanation is None:
                probed.append((o, None))
                continue
            result = replica.probe(o.explanation)
            extra = tuple(f"probe: {d}" for d in result.differences)
            if result.observed is None:
                extra = (f"probe: not probed ({'; '.join(result.cannot_reproduce)})",)
            probed.append((dataclasses.replace(o, mismatches=(*o.mismatches, *extra)), result))
    return probed
