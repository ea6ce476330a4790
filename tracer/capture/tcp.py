"""One pass over a capture: every TCP connection as seen on each interface (a `Side`), and ICMP errors.

Streaming: the capture is read in batches (`pcapio.Capture.batches`), whose
headers are decoded at once (`decode`); per connection only running state is
kept, and it is bounded (counters, at most `EVIDENCE` example packets per kind,
at most `MAX_GAPS` holes, `MAX_SACKED` SACKed ranges, reservoirs of RTT
samples), so memory grows with the number of connections, not of packets.

The per-segment classification (`Side.segment`) follows Wireshark 4.0's
`tcp.analysis.*` (packet-tcp.c, tcp_analyze_sequence_number) so that the counts
can be checked against tshark: zero-window probe, zero window, previous segment
lost (a hole), keep-alive, duplicate ACK, and for a segment below the highest
sequence seen: spurious (already acknowledged), fast retransmission (≥ 2
duplicate ACKs for it within 20 ms), out-of-order (within the handshake RTT, or
3 ms, of the highest segment) or retransmission. The segments it would leave
alone but for running updates (in order, no SYN/FIN/RST, window open: most of
them) are applied in bulk (`_Batch`), to exactly the same state. Sequence
numbers are relative to the first seen in each direction (transfers up to 2 GiB
per connection and direction).

Beyond Wireshark's flags: TCP timestamps as a second RTT source (ePPing's
pairing of TSval and TSecr, `Half.ts_rtt`), and SACK (the ranges the receiver
reported, the holes it signalled, retransmissions of data it had: no loss).
"""

from __future__ import annotations

import gc
import heapq
import random
import socket
import struct
from bisect import bisect_left
from dataclasses import dataclass

from tracer.capture import pcapio

FIN, SYN, RST, PSH, ACK = 0x01, 0x02, 0x04, 0x08, 0x10
EVIDENCE = 20
# tshark compares intervals between stamps exactly, in nanoseconds; packet times here are floats
# since the capture's first second (pcapio), exact to far below a nanosecond for days of capture.
# Half a nanosecond between two intervals is then the difference of their whole nanoseconds.
STAMP_SLACK = 0.5e-9
MAX_GAPS = 256
# IP IDs: Linux numbers a TCP socket's packets in sending order (per socket, IPv4), so a segment
# below the highest sequence number whose ID is older than the highest segment's is an original
# that arrived late (reordered), not a retransmission. Trusted once a direction's IDs have gone up
# by 1 … ID_STEP_MAX (a segmentation offload's burst, or packets the capture missed) from packet
# to packet at least ID_TRUST times, and otherwise at most one time in ID_TRUST — not counting
# steps back by up to ID_BACK_MAX (reordering itself). Random IDs rarely step either way, zero ones never.
ID_STEP_MAX = 64
ID_BACK_MAX = 1024
ID_TRUST = 8
RTT_SAMPLES = 2048
MAX_SACKED = 32
MAX_RESENT = 256
MAX_TS_PENDING = 1024
SHORT_RUN = 2  # runs of fast segments this short go through Side.segment (cheaper than _Batch._apply)
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


class Samples(list):
    """At most RTT_SAMPLES values, a uniform sample of all those added (reservoir sampling,
    seeded: the same report every run)."""

    __slots__ = ("seen", "_rng", "_seed")

    def __init__(self, seed: int = 0):
        super().__init__()
        self.seen = 0
        self._rng = None
        self._seed = seed

    def add_all(self, values: list[float]) -> None:
        """add() each of `values`, in order."""
        room = max(0, RTT_SAMPLES - len(self))
        self.extend(values[:room])
        self.seen += min(room, len(values))
        for value in values[room:]:
            self.add(value)

    def add(self, value: float) -> None:
        self.seen += 1
        if len(self) < RTT_SAMPLES:
            self.append(value)
            return
        if self._rng is None:
            self._rng = random.Random(self._seed)
        j = self._rng.randrange(self.seen)
        if j < RTT_SAMPLES:
            self[j] = value


