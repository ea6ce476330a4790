"""Streaming pcap / pcapng reading and pcapng writing, struct-based (no dependency).

`read(path)` returns a `Capture`: its interfaces (known after the header for
pcap; pcapng interface blocks may come later, so `interfaces` grows while
iterating) and `packets()`, a generator of `(number, time, iface, buf, off,
caplen, origlen)` where the frame is `buf[off:off+caplen]`. Times are float
seconds since `Capture.epoch`, the first packet's whole second: seconds since
1970 as floats are exact only to about 0.24 µs (and nanosecond stamps as
float64 to 256 ns), while tshark compares intervals to the nanosecond. The buffer is the
file mapped into memory: nothing is copied per packet, and memory does not
grow with the file. `batches()` gives the same packets as columns (numpy
arrays of up to BATCH packets) for the vectorised analysis: per packet only
the record chain is walked in Python.

`PcapngWriter` writes a section header, one interface description block per
interface (name, description, link type) and enhanced packet blocks with an
optional comment (`opt_comment`, shown by Wireshark/tshark as `frame.comment`).
"""

from __future__ import annotations

import mmap
import os
import struct
from array import array
from dataclasses import dataclass, field
from itertools import repeat

from tracer.errors import UsageError

PCAP_MAGICS = {  # byte order, stamp units per second
    b"\xd4\xc3\xb2\xa1": ("<", 10 ** 6), b"\xa1\xb2\xc3\xd4": (">", 10 ** 6),
    b"\x4d\x3c\xb2\xa1": ("<", 10 ** 9), b"\xa1\xb2\x3c\x4d": (">", 10 ** 9),
}
PCAPNG_SHB = 0x0A0D0D0A
BYTE_ORDER_MAGIC = 0x1A2B3C4D
IDB, SPB, EPB, ISB, OPB = 1, 3, 6, 5, 2

LINKTYPE_ETHERNET, LINKTYPE_RAW, LINKTYPE_LINUX_SLL, LINKTYPE_LINUX_SLL2 = 1, 101, 113, 276
OPT_COMMENT, IF_NAME, IF_DESCRIPTION, IF_TSRESOL = 1, 2, 3, 9
ISB_IFRECV, ISB_IFDROP, ISB_OSDROP = 4, 5, 7


@dataclass
class Interface:
    name: str
    linktype: int
    description: str = ""
    per_second: int = 10 ** 6  # timestamp units per second (if_tsresol)
    # from interface statistics blocks (pcapng), when present
    received: int | None = None
    dropped: int | None = None  # by the interface/kernel
    os_dropped: int | None = None  # by the capture (buffer full)


@dataclass
class Capture:
    path: str
    format: str  # "pcap" | "pcapng"
    interfaces: list[Interface] = field(default_factory=list)
    epoch: int = 0  # the whole second (since 1970) that packet times count from
    _map: mmap.mmap | bytes | None = field(default=None, repr=False)

    def packets(self):
        if self.format == "pcap":
            return _pcap_packets(self)
        return _pcapng_packets(self)

    def batches(self, size: int = 0):
        """The packets in order as `Batch`es of up to `size` (default BATCH) packets."""
        if self.format == "pcap":
            return _pcap_batches(self, size or BATCH)
        return _pcapng_batches(self, size or BATCH)


BATCH = 1 << 15  # 32,768 packets: large enough for numpy, small enough for the caches and the allocator


@dataclass
class Batch:
    """Packets `first` … `first + len(offset) - 1` (numbers count from 1): numpy arrays."""

    first: int
    offset: object  # int64: where each frame starts in `data`
    caplen: object  # int64
    iface: object  # int64, an index into Capture.interfaces
    time: object  # float64, seconds since Capture.epoch
    data: object  # the mapped file
    u8: object  # the same bytes as a numpy uint8 array


def _words(u8, at, count: int, little: bool):
    """The `count` 32-bit words at each offset of `at`: an (n, count) int64 array."""
    import numpy as np

    width = 4 * count
    at = np.minimum(at, len(u8) - width)  # a damaged last block reads the file's last bytes, not beyond
    rows = np.lib.stride_tricks.sliding_window_view(u8, width)[at]
    return rows.view("<u4" if little else ">u4").astype(np.int64)


