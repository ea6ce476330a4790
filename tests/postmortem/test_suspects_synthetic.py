"""Suspects on synthetic single-point captures: queueing delay, loss beyond the capture point, and
no false alarm on a clean transfer."""

import random

from tests.postmortem import synth
from tracer.capture import postmortem


def _run(tmp_path, **kwargs):
    path = str(tmp_path / "one.pcap")
    synth.write_pcap(path, synth.transfer(1, 1_700_000_000.0, 600, random.Random(5), **kwargs))
    report = postmortem.run(path)
    assert len(report.connections) == 1
    return report.connections[0]


def test_growing_rtt_is_queueing_delay(tmp_path):
    conn = _run(tmp_path, queue_growth=0.0005, gap=0.002)
    assert [s.id for s in conn.suspects] == ["PM006"]
    assert conn.verdict == "slow"
    assert "RTT grows" in " ".join(conn.reasons)


def test_loss_after_the_capture_point_is_beyond_it(tmp_path):
    conn = _run(tmp_path, loss=0.02)
    assert conn.suspects[0].id == "PM005"
    assert conn.verdict == "slow"
    assert conn.losses(0).beyond == conn.first.h[0].retransmissions >= 3


def test_a_clean_transfer_is_ok_without_suspects(tmp_path):
    conn = _run(tmp_path)
    assert conn.verdict == "ok" and conn.suspects == [] and conn.reasons == []
    assert conn.first.handshake["initial_rtt"] - 0.0101 < 1e-6