class Half:
    """One direction of one connection on one interface (the sender's view of its segments)."""

    __slots__ = (
        "base", "nextseq", "nextseqtime", "lastack", "lastacktime", "window", "wscale", "dupacknum",
        "packets", "payload", "data_packets", "retrans", "fast", "spurious", "ooo", "dupacks", "zero_windows",
        "zwp", "keepalive", "lost", "gaps", "filled", "rtt", "timed_end", "timed_ts", "mss",
        "syn_time", "first_syn", "syn_number", "syns", "fin", "rst", "progress", "wl_time", "wl_since",
        "first", "last", "ev_retrans", "ev_zero", "ev_dup", "big", "big_first", "max_len", "retrans_max",
        "same_seq", "last_retrans_seq", "isn", "ev_data", "zw_since", "zw_time", "ts_rtt", "ts_base", "ts_newest",
        "ts_pending", "sacked", "sack_high", "sack_holes", "sacked_retrans", "dsacks", "resent", "last_id",
        "high_id", "id_up", "id_other", "late", "early",
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
        self.rtt = Samples()  # data/ACK pairs: one timed segment per round trip (Karn's rule)
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
        self.ev_retrans: list[tuple] = []  # (number, time, rel seq, length, ip length, kind, filled a hole)
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
        # TCP timestamps (RFC 7323) as a second RTT source, paired as ePPing does: the first
        # segment carrying a TSval newer than all before is timed, the peer's first segment
        # echoing it (TSecr) stops the timer
        self.ts_rtt = Samples()
        self.ts_base = -1  # the first TSval this direction sent
        self.ts_newest = -1  # the newest since, relative to ts_base
        self.ts_pending: dict[int, float] = {}  # TSval -> when it passed, not echoed yet
        # SACK (RFC 2018): what the peer reported received above its cumulative ACK
        self.sacked: list[list[int]] = []  # [start, end) of this direction's data, merged, at most MAX_SACKED
        self.sack_high = -1  # the highest SACKed sequence number
        self.sack_holes = 0  # gaps the peer signalled: a SACK block above all acknowledged and SACKed data
        self.sacked_retrans = 0  # retransmissions of data the peer had SACKed: not lost
        # D-SACK (RFC 2883): the peer received data of this direction twice. Counted in retransmitted
        # segments, since one block reports a whole run of them re-sent by a timer or RACK
        self.dsacks = 0
        self.resent: list[list] = []  # [start, end, already counted spurious] of retransmissions, the last MAX_RESENT
        self.last_id = -1  # the IP ID of this direction's last packet (-1: none, IPv6)
        self.high_id = -1  # … of the segment that reached the highest sequence number
        self.id_up = self.id_other = 0  # ID steps: up by 1 … ID_STEP_MAX; neither that nor back a little
        self.late = 0  # "retransmissions" that are originals arriving late (their IP ID is older)
        self.early = 0  # "out-of-order" segments that are re-sent (their IP ID is newer): see `resends`

    def zero_window_time(self, end: float) -> float:
        return self.zw_time + (end - self.zw_since if self.zw_since is not None else 0.0)

    @property
    def retransmissions(self) -> int:
        return self.retrans + self.fast + self.spurious

    @property
    def rtt_seen(self) -> int:
        return self.rtt.seen

    def sack(self, acked: int, blocks) -> None:
        """The peer's SACK blocks ((start, end), relative) with its cumulative ACK `acked`. A first
        block at or below the ACK, or inside the second block, is a D-SACK (RFC 2883): a duplicate."""
        if blocks:
            start, end = blocks[0]
            if end <= acked or (len(blocks) > 1 and blocks[1][0] <= start and end <= blocks[1][1]):
                self._dsack(start, end)
        for start, end in blocks:
            if end <= start:
                continue
            if start > max(acked, self.sack_high):
                self.sack_holes += 1
            self.sack_high = max(self.sack_high, end)
            merged = [start, end]
            kept = []
            for r in self.sacked:
                if r[1] < merged[0] or r[0] > merged[1]:
                    kept.append(r)
                else:
                    merged = [min(r[0], merged[0]), max(r[1], merged[1])]
            kept.append(merged)
            kept.sort()
            self.sacked = [r for r in kept if r[1] > acked][-MAX_SACKED:]

    def _dsack(self, start: int, end: int) -> None:
        """A D-SACK of [start, end): each retransmission inside it was not needed (one not seen here,
        or a duplicate the network made, counts as one)."""
        inside = [r for r in self.resent if start <= r[0] and r[1] <= end]
        self.dsacks += sum(not r[2] for r in inside) if inside else 1
        if inside:
            self.resent = [r for r in self.resent if not (start <= r[0] and r[1] <= end)]

    def resend(self, start: int, end: int, counted: bool) -> None:
        """A retransmission of [start, end) passed; `counted`: already known not needed (SACKed)."""
        self.resent.append([start, end, counted])
        if len(self.resent) > MAX_RESENT:
            del self.resent[0]

    @property
    def resends(self) -> int:
        """Segments sent again: tshark's retransmissions, and the ones it calls out-of-order (sent
        within the RTT of the highest segment) whose IP ID is newer than the highest segment's —
        re-sent, not reordered: on a LAN a sender repairs a loss within that time."""
        return self.retransmissions + self.early

    @property
    def spurious_retransmissions(self) -> int:
        """Retransmissions the peer shows it did not need — of data it had SACKed, or that it
        reported receiving twice (a segment delayed, not lost, re-sent by a timer or RACK) — and
        originals that arrived late, which tshark counts as retransmissions too."""
        return min(self.resends, self.sacked_retrans + self.dsacks + self.late)

    @property
    def ids_in_order(self) -> bool:
        """Whether this direction's IP IDs count its packets in sending order."""
        return self.id_up >= ID_TRUST and self.id_other * ID_TRUST <= self.id_up

    def sent_before_highest(self, ip_id: int) -> bool | None:
        """Whether the segment numbered `ip_id` was sent before the one that reached the highest
        sequence number (an original arriving late) or after it (a re-send); None: the IDs do not say."""
        if ip_id < 0 or self.high_id < 0 or not self.ids_in_order or ip_id == self.high_id:
            return None
        return 0 < (self.high_id - ip_id) & 0xFFFF < 0x8000

    def was_sacked(self, start: int, end: int) -> bool:
        return any(r[0] <= start and end <= r[1] for r in self.sacked)

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
                ip_len: int, buf, toff: int, thl: int, sack=(), ip_id: int = -1) -> None:
        """One segment from direction d; `sack`: its SACK blocks as sequence numbers ((left, right), …);
        `ip_id`: IPv4's identification (-1 for IPv6)."""
        h = self.h[d]
        r = self.h[1 - d]
        h.packets += 1
        if ip_id >= 0 and h.last_id >= 0:
            _id_step(h, ip_id)
        h.last_id = ip_id
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
        end = s + seglen + (1 if flags & (SYN | FIN) else 0)
        kind = None
        if not zwp and not keepalive and (seglen > 0 or flags & (SYN | FIN)) and nxt >= 0 and s < nxt:
            # in the order of Wireshark 4.0 (tcp_analyze_sequence_number): already acknowledged first
            if seglen > 0 and r.lastack >= 0 and s + seglen <= r.lastack:
                kind = "spurious"
                h.spurious += 1
            elif seglen > 1 and s == nxt - 1:
                pass  # new data after a zero-window probe's byte
            elif ts - r.lastacktime < 0.02 - STAMP_SLACK and r.dupacknum >= 2 and r.lastack == s:
                kind = "fast"
                h.fast += 1
            # Wireshark's time since the highest segment is unsigned: one stamped a hair before it
            # (captures merged from several interfaces) is not out of order, but retransmitted.
            # STAMP_SLACK: tshark compares the stamps exactly, these floats are not.
            elif (-STAMP_SLACK <= ts - h.nextseqtime < (self.first_rtt or 0.003) - STAMP_SLACK
                  and nxt != end):
                kind = "ooo"
                h.ooo += 1
                if h.sent_before_highest(ip_id) is False:
                    kind = "retrans (early)"
                    h.early += 1
            else:
                kind = "retrans"
                h.retrans += 1
        if kind is not None:
            late = kind != "ooo" and h.sent_before_highest(ip_id) is True
            filled = False
            for i, gap in enumerate(h.gaps):
                if gap[0] <= s < gap[1]:
                    if late or kind == "ooo":  # reordering, not loss: what this original covers is no hole
                        _close_hole(h.gaps, i, s, s + seglen)
                        break
                    if gap[4] is None:  # a repair of this hole (a hole may take several segments)
                        gap[4] = number
                    filled = True
                    h.filled += 1
                    break
            if late:
                h.late += 1
            sacked = bool(kind != "ooo" and seglen and not filled and not late and h.was_sacked(s, s + seglen))
            if sacked:
                h.sacked_retrans += 1  # the peer had it: not lost
            if kind != "ooo" and not late and seglen:
                h.resend(s, s + seglen, sacked)
            if kind != "ooo" and not late:
                if s == h.last_retrans_seq:
                    h.same_seq += 1
                    if h.same_seq + 1 > h.retrans_max:
                        h.retrans_max = h.same_seq + 1
                else:
                    h.last_retrans_seq = s
                    h.same_seq = 1
                    if h.retrans_max < 2:
                        h.retrans_max = 2
            if not sacked and not late and len(h.ev_retrans) < EVIDENCE:  # loss evidence: SACKed data had arrived
                h.ev_retrans.append((number, ts, s, seglen, ip_len, kind, filled))
            if h.timed_end >= 0 and s < h.timed_end:
                h.timed_end = -1  # Karn: no RTT sample from a retransmitted segment
        if (nxt < 0 or end > nxt) and not zwp:
            h.nextseq = end
            h.nextseqtime = ts
            h.high_id = ip_id
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
            if sack and r.base >= 0:
                r.sack(a, _relative(sack, r.base))
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
        r.rtt.add(sample)
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


