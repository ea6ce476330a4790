"""Header decoding of a whole `pcapio.Batch` at once (numpy): link layer (Ethernet with VLAN
tags, Linux cooked v1/v2, raw IP), IPv4 and IPv6 with its extension headers (hop-by-hop,
routing, destination options, authentication; an atomic fragment header), TCP.

`decode(batch, linktypes, reassembly)` returns the TCP segments as columns (`Segments`) and,
for the few packets that need Python, the ICMP messages (`icmp`: rows to hand to
`tcp._icmp`) — IP fragments go through `Reassembly`, which yields one segment per
reassembled datagram at its last fragment, as Wireshark does.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass

import numpy as np

ETHERTYPE_IP, ETHERTYPE_IPV6 = 0x0800, 0x86DD
VLAN_TAGS = (0x8100, 0x88A8)
IPV6_SKIPPED = (0, 43, 60)  # hop-by-hop, routing, destination options: length in 8-octet units
IPV6_AUTH, IPV6_FRAGMENT = 51, 44
MAX_EXTENSIONS = 8
MAX_PENDING_FRAGMENTS = 1024
MAX_OPTIONS = 12
MAX_SACK_BLOCKS = 4
TCPOPT_EOL, TCPOPT_NOP, TCPOPT_SACK, TCPOPT_TIMESTAMP = 0, 1, 5, 8


def _u16(u8, at):
    return (u8[at].astype(np.int64) << 8) | u8[at + 1]


def _u32(u8, at):
    return (_u16(u8, at) << 16) | _u16(u8, at + 2)


def _rows(u8, at, width: int):
    """The `width` bytes at each offset of `at` (all within `u8`), one row each."""
    return np.lib.stride_tricks.sliding_window_view(u8, width)[at] if len(u8) >= width else \
        np.zeros((0, width), np.uint8)


@dataclass
class Segments:
    """TCP segments of one batch, in packet order, as numpy columns. `v6` rows carry IPv6
    addresses: `src`/`dst` are then ids from `Addresses`, else the IPv4 address as an integer.
    `extra` maps a row to (buffer, TCP header offset) when its header is not in the mapped file
    (a reassembled datagram)."""

    number: object
    time: object
    iface: object
    src: object
    dst: object
    sport: object
    dport: object
    seq: object
    ack: object
    flags: object
    win: object
    seglen: object
    ip_len: object
    l4: object
    thl: object  # TCP header length, bounded by what was captured (for the SYN's options)
    extra: dict
    tsval: object = None  # the timestamp option (RFC 7323), -1 without one
    tsecr: object = None
    sack: dict | None = None  # row -> its SACK blocks [(left, right), …] (at most MAX_SACK_BLOCKS)
    ip_id: object = None  # IPv4's identification field, -1 for IPv6


class Addresses:
    """IPv6 addresses as small integers above the IPv4 range (so that one integer names any
    address), and every address's text."""

    V6_BASE = 1 << 32

    def __init__(self):
        self._ids: dict[bytes, int] = {}
        self._raw: list[bytes] = []
        self._text: dict[int, str] = {}

    def v6_id(self, raw: bytes) -> int:
        found = self._ids.get(raw)
        if found is None:
            found = self._ids[raw] = self.V6_BASE + len(self._raw)
            self._raw.append(raw)
        return found

    def v6_ids(self, u8, at) -> np.ndarray:
        """The ids of the 16-byte addresses at offsets `at`."""
        if not len(at):
            return np.zeros(0, np.int64)
        raw = np.ascontiguousarray(u8[at[:, None] + np.arange(16)]).view("V16").ravel()
        unique, inverse = np.unique(raw, return_inverse=True)
        ids = np.array([self.v6_id(bytes(u)) for u in unique], np.int64)
        return ids[inverse]

    def text(self, value: int) -> str:
        found = self._text.get(value)
        if found is None:
            if value >= self.V6_BASE:
                found = socket.inet_ntop(socket.AF_INET6, self._raw[value - self.V6_BASE])
            else:
                found = socket.inet_ntop(socket.AF_INET, value.to_bytes(4, "big"))
            self._text[value] = found
        return found


class Reassembly:
    """IP fragments of TCP datagrams, held until the datagram is complete (bounded: the oldest
    incomplete datagram is forgotten beyond MAX_PENDING_FRAGMENTS)."""

    def __init__(self):
        self._pending: dict[tuple, dict] = {}

    def add(self, key: tuple, offset: int, length: int, more: bool, payload: bytes | None):
        """One fragment: `payload` the bytes captured when offset is 0. Returns the datagram's
        first bytes (the TCP header) and its payload length once complete, else None."""
        entry = self._pending.get(key)
        if entry is None:
            if len(self._pending) >= MAX_PENDING_FRAGMENTS:
                del self._pending[next(iter(self._pending))]
            entry = self._pending[key] = {"pieces": [], "total": None, "head": None}
        entry["pieces"].append((offset, offset + length))
        if offset == 0:
            entry["head"] = payload
        if not more:
            entry["total"] = offset + length
        if entry["head"] is None or entry["total"] is None:
            return None
        reached = 0
        for start, stop in sorted(entry["pieces"]):
            if start > reached:
                return None  # a piece still missing
            reached = max(reached, stop)
        if reached < entry["total"]:
            return None
        del self._pending[key]
        return entry["head"], entry["total"]