def read(path: str) -> Capture:
    """Open a capture file (pcap or pcapng); UsageError if it is neither."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror}") from None
    try:
        size = os.fstat(fd).st_size
        data = mmap.mmap(fd, size, access=mmap.ACCESS_READ) if size else b""
    finally:
        os.close(fd)
    head = bytes(data[:4])
    if head in PCAP_MAGICS:
        order, per_second = PCAP_MAGICS[head]
        if len(data) < 24:
            raise UsageError(f"{path}: truncated pcap header")
        linktype = struct.unpack_from(order + "I", data, 20)[0] & 0x0FFFFFFF
        name = os.path.basename(path)
        epoch = struct.unpack_from(order + "I", data, 24)[0] if len(data) >= 28 else 0
        return Capture(path, "pcap", [Interface(name, linktype, per_second=per_second)], epoch, data)
    if len(head) == 4 and struct.unpack("<I", head)[0] == PCAPNG_SHB:
        return Capture(path, "pcapng", [], _pcapng_epoch(data), data)
    raise UsageError(f"{path} is not a pcap or pcapng file")


def _pcap_packets(cap: Capture):
    data = cap._map
    order, per_second = PCAP_MAGICS[bytes(data[:4])]
    epoch = cap.epoch
    header = struct.Struct(order + "IIII").unpack_from
    end = len(data)
    off, number = 24, 0
    while off + 16 <= end:
        sec, frac, caplen, origlen = header(data, off)
        off += 16
        if off + caplen > end:
            break  # truncated last packet (a capture still being written)
        number += 1
        yield number, (sec - epoch) + frac / per_second, 0, data, off, caplen, origlen
        off += caplen


def _pcap_batches(cap: Capture, size: int):
    import numpy as np

    data = cap._map
    u8 = np.frombuffer(data, np.uint8)
    order, per_second = PCAP_MAGICS[bytes(data[:4])]
    caplen_of = struct.Struct(order + "8xI").unpack_from  # a record header's caplen
    end = len(data)
    last_header = end - 16
    off, first = 24, 1
    while True:
        starts = array("q")  # (appended to as fast as a list, handed to numpy without a copy)
        append = starts.append
        for _ in repeat(None, size):  # the one per-packet Python loop: follow the record chain
            if off > last_header:
                break
            append(off)
            off += 16 + caplen_of(data, off)[0]
        truncated = off > end  # the last packet (a capture still being written)
        if truncated:
            starts.pop()
        if not starts:
            return
        record = np.frombuffer(starts, np.int64)
        seconds, fraction, caplen = _words(u8, record, 3, order == "<").T
        yield Batch(first, record + 16, caplen, np.zeros(len(starts), np.int64),
                    (seconds - cap.epoch) + fraction / per_second, data, u8)
        first += len(starts)
        if truncated or len(starts) < size:
            return


def _pcapng_batches(cap: Capture, size: int):
    """Enhanced (and simple) packet blocks as batches; the other blocks as `_pcapng_packets` reads
    them. A batch never spans two sections (each has its byte order and interfaces)."""
    import numpy as np

    data = cap._map
    u8 = np.frombuffer(data, np.uint8)
    end = len(data)
    off, first, order, base = 0, 1, "<", 0
    block = struct.Struct("<II").unpack_from
    epbs = array("q")  # where each packet block starts
    simple: list[tuple] = []  # (position in the batch, caplen) of simple packet blocks

    def flush():
        nonlocal first
        record = np.frombuffer(epbs, np.int64).copy()  # (a copy: epbs is emptied for the next batch)
        length, local, high, low, caplen, _origlen = _words(u8, record + 4, 6, order == "<").T
        stamp = (high.astype(np.uint64) << np.uint64(32)) | low.astype(np.uint64)
        offsets = record + 28
        caplens = np.minimum(caplen, length - 32)  # (a damaged length never reaches beyond the block)
        for position, caplen in simple:
            offsets[position], caplens[position], local[position], stamp[position] = epbs[position] + 12, caplen, 0, 0
        described = len(cap.interfaces) - base
        unknown = np.flatnonzero(local >= described)
        if len(unknown):
            raise UsageError(f"{cap.path}: packet {first + unknown[0]} names interface {local[unknown[0]]}, which "
                             f"the file does not describe (a damaged capture)")
        per_second = np.array([i.per_second for i in cap.interfaces[base:]], np.int64)[local]
        # exact in integers, then one rounding (a simple block's stamp 0 is 1970, as in packets())
        times = (stamp.astype(np.int64) - cap.epoch * per_second) / per_second
        ifaces = local + base
        batch = Batch(first, offsets, caplens, ifaces, times, data, u8)
        first += len(epbs)
        del epbs[:]
        simple.clear()
        return batch

    while off + 12 <= end:
        btype, blen = block(data, off)
        if btype == EPB and 32 <= blen and off + blen <= end:
            epbs.append(off)
            if len(epbs) == size:
                yield flush()
            off += blen
            continue
        if btype == PCAPNG_SHB:
            if epbs:
                yield flush()
            magic = struct.unpack_from("<I", data, off + 8)[0]
            order = "<" if magic == BYTE_ORDER_MAGIC else ">"
            block = struct.Struct(order + "II").unpack_from
            btype, blen = block(data, off)
            base = len(cap.interfaces)
        if blen < 12 or off + blen > end:
            break  # truncated (still being written)
        if btype == SPB:
            origlen = struct.unpack_from(order + "I", data, off + 8)[0]
            simple.append((len(epbs), min(origlen, blen - 16)))
            epbs.append(off)
            if len(epbs) == size:
                yield flush()
        else:
            _pcapng_block(cap, data, off, btype, blen, order, base)
        off += blen
    if epbs:
        yield flush()


def _pcapng_block(cap: Capture, data, off: int, btype: int, blen: int, order: str, base: int) -> None:
    """An interface description or statistics block: into `cap.interfaces`."""
    interfaces = cap.interfaces
    if btype == IDB:
        linktype = struct.unpack_from(order + "H", data, off + 8)[0]
        intf = Interface(f"if{len(interfaces)}", linktype)
        for code, value in _options(data, off + 16, off + blen - 4, order):
            if code == IF_NAME:
                intf.name = value.rstrip(b"\0").decode("utf-8", "replace")
            elif code == IF_DESCRIPTION:
                intf.description = value.rstrip(b"\0").decode("utf-8", "replace")
            elif code == IF_TSRESOL:
                intf.per_second = _per_second(value)
        interfaces.append(intf)
    elif btype == ISB:
        iface = struct.unpack_from(order + "I", data, off + 8)[0]
        if base + iface < len(interfaces):
            intf = interfaces[base + iface]
            for code, value in _options(data, off + 20, off + blen - 4, order):
                if len(value) == 8:
                    count = struct.unpack(order + "Q", value)[0]
                    if code == ISB_IFRECV:
                        intf.received = count
                    elif code == ISB_IFDROP:
                        intf.dropped = count
                    elif code == ISB_OSDROP:
                        intf.os_dropped = count


def _options(data, off: int, end: int, order: str):
    u16 = struct.Struct(order + "HH").unpack_from
    while off + 4 <= end:
        code, length = u16(data, off)
        if code == 0:
            return
        yield code, bytes(data[off + 4:off + 4 + length])
        off += 4 + ((length + 3) & ~3)


def _per_second(if_tsresol: bytes) -> int:
    value = if_tsresol[0]
    return 2 ** (value & 0x7F) if value & 0x80 else 10 ** value


def _if_tsresol(per_second: int) -> bytes:
    decimals = len(str(per_second)) - 1
    if per_second == 10 ** decimals:
        return bytes([decimals])
    return bytes([0x80 | (per_second.bit_length() - 1)])


def _pcapng_epoch(data) -> int:
    """The whole second of the file's first packet block with a timestamp (0 if none)."""
    off, end, order = 0, len(data), "<"
    per_second: list[int] = []
    while off + 12 <= end:
        btype, blen = struct.unpack_from(order + "II", data, off)
        if btype == PCAPNG_SHB and off + 12 <= end:
            order = "<" if struct.unpack_from("<I", data, off + 8)[0] == BYTE_ORDER_MAGIC else ">"
            btype, blen = struct.unpack_from(order + "II", data, off)
            per_second = []
        if blen < 12 or off + blen > end:
            return 0
        if btype == IDB:
            units = 10 ** 6
            for code, value in _options(data, off + 16, off + blen - 4, order):
                if code == IF_TSRESOL:
                    units = _per_second(value)
            per_second.append(units)
        elif btype == EPB and blen >= 32:
            iface, hi, lo = struct.unpack_from(order + "III", data, off + 8)
            return ((hi << 32) | lo) // per_second[iface] if iface < len(per_second) else 0
        off += blen
    return 0


