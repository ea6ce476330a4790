"""The bulk analysis keeps the same evidence as the one-by-one analysis when segment sizes vary:
the first data segments, the first large ones (above tcp.BIG, for MTU questions) and the
size counts, whichever runs and batches the segments fall in; and runs of one or two fast
segments (gone through Side.segment) change nothing either."""

import pytest

from tests.postmortem import synth
from tests.postmortem.test_bulk_analysis import _differences
from tracer.capture import pcapio, tcp

SMALL, LARGE = 500, 1400  # payload bytes: IP length 540 (not large) and 1440 (large)


def _mixed_upload(path: str) -> list[int]:
    """One upload: 30 small segments, then small and large ones mixed, every one ACKed, every fourth
    sent twice, a duplicate ACK now and then, a FIN each way; returns the size of each data segment sent."""
    client, server = bytes([10, 9, 0, 1]), bytes([10, 9, 0, 2])
    packets, t, ident = [], 1_700_000_000.0, 0

    def send(to_server: bool, seq: int, ack: int, flags: int, payload: int = 0, options: bytes = b""):
        nonlocal t, ident
        t += 0.0005
        ident += 1
        ports = (40000, 80) if to_server else (80, 40000)
        head = synth._tcp(*ports, seq, ack, flags, 502, options)
        ip = synth._ip(client if to_server else server, server if to_server else client, 20 + len(head) + payload,
                       ident)
        packets.append((t, synth.ETH + ip + head + b"\0" * payload, 14 + 20 + len(head) + payload))

    syn = b"\x02\x04\x05\xb4\x01\x03\x03\x07"
    send(True, 0, 0, 0x02, options=syn)
    send(False, 5000, 1, 0x12, options=syn)
    send(True, 1, 5001, 0x10)
    sizes = [SMALL] * 30 + [LARGE if i % 3 else SMALL for i in range(170)]
    sent = []
    seq = 1
    for i, size in enumerate(sizes):
        for _ in range(2 if i % 4 == 1 else 1):  # every fourth sent again: a slow segment between runs
            send(True, seq, 5001, 0x18, size)
            sent.append(size)
        seq += size
        send(False, 5001, seq, 0x10)
        if i % 17 == 5:
            send(False, 5001, seq, 0x10)  # a duplicate ACK
    send(True, seq, 5001, 0x11)
    send(False, 5001, seq + 1, 0x11)
    send(True, seq + 1, 5002, 0x10)
    synth.write_pcap(path, packets, snaplen=80)
    return sent


@pytest.mark.parametrize("batch", [7, 13, 97, pcapio.BATCH])
def test_evidence_and_sizes_of_mixed_segments_are_those_of_the_one_by_one_analysis(tmp_path, monkeypatch, batch):
    monkeypatch.setattr(pcapio, "BATCH", batch)
    path = str(tmp_path / "mixed.pcap")
    sent = _mixed_upload(path)
    assert _differences(path) == []
    client, server = tcp.analyse(pcapio.read(path)).sides[0].h
    # what the report shows: the first data segments, the first large ones, the sizes seen
    assert [length for _n, _t, _s, length, _ip in client.ev_data] == sent[:tcp.EVIDENCE]
    assert [ip_len for _n, _t, ip_len in client.big_first] == [LARGE + 40] * tcp.EVIDENCE
    assert client.big == {LARGE + 40: sent.count(LARGE)} and client.max_len == LARGE + 40
    assert client.data_packets == len(sent) and client.retransmissions == len(sent) - 200
    assert server.dupacks == sum(1 for i in range(200) if i % 17 == 5)
    assert client.fin is not None and server.fin is not None
