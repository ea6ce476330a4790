"""Synthetic TCP captures: many bulk transfers seen at the sender, with loss, duplicate ACKs,
fast retransmissions, timeouts and zero windows, written as a pcap with headers only
(snap length 66, the IP length tells the segment size) — for the tshark oracle and the bench.

Model (deterministic for a seed): the client paces MSS-sized segments every `gap`
seconds; the server ACKs each segment `rtt` later. A lost segment (dropped after the
capture point) makes every later segment's ACK a duplicate until the fast
retransmission (after the 3rd duplicate ACK) is acknowledged. A loss of the
retransmission itself is repaired by a timeout (1 s). In a "slow reader" transfer
the server advertises a zero window for 200 ms once.
"""

from __future__ import annotations

import heapq
import random
import struct

ETH = b"\x02\x00\x00\x00\x00\x02\x02\x00\x00\x00\x00\x01\x08\x00"
MSS = 1448


def _ip(src: bytes, dst: bytes, length: int, ident: int) -> bytes:
    return struct.pack("!BBHHHBBH4s4s", 0x45, 0, length, ident & 0xFFFF, 0x4000, 64, 6, 0, src, dst)


def _tcp(sport, dport, seq, ack, flags, win, options=b"") -> bytes:
    hl = (20 + len(options)) // 4
    return struct.pack("!HHIIBBHHH", sport, dport, seq & 0xFFFFFFFF, ack & 0xFFFFFFFF, hl << 4, flags, win,
                       0, 0) + options


def transfer(index: int, start: float, segments: int, rng: random.Random, *, loss: float = 0.0,
             rtt: float = 0.010, gap: float = 0.0002, zero_window: bool = False, queue_growth: float = 0.0,
             timestamps: bool = False, sack: bool = False, resend_sacked: int = 0):
    """[(time, frame, original length)] of one connection, sorted by time.

    `queue_growth`: each segment's ACK is delayed this much more than the previous one's (a
    queue that fills during the transfer: bufferbloat). `timestamps`: every segment carries TCP
    timestamps (1 ms clocks; the server echoes the TSval of the last segment that advanced its
    ACK, RFC 7323). `sack`: the duplicate ACKs carry a SACK block of what the server holds beyond
    the hole. `resend_sacked`: after each fast retransmission the client also resends this many
    segments the server had SACKed (spurious retransmissions, as a sender with a bad scoreboard
    does). Write these with a snap length of 100 (the options do not fit in 66)."""
    client = bytes([10, 1, (index >> 8) & 255, index & 255])
    server = bytes([10, 2, 0, 1])
    sport, dport = 20000 + index % 40000, 80
    cisn, sisn = rng.randrange(1 << 32), rng.randrange(1 << 32)
    out = []
    ident = [index * 7]

    def stamps(t, clock: int, echo: int) -> bytes:
        return b"\x01\x01\x08\x0a" + struct.pack("!II", clock + int((t - start) * 1000), echo) if timestamps \
            else b""

    def c2s(t, seq, ack, flags, length=0, options=b"", win=502):
        ident[0] += 1
        if not flags & 0x02:
            options += stamps(t, 1000, 0)  # (its echo is filled in once the packets are in time order)
        head = _tcp(sport, dport, cisn + seq, sisn + ack, flags, win, options)
        iplen = 20 + len(head) + length
        out.append((t, ETH + _ip(client, server, iplen, ident[0]) + head, 14 + iplen))

    def s2c(t, seq, ack, flags, win=502, options=b"", echo=None, blocks=()):
        """`echo`: when the client segment whose TSval this one echoes passed."""
        if not flags & 0x02:
            options += stamps(t, 7000, 1000 + int(((echo if echo is not None else t) - start) * 1000))
        if blocks:
            options += b"\x01\x01\x05" + bytes([2 + 8 * len(blocks)]) + b"".join(
                struct.pack("!II", (cisn + left) & 0xFFFFFFFF, (cisn + right) & 0xFFFFFFFF) for left, right in blocks)
        head = _tcp(dport, sport, sisn + seq, cisn + ack, flags, win, options)
        iplen = 20 + len(head)
        out.append((t, ETH + _ip(server, client, iplen, 0) + head, 14 + iplen))

    syn_opts = b"\x02\x04" + struct.pack("!H", MSS) + b"\x01\x03\x03\x07"
    t = start
    c2s(t, 0, 0, 0x02, options=syn_opts, win=64240)
    s2c(t + rtt, 0, 1, 0x12, win=65160, options=syn_opts)
    t += rtt + 0.0001
    c2s(t, 1, 1, 0x10)
    received = 1  # the server's next expected byte
    recent = t  # when the segment that last advanced the server's ACK passed (its TSval is echoed)
    held = set()  # segments the server holds beyond a hole
    seq = 1
    pending = None  # the lost segment waiting for its retransmission
    dups = 0
    zero_at = segments // 2 if zero_window else -1
    for i in range(segments):
        t += gap
        if i == zero_at:
            # the server's window closes: the sender waits, the server opens it again
            s2c(t, 1, received, 0x10, win=0, echo=recent)
            t += 0.2
            s2c(t, 1, received, 0x10, win=502, echo=recent)
            t += gap
        lost = pending is None and rng.random() < loss
        c2s(t, seq, 1, 0x18, MSS)
        if lost:
            pending = seq
            dups = 0
        elif pending is not None:
            held.add(seq)
            blocks = [(pending + MSS, max(held) + MSS)] if sack else ()
            s2c(t + rtt, 1, received, 0x10, echo=recent, blocks=blocks)  # a duplicate ACK
            dups += 1
            if dups == 3:
                # the fast retransmission, 0.1 ms after the third duplicate ACK (already sent meanwhile)
                rt = t + rtt + 0.0001
                if rng.random() < loss:  # lost again: a timeout
                    c2s(rt, pending, 1, 0x18, MSS)
                    rt += 1.0
                c2s(rt, pending, 1, 0x18, MSS)
                for k, again in enumerate(sorted(held)[:resend_sacked]):
                    c2s(rt + 0.0002 * (k + 1), again, 1, 0x18, MSS)
                received = max(held | {pending}) + MSS
                held.clear()
                s2c(rt + rtt, 1, received, 0x10, echo=rt)
                recent = rt
                pending = None
                t = max(t, rt + rtt)
        else:
            received = seq + MSS
            recent = t
            s2c(t + rtt + i * queue_growth, 1, received, 0x10, echo=t)
        seq += MSS
    t += rtt * 2
    c2s(t, seq, 1, 0x11)
    s2c(t + rtt, 1, seq + 1, 0x11)
    c2s(t + rtt + 0.0001, seq + 1, 2, 0x10)
    out.sort(key=lambda p: p[0])
    return _echo_server_stamps(out) if timestamps else out