_U16 = struct.Struct("!H").unpack_from
_PORTS = struct.Struct("!HH").unpack_from


def analyse(capture: pcapio.Capture, flow_filter=None, *, one_by_one: bool = False) -> Analysis:
    """One pass: connections by (interface, 4-tuple), and the ICMP errors.
    `flow_filter(src, dst)` (address texts), when given, keeps only matching packets.
    `one_by_one`: every segment through Side.segment — the reference the bulk runs are tested against.

    The capture is read in batches; each batch's headers are decoded at once (`decode`), its
    segments grouped by connection (`_dispatch`) and each connection's segments applied (`_Batch`)."""
    import numpy as np

    from tracer.capture import decode

    known: dict[tuple, tuple[Side, int]] = {}  # (iface, lower endpoint, higher endpoint) -> (side, client's)
    rejected: set[tuple] = set()
    sides: list[Side] = []
    icmps: list[Icmp] = []
    names: dict[bytes, str] = {}
    addresses, reassembly = decode.Addresses(), decode.Reassembly()
    per_interface: list[int] = []
    first = last = None
    packets = 0
    collecting = gc.isenabled()
    gc.disable()  # nothing here makes reference cycles; the collector would walk the batch's lists again and again
    try:
        for batch in capture.batches():
            packets = batch.first + len(batch.offset) - 1
            counts = np.bincount(batch.iface).tolist()
            per_interface += [0] * (len(counts) - len(per_interface))
            for iface, count in enumerate(counts):
                per_interface[iface] += count
            # dumpcap writes each interface's packets in batches: times are not ordered across interfaces
            low, high = float(batch.time.min()), float(batch.time.max())
            first = low if first is None or low < first else first
            last = high if last is None or high > last else last
            linktypes = [i.linktype for i in capture.interfaces] + [1] * max(0, len(counts) - len(capture.interfaces))
            segments, icmp_rows = decode.decode(batch, linktypes, addresses, reassembly)
            for row, proto, l4, end, src, dst in icmp_rows:
                icmp = _icmp(batch.first + row, float(batch.time[row]), int(batch.iface[row]), proto, batch.data, l4,
                             end, src, dst, names)
                if icmp is not None:
                    icmps.append(icmp)
            if len(segments.number):
                _dispatch(segments, batch.data, known, rejected, sides, addresses, flow_filter, one_by_one)
    finally:
        if collecting:
            gc.enable()
    return Analysis(capture, sides, icmps, packets, per_interface, first, last)


