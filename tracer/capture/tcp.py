"""One pass over a capture: every TCP connection as seen on each interface (a `Side`), and ICMP errors.

Streaming: per packet only a connection's running state changes; what is kept
per connection is bounded (counters, at most `EVIDENCE` example packets per
kind, at most `MAX_GAPS` holes, a reservoir of RTT samples), so memory grows
with the number of connections, not of packets.

The per-segment classification follows Wireshark's `tcp.analysis.*`
(packet-tcp.c, tcp_analyze_sequence_number) so that the counts can be checked
against tshark: zero-window probe, zero window, previous segment lost (a hole),
keep-alive, duplicate ACK, and for a segment below the highest sequence seen:
fast retransmission (≥ 2 duplicate ACKs for it within 20 ms), out-of-order
(within the handshake RTT, or 3 ms, of the highest segment), spurious (already
acknowledged) or retransmission. Sequence numbers are relative to the first
seen in each direction (transfers up to 2 GiB per connection and direction).
"""

from __future__ import annotations

import random
import socket
import struct
from dataclasses import dataclass

from tracer.capture import pcapio

FIN, SYN, RST, PSH, ACK = 0x01, 0x02, 0x04, 0x08, 0x10
EVIDENCE = 20
MAX_GAPS = 256
RTT_SAMPLES = 2048
BIG = 1280  # IP lengths above this are kept by size (for MTU questions)
_M, _H, _W = 0xFFFFFFFF, 0x7FFFFFFF, 1 << 32


def _addr(raw: bytes) -> str:
    return socket.inet_ntop(socket.AF_INET6 if len(raw) == 16 else socket.AF_INET, raw)


@dataclass(frozen=True)
class Icmp:
    number: int
    time: float
    iface: int
    src: str
    dst: str
    type: int
    code: int
    mtu: int | None
    inner: tuple  # the offending packet: (src, dst, proto, sport, dport)

    @property
    def frag_needed(self) -> bool:
        return self.type == 3 and self.code == 4

    @property
    def text(self) -> str:
        if self.frag_needed:
            return f"ICMP fragmentation needed (MTU {self.mtu}) from {self.src}"
        if self.type == 3:
            return f"ICMP destination unreachable (code {self.code}) from {self.src}"
        return f"ICMP type {self.type} code {self.code} from {self.src}"


class Half:
    """One direction of one connection on one interface (the sender's view of its segments)."""

    __slots__ = (
        "base", "nextseq", "nextseqtime", "lastack", "lastacktime", "window", "wscale", "dupacknum",
        "packets", "payload", "data_packets", "retrans", "fast", "spurious", "ooo", "dupacks", "zero_windows",
        "zwp", "keepalive", "lost", "gaps", "filled", "rtt", "rtt_seen", "timed_end", "timed_ts", "mss",
        "syn_time", "first_syn", "syn_number", "syns", "fin", "rst", "progress", "wl_time", "wl_since",
        "first", "last", "ev_retrans", "ev_zero", "ev_dup", "big", "big_first", "max_len", "retrans_max",
        "same_seq", "last_retrans_seq", "isn", "ev_data", "zw_since", "zw_time",
    )

    def __init__(self):
        self.base = -1
        self.nextseq = -1
        self.nextseqtime = 0.0
        self.lastack = -1
        self.lastacktime = 0.0
        self.window = -1
        self.wscale = -1
        self.dupacknum = 0
        self.packets = self.payload = self.data_packets = 0
        self.retrans = self.fast = self.spurious = self.ooo = self.dupacks = self.zero_windows = 0
        self.zwp = self.keepalive = self.lost = self.filled = 0
        self.gaps: list[list] = []  # [start, end, number, time, filled_by_number]
        self.rtt: list[float] = []
        self.rtt_seen = 0
        self.timed_end = -1
        self.timed_ts = 0.0
        self.mss = None
        self.syn_time = self.first_syn = None
        self.syn_number = None
        self.syns = 0
        self.fin = None  # (number, time)
        self.rst = None
        self.progress = None  # time the peer's ACK last advanced over this half's data
        self.wl_time = 0.0
        self.wl_since = None
        self.first = self.last = None
        self.ev_retrans: list[tuple] = []  # (number, time, rel seq, length, kind, filled a hole)
        self.ev_zero: list[tuple] = []
        self.ev_dup: list[tuple] = []
        self.ev_data: list[tuple] = []  # first data segments (number, time, rel seq, length, ip length)
        self.big: dict[int, int] = {}  # ip length -> segments, for lengths above BIG
        self.big_first: list[tuple] = []  # (number, time, ip length)
        self.max_len = 0
        self.retrans_max = 0  # most transmissions of one sequence number
        self.same_seq = 0
        self.last_retrans_seq = None
        self.isn = None
        self.zw_since = None  # this half's receive window has been closed since
        self.zw_time = 0.0  # seconds it was closed

    def zero_window_time(self, end: float) -> float:
        return self.zw_time + (end - self.zw_since if self.zw_since is not None else 0.0)

    @property
    def retransmissions(self) -> int:
        return self.retrans + self.fast + self.spurious

    def outstanding(self, peer: Half) -> int:
        if self.nextseq < 0:
            return 0
        acked = peer.lastack if peer.lastack >= 0 else 0
        return max(0, self.nextseq - acked)