def _echo_server_stamps(packets):
    """Each client segment's TSecr: the newest server TSval that passed before it (the capture
    point is at the client)."""
    newest = 0
    out = []
    for t, frame, origlen in packets:
        options = 14 + 20 + 20
        if frame[14 + 12:14 + 16] == bytes([10, 2, 0, 1]):  # from the server
            if frame[options + 2] == 8:
                newest = struct.unpack_from("!I", frame, options + 4)[0]
        elif frame[options + 2:options + 3] == b"\x08":
            frame = frame[:options + 8] + struct.pack("!I", newest) + frame[options + 12:]
        out.append((t, frame, origlen))
    return out


def write_pcap(path: str, packets, snaplen: int = 66) -> int:
    """Write [(time, frame, original length)] as a little-endian microsecond pcap; returns the count."""
    count = 0
    rec = struct.Struct("<IIII").pack
    with open(path, "wb", buffering=1 << 20) as f:
        f.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, snaplen, 1))
        for t, frame, origlen in packets:
            frame = frame[:snaplen]
            usec = int(round(t * 1e6))
            f.write(rec(usec // 1000000, usec % 1000000, len(frame), origlen))
            f.write(frame)
            count += 1
    return count


def capture(path: str, connections: int = 20, segments: int = 500, seed: int = 1, loss: float = 0.01,
            concurrent: int = 8) -> int:
    """A capture of `connections` transfers (every fifth one with a slow reader), `concurrent` at a time."""
    rng = random.Random(seed)
    streams = []
    starts = [1_700_000_000.0 + i * 0.001 for i in range(concurrent)]
    for index in range(connections):
        lane = index % concurrent
        packets = transfer(index, starts[lane], segments, rng, loss=loss if index % 4 else 0.0,
                           zero_window=index % 5 == 2)
        starts[lane] = packets[-1][0] + 0.01
        streams.append(packets)
    return write_pcap(path, heapq.merge(*streams, key=lambda p: p[0]))


def through_router(packets, server: bytes = bytes([10, 2, 0, 1]), delay: float = 0.00005):
    """The packets of one transfer as the router's two sides see them: [(interface, time, frame,
    original length)], interface 0 where the client's segments arrive (all of them), 1 where they
    leave `delay` later — without the first transmissions of each segment that was sent again
    (the router dropped them). The server's packets pass 1 first."""
    counts: dict[bytes, int] = {}
    for _t, frame, _o in packets:
        if frame[26:30] != server:
            counts[frame[38:42]] = counts.get(frame[38:42], 0) + 1
    out, seen = [], {}
    for t, frame, origlen in packets:
        if frame[26:30] == server:
            out += [(1, t - delay, frame, origlen), (0, t, frame, origlen)]
            continue
        out.append((0, t, frame, origlen))
        seq, length = frame[38:42], origlen - 14 - 20 - (frame[46] >> 4) * 4
        seen[seq] = seen.get(seq, 0) + 1
        if not length or seen[seq] == counts[seq]:  # the last transmission of each segment gets through
            out.append((1, t + delay, frame, origlen))
    return sorted(out, key=lambda p: p[1])


def write_pcapng(path: str, packets, names=("br-lan", "ppp0")) -> None:
    """Write [(interface, time, frame, original length)] with one interface block per name."""
    from tracer.capture import pcapio

    with pcapio.PcapngWriter(path) as out:
        for name in names:
            out.add_interface(name, 1, f"{name} in netns synth")
        for iface, t, frame, origlen in packets:
            out.packet(iface, t, frame, origlen)
