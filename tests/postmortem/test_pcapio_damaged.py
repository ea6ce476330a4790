"""Damaged captures: one clear line and exit status 2, never a traceback — also when random bytes of
a capture (pcap and pcapng, IPv4 and IPv6 with extension headers, fragments, TCP options) are
overwritten or the file is cut short."""

import random
import struct

from scapy.all import wrpcap

from tests.helpers.cli import why_route
from tests.postmortem import synth
from tests.postmortem import test_tcp_depth as crafted
from tracer.capture import pcapio, tcp
from tracer.errors import UsageError


def test_a_packet_of_an_undescribed_interface_is_one_clear_line(tmp_path):
    path = tmp_path / "bad.pcapng"
    frames = synth.transfer(1, 1_700_000_000.0, 3, random.Random(1))
    with pcapio.PcapngWriter(str(path)) as out:
        out.add_interface("eth0", 1)
        for t, frame, origlen in frames:
            out.packet(0, t, frame, origlen)
    data = bytearray(path.read_bytes())
    blocks, at = [], 0
    while at < len(data):
        kind, length = struct.unpack_from("<II", data, at)
        blocks.append((kind, at))
        at += length
    # the third enhanced packet block names interface 5: only interface 0 is described
    third = [at for kind, at in blocks if kind == pcapio.EPB][2]
    struct.pack_into("<I", data, third + 8, 5)
    path.write_bytes(bytes(data))
    result = why_route("postmortem", str(path))
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"why-route: error: {path}: packet 3 names interface 5, which the file does not describe (a damaged capture)"]


def test_random_damage_never_breaks_the_analysis(tmp_path):
    packets = (crafted._upload(True, extensions=True) + crafted._upload(True, fragmented=True)
               + crafted._upload(False, fragmented=True) + crafted._sacked_upload()
               + crafted._timestamped(server_delay=0.005, client_delay=0.001))
    pcap = tmp_path / "c.pcap"
    wrpcap(str(pcap), packets)
    pcapng = tmp_path / "c.pcapng"
    with pcapio.PcapngWriter(str(pcapng)) as out:
        out.add_interface("eth0", 1)
        out.add_interface("raw0", 101)
        source = pcapio.read(str(pcap))
        for number, t, _iface, buf, off, caplen, origlen in source.packets():
            raw = number % 2  # every other packet without its Ethernet header, on a raw-IP interface
            out.packet(raw, t, bytes(buf[off + 14 * raw:off + caplen]), origlen, epoch=source.epoch)
    rng = random.Random(7)
    analysed = 0
    for source in (pcap, pcapng):
        original = source.read_bytes()
        for _ in range(150):
            damaged = bytearray(original)
            for _ in range(rng.randint(1, 20)):
                damaged[rng.randrange(24, len(damaged))] = rng.randrange(256)
            if rng.random() < 0.3:
                damaged = damaged[:rng.randrange(24, len(damaged))]
            path = tmp_path / f"damaged{source.suffix}"
            path.write_bytes(bytes(damaged))
            try:
                tcp.analyse(pcapio.read(str(path)))
                analysed += 1
            except UsageError:
                pass  # said in one line by the CLI
    assert analysed > 250