def decode(batch, linktypes: list[int], addresses: Addresses, reassembly: Reassembly):
    """(Segments, icmp rows) of one batch; icmp rows are (batch row, proto, l4, end, src raw,
    dst raw) in packet order."""
    u8 = batch.u8
    start = batch.offset
    end = start + batch.caplen
    if len(set(linktypes)) <= 1:  # (nearly always: one link type, compared once)
        lt = linktypes[0] if linktypes else 1
    else:
        lt = np.asarray(linktypes, np.int64)[batch.iface]
    l3 = np.full(len(start), -1, np.int64)
    etype = np.zeros(len(start), np.int64)

    eth = np.flatnonzero((lt == 1) & (batch.caplen >= 14))
    etype[eth] = _u16(u8, start[eth] + 12)
    l3[eth] = start[eth] + 14
    for _ in range(4):  # VLAN tags (802.1Q, QinQ)
        tagged = eth[(etype[eth] == VLAN_TAGS[0]) | (etype[eth] == VLAN_TAGS[1])]
        if not len(tagged):
            break
        tagged = tagged[l3[tagged] + 4 <= end[tagged]]
        etype[tagged] = _u16(u8, l3[tagged] + 2)
        l3[tagged] += 4
    sll = np.flatnonzero((lt == 113) & (batch.caplen >= 16))
    etype[sll] = _u16(u8, start[sll] + 14)
    l3[sll] = start[sll] + 16
    sll2 = np.flatnonzero((lt == 276) & (batch.caplen >= 20))
    etype[sll2] = _u16(u8, start[sll2])
    l3[sll2] = start[sll2] + 20
    raw = np.flatnonzero(np.isin(lt, (101, 12, 228, 229)) & (batch.caplen > 0))
    etype[raw] = np.where(u8[start[raw]] >> 4 == 6, ETHERTYPE_IPV6, ETHERTYPE_IP)
    l3[raw] = start[raw]

    # IPv4
    v4 = np.flatnonzero((etype == ETHERTYPE_IP) & (l3 >= 0) & (l3 + 20 <= end))
    at = l3[v4]
    header = _rows(u8, at, 20)
    words, longs = header.view(">u2"), header.view(">u4")
    ihl = (header[:, 0] & 15).astype(np.int64) * 4
    frag = words[:, 3].astype(np.int64)
    proto4 = header[:, 9]
    ip_len4 = words[:, 1].astype(np.int64)
    ident4 = words[:, 2].astype(np.int64)
    whole = (frag & 0x3FFF) == 0
    tcp4 = (proto4 == 6) & whole
    icmp4 = (proto4 == 1) & ((frag & 0x1FFF) == 0)
    frag4 = (proto4 == 6) & ~whole

    # IPv6: walk the extension headers
    v6 = np.flatnonzero((etype == ETHERTYPE_IPV6) & (l3 >= 0) & (l3 + 40 <= end))
    at6 = l3[v6]
    nh = u8[at6 + 6].astype(np.int64)
    l4_6 = at6 + 40
    fragment6 = np.zeros(len(v6), bool)
    frag_at = np.zeros(len(v6), np.int64)
    for _ in range(MAX_EXTENSIONS):
        walking = (np.isin(nh, IPV6_SKIPPED + (IPV6_AUTH, IPV6_FRAGMENT)) & ~fragment6
                   & (l4_6 + 8 <= end[v6]))
        if not walking.any():
            break
        w = np.flatnonzero(walking)
        here = l4_6[w]
        kind = nh[w]
        length = np.where(kind == IPV6_AUTH, (u8[here + 1].astype(np.int64) + 2) * 4,
                          (u8[here + 1].astype(np.int64) + 1) * 8)
        is_frag = kind == IPV6_FRAGMENT
        offset_m = _u16(u8, here + 2)
        real_frag = is_frag & ((offset_m & 0xFFF9) != 0)  # offset or more-fragments set
        fragment6[w[real_frag]] = True
        frag_at[w[real_frag]] = here[real_frag]
        length = np.where(is_frag, 8, length)
        nh[w] = u8[here].astype(np.int64)
        l4_6[w[~real_frag]] += length[~real_frag]
    plen = _u16(u8, at6 + 4)
    tcp6 = (nh == 6) & ~fragment6
    icmp6 = (nh == 58) & ~fragment6

    rows = _joined(v4[tcp4], v6[tcp6])
    l4 = _joined(at[tcp4] + ihl[tcp4], l4_6[tcp6])
    payload_end = _joined(at[tcp4] + ip_len4[tcp4], at6[tcp6] + 40 + plen[tcp6])
    ip_len = _joined(ip_len4[tcp4], plen[tcp6] + 40)
    ip_id = _joined(ident4[tcp4], np.full(int(tcp6.sum()), -1, np.int64))
    src = _joined(longs[tcp4, 3].astype(np.int64), addresses.v6_ids(u8, at6[tcp6] + 8))
    dst = _joined(longs[tcp4, 4].astype(np.int64), addresses.v6_ids(u8, at6[tcp6] + 24))
    if len(v6):
        order = np.argsort(rows, kind="stable")
        rows, l4, payload_end, ip_len, ip_id, src, dst = (rows[order], l4[order], payload_end[order], ip_len[order],
                                                          ip_id[order], src[order], dst[order])
    keep = l4 + 20 <= end[rows]
    if not keep.all():
        rows, l4, payload_end, ip_len, ip_id, src, dst = (rows[keep], l4[keep], payload_end[keep], ip_len[keep],
                                                          ip_id[keep], src[keep], dst[keep])
    header = _rows(u8, l4, 16)
    words, longs = header.view(">u2"), header.view(">u4")
    thl = (header[:, 12] >> 4).astype(np.int64) * 4
    seglen = np.maximum(payload_end - l4 - thl, 0)
    segments = Segments(batch.first + rows, batch.time[rows], batch.iface[rows], src, dst,
                        words[:, 0].astype(np.int64), words[:, 1].astype(np.int64), longs[:, 1].astype(np.int64),
                        longs[:, 2].astype(np.int64), header[:, 13].astype(np.int64), words[:, 7].astype(np.int64),
                        seglen, ip_len, l4, np.minimum(thl, end[rows] - l4), {})

    segments.tsval, segments.tsecr, segments.sack = _options(u8, segments.l4, segments.thl)
    segments.ip_id = ip_id

    fragments = [(int(r), 4, int(a)) for r, a in zip(v4[frag4], at[frag4], strict=True)]
    frag6 = fragment6 & (nh == 6)
    fragments += [(int(r), 6, int(a)) for r, a in zip(v6[frag6], frag_at[frag6], strict=True)]
    if fragments:
        segments = _with_reassembled(segments, sorted(fragments), batch, l3, end, addresses, reassembly)
    icmp_rows = [(int(r), 1, int(a + h), int(end[r])) for r, a, h in zip(v4[icmp4], at[icmp4], ihl[icmp4],
                                                                          strict=True)]
    icmp_rows += [(int(r), 58, int(a), int(end[r])) for r, a in zip(v6[icmp6], l4_6[icmp6], strict=True)]
    icmp_rows = [(r, proto, a, e, *_raw_addresses(u8, int(l3[r]), proto == 58))
                 for r, proto, a, e in sorted(icmp_rows) if a + 8 <= e]
    return segments, icmp_rows