class Side:
    """A TCP connection as seen on one interface; half 0 is the client's (the SYN's sender)."""

    __slots__ = ("iface", "client", "server", "h", "first_rtt", "synack_time", "ack_time", "syn_for_rtt",
                 "first", "icmp", "number_first", "scaled")

    def __init__(self, iface: int, client: tuple, server: tuple, time: float, number: int):
        self.iface = iface
        self.client, self.server = client, server  # (address text, port)
        self.h = (Half(), Half())
        self.first_rtt = 0.0
        self.synack_time = self.ack_time = None
        self.syn_for_rtt = None
        self.first = time
        self.number_first = number
        self.icmp: list[Icmp] = []
        self.scaled = False

    @property
    def last(self) -> float:
        return max(h.last for h in self.h if h.last is not None)

    @property
    def packets(self) -> int:
        return self.h[0].packets + self.h[1].packets

    @property
    def tuple(self) -> tuple:
        return (self.client[0], self.client[1], self.server[0], self.server[1])

    @property
    def handshake(self) -> dict | None:
        c = self.h[0]
        if c.syn_time is None:
            return None
        out = {"syn": c.first_syn, "syn_ack": self.synack_time, "ack": self.ack_time, "syns": c.syns,
               "syn_acks": self.h[1].syns}
        out["to_server"] = (self.synack_time - self.syn_for_rtt) if self.synack_time is not None \
            and self.syn_for_rtt is not None else None
        out["to_client"] = (self.ack_time - self.synack_time) if self.ack_time is not None \
            and self.synack_time is not None else None
        out["initial_rtt"] = self.first_rtt or None
        return out

    def segment(self, d: int, number: int, ts: float, seq: int, ack: int, flags: int, win: int, seglen: int,
                ip_len: int, buf, toff: int, thl: int) -> None:
        h = self.h[d]
        r = self.h[1 - d]
        h.packets += 1
        h.last = ts
        if h.first is None:
            h.first = ts
        if h.base < 0:
            h.base = seq
            h.isn = seq
        s = (seq - h.base) & _M
        if s > _H:
            s -= _W
        if flags & ACK:
            if r.base < 0:
                r.base = ack
            a = (ack - r.base) & _M
            if a > _H:
                a -= _W
        else:
            a = -1
        if flags & SYN:
            self._syn(h, r, d, number, ts, flags, buf, toff, thl, win)
            wnd = win
        elif self.scaled:
            wnd = win << h.wscale
        else:
            wnd = win
        if ip_len > BIG:
            if ip_len > h.max_len:
                h.max_len = ip_len
            h.big[ip_len] = h.big.get(ip_len, 0) + 1
            if len(h.big_first) < EVIDENCE:
                h.big_first.append((number, ts, ip_len))
        nxt = h.nextseq
        zwp = keepalive = False
        if seglen == 1 and s == nxt and r.window == 0:
            zwp = True
            h.zwp += 1
        else:
            if win == 0 and not flags & (RST | FIN | SYN):
                if h.zw_since is None:
                    h.zw_since = ts
                h.zero_windows += 1
                if len(h.ev_zero) < EVIDENCE:
                    h.ev_zero.append((number, ts))
            if nxt >= 0 and s > nxt and not flags & RST:
                h.lost += 1
                if len(h.gaps) < MAX_GAPS:
                    h.gaps.append([nxt, s, number, ts, None])
            if seglen <= 1 and not flags & (FIN | SYN | RST) and nxt - 1 == s:
                keepalive = True
                h.keepalive += 1
            elif (seglen == 0 and wnd and wnd == h.window and s == nxt and a == h.lastack
                  and not flags & (SYN | FIN | RST)):
                h.dupacks += 1
                h.dupacknum += 1
                if len(h.ev_dup) < EVIDENCE:
                    h.ev_dup.append((number, ts))
        if not zwp and not keepalive and (seglen > 0 or flags & (SYN | FIN)) and nxt >= 0 and s < nxt:
            if ts - r.lastacktime < 0.02 and r.dupacknum >= 2 and r.lastack == s:
                kind = "fast"
                h.fast += 1
            elif ts - h.nextseqtime < (self.first_rtt or 0.003) and nxt != s + seglen:
                kind = "ooo"
                h.ooo += 1
            elif seglen > 0 and r.lastack >= 0 and s + seglen <= r.lastack:
                kind = "spurious"
                h.spurious += 1
            else:
                kind = "retrans"
                h.retrans += 1
            filled = False
            for gap in h.gaps:
                if gap[0] <= s < gap[1]:  # a repair of this hole (a hole may take several segments)
                    if gap[4] is None:
                        gap[4] = number
                    filled = True
                    h.filled += 1
                    break
            if kind != "ooo":
                if s == h.last_retrans_seq:
                    h.same_seq += 1
                    if h.same_seq + 1 > h.retrans_max:
                        h.retrans_max = h.same_seq + 1
                else:
                    h.last_retrans_seq = s
                    h.same_seq = 1
                    if h.retrans_max < 2:
                        h.retrans_max = 2
            if len(h.ev_retrans) < EVIDENCE:
                h.ev_retrans.append((number, ts, s, seglen, ip_len, kind, filled))
            if h.timed_end >= 0 and s < h.timed_end:
                h.timed_end = -1  # Karn: no RTT sample from a retransmitted segment
        end = s + seglen + (1 if flags & (SYN | FIN) else 0)
        if (nxt < 0 or end > nxt) and not zwp:
            h.nextseq = end
            h.nextseqtime = ts
            if seglen and h.timed_end < 0:
                h.timed_end = end
                h.timed_ts = ts
        if seglen:
            h.payload += seglen
            h.data_packets += 1
            if len(h.ev_data) < EVIDENCE:
                h.ev_data.append((number, ts, s, seglen, ip_len))
            # receive-window limited: what is in flight fills the window the peer offered
            if h.wl_since is not None:
                h.wl_time += ts - h.wl_since
                h.wl_since = None
            if r.window > 0 and r.lastack >= 0 and h.nextseq - r.lastack + seglen > r.window:
                h.wl_since = ts
        if flags & ACK:
            if a > h.lastack:
                h.dupacknum = 0
                if r.progress is None or a > 1:
                    r.progress = ts
            if r.timed_end >= 0 and a >= r.timed_end:
                self._rtt_sample(r, ts - r.timed_ts)
            h.lastack = a
            h.lastacktime = ts
            if d == 0 and self.synack_time is not None and self.ack_time is None and not flags & SYN:
                self.ack_time = ts
                if self.syn_for_rtt is not None:
                    self.first_rtt = ts - self.syn_for_rtt
        h.window = wnd
        if win and h.zw_since is not None:
            h.zw_time += ts - h.zw_since
            h.zw_since = None
        if flags & FIN and h.fin is None:
            h.fin = (number, ts)
        if flags & RST and h.rst is None:
            h.rst = (number, ts)

    @staticmethod
    def _rtt_sample(r: Half, sample: float) -> None:
        r.rtt_seen += 1
        if len(r.rtt) < RTT_SAMPLES:
            r.rtt.append(sample)
        else:
            j = random.randrange(r.rtt_seen)
            if j < RTT_SAMPLES:
                r.rtt[j] = sample
        r.timed_end = -1

    def _syn(self, h: Half, r: Half, d: int, number, ts, flags, buf, toff, thl, win) -> None:
        h.syns += 1
        if h.first_syn is None:
            h.first_syn = ts
            h.syn_number = number
        if flags & ACK:
            if self.synack_time is None:
                self.synack_time = ts
        else:
            h.syn_time = ts
            if self.synack_time is None:
                self.syn_for_rtt = ts  # Wireshark: the most recent SYN before the SYN/ACK
        off, end = toff + 20, toff + thl
        while off < end:
            kind = buf[off]
            if kind == 0:
                break
            if kind == 1:
                off += 1
                continue
            if off + 1 >= end:
                break
            length = buf[off + 1]
            if length < 2:
                break
            if kind == 2 and length == 4:
                h.mss = (buf[off + 2] << 8) | buf[off + 3]
            elif kind == 3 and length == 3:
                h.wscale = min(buf[off + 2], 14)
            off += length
        if flags & ACK and h.wscale >= 0 and r.wscale >= 0:
            self.scaled = True
        elif flags & ACK:
            h.wscale = r.wscale = 0


