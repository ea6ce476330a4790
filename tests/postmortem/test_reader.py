"""The pcap/pcapng reader and writer, against tshark; the post-mortem CLI's input handling."""

import struct
import subprocess

from tests.helpers.cli import why_route
from tests.postmortem import synth
from tracer.capture import pcapio, postmortem, tcp


def test_pcapng_written_with_interfaces_and_comments_reads_back_in_tshark(tmp_path):
    path = str(tmp_path / "w.pcapng")
    frames = synth.transfer(3, 1_700_000_000.0, 20, __import__("random").Random(3))
    with pcapio.PcapngWriter(path) as out:
        out.add_interface("br-lan", 1, "br-lan in netns x")
        out.add_interface("ppp0", 1, "ppp0 in netns x")
        for i, (t, frame, origlen) in enumerate(frames):
            out.packet(i % 2, t, frame, origlen, comment="first" if i == 0 else None)
    cap = pcapio.read(path)
    got = list(cap.packets())
    assert len(got) == len(frames)
    assert [i.name for i in cap.interfaces] == ["br-lan", "ppp0"]
    assert cap.epoch == 1_700_000_000 and abs(cap.epoch + got[0][1] - frames[0][0]) < 1e-6
    out = subprocess.run(["tshark", "-r", path, "-T", "fields", "-e", "frame.interface_name", "-e", "frame.comment"],
                         capture_output=True, text=True, check=True).stdout.splitlines()
    assert out[0] == "br-lan\tfirst" and out[1] == "ppp0\t" and len(out) == len(frames)