def _joined(v4, v6):
    """The IPv4 rows' column then the IPv6 rows' (not copied when there are none of the latter)."""
    return np.concatenate([v4, v6]) if len(v6) else v4


def _options(u8, l4, thl):
    """(tsval, tsecr, sack) of the TCP headers at `l4` (`thl` bytes long, all captured): the
    option lists walked for all at once. `sack`: {row: [(left, right), …]} for the rows with one."""
    n = len(l4)
    tsval, tsecr = np.full(n, -1, np.int64), np.full(n, -1, np.int64)
    blocks_of: list[tuple] = []  # (rows, lefts, rights) per option and block
    row = np.flatnonzero(thl > 20)
    at = l4[row] + 20
    stop = l4[row] + thl[row]
    for _ in range(MAX_OPTIONS):
        alive = at < stop
        row, at, stop = row[alive], at[alive], stop[alive]
        if not len(row):
            break
        kind = u8[at]
        nop = kind == TCPOPT_NOP
        length = np.where(nop, 1, u8[np.minimum(at + 1, len(u8) - 1)].astype(np.int64))
        valid = (kind != TCPOPT_EOL) & (nop | ((at + 1 < stop) & (length >= 2) & (at + length <= stop)))
        timestamp = valid & (kind == TCPOPT_TIMESTAMP) & (length == 10)
        tsval[row[timestamp]] = _u32(u8, at[timestamp] + 2)
        tsecr[row[timestamp]] = _u32(u8, at[timestamp] + 6)
        blocks = valid & (kind == TCPOPT_SACK) & (length >= 10)
        for b in range(MAX_SACK_BLOCKS):
            has = np.flatnonzero(blocks & ((length - 2) // 8 > b))
            if len(has):
                blocks_of.append((row[has], _u32(u8, at[has] + 2 + 8 * b), _u32(u8, at[has] + 6 + 8 * b)))
        row, at, stop = row[valid], (at + length)[valid], stop[valid]
    sack: dict[int, list] = {}
    for rows, lefts, rights in blocks_of:
        for r, left, right in zip(rows.tolist(), lefts.tolist(), rights.tolist(), strict=True):
            sack.setdefault(r, []).append((left, right))
    return tsval, tsecr, sack


def _raw_addresses(u8, l3: int, v6: bool) -> tuple[bytes, bytes]:
    if v6:
        return bytes(u8[l3 + 8:l3 + 24]), bytes(u8[l3 + 24:l3 + 40])
    return bytes(u8[l3 + 12:l3 + 16]), bytes(u8[l3 + 16:l3 + 20])


def _with_reassembled(segments: Segments, fragments, batch, l3, end, addresses: Addresses,
                      reassembly: Reassembly) -> Segments:
    """The segments plus one row per datagram its last fragment completes, in packet order."""
    data = batch.data
    added = []
    for row, version, at in fragments:
        start, stop = int(l3[row]), int(end[row])
        if version == 4:
            ihl = (data[start] & 15) * 4
            total = (data[start + 2] << 8) | data[start + 3]
            flags_offset = (data[start + 6] << 8) | data[start + 7]
            key = (4, bytes(data[start + 12:start + 20]), (data[start + 4] << 8) | data[start + 5])
            offset, more, payload_at, length = (flags_offset & 0x1FFF) * 8, bool(flags_offset & 0x2000), \
                start + ihl, total - ihl
            src, dst = int.from_bytes(data[start + 12:start + 16], "big"), \
                int.from_bytes(data[start + 16:start + 20], "big")
            ident = key[2]
        else:
            if at + 8 > stop:
                continue
            ihl = at + 8 - start  # the fixed header and the extension headers up to the fragment header
            field = (data[at + 2] << 8) | data[at + 3]
            key = (6, bytes(data[start + 8:start + 40]), bytes(data[at + 4:at + 8]))
            offset, more, payload_at = field & 0xFFF8, bool(field & 1), at + 8
            length = ((data[start + 4] << 8) | data[start + 5]) + 40 - ihl
            src = addresses.v6_id(bytes(data[start + 8:start + 24]))
            dst = addresses.v6_id(bytes(data[start + 24:start + 40]))
            ident = -1
        done = reassembly.add(key, offset, length, more, bytes(data[payload_at:stop]) if offset == 0 else None)
        if done is None or len(done[0]) < 20:
            continue
        head, payload = done
        thl = (head[12] >> 4) * 4
        added.append((row, src, dst, int.from_bytes(head[0:2], "big"), int.from_bytes(head[2:4], "big"),
                      int.from_bytes(head[4:8], "big"), int.from_bytes(head[8:12], "big"), head[13],
                      int.from_bytes(head[14:16], "big"), max(0, payload - thl), payload + ihl, min(thl, len(head)),
                      head, ident))
    if not added:
        return segments
    columns = ("number", "time", "iface", "src", "dst", "sport", "dport", "seq", "ack", "flags", "win", "seglen",
               "ip_len", "l4", "thl", "tsval", "tsecr", "ip_id")
    rows = np.array([a[0] for a in added], np.int64)
    new = {"number": batch.first + rows, "time": batch.time[rows], "iface": batch.iface[rows],
           "l4": np.zeros(len(rows), np.int64), "ip_id": np.array([a[13] for a in added], np.int64)}
    for i, name in enumerate(("src", "dst", "sport", "dport", "seq", "ack", "flags", "win", "seglen", "ip_len", "thl")):
        new[name] = np.array([a[1 + i] for a in added], np.int64)
    # the options, from the reassembled headers laid end to end
    heads = [a[12][:a[11]] for a in added]
    at = np.cumsum([0] + [len(h) for h in heads[:-1]])
    new["tsval"], new["tsecr"], new_sack = _options(np.frombuffer(b"".join(heads), np.uint8), at, new["thl"])
    merged = {name: np.concatenate([getattr(segments, name), new[name]]) for name in columns}
    order = np.argsort(merged["number"], kind="stable")
    position = np.empty(len(order), np.int64)
    position[order] = np.arange(len(order))
    base = len(segments.number)
    extra = {int(position[base + i]): (a[12], 0) for i, a in enumerate(added)}
    sack = {int(position[r]): blocks for r, blocks in segments.sack.items()}
    sack.update({int(position[base + r]): blocks for r, blocks in new_sack.items()})
    return Segments(**{name: merged[name][order] for name in columns}, extra=extra, sack=sack)
