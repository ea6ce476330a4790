"""RTT samples from TCP timestamps, computed for a whole batch at once, are the same whatever the
batch boundaries: a TSval older than one of an earlier batch starts no timer (it was not newer
than all before it), and an echo that came before its TSval was first sent stops no timer."""

import struct

import pytest

from tests.postmortem import synth
from tracer.capture import pcapio, tcp

T0 = 1_700_000_000.0
C, S = bytes([10, 8, 0, 1]), bytes([10, 8, 0, 2])
# (to the server?, flags, payload bytes, TSval, TSecr), one a millisecond
PACKETS = [
    (True, 0x02, 0, 100, 0),  # 1 SYN: the client's timer for 100
    (False, 0x12, 0, 500, 100),  # 2 SYN/ACK stops 100; the server's 500
    (True, 0x10, 0, 101, 500),  # 3 stops 500; the client's 101 (never echoed)
    (True, 0x18, 100, 104, 500),  # 4 the client's 104
    (True, 0x18, 100, 102, 500),  # 5 older than 104: no timer
    (True, 0x18, 100, 103, 999),  # 6 older than 104 too (also after 102); echoes 999 before the server sends it
    (False, 0x10, 0, 501, 103),  # 7 echoes 103, never timed; the server's 501 (never echoed)
    (False, 0x10, 0, 502, 104),  # 8 stops 104; the server's 502
    (True, 0x18, 100, 105, 502),  # 9 stops 502; the client's 105
    (False, 0x10, 0, 999, 105),  # 10 stops 105; the server's 999: its only echo came before, it runs on
    (True, 0x10, 0, 106, 502),  # 11 the client's 106 (never echoed)
]


def _write(path: str) -> list[float]:
    seq = {True: 1, False: 1}
    frames, times = [], []
    for i, (to_server, flags, payload, tsval, tsecr) in enumerate(PACKETS):
        t = T0 + (i + 1) * 0.001
        ports = (40000, 80) if to_server else (80, 40000)
        number = seq[to_server] - 1 if flags & 0x02 else seq[to_server]
        head = synth._tcp(*ports, number, seq[not to_server], flags, 502,
                          b"\x01\x01\x08\x0a" + struct.pack("!II", tsval, tsecr))
        ip = synth._ip(C if to_server else S, S if to_server else C, 20 + len(head) + payload, i)
        frames.append((t, synth.ETH + ip + head + b"\0" * payload, 14 + 20 + len(head) + payload))
        seq[to_server] += payload
        times.append(round(t, 6))
    synth.write_pcap(path, frames, snaplen=96)
    return times


@pytest.mark.parametrize("batch", [*range(1, len(PACKETS) + 1), pcapio.BATCH])
def test_timestamp_samples_do_not_depend_on_batch_boundaries(tmp_path, monkeypatch, batch):
    path = str(tmp_path / "ts.pcap")
    t = [None, *_write(path)]  # t[k]: packet k's time
    monkeypatch.setattr(pcapio, "BATCH", batch)
    client, server = tcp.analyse(pcapio.read(path)).sides[0].h
    assert client.ts_rtt == pytest.approx([t[2] - t[1], t[8] - t[4], t[10] - t[9]], abs=1e-6)
    assert server.ts_rtt == pytest.approx([t[3] - t[2], t[9] - t[8]], abs=1e-6)
    # the timers still running at the end
    assert sorted(client.ts_pending) == [101, 106] and sorted(server.ts_pending) == [501, 999]
