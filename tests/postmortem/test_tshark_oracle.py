"""Correctness oracle: per connection (and interface), why-route's retransmission, duplicate-ACK and
zero-window counts agree with tshark's tcp.analysis.* flags within 2 %, and the handshake RTT
equals tcp.analysis.initial_rtt within 1 ms — on a synthetic capture with loss, fast
retransmissions, timeouts and zero windows, and on a real capture of the lab router (both sides of
the NAT, a random-drop rule on ppp0)."""

import shutil

import pytest

from tests.postmortem import oracle, pmlab, synth
from tests.postmortem.test_lab_cases import RANDOM_DROP, lab  # noqa: F401  (the module's lab fixture)


def _has_tshark():
    assert shutil.which("tshark"), "tshark (Debian's package) is part of the set-up"


@pytest.mark.parametrize("seed,loss", [(1, 0.01), (7, 0.03)])
def test_synthetic_capture_agrees_with_tshark(tmp_path, seed, loss):
    _has_tshark()
    path = str(tmp_path / "synth.pcap")
    synth.capture(path, connections=24, segments=400, seed=seed, loss=loss)
    assert oracle.disagreements(path) == []
    counts = oracle.tshark_counts(path)
    totals = oracle.totals(counts)
    # the capture really exercises what is compared
    assert totals["retransmissions"] >= 20 and totals["dup_acks"] >= 60 and totals["zero_windows"] >= 4


def test_lab_capture_across_nat_agrees_with_tshark(lab, tmp_path):  # noqa: F811
    _has_tshark()
    lab.run("route", ["nft", "-f", "-"], input=RANDOM_DROP)
    try:
        pmlab.transfer(lab, tmp_path / "run", server="sink", client="upload", size=600_000, timeout=8)
    finally:
        lab.run("route", ["nft", "delete", "table", "inet", "pmloss"])
    path = str(tmp_path / "run" / "capture.pcapng")
    assert oracle.disagreements(path) == []
    counts = oracle.tshark_counts(path)
    interfaces = {key[0] for key in counts}
    assert {"br-lan", "ppp0"} <= interfaces
    assert oracle.totals(counts)["retransmissions"] >= 1