@dataclass
class Analysis:
    capture: pcapio.Capture
    sides: list[Side]
    icmp: list[Icmp]
    packets: int
    per_interface: list[int]
    first: float | None
    last: float | None


_IP4 = struct.Struct("!BBHHHBBH4s4s").unpack_from
_IP4TCP = struct.Struct("!BBHHHBBH4s4sHHIIBBH").unpack_from
_IP6 = struct.Struct("!IHBB16s16s").unpack_from
_TCP = struct.Struct("!HHIIBBH").unpack_from
_U16 = struct.Struct("!H").unpack_from
_PORTS = struct.Struct("!HH").unpack_from


def analyse(capture: pcapio.Capture, flow_filter=None) -> Analysis:
    """One pass: connections by (interface, 4-tuple), and the ICMP errors.
    `flow_filter(src, dst)` (address texts), when given, keeps only matching packets."""
    conns: dict[tuple, tuple[Side, int]] = {}
    sides: list[Side] = []
    icmps: list[Icmp] = []
    interfaces = capture.interfaces
    linktypes: list[int] = []
    per_interface: list[int] = []
    names: dict[bytes, str] = {}
    first = last = None
    number = 0
    get = conns.get
    for number, ts, iface, buf, off, caplen, _origlen in capture.packets():
        if iface >= len(linktypes):
            while len(linktypes) <= iface:
                linktypes.append(interfaces[len(linktypes)].linktype if len(linktypes) < len(interfaces) else 1)
                per_interface.append(0)
        per_interface[iface] += 1
        # dumpcap writes each interface's packets in batches: times are not ordered across interfaces
        if first is None or ts < first:
            first = ts
        if last is None or ts > last:
            last = ts
        lt = linktypes[iface]
        end = off + caplen
        if lt == 1:
            etype = (buf[off + 12] << 8) | buf[off + 13] if caplen >= 14 else 0
            off += 14
            while etype == 0x8100 or etype == 0x88A8:
                etype = (buf[off + 2] << 8) | buf[off + 3]
                off += 4
        elif lt == 113:
            etype = (buf[off + 14] << 8) | buf[off + 15] if caplen >= 16 else 0
            off += 16
        elif lt == 276:
            etype = (buf[off] << 8) | buf[off + 1] if caplen >= 20 else 0
            off += 20
        elif lt == 101 or lt == 12 or lt == 228 or lt == 229:
            etype = 0x86DD if caplen and buf[off] >> 4 == 6 else 0x0800
        else:
            continue
        if etype == 0x0800:
            if off + 20 > end:
                continue
            if buf[off] == 0x45 and buf[off + 9] == 6 and off + 40 <= end:
                # the common case in one unpack: IPv4 without options, TCP
                (_v, _tos, ip_len, _ipid, frag, _ttl, proto, _sum, src, dst, sport, dport, seq, ack, offx, flags,
                 win) = _IP4TCP(buf, off)
                if frag & 0x1FFF:
                    continue
                l4 = off + 20
                thl = (offx >> 4) * 4
                seglen = ip_len - 20 - thl
                if seglen < 0:
                    seglen = 0
                found = get((iface, src, sport, dst, dport))
                if found is not None and flags & 0x17 == 0x10 and win and ack:
                    side, d = found
                    h = side.h[d]
                    r = side.h[1 - d]
                    if h.base >= 0 and r.base >= 0 and h.zw_since is None:
                        sq = (seq - h.base) & _M
                        a = (ack - r.base) & _M
                        if sq == h.nextseq and sq <= _H and a <= _H and seglen != 1:
                            wnd = win << h.wscale if side.scaled else win
                            if seglen or wnd != h.window or a != h.lastack:
                                # Fast path: in order, new data or an ACK that is no duplicate, neither
                                # SYN, FIN nor RST, window open — every check of Side.segment leaves such
                                # a segment alone but for these updates.
                                h.packets += 1
                                h.last = ts
                                if seglen:
                                    sq += seglen
                                    h.nextseq = sq
                                    h.nextseqtime = ts
                                    if h.timed_end < 0:
                                        h.timed_end = sq
                                        h.timed_ts = ts
                                    if ip_len > BIG:
                                        if ip_len > h.max_len:
                                            h.max_len = ip_len
                                        h.big[ip_len] = h.big.get(ip_len, 0) + 1
                                        if len(h.big_first) < EVIDENCE:
                                            h.big_first.append((number, ts, ip_len))
                                    h.payload += seglen
                                    h.data_packets += 1
                                    if len(h.ev_data) < EVIDENCE:
                                        h.ev_data.append((number, ts, sq - seglen, seglen, ip_len))
                                    if h.wl_since is not None:
                                        h.wl_time += ts - h.wl_since
                                        h.wl_since = None
                                    if r.window > 0 and r.lastack >= 0 and sq - r.lastack + seglen > r.window:
                                        h.wl_since = ts
                                if a > h.lastack:
                                    h.dupacknum = 0
                                    r.progress = ts
                                if r.timed_end >= 0 and a >= r.timed_end:
                                    Side._rtt_sample(r, ts - r.timed_ts)
                                h.lastack = a
                                h.lastacktime = ts
                                h.window = wnd
                                if d == 0 and side.ack_time is None and side.synack_time is not None:
                                    side.ack_time = ts
                                    if side.syn_for_rtt is not None:
                                        side.first_rtt = ts - side.syn_for_rtt
                                continue
                if found is None:
                    found = _new_side(conns, sides, names, flow_filter, iface, src, sport, dst, dport, flags, ts,
                                      number)
                    if found is None:
                        continue
                found[0].segment(found[1], number, ts, seq, ack, flags, win, seglen, ip_len, buf, l4, thl)
                continue
            vihl, _tos, ip_len, _ipid, frag, _ttl, proto, _sum, src, dst = _IP4(buf, off)
            ihl = (vihl & 15) * 4
            if frag & 0x1FFF:
                continue  # a later fragment: no transport header
            l4 = off + ihl
            payload_end = off + ip_len
        elif etype == 0x86DD:
            if off + 40 > end:
                continue
            _v, plen, proto, _hop, src, dst = _IP6(buf, off)
            l4 = off + 40
            ip_len = plen + 40
            payload_end = l4 + plen
        else:
            continue
        if proto == 6:
            if l4 + 20 > end:
                continue
            sport, dport, seq, ack, offx, flags, win = _TCP(buf, l4)
            thl = (offx >> 4) * 4
            seglen = payload_end - l4 - thl
            if seglen < 0:
                seglen = 0
            found = get((iface, src, sport, dst, dport))
            if found is None:
                found = _new_side(conns, sides, names, flow_filter, iface, src, sport, dst, dport, flags, ts, number)
                if found is None:
                    continue
            found[0].segment(found[1], number, ts, seq, ack, flags, win, seglen, ip_len, buf, l4, thl)
        elif (proto == 1 or proto == 58) and l4 + 8 <= end:
            icmp = _icmp(number, ts, iface, proto, buf, l4, end, src, dst, names)
            if icmp is not None:
                icmps.append(icmp)
    return Analysis(capture, sides, icmps, number, per_interface, first, last)


