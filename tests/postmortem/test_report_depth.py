"""`--report`: the time–sequence graph marks the receiver's SACK blocks and an RTT-over-time panel
shows the data/ACK and timestamp samples of each side (IPv4 and IPv6 with extension headers);
`--annotate`: the first packet's comment gives the RTT by source and what SACK showed, and each
suspect's summary. Checked on the SVG's element ids (what the report sets), counted against
tshark's dissection, the crafted packets and the run's JSON."""

import json
import random
import subprocess
import xml.etree.ElementTree as ET

from tests.helpers.cli import why_route
from tests.postmortem import synth

T0 = 1_700_000_000.0
SVG = "{http://www.w3.org/2000/svg}"


def _graphs(tmp_path, path) -> list[dict]:
    """Per graph on the page: {element id: the element}."""
    out = tmp_path / "r.html"
    result = why_route("postmortem", str(path), "--report", str(out))
    assert result.returncode == 1, result.stderr
    page = out.read_text()
    graphs, at = [], 0
    while (at := page.find("<svg", at)) >= 0:
        end = page.index("</svg>", at) + len("</svg>")
        root = ET.fromstring(page[at:end])
        graphs.append({e.get("id"): e for e in root.iter() if e.get("id")})
        at = end
    return graphs


def _marks(element) -> int:
    """Scatter points are <use> elements, line segments <path>s (outside the markers' <defs>)."""
    uses = sum(1 for _ in element.iter(f"{SVG}use"))
    return uses or sum(1 for p in element.iter(f"{SVG}path") if p.get("id") is None)


def _tshark(path, *fields, display) -> list[list[str]]:
    argv = ["tshark", "-n", "-r", str(path), "-Y", display, "-T", "fields", "-E", "separator=\t"]
    for f in fields:
        argv += ["-e", f]
    out = subprocess.run(argv, capture_output=True, text=True, check=True, timeout=60).stdout
    return [line.split("\t") for line in out.splitlines()]


def _json(path) -> dict:
    return json.loads(why_route("postmortem", str(path), "--json").stdout)["connections"][0]


def test_sack_blocks_and_rtt_samples_by_source_are_drawn(tmp_path):
    path = tmp_path / "q.pcap"
    synth.write_pcap(str(path), synth.transfer(1, T0, 150, random.Random(5), gap=0.001, queue_growth=0.002, loss=0.05,
                                               sack=True, timestamps=True), snaplen=100)
    (graph,) = _graphs(tmp_path, path)
    # one bar per SACK block the receiver sent (tshark counts them)
    blocks = sum(len(le.split(",")) for (le,) in _tshark(path, "tcp.options.sack_le", display="tcp.options.sack_le"))
    assert blocks > 0 and _marks(graph["c0-sack-q.pcap"]) == blocks
    # the timestamp samples are those the analysis pairs (ePPing's pairing), both ways
    stamps = _json(path)["rtt"]["q.pcap"]["timestamps"]
    assert _marks(graph["c0-rtt-timestamps-far-q.pcap"]) == stamps["to_server"]["samples"]
    assert _marks(graph["c0-rtt-timestamps-near-q.pcap"]) == stamps["to_client"]["samples"]
    # tcptrace's data/ACK samples: an ACK for exactly the end of a segment sent once
    assert _marks(graph["c0-rtt-data-q.pcap"]) > 0
    for kind in ("data", "ack", "window", "retransmissions"):
        assert f"c0-{kind}-q.pcap" in graph
    # above the graph, the RTT by source and what SACK showed, as the text gives them
    page = (tmp_path / "r.html").read_text()
    r = stamps["to_server"]
    assert (f"<tr><td></td><td>timestamps</td><td>{r['samples']}</td><td>{r['min']:.1f}</td><td>{r['median']:.1f}</td>"
            f"<td>{r['p95']:.1f}</td></tr>") in page
    holes = _json(path)["retransmissions"]["q.pcap"]["sack_holes"]["to_server"]
    assert f"<div>SACK on q.pcap to the server: the receiver signalled {holes} hole(s)</div>" in page


