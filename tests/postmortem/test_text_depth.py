"""`why-route postmortem` as text: the RTT by source (data/ACK pairs, TCP timestamps) per interface
and direction as an aligned table, and what SACK showed — and nothing of either when the capture
has none. The numbers are checked against the same run's JSON and against the synthetic model."""

import json
import random

import pytest

from tests.helpers.cli import why_route
from tests.postmortem import synth

T0 = 1_700_000_000.0


def _both(path) -> tuple[list[str], dict]:
    text = why_route("postmortem", str(path))
    assert text.returncode in (0, 1), text.stderr
    doc = json.loads(why_route("postmortem", str(path), "--json").stdout)
    assert len(doc["connections"]) == 1
    return text.stdout.splitlines(), doc["connections"][0]


def _table(lines: list[str]) -> list[str]:
    start = next(i for i, line in enumerate(lines) if line.startswith("  RTT (ms)"))
    end = start + 1
    while end < len(lines) and lines[end].startswith("    "):
        end += 1
    return lines[start:end]


def _row(label: str, source: str, r: dict, width: int) -> str:
    return (f"    {label:<{width}}  {source:<10}  {r['samples']:>7}  {r['min']:>7.1f}  {r['median']:>7.1f}  "
            f"{r['p95']:>7.1f}")


def test_rtt_by_source_per_interface_is_an_aligned_table(tmp_path):
    path = tmp_path / "ts.pcap"
    synth.write_pcap(str(path), synth.transfer(1, T0, 400, random.Random(3), timestamps=True), snaplen=100)
    lines, conn = _both(path)
    rtt = conn["rtt"]["ts.pcap"]
    # the model: the server answers 10 ms after each segment; the client echoes with its next one
    assert rtt["to_server"]["min"] == pytest.approx(10.0, abs=0.002)
    assert rtt["timestamps"]["to_server"]["min"] == pytest.approx(10.0, abs=0.002)
    assert rtt["timestamps"]["to_client"]["p95"] <= 0.2 + 0.002 and rtt["to_client"] is None
    table = _table(lines)
    width = len("ts.pcap→server")
    assert table == [
        f"  {'RTT (ms)':<{width + 2}}  source      samples      min   median      p95",
        _row("ts.pcap→server", "data/ACK", rtt["to_server"], width),
        _row("", "timestamps", rtt["timestamps"]["to_server"], width),
        _row("ts.pcap→client", "timestamps", rtt["timestamps"]["to_client"], width),
    ]
    # every number sits under its column's heading
    for heading in ("samples", "min", "median", "p95"):
        right = table[0].index(heading) + len(heading)
        assert all(row[right - 1] != " " and (len(row) == right or row[right] == " ") for row in table[1:]), heading
    assert not any("SACK" in line for line in lines)  # no SACK in this capture: not a word of it


def test_sack_holes_and_resent_sacked_data_are_said_once_per_interface_and_direction(tmp_path):
    path = tmp_path / "sack.pcap"
    synth.write_pcap(str(path), synth.transfer(1, T0, 600, random.Random(5), loss=0.02, sack=True, resend_sacked=2),
                     snaplen=100)
    lines, conn = _both(path)
    r = conn["retransmissions"]["sack.pcap"]
    holes, sacked = r["sack_holes"]["to_server"], r["sacked"]["to_server"]
    assert holes >= 5 and sacked == 2 * holes
    assert [line for line in lines if line.startswith("  SACK")] == [
        f"  SACK on sack.pcap to the server: the receiver signalled {holes} hole(s), {sacked} retransmission(s) of "
        "data it had SACKed (spurious: not counted as loss)"]
    beyond = conn["retransmissions"]["where"]["to_server"]["beyond_router"]
    assert beyond == holes  # the re-sent SACKed segments are not among the losses
    assert f"  losses to the server: 0 inside the router, {beyond} beyond it, 0 before it" in lines
    assert any(line.startswith("  why: ") and f", {sacked} of data the receiver had SACKed)" in line for line in lines)
    # no timestamps in this capture: the table has the data/ACK row only
    assert [row.split()[1] for row in _table(lines)[1:]] == ["data/ACK"]


def test_both_sides_of_the_router_each_have_their_rows(tmp_path):
    path = tmp_path / "r.pcapng"
    synth.write_pcapng(str(path), synth.through_router(synth.transfer(1, T0, 600, random.Random(5), loss=0.02,
                                                                      sack=True, timestamps=True)))
    lines, conn = _both(path)
    labels = [row[4:19].strip() for row in _table(lines)[1:]]
    assert labels == ["br-lan→server", "", "br-lan→client", "ppp0→server", "", "ppp0→client"]
    # the server's SACKs pass both sides: one line for the two
    holes = {name: conn["retransmissions"][name]["sack_holes"]["to_server"] for name in ("br-lan", "ppp0")}
    assert holes["br-lan"] == holes["ppp0"] > 0
    assert [line for line in lines if line.startswith("  SACK")] == [
        f"  SACK on br-lan and ppp0 to the server: the receiver signalled {holes['ppp0']} hole(s)"]


def test_a_capture_without_rtt_samples_has_no_table(tmp_path):
    path = tmp_path / "syn.pcap"
    packets = synth.transfer(1, T0, 0, random.Random(1))[:1]  # a lone SYN
    synth.write_pcap(str(path), packets)
    lines, _conn = _both(path)
    assert not any(line.startswith("  RTT") or "SACK" in line for line in lines)
