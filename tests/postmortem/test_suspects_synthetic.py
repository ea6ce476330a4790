"""Suspects on synthetic captures: queueing delay (from data/ACK pairs, and from TCP timestamps when
retransmissions blind the pairs), loss beyond the capture point (SACK holes as evidence, re-sent
SACKed data not lost), loss inside the router on two sides (SACK holes confirming it), and no false
alarm on a clean transfer."""

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


def _loss_and_queue(tmp_path, **kwargs):
    """150 segments into a queue that grows 2 ms a segment, 5 % lost: the retransmissions leave
    the data/ACK pairs few and blind to the growth (Karn's rule)."""
    path = str(tmp_path / "q.pcap")
    synth.write_pcap(path, synth.transfer(1, 1_700_000_000.0, 150, random.Random(5), gap=0.001, queue_growth=0.002,
                                          loss=0.05, sack=True, **kwargs), snaplen=100)
    return postmortem.run(path).connections[0]


def test_timestamps_see_the_queue_when_retransmissions_hide_it_from_data_ack_pairs(tmp_path):
    blind = _loss_and_queue(tmp_path)
    assert "PM006" not in [s.id for s in blind.suspects]  # the data/ACK pairs alone do not show it
    conn = _loss_and_queue(tmp_path, timestamps=True)
    pm006 = next(s for s in conn.suspects if s.id == "PM006")
    assert conn.verdict == "slow" and "RTT grows with the transfer (queueing)" in conn.reasons
    stamps = postmortem.connection_dict(conn)["rtt"]["q.pcap"]["timestamps"]["to_server"]
    assert stamps["samples"] > 100 and stamps["p95"] > 250  # the queue's growth: 2 ms per segment
    assert pm006.summary.startswith(f"RTT to the server measured on q.pcap: min 10.0 ms, p95 {stamps['p95']:.1f} ms "
                                    "(TCP timestamps)")
    texts = [e[3] for e in pm006.evidence]
    assert (f"TCP timestamps to the server: min 10.0 / median {stamps['median']:.1f} / p95 {stamps['p95']:.1f} ms "
            f"({stamps['samples']} samples)") in texts
    assert any(t.startswith("data/ACK pairs to the server: ") for t in texts)
    assert (f"the data/ACK pairs miss it: {conn.first.h[0].resends} retransmitted segment(s) give no sample "
            "(Karn's rule); timestamps do") in texts


def _sacked(tmp_path, resend: int):
    path = str(tmp_path / f"s{resend}.pcap")
    synth.write_pcap(path, synth.transfer(1, 1_700_000_000.0, 600, random.Random(5), loss=0.02, sack=True,
                                          resend_sacked=resend), snaplen=100)
    return postmortem.run(path).connections[0]


def test_resent_sacked_data_is_no_loss_and_sack_holes_are_evidence_beyond(tmp_path):
    plain, resent = _sacked(tmp_path, 0), _sacked(tmp_path, 2)
    losses = plain.losses(0).beyond
    assert losses >= 5 and plain.first.h[0].sack_holes == losses  # one hole a loss, signalled by SACK
    h = resent.first.h[0]
    # the same losses; the two SACKed segments re-sent after each are counted, not lost
    assert resent.losses(0).beyond == losses and h.sacked_retrans == 2 * losses
    assert h.retransmissions == plain.first.h[0].retransmissions + 2 * losses
    top = resent.suspects[0]
    assert top.id == "PM005" and top.score == min(75, 40 + 2 * losses + 5)
    assert f"{losses} segment(s) to server left s2.pcap" in top.summary
    assert f"{2 * losses} more re-sent data the receiver had SACKed (spurious, not counted)" in top.summary
    texts = [e[3] for e in top.evidence]
    assert texts[:2] == [f"the receiver's SACK blocks, passing s2.pcap, signalled {losses} hole(s): data that had "
                         "left the router did not arrive",
                         f"{2 * losses} retransmission(s) of data the receiver had SACKed: it had arrived, no loss"]
    assert f"{2 * losses} of data the receiver had SACKed" in resent.reasons[0]
    # the per-packet evidence lists the same lost segments as without the spurious re-sends
    def lost(conn):
        return [e[3].split(" (")[0] for e in conn.losses(0).evidence]

    assert lost(resent) == lost(plain) and len(lost(plain)) == min(losses, 20)


def test_sack_holes_confirm_the_segments_the_router_did_not_forward(tmp_path):
    path = str(tmp_path / "r.pcapng")
    synth.write_pcapng(path, synth.through_router(synth.transfer(1, 1_700_000_000.0, 600, random.Random(5),
                                                                 loss=0.02, sack=True)))
    conn = postmortem.run(path).connections[0]
    assert conn.names == ["br-lan", "ppp0"]
    loss = conn.losses(0)
    assert loss.inside >= 5 and loss.beyond == loss.before == 0
    top = conn.suspects[0]
    assert top.id == "PM002"
    assert top.evidence[0] == (None, None, "ppp0", f"the receiver's SACK blocks, passing ppp0, signalled "
                               f"{loss.inside} hole(s): the segments missing there never reached it")
    assert all(e[2] == "ppp0" and "never left on ppp0" in e[3] for e in top.evidence[1:])


def test_timestamps_of_a_direction_without_data_do_not_make_a_queue(tmp_path):
    """An upload's server sends only ACKs: their TSvals are echoed when the client next sends, so
    their samples hold the client's own pauses (a starved process), not a queue on the path."""
    from tracer.capture.suspects.pm006_queueing_delay import QueueingDelay

    conn = _run(tmp_path, timestamps=True)
    acks = conn.last.h[1]
    assert acks.data_packets == 0 and conn.suspects == []
    acks.ts_rtt = [0.010 + 0.01 * i for i in range(40)]  # echoes ever later: 10 ms to 400 ms
    assert QueueingDelay().detect(conn, postmortem.Context(None)) is None
    acks.data_packets = 40  # the same samples in a direction that carries data: a queue
    assert QueueingDelay().detect(conn, postmortem.Context(None)).id == "PM006"