def test_pcap_nanoseconds_and_a_truncated_last_packet(tmp_path):
    path = tmp_path / "n.pcap"
    frames = synth.transfer(1, 1_700_000_000.123456789, 5, __import__("random").Random(1))
    body = b""
    stamps = []
    for t, frame, origlen in frames:
        ns = int(round(t * 1e9))
        stamps.append(ns)
        body += struct.pack("<IIII", ns // 10**9, ns % 10**9, len(frame), origlen) + frame
    path.write_bytes(struct.pack("<IHHiIII", 0xA1B23C4D, 2, 4, 0, 0, 65535, 1) + body[:-10])
    cap = pcapio.read(str(path))
    got = list(cap.packets())
    assert len(got) == len(frames) - 1
    # times since the first packet's second keep the nanoseconds (as seconds since 1970 they would not)
    assert cap.epoch == 1_700_000_000
    assert [round(t * 1e9) for _n, t, *_ in got] == [ns - cap.epoch * 10 ** 9 for ns in stamps[:-1]]
    analysis = tcp.analyse(pcapio.read(str(path)))
    assert len(analysis.sides) == 1 and analysis.sides[0].client == ("10.1.0.1", 20001)


def test_batches_hold_the_packets_one_by_one_reading_gives_whatever_their_size(tmp_path):
    """The record chain walked per batch (pcap and pcapng): every batch size gives the packets
    `packets()` gives, also when the last record is cut short or claims more bytes than the file has."""
    frames = synth.transfer(2, 1_700_000_000.0, 6, __import__("random").Random(2))
    pcap = tmp_path / "b.pcap"
    synth.write_pcap(str(pcap), frames)
    pcapng = tmp_path / "b.pcapng"
    with pcapio.PcapngWriter(str(pcapng)) as out:
        out.add_interface("eth0", 1)
        for t, frame, origlen in frames:
            out.packet(0, t, frame[:66], origlen)
    whole = pcap.read_bytes()
    cut = tmp_path / "cut.pcap"
    cut.write_bytes(whole[:-5])  # the last packet is still being written
    claims = bytearray(whole)
    last_record = list(pcapio.read(str(pcap)).packets())[-1][4] - 16
    struct.pack_into("<I", claims, last_record + 8, 10_000)  # the last caplen reaches beyond the end
    (tmp_path / "claims.pcap").write_bytes(bytes(claims))
    for path, count in ((pcap, len(frames)), (pcapng, len(frames)), (cut, len(frames) - 1),
                        (tmp_path / "claims.pcap", len(frames) - 1)):
        cap = pcapio.read(str(path))
        expected = [(number, time, off, caplen) for number, time, _i, _b, off, caplen, _o in cap.packets()]
        assert len(expected) == count
        for size in (1, 2, 3, count - 1, count, count + 1, pcapio.BATCH):
            got = []
            for batch in cap.batches(size):
                assert len(batch.offset) <= size
                got += [(batch.first + i, time, off, caplen) for i, (time, off, caplen) in
                        enumerate(zip(batch.time.tolist(), batch.offset.tolist(), batch.caplen.tolist(), strict=True))]
            assert [(n, round(t, 6), o, c) for n, t, o, c in got] == [(n, round(t, 6), o, c) for n, t, o, c in expected]


def test_not_a_capture_is_a_usage_error(tmp_path):
    (tmp_path / "x.pcap").write_text("hello")
    result = why_route("postmortem", str(tmp_path / "x.pcap"))
    assert result.returncode == 2 and "is not a pcap or pcapng file" in result.stderr
    result = why_route("postmortem", str(tmp_path / "none.pcap"))
    assert result.returncode == 2 and "no such file" in result.stderr


def test_flow_selects_connections_and_memory_is_per_connection(tmp_path):
    path = str(tmp_path / "s.pcap")
    synth.capture(path, connections=6, segments=200, seed=2)
    report = postmortem.run(path, flow="10.1.0.3 10.2.0.1")
    assert [c.lan[0] for c in report.connections] == ["10.1.0.3"]
    # what a connection keeps is bounded, whatever its length
    long = str(tmp_path / "long.pcap")
    synth.capture(long, connections=1, segments=20_000, seed=2, loss=0.02)
    side = tcp.analyse(pcapio.read(long)).sides[0]
    for half in side.h:
        assert len(half.ev_retrans) <= tcp.EVIDENCE and len(half.gaps) <= tcp.MAX_GAPS
        assert len(half.rtt) <= tcp.RTT_SAMPLES


def test_annotated_capture_carries_verdicts_and_suspects_as_frame_comments(tmp_path):
    path = str(tmp_path / "s.pcap")
    synth.capture(path, connections=5, segments=300, seed=4, loss=0.02)
    out = str(tmp_path / "a.pcapng")
    result = why_route("postmortem", path, "--annotate", out)
    assert result.returncode == 1, result.stderr  # slow connections found
    lines = subprocess.run(["tshark", "-r", out, "-Y", "frame.comment", "-T", "fields", "-e", "frame.number",
                            "-e", "frame.comment"], capture_output=True, text=True, check=True).stdout.splitlines()
    comments = dict(line.split("\t", 1) for line in lines)
    assert sum("why-route: 10.1.0." in c for c in comments.values()) == 5
    suspect = [n for n, c in comments.items() if "why-route PM005" in c]
    assert suspect
    total = subprocess.run(["tshark", "-r", out, "-T", "fields", "-e", "frame.number"], capture_output=True,
                           text=True, check=True).stdout.split()
    assert len(total) == sum(1 for _ in pcapio.read(path).packets())


def test_html_report_is_self_contained_with_a_time_sequence_graph_per_suspect_connection(tmp_path):
    path = str(tmp_path / "s.pcap")
    synth.capture(path, connections=4, segments=300, seed=4, loss=0.02)
    out = tmp_path / "r.html"
    result = why_route("postmortem", path, "--report", str(out))
    assert result.returncode == 1, result.stderr
    page = out.read_text()
    report = postmortem.run(path)
    bad = [c for c in report.connections if c.verdict != "ok"]
    assert bad
    assert page.count("<svg") == len(bad)
    assert page.count("Time–sequence graph") == len(bad)
    assert "retransmission on s.pcap" in page  # the legend names the marks
    # nothing to fetch: no images, stylesheets or scripts by reference
    assert "<img" not in page and "<link" not in page and "<script" not in page and "xlink:href=\"http" not in page