def _pcapng_packets(cap: Capture):
    data = cap._map
    end = len(data)
    off, number, order = 0, 0, "<"
    interfaces = cap.interfaces
    base = 0  # index of this section's first interface in `interfaces`
    per_second: list[int] = []
    epoch = cap.epoch
    block = struct.Struct("<II").unpack_from
    epb = struct.Struct("<IIIII").unpack_from
    while off + 12 <= end:
        btype, blen = block(data, off)
        if btype == PCAPNG_SHB:
            magic = struct.unpack_from("<I", data, off + 8)[0]
            order = "<" if magic == BYTE_ORDER_MAGIC else ">"
            block = struct.Struct(order + "II").unpack_from
            epb = struct.Struct(order + "IIIII").unpack_from
            btype, blen = block(data, off)
            base = len(interfaces)
            per_second = []
        if blen < 12 or off + blen > end:
            break  # truncated (still being written)
        if btype == EPB:
            iface, hi, lo, caplen, origlen = epb(data, off + 8)
            number += 1
            units = per_second[iface]
            yield (number, (((hi << 32) | lo) - epoch * units) / units, base + iface, data, off + 28, caplen,
                   origlen)
        elif btype == SPB:
            origlen = struct.unpack_from(order + "I", data, off + 8)[0]
            number += 1
            yield number, float(-epoch), base, data, off + 12, min(origlen, blen - 16), origlen  # no stamp: 1970
        else:
            _pcapng_block(cap, data, off, btype, blen, order, base)
            if btype == IDB:
                per_second.append(interfaces[-1].per_second)
        off += blen


