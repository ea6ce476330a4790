"""The bulk analysis (runs of in-order segments applied at once, tcp._Batch) leaves every connection
in exactly the state the one-by-one analysis (each segment through Side.segment) does — on
captures with loss, fast retransmissions, timeouts, zero windows and queueing, whether a
connection lies in one batch or spans many; and batch boundaries change nothing for the TCP
timestamp and SACK bookkeeping either."""

import math

import pytest

from tests.postmortem import synth
from tracer.capture import pcapio, tcp

SIDE_FIELDS = ("iface", "client", "server", "first_rtt", "synack_time", "ack_time", "syn_for_rtt", "first",
               "number_first", "scaled")


def _same(a, b) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-9)
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    return a == b


def _differences(path: str, reference=None) -> list[str]:
    """What differs between the bulk analysis of `path` and `reference` (by default: the one-by-one one)."""
    bulk = tcp.analyse(pcapio.read(path))
    reference = reference or tcp.analyse(pcapio.read(path), one_by_one=True)
    assert len(bulk.sides) == len(reference.sides) > 0
    out = []
    for mine, theirs in zip(bulk.sides, reference.sides, strict=True):
        for name in SIDE_FIELDS:
            if not _same(getattr(mine, name), getattr(theirs, name)):
                out.append(f"{mine.tuple} {name}: {getattr(mine, name)!r} != {getattr(theirs, name)!r}")
        for d in (0, 1):
            for name in tcp.Half.__slots__:
                if not _same(getattr(mine.h[d], name), getattr(theirs.h[d], name)):
                    out.append(f"{mine.tuple} half {d} {name}: {getattr(mine.h[d], name)!r} != "
                               f"{getattr(theirs.h[d], name)!r}")
    return out


@pytest.mark.parametrize("batch", [pcapio.BATCH, 97])
def test_bulk_runs_leave_the_state_of_the_one_by_one_analysis(tmp_path, monkeypatch, batch):
    monkeypatch.setattr(pcapio, "BATCH", batch)
    path = str(tmp_path / "s.pcap")
    synth.capture(path, connections=12, segments=300, seed=5, loss=0.03)
    assert _differences(path) == []
    analysis = tcp.analyse(pcapio.read(path))
    # what is compared is exercised: duplicate ACKs, retransmissions, zero windows, RTT samples
    assert sum(s.h[1].dupacks for s in analysis.sides) >= 50
    assert sum(s.h[0].retransmissions for s in analysis.sides) >= 5
    assert sum(s.h[1].zero_windows for s in analysis.sides) >= 2
    assert all(s.h[0].rtt for s in analysis.sides)


def test_bulk_runs_with_a_growing_queue(tmp_path):
    import random

    rng = random.Random(3)
    packets = synth.transfer(1, 1_700_000_000.0, 400, rng, queue_growth=0.0005, loss=0.01)
    path = str(tmp_path / "q.pcap")
    synth.write_pcap(path, packets)
    assert _differences(path) == []
    rtt = tcp.analyse(pcapio.read(path)).sides[0].h[0].rtt
    assert max(rtt) > 4 * min(rtt)


def test_batch_boundaries_change_nothing_for_timestamps_and_sack(tmp_path, monkeypatch):
    from scapy.all import wrpcap

    from tests.postmortem import test_tcp_depth as crafted

    path = str(tmp_path / "c.pcap")
    # (the two on the same ports, one after the other in the file: the second's SYN restarts the connection)
    wrpcap(path, crafted._timestamped(server_delay=0.005, client_delay=0.0015) + crafted._sacked_upload())
    monkeypatch.setattr(pcapio, "BATCH", 5)
    in_small_batches = tcp.analyse(pcapio.read(path))
    monkeypatch.undo()
    assert _differences(path, in_small_batches) == []
    assert sum(s.h[0].sack_holes for s in in_small_batches.sides) == 1
    assert sum(len(s.h[0].ts_rtt) for s in in_small_batches.sides) == 40