def _dispatch(seg, data, known, rejected, sides, addresses, flow_filter, one_by_one: bool) -> None:
    """Group one batch's segments by connection (both directions, per interface) and advance each."""
    import numpy as np

    ep_src = (seg.src << 16) | seg.sport
    ep_dst = (seg.dst << 16) | seg.dport
    lower, higher = np.minimum(ep_src, ep_dst), np.maximum(ep_src, ep_dst)
    order = np.lexsort((higher, lower, seg.iface))  # stable: each connection's segments stay in packet order
    s_if, s_lo, s_hi = seg.iface[order], lower[order], higher[order]
    change = np.flatnonzero((s_if[1:] != s_if[:-1]) | (s_lo[1:] != s_lo[:-1]) | (s_hi[1:] != s_hi[:-1])) + 1
    starts = np.concatenate([[0], change]).tolist()
    stops = starts[1:] + [len(order)]
    heads = order[starts]
    groups: list[Side | None] = [None] * len(starts)
    client = [0] * len(starts)
    # new connections are created in the order of their first packets (the order of the report)
    for g in np.argsort(heads, kind="stable").tolist():
        head = int(heads[g])
        key = (int(seg.iface[head]), int(lower[head]), int(higher[head]))
        found = known.get(key)
        if found is None:
            if key in rejected:
                continue
            src, dst = addresses.text(int(seg.src[head])), addresses.text(int(seg.dst[head]))
            if flow_filter is not None and not flow_filter(src, dst):
                rejected.add(key)
                continue
            iface, time, number = key[0], float(seg.time[head]), int(seg.number[head])
            sport, dport = int(seg.sport[head]), int(seg.dport[head])
            # the first packet's sender is the client, unless it is a SYN/ACK
            if int(seg.flags[head]) & (SYN | ACK) == (SYN | ACK):
                found = (Side(iface, (dst, dport), (src, sport), time, number), int(ep_dst[head]))
            else:
                found = (Side(iface, (src, sport), (dst, dport), time, number), int(ep_src[head]))
            known[key] = found
            sides.append(found[0])
        groups[g], client[g] = found
    _Batch(seg, order, starts, stops, groups, np.repeat(np.array(client, np.int64), np.diff(starts + [len(order)])),
           ep_src[order], data, one_by_one).run()