# ---------------------------------------------------------------- writing

def _option(code: int, value: bytes) -> bytes:
    return struct.pack("<HH", code, len(value)) + value + b"\0" * (-len(value) % 4)


def _block(btype: int, body: bytes) -> bytes:
    length = 12 + len(body)
    return struct.pack("<II", btype, length) + body + struct.pack("<I", length)


class PcapngWriter:
    """pcapng out: `add_interface(...)` then `packet(...)`; timestamps in microseconds unless an
    interface asks for finer ones."""

    def __init__(self, path: str):
        self._file = open(path, "wb")  # closed by close()
        shb = struct.pack("<IHHq", BYTE_ORDER_MAGIC, 1, 0, -1) + _option(0, b"")
        self._file.write(_block(PCAPNG_SHB, shb))
        self._per_second: list[int] = []
        self.count = 0

    def add_interface(self, name: str, linktype: int, description: str = "", snaplen: int = 0,
                      per_second: int = 10 ** 6) -> None:
        """`per_second`: timestamp units per second, a power of 10 or of 2."""
        options = _option(IF_NAME, name.encode())
        if description:
            options += _option(IF_DESCRIPTION, description.encode())
        options += _option(IF_TSRESOL, _if_tsresol(per_second)) + _option(0, b"")
        self._file.write(_block(IDB, struct.pack("<HHI", linktype, 0, snaplen) + options))
        self._per_second.append(per_second)

    def packet(self, iface: int, time: float, frame, origlen: int | None = None, comment: str | None = None,
               epoch: int = 0) -> None:
        """`time`: seconds since `epoch` (a whole second since 1970), as a Capture's packets give them."""
        frame = bytes(frame)
        units = self._per_second[iface]
        ts = epoch * units + int(round(time * units))
        body = struct.pack("<IIIII", iface, ts >> 32, ts & 0xFFFFFFFF, len(frame), origlen or len(frame))
        body += frame + b"\0" * (-len(frame) % 4)
        if comment:
            body += _option(OPT_COMMENT, comment.encode()) + _option(0, b"")
        self._file.write(_block(EPB, body))
        self.count += 1

    def statistics(self, iface: int, time: float, received: int | None, dropped: int | None,
                   os_dropped: int | None = None) -> None:
        ts = int(round(time * self._per_second[iface]))  # (seconds since 1970)
        options = b""
        for code, value in ((ISB_IFRECV, received), (ISB_IFDROP, dropped), (ISB_OSDROP, os_dropped)):
            if value is not None:
                options += _option(code, struct.pack("<Q", value))
        if options:
            options += _option(0, b"")
        self._file.write(_block(ISB, struct.pack("<III", iface, ts >> 32, ts & 0xFFFFFFFF) + options))

    def close(self) -> None:
        self._file.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