def _new_side(conns, sides, names, flow_filter, iface, src, sport, dst, dport, flags, ts, number):
    if flow_filter is not None and not flow_filter(_name(names, src), _name(names, dst)):
        return None
    # the first packet's sender is the client, unless it is a SYN/ACK
    if flags & (SYN | ACK) == (SYN | ACK):
        side = Side(iface, (_name(names, dst), dport), (_name(names, src), sport), ts, number)
        conns[(iface, dst, dport, src, sport)] = (side, 0)
        conns[(iface, src, sport, dst, dport)] = found = (side, 1)
    else:
        side = Side(iface, (_name(names, src), sport), (_name(names, dst), dport), ts, number)
        conns[(iface, dst, dport, src, sport)] = (side, 1)
        conns[(iface, src, sport, dst, dport)] = found = (side, 0)
    sides.append(side)
    return found


def _name(names: dict, raw: bytes) -> str:
    text = names.get(raw)
    if text is None:
        text = names[raw] = _addr(raw)
    return text


def _icmp(number, ts, iface, proto, buf, l4, end, src, dst, names) -> Icmp | None:
    itype, code = buf[l4], buf[l4 + 1]
    if proto == 1 and itype not in (3, 11, 12):
        return None
    if proto == 58 and itype not in (1, 2, 3):
        return None
    inner = l4 + 8
    mtu = None
    if proto == 1:
        if itype == 3 and code == 4:
            mtu = _U16(buf, l4 + 6)[0]
        if inner + 20 > end:
            return None
        ihl = (buf[inner] & 15) * 4
        iproto = buf[inner + 9]
        isrc, idst = bytes(buf[inner + 12:inner + 16]), bytes(buf[inner + 16:inner + 20])
        ports = inner + ihl
    else:
        if itype == 2:
            mtu = struct.unpack_from("!I", buf, l4 + 4)[0]
            itype, code = 3, 4  # reported like IPv4's frag-needed
        if inner + 40 > end:
            return None
        iproto = buf[inner + 6]
        isrc, idst = bytes(buf[inner + 8:inner + 24]), bytes(buf[inner + 24:inner + 40])
        ports = inner + 40
    sport = dport = None
    if iproto in (6, 17) and ports + 4 <= end:
        sport, dport = _PORTS(buf, ports)
    return Icmp(number, ts, iface, _name(names, src), _name(names, dst), itype, code, mtu,
                (_name(names, isrc), _name(names, idst), iproto, sport, dport))