class _Batch:
    """One batch's segments in connection order (`order`: group g is rows starts[g]:stops[g]).

    Per connection, the handshake (up to the last SYN, and until both initial sequence numbers
    are known) goes through Side.segment one segment at a time. After it, most segments change
    nothing but running state (counters, next sequence number, last ACK and window, the RTT
    timer): in order, no SYN, FIN or RST, window open — new data, a new ACK or a duplicate ACK.
    These *fast* segments are applied in bulk, in runs between the others (retransmissions,
    holes, zero windows, FIN, RST…), which go through Side.segment one by one, so each is
    classified against exactly the state the one-by-one analysis would have.

    A segment is fast iff its sequence number is its sender's next, its flags are ACK (and
    PSH) only and its window is open. Against the previous segment of the same connection and
    direction this is one vectorised test (`chained`); a segment whose predecessor was not fast
    is tested against the connection's state when its turn comes (`_runs`).
    """

    def __init__(self, seg, order, starts, stops, groups, client_ep, ep_src, data, one_by_one: bool):
        import numpy as np

        self.seg, self.data, self.groups, self.starts, self.stops = seg, data, groups, starts, stops
        self.order, self.one_by_one = order, one_by_one
        cols = {name: getattr(seg, name)[order] for name in ("number", "time", "seq", "ack", "flags", "win",
                                                               "seglen", "ip_len", "tsval", "tsecr", "ip_id")}
        self.cols = cols
        self.extra, self.sack = {}, {}
        if seg.extra or seg.sack:
            where = np.empty(len(order), np.int64)
            where[order] = np.arange(len(order))
            self.extra = {int(where[row]): value for row, value in seg.extra.items()}
            self.sack = {int(where[row]): blocks for row, blocks in seg.sack.items()}
        self.d = (ep_src != client_ep).astype(np.int64)

    def run(self) -> None:
        import numpy as np

        cols, d, n = self.cols, self.d, len(self.order)
        flags, seglen = cols["flags"], cols["seglen"]
        index = np.arange(n)
        starts = np.array(self.starts, np.int64)
        ack_flag = (flags & ACK) != 0
        last_syn = np.maximum.reduceat(np.where(flags & SYN, index, -1), starts).tolist()
        sets = [np.minimum.reduceat(np.where((d == x) | ((d != x) & ack_flag), index, n), starts).tolist()
                for x in (0, 1)]
        # the handshakes, one segment at a time
        begin = []
        for g, side in enumerate(self.groups):
            start, stop = self.starts[g], self.stops[g]
            if side is None:
                begin.append(stop)
                continue
            end = max(start, last_syn[g] + 1)
            for x in (0, 1):
                if side.h[x].base < 0:
                    end = max(end, sets[x][g] + 1)
            end = min(end, stop)
            for k in range(start, end):
                self._one(side, k)
            begin.append(end)
        self.begin = begin
        # the stretches after them, as arrays
        sizes = np.diff(np.array(self.starts + [n], np.int64))
        group = np.repeat(np.arange(len(self.groups)), sizes)
        inside = index >= np.repeat(np.array(begin, np.int64), sizes)
        # each direction's state after its handshake, by lane (group * 2 + direction)
        state = []
        for side in self.groups:
            if side is None:
                state += ((0, 0, -1, -1), (0, 0, -1, -1))
            else:
                state += ((h.base, max(h.wscale, 0) if side.scaled else 0, h.window, h.lastack) for h in side.h)
        base, shift, window, lastack = np.array(state, np.int64).reshape(-1, 4).T.copy()
        lane = group * 2 + d
        sq = (cols["seq"] - base[lane]) & _M
        sq = np.where(sq > _H, sq - _W, sq)
        a = (cols["ack"] - base[lane ^ 1]) & _M
        a = np.where(a > _H, a - _W, a)
        win = cols["win"]
        wnd = win << shift[lane]
        plain = ((flags & 0x17) == ACK) & (win != 0) & (cols["ack"] != 0) & (seglen != 1) & (sq >= 0) & (a >= 0)

        # each connection's stretch, direction by direction: rows of (group, direction) in order
        by_lane = np.flatnonzero(inside)
        by_lane = by_lane[_stable_order(lane[by_lane], 2 * len(self.groups))]
        lanes = lane[by_lane]
        same = lanes[1:] == lanes[:-1]
        p, q = by_lane[:-1][same], by_lane[1:][same]
        chained = np.zeros(n, bool)
        chained[q] = sq[q] == sq[p] + seglen[p]
        prev = np.full(n, -1, np.int64)
        following = np.full(n, n, np.int64)
        prev[q], following[p] = p, q
        first_of_lane = np.searchsorted(lanes, np.arange(2 * len(self.groups) + 1))
        self.lane_bounds = first_of_lane.tolist()
        m = np.arange(len(by_lane))
        lane_start = first_of_lane[lanes] if len(lanes) else lanes
        is_data = seglen[by_lane] > 0
        # IP ID steps from each packet's predecessor in its lane (within the batch): running counts
        # of the steps up (low 32 bits) and of the others (high bits), as _id_step counts them
        ids = cols["ip_id"][by_lane]
        previous = np.roll(ids, 1)
        step = (ids - previous) & 0xFFFF
        known = (m > lane_start) & (ids >= 0) & (previous >= 0)
        up = known & (step > 0) & (step <= ID_STEP_MAX)
        other = known & ((step == 0) | ((step > ID_STEP_MAX) & (step < 0x10000 - ID_BACK_MAX)))
        self.lane_ids = ids
        self.id_steps = np.concatenate([[0], np.cumsum(up + (other.astype(np.int64) << 32))])
        self.by_lane = by_lane.tolist()
        # (the arrays read at a few positions per run stay arrays, read with .item())
        self.sums = np.concatenate([[0], np.cumsum(seglen[by_lane])])
        self.counts = np.concatenate([[0], np.cumsum(is_data)])
        self.last_data = np.maximum.accumulate(np.where(is_data, m, -1)) if len(m) else m
        # an ACK that advances over the last one this direction sent
        carries = ack_flag[by_lane]
        last_carrier = np.maximum.accumulate(np.where(carries, m, -1)) if len(m) else m
        before = np.concatenate([[-1], last_carrier[:-1]]) if len(m) else m
        before_ack = np.where(before >= lane_start, a[by_lane[np.maximum(before, 0)]], lastack[lanes])
        advances = carries & (a[by_lane] > before_ack)
        self.last_adv = np.maximum.accumulate(np.where(advances, m, -1)) if len(m) else m
        # a duplicate ACK: no data, the same window and ACK as this direction's last
        window_before = np.where(m - 1 >= lane_start, wnd[by_lane[np.maximum(m - 1, 0)]], window[lanes])
        duplicate = (seglen[by_lane] == 0) & (wnd[by_lane] == window_before) & (a[by_lane] == before_ack)
        self.dups = np.concatenate([[0], np.cumsum(duplicate)])
        self.dup_rows = by_lane[duplicate].tolist()
        self.dup_bounds = np.searchsorted(lanes[duplicate], np.arange(2 * len(self.groups) + 1)).tolist()
        # the fast segments with SACK blocks update the sender's record of what the peer holds
        sacks = np.zeros(n, bool)
        sacks[list(self.sack)] = True
        sacks = sacks[by_lane]
        self.sack_rows = by_lane[sacks].tolist()
        self.sack_bounds = np.searchsorted(lanes[sacks], np.arange(2 * len(self.groups) + 1)).tolist()
        # for the RTT timers: the running maximum of each lane's ACKs (a lane's own, from its start)
        offset = (lanes.astype(np.int64) << 33) + (1 << 31)
        self.acks_max = (np.maximum.accumulate(a[by_lane] + offset) - offset).tolist() if len(m) else []
        # receive-window limited: what the peer offered and acknowledged before each data segment
        data_rows, data_lanes = by_lane[is_data], lanes[is_data]
        self.data_bounds = np.searchsorted(data_lanes, np.arange(2 * len(self.groups) + 1)).tolist()
        self.data_rows = data_rows.tolist()
        large = is_data & (cols["ip_len"][by_lane] > BIG)
        self.big_rows = by_lane[large].tolist()
        self.big_bounds = np.searchsorted(lanes[large], np.arange(2 * len(self.groups) + 1)).tolist()
        # the peer's last segment (and last ACK) before each data segment since the handshake, else its state
        begin_row = np.repeat(np.array(begin, np.int64), sizes)[data_rows]
        peer_lane = data_lanes ^ 1
        peer_last, peer_last_ack = [], []
        for x in (0, 1):
            peer_last.append(np.maximum.accumulate(np.where(inside & (d == x), index, -1))[data_rows])
            peer_last_ack.append(np.maximum.accumulate(np.where(inside & (d == x) & ack_flag, index, -1))[data_rows])
        sender = d[data_rows]
        last_peer = np.where(sender == 0, peer_last[1], peer_last[0])
        last_peer_ack = np.where(sender == 0, peer_last_ack[1], peer_last_ack[0])
        before_win = np.where(last_peer >= begin_row, wnd[np.maximum(last_peer, 0)], window[peer_lane])
        before_acked = np.where(last_peer_ack >= begin_row, a[np.maximum(last_peer_ack, 0)], lastack[peer_lane])
        cond = (before_win > 0) & (before_acked >= 0) & (sq[data_rows] + 2 * seglen[data_rows] - before_acked
                                                          > before_win)
        t = cols["time"][data_rows]
        gaps = np.where(cond[:-1] & (data_lanes[1:] == data_lanes[:-1]), t[1:] - t[:-1], 0.0)
        self.cond = cond
        self.wl_sums = np.concatenate([[0.0], np.cumsum(gaps)])

        candidates = np.flatnonzero(inside if self.one_by_one else inside & ~(plain & chained))
        cuts = np.searchsorted(candidates, starts).tolist() + [len(candidates)]
        candidates = candidates.tolist()
        self.plain, self.prev, self.following, self.wnd = plain, prev, following, wnd
        self.sq, self.a, self.seglen, self.ts = sq, a, seglen, cols["time"]
        slow = []
        for g, side in enumerate(self.groups):
            if side is not None and begin[g] < self.stops[g]:
                slow += self._runs(g, side, candidates[cuts[g]:cuts[g + 1]])
        self._timestamps(group)
        # the sizes of the fast data segments (order does not matter: counts and the largest)
        fast = inside.copy()
        fast[slow] = False
        ip_len = cols["ip_len"]
        big = np.flatnonzero(fast & (seglen > 0) & (ip_len > BIG))
        if len(big):
            keys, counts = np.unique((group[big] * 2 + d[big]) << 17 | ip_len[big], return_counts=True)
            for key, count in zip(keys.tolist(), counts.tolist(), strict=True):
                h, length = self.groups[key >> 18].h[(key >> 17) & 1], key & 0x1FFFF
                h.big[length] = h.big.get(length, 0) + count
                if length > h.max_len:
                    h.max_len = length

    def _timestamps(self, group) -> None:
        """RTT samples from TCP timestamps, for every connection of the batch at once: each
        direction's segments that carry a TSval other than the one before are timed (or were,
        in an earlier batch: `ts_pending`), the first segment of the peer echoing that TSval
        (TSecr) afterwards stops the timer."""
        import numpy as np

        cols, d, n = self.cols, self.d, len(self.order)
        tsval, tsecr = cols["tsval"], cols["tsecr"]
        alive = np.array([s is not None for s in self.groups])[group]
        rows = np.flatnonzero(alive & (tsval >= 0))
        if not len(rows):
            return
        lane = group[rows] * 2 + d[rows]
        by_lane = _stable_order(lane, 2 * len(self.groups))
        rows, lane = rows[by_lane], lane[by_lane]
        value = tsval[rows]
        starts = np.flatnonzero(np.concatenate([[True], lane[1:] != lane[:-1]]))
        for x, first_value in zip(lane[starts].tolist(), value[starts].tolist(), strict=True):
            half = self._half(x)
            if half.ts_base < 0:
                half.ts_base = first_value
        base = np.repeat(np.array([self._half(x).ts_base for x in lane[starts].tolist()], np.int64),
                         np.diff(np.concatenate([starts, [len(rows)]])))
        relative = (value - base) & _M
        relative = np.where(relative > _H, relative - _W, relative)
        # newer than every TSval before it in its direction (a reordered older one is not timed again)
        # (and than those of earlier batches: each lane's running maximum starts from its ts_newest)
        offset = (lane.astype(np.int64) << 33) + (1 << 31)
        newest_before = np.array([self._half(x).ts_newest for x in lane[starts].tolist()], np.int64)
        seeded = relative.copy()
        seeded[starts] = np.maximum(relative[starts], newest_before)
        newest = np.maximum.accumulate(seeded + offset) - offset
        before = np.concatenate([[-_W], newest[:-1]])
        before[starts] = newest_before
        changed = relative > before
        # the timers: earlier batches' still pending, then this batch's (position -1 sorts first)
        echo = (cols["flags"][rows] & ACK != 0) & (tsecr[rows] > 0)
        peers = np.unique(lane[echo] ^ 1).tolist()
        pending = [(x, v, t) for x in peers for v, t in self._half(x).ts_pending.items()]
        rec_lane = np.concatenate([np.array([p[0] for p in pending], np.int64), lane[changed]])
        rec_value = np.concatenate([np.array([p[1] for p in pending], np.int64), value[changed]])
        rec_time = np.concatenate([np.array([p[2] for p in pending], np.float64), cols["time"][rows[changed]]])
        rec_pos = np.concatenate([np.full(len(pending), -1, np.int64), rows[changed]])
        rec_key = (rec_lane << 32) | rec_value
        rec_key, first = np.unique(rec_key, return_index=True)
        rec_time, rec_pos, rec_lane = rec_time[first], rec_pos[first], rec_lane[first]
        # the echoes, by (timer, position): the first echo after each timer's start stops it
        echo_rows = rows[echo]
        echo_key = ((lane[echo] ^ 1) << 32) | tsecr[echo_rows]
        keys, rank = np.unique(echo_key, return_inverse=True)
        stamp = np.sort(rank * (n + 1) + echo_rows)
        at = np.minimum(np.searchsorted(keys, rec_key), max(len(keys) - 1, 0))
        known = (len(keys) > 0) & (keys[at] == rec_key) if len(keys) else np.zeros(len(rec_key), bool)
        j = np.searchsorted(stamp, at * (n + 1) + rec_pos + 1)
        later = j < len(stamp)  # (else every echo of the last key came before the timer started)
        j = np.minimum(j, len(stamp) - 1) if len(stamp) else j
        matched = known & later & (stamp[j] // (n + 1) == at) if len(stamp) else known
        stop = stamp[j] % (n + 1) if len(stamp) else j
        # the samples, each direction's in the order their echoes came
        timed = np.flatnonzero(matched)
        timed = timed[np.lexsort((stop[timed], rec_lane[timed]))]
        samples, timed_lanes = self.ts[stop[timed]] - rec_time[timed], rec_lane[timed]
        cuts = np.flatnonzero(np.concatenate([[True], timed_lanes[1:] != timed_lanes[:-1], [True]])).tolist() \
            if len(timed) else [0]
        for x, a, b in zip(timed_lanes[cuts[:-1]].tolist(), cuts[:-1], cuts[1:], strict=True):
            self._half(x).ts_rtt.add_all(samples[a:b].tolist())
        # what stays pending: an earlier batch's timer stopped now is dropped, one of this batch still
        # running is kept (the others change nothing); and each direction's last TSval
        changes = np.flatnonzero(matched == (rec_pos < 0))
        for x, key, start_time, echoed in zip(rec_lane[changes].tolist(), rec_key[changes].tolist(),
                                              rec_time[changes].tolist(), matched[changes].tolist(), strict=True):
            half = self._half(x)
            if echoed:
                half.ts_pending.pop(key & _M, None)
            elif (key & _M) not in half.ts_pending:
                half.ts_pending[key & _M] = start_time
                if len(half.ts_pending) > MAX_TS_PENDING:
                    del half.ts_pending[next(iter(half.ts_pending))]
        ends = np.concatenate([starts[1:], [len(rows)]]) - 1
        for x, last in zip(lane[starts].tolist(), newest[ends].tolist(), strict=True):
            half = self._half(x)
            half.ts_newest = max(half.ts_newest, last)

    def _half(self, lane: int) -> Half:
        return self.groups[lane >> 1].h[lane & 1]

    def _one(self, side: Side, k: int) -> None:
        cols = self.cols
        buf, toff = self.extra.get(k, (self.data, None))
        row = self.order.item(k)
        side.segment(self.d.item(k), cols["number"].item(k), cols["time"].item(k), cols["seq"].item(k),
                     cols["ack"].item(k), cols["flags"].item(k), cols["win"].item(k), cols["seglen"].item(k),
                     cols["ip_len"].item(k), buf, self.seg.l4.item(row) if toff is None else toff,
                     self.seg.thl.item(row), self.sack.get(k, ()), cols["ip_id"].item(k))

    def _runs(self, g: int, side: Side, static: list[int]) -> list[int]:
        """Group g's stretch: the runs of fast segments between the others; returns the others."""
        plain, prev, following, direction = self.plain.item, self.prev.item, self.following.item, self.d.item
        sq = self.sq.item
        pending: list[int] = []
        slow = []
        start = self.begin[g]
        i = 0
        while True:
            if pending and (i >= len(static) or pending[0] <= static[i]):
                c = heapq.heappop(pending)
                if i < len(static) and static[i] == c:
                    i += 1
            elif i < len(static):
                c = static[i]
                i += 1
            else:
                break
            h = side.h[direction(c)]
            if prev(c) < start and plain(c) and h.zw_since is None and sq(c) == h.nextseq and not self.one_by_one:
                continue  # fast: it joins the run
            self._run(g, side, start, c, slow)
            self._one(side, c)
            slow.append(c)
            start = c + 1
            if following(c) < len(self.order):
                heapq.heappush(pending, following(c))
        self._run(g, side, start, self.stops[g], slow)
        return slow

    def _run(self, g: int, side: Side, start: int, stop: int, slow: list[int]) -> None:
        """The fast segments start … stop-1 of group g: in bulk, or one by one (added to `slow`)
        when there are so few that the bulk's fixed cost would outweigh them."""
        if stop - start > SHORT_RUN:
            self._apply(g, side, start, stop)
            return
        for k in range(start, stop):
            self._one(side, k)
            slow.append(k)

    def _apply(self, g: int, side: Side, start: int, stop: int) -> None:
        """The fast segments start … stop-1 of group g, applied as Side.segment would one by one."""
        if stop <= start:
            return
        ts, by_lane, bounds = self.ts.item, self.by_lane, self.lane_bounds
        counts, sums, dups = self.counts.item, self.sums.item, self.dups.item
        lane_id, id_steps = self.lane_ids.item, self.id_steps.item
        for dd in (0, 1):
            lo, hi = bounds[2 * g + dd], bounds[2 * g + dd + 1]
            m0, m1 = bisect_left(by_lane, start, lo, hi), bisect_left(by_lane, stop, lo, hi)
            if m1 == m0:
                continue
            h, peer = side.h[dd], side.h[1 - dd]
            last = by_lane[m1 - 1]
            h.packets += m1 - m0
            # the IP ID steps, as Side.segment counts them one by one
            k0 = m0
            if m0 == lo:  # its predecessor came in an earlier batch (or there is none)
                if h.last_id >= 0 and lane_id(m0) >= 0:
                    _id_step(h, lane_id(m0))
                k0 = m0 + 1
            steps = id_steps(m1) - id_steps(k0)
            h.id_up += steps & 0xFFFFFFFF
            h.id_other += steps >> 32
            h.last_id = lane_id(m1 - 1)
            h.last = ts(last)
            count = counts(m1) - counts(m0)
            if count:
                size = sums(m1) - sums(m0)
                h.payload += size
                h.data_packets += count
                h.nextseq += size
                highest = self.last_data.item(m1 - 1)
                h.nextseqtime = ts(by_lane[highest])
                h.high_id = lane_id(highest)
                data_rows = self.data_rows
                dlo, dhi = self.data_bounds[2 * g + dd], self.data_bounds[2 * g + dd + 1]
                n0, n1 = bisect_left(data_rows, start, dlo, dhi), bisect_left(data_rows, stop, dlo, dhi)
                if len(h.ev_data) < EVIDENCE or len(h.big_first) < EVIDENCE:
                    self._evidence(h, 2 * g + dd, n0, n1, start, stop)
                if h.wl_since is not None:
                    h.wl_time += ts(data_rows[n0]) - h.wl_since
                h.wl_time += self.wl_sums.item(n1 - 1) - self.wl_sums.item(n0)
                h.wl_since = ts(data_rows[n1 - 1]) if self.cond.item(n1 - 1) else None
            advanced = self.last_adv.item(m1 - 1)
            if advanced >= m0:
                h.dupacknum = dups(m1) - dups(advanced + 1)
                peer.progress = ts(by_lane[advanced])
            else:
                h.dupacknum += dups(m1) - dups(m0)
            if dups(m1) != dups(m0):
                h.dupacks += dups(m1) - dups(m0)
                if len(h.ev_dup) < EVIDENCE:
                    lo, hi = self.dup_bounds[2 * g + dd], self.dup_bounds[2 * g + dd + 1]
                    first = bisect_left(self.dup_rows, start, lo, hi)
                    for k in self.dup_rows[first:min(first + EVIDENCE - len(h.ev_dup), hi)]:
                        if k >= stop:
                            break
                        h.ev_dup.append((self.cols["number"].item(k), ts(k)))
            if self.sack_bounds[2 * g + dd] < self.sack_bounds[2 * g + dd + 1]:
                lo, hi = self.sack_bounds[2 * g + dd], self.sack_bounds[2 * g + dd + 1]
                first = bisect_left(self.sack_rows, start, lo, hi)
                for k in self.sack_rows[first:hi]:
                    if k >= stop:
                        break
                    peer.sack(self.a.item(k), _relative(self.sack[k], peer.base))
            h.lastack = self.a.item(last)
            h.lastacktime = ts(last)
            h.window = self.wnd.item(last)
            if dd == 0 and side.ack_time is None and side.synack_time is not None:
                side.ack_time = ts(by_lane[m0])
                if side.syn_for_rtt is not None:
                    side.first_rtt = side.ack_time - side.syn_for_rtt
        for dd in (0, 1):
            self._timer(g, side.h[dd], dd, start, stop)

    def _evidence(self, h: Half, lane: int, n0: int, n1: int, start: int, stop: int) -> None:
        """The first data segments and the first large ones of a run (data rows n0 … n1-1 of `lane`),
        while the half keeps fewer than EVIDENCE of each."""
        number, ip_len = self.cols["number"], self.cols["ip_len"]
        rows = self.data_rows[n0:min(n1, n0 + EVIDENCE - len(h.ev_data))]
        h.ev_data += zip(number[rows].tolist(), self.ts[rows].tolist(), self.sq[rows].tolist(),
                         self.seglen[rows].tolist(), ip_len[rows].tolist(), strict=True)
        if len(h.big_first) < EVIDENCE:
            big_rows, lo, hi = self.big_rows, self.big_bounds[lane], self.big_bounds[lane + 1]
            first = bisect_left(big_rows, start, lo, hi)
            rows = big_rows[first:bisect_left(big_rows, stop, first, min(hi, first + EVIDENCE - len(h.big_first)))]
            h.big_first += zip(number[rows].tolist(), self.ts[rows].tolist(), ip_len[rows].tolist(), strict=True)

    def _timer(self, g: int, h: Half, dd: int, start: int, stop: int) -> None:
        """Direction dd's RTT timer over a run: one timed segment at a time, stopped by the first
        ACK from the other direction that covers it."""
        data_rows, by_lane, acks_max = self.data_rows, self.by_lane, self.acks_max
        dlo, dhi = self.data_bounds[2 * g + dd], self.data_bounds[2 * g + dd + 1]
        alo, ahi = self.lane_bounds[2 * g + 1 - dd], self.lane_bounds[2 * g + 2 - dd]
        a, ts = self.a.item, self.ts.item
        end, since, at = h.timed_end, h.timed_ts, start
        while True:
            if end < 0:
                n = bisect_left(data_rows, at, dlo, dhi)
                if n >= dhi or data_rows[n] >= stop:
                    break
                p = data_rows[n]
                end, since, at = self.sq.item(p) + self.seglen.item(p), ts(p), p + 1
            m = bisect_left(by_lane, at, alo, ahi)
            if m > alo and acks_max[m - 1] >= end:  # an earlier ACK went further: look one by one
                while m < ahi and by_lane[m] < stop and a(by_lane[m]) < end:
                    m += 1
            else:
                m = bisect_left(acks_max, end, m, ahi)
            if m >= ahi or by_lane[m] >= stop:
                break
            Side._rtt_sample(h, ts(by_lane[m]) - since)
            end, at = -1, by_lane[m] + 1
        h.timed_end, h.timed_ts = end, since


def _id_step(h: Half, ip_id: int) -> None:
    step = (ip_id - h.last_id) & 0xFFFF
    if 0 < step <= ID_STEP_MAX:
        h.id_up += 1
    elif not 0 < 0x10000 - step <= ID_BACK_MAX:
        h.id_other += 1


def _close_hole(gaps: list[list], i: int, start: int, end: int) -> None:
    """Hole i no longer holds [start, end): trimmed, split in two, or gone."""
    gap = gaps[i]
    rest = [part for part in ([gap[0], min(gap[1], start)], [max(gap[0], end), gap[1]]) if part[0] < part[1]]
    gaps[i:i + 1] = [[lo, hi, *gap[2:]] for lo, hi in rest]
    del gaps[MAX_GAPS:]


def _stable_order(keys, bound: int):
    """np.argsort(keys, kind="stable") of keys in 0 … bound-1: a radix sort when they fit 16 bits."""
    import numpy as np

    return np.argsort(keys.astype(np.uint16) if bound <= 1 << 16 else keys, kind="stable")


def _relative(blocks, base: int) -> list[tuple[int, int]]:
    out = []
    for left, right in blocks:
        start, end = (left - base) & _M, (right - base) & _M
        out.append((start - _W if start > _H else start, end - _W if end > _H else end))
    return out


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