def test_without_sack_or_timestamps_only_the_data_ack_samples_are_drawn(tmp_path):
    path = tmp_path / "p.pcap"
    synth.write_pcap(str(path), synth.transfer(1, T0, 600, random.Random(5), loss=0.02))
    (graph,) = _graphs(tmp_path, path)
    drawn = {key.removeprefix("c0-").removesuffix("-p.pcap") for key in graph if key.startswith("c0-")}
    assert drawn == {"data", "ack", "window", "retransmissions", "rtt-data"}


def test_both_sides_of_the_router_are_drawn(tmp_path):
    path = tmp_path / "r.pcapng"
    synth.write_pcapng(str(path), synth.through_router(synth.transfer(1, T0, 600, random.Random(5), loss=0.02,
                                                                      sack=True, timestamps=True)))
    (graph,) = _graphs(tmp_path, path)
    conn = _json(path)
    for name in ("br-lan", "ppp0"):
        assert f"c0-sack-{name}" in graph
        samples = conn["rtt"][name]["timestamps"]["to_server"]["samples"]
        assert _marks(graph[f"c0-rtt-timestamps-far-{name}"]) == samples
        # each side marks the segments sent again there (on ppp0: the repairs of the router's holes)
        assert _marks(graph[f"c0-retransmissions-{name}"]) == conn["retransmissions"][name]["to_server"] > 0


def test_annotations_give_the_rtt_source_sack_and_the_suspects(tmp_path):
    path = tmp_path / "q.pcap"
    synth.write_pcap(str(path), synth.transfer(1, T0, 150, random.Random(5), gap=0.001, queue_growth=0.002, loss=0.05,
                                               sack=True, timestamps=True), snaplen=100)
    out = tmp_path / "a.pcapng"
    assert why_route("postmortem", str(path), "--annotate", str(out)).returncode == 1
    conn = _json(path)
    comments = dict(_tshark(out, "frame.number", "frame.comment", display="frame.comment"))
    first = comments["1"]
    rtt = conn["rtt"]["q.pcap"]
    assert (f"; RTT median: q.pcap→server {rtt['to_server']['median']:.1f} ms (data/ACK) "
            f"{rtt['timestamps']['to_server']['median']:.1f} ms (timestamps), q.pcap→client "
            f"{rtt['timestamps']['to_client']['median']:.1f} ms (timestamps);") in first
    holes = conn["retransmissions"]["q.pcap"]["sack_holes"]["to_server"]
    assert f"; SACK on q.pcap to the server: {holes} hole(s) signalled\\n" in first  # (tshark: \\n between comments)
    for suspect in conn["suspects"]:
        assert f"why-route {suspect['id']} {suspect['title']}: {suspect['summary']}" in first
    assert "(TCP timestamps)" in next(s["summary"] for s in conn["suspects"] if s["id"] == "PM006")


def test_an_ipv6_connection_with_extension_headers_is_drawn(tmp_path):
    from scapy.all import wrpcap

    from tests.postmortem.test_tcp_depth import MSS, _packets

    packets, add = _packets(True, extensions=True)
    t0 = packets[-1].time
    for i in range(20):
        add(t0 + 0.001 * (i + 1), True, "PA", 1001 + i * MSS, 5001, b"y" * MSS)
    for i in (3, 7, 11):  # lost beyond the capture point: duplicate ACKs with SACK, then the repair
        for k in range(3):
            add(t0 + 0.030 + 0.004 * i + 0.0001 * k, False, "A", 5001, 1001 + i * MSS,
                options=[("NOP", None), ("NOP", None), ("SAck", (1001 + (i + 1) * MSS, 1001 + (i + 2 + k) * MSS))])
        add(t0 + 0.031 + 0.004 * i, True, "PA", 1001 + i * MSS, 5001, b"y" * MSS)
    add(t0 + 0.090, False, "A", 5001, 1001 + 20 * MSS)
    path = tmp_path / "v6.pcap"
    wrpcap(str(path), packets)
    conn = _json(path)
    assert conn["verdict"] == "slow" and conn["flow"]["lan"]["src"] == "fd00::1"
    (graph,) = _graphs(tmp_path, path)
    assert _marks(graph["c0-sack-v6.pcap"]) == 9
    assert _marks(graph["c0-retransmissions-v6.pcap"]) == conn["retransmissions"]["v6.pcap"]["to_server"] == 3
    assert _marks(graph["c0-data-v6.pcap"]) == 20
