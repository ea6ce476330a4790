"""The text, the report's graphs and the annotations on a real capture: test_tcp_depth's two
namespaces of the test's own joined by a veth pair, 3 % of the data dropped on arrival at the
server, an IPv4 and an IPv6 upload with TCP timestamps and SACK, as the kernel sends them. What
the analysis measured (its JSON, checked against tshark there) is what the text says, what the
graph draws (the SACK bars counted against tshark's dissection) and what the comments give."""

import json
import re
import subprocess

from tests.helpers.cli import why_route
from tests.postmortem.test_report_depth import _graphs, _marks, _tshark
from tests.postmortem.test_tcp_depth import real_capture  # noqa: F401  (the fixture)
from tests.postmortem.test_text_depth import _row, _table


def test_text_gives_the_rtt_by_source_and_sack_of_each_upload(real_capture):  # noqa: F811
    text = why_route("postmortem", str(real_capture))
    doc = json.loads(why_route("postmortem", str(real_capture), "--json").stdout)
    assert text.returncode in (0, 1) and len(doc["connections"]) == 2
    blocks = text.stdout.split("\n\n")[1:]
    for conn in doc["connections"]:
        lan = conn["flow"]["lan"]
        block = next(b for b in blocks if f"{lan['src']}:{lan['sport']} → " in b).splitlines()
        rtt = conn["rtt"]["real.pcap"]
        stamps = rtt["timestamps"]
        assert stamps["to_server"]["samples"] >= 3 and stamps["to_client"]["samples"] >= 3
        width = len("real.pcap→server")
        table = _table(block)
        assert _row("", "timestamps", stamps["to_server"], width) in table
        assert _row("real.pcap→client", "timestamps", stamps["to_client"], width) in table
        holes = conn["retransmissions"]["real.pcap"]["sack_holes"]["to_server"]
        assert holes >= 1
        sack = [line for line in block if line.startswith("  SACK")]
        assert len(sack) == 1 and sack[0].startswith(
            f"  SACK on real.pcap to the server: the receiver signalled {holes} hole(s)")


def test_report_draws_the_kernels_sack_blocks_and_rtt_samples(real_capture, tmp_path):  # noqa: F811
    doc = json.loads(why_route("postmortem", str(real_capture), "--json").stdout)
    graphed = [c for c in doc["connections"] if c["verdict"] != "ok"]
    assert graphed, [c["verdict"] for c in doc["connections"]]  # 3 % loss: slow
    graphs = _graphs(tmp_path, real_capture)
    assert len(graphs) == len(graphed)
    streams = {tuple(r[1:]): r[0] for r in _tshark(real_capture, "tcp.stream", "tcp.srcport", "tcp.dstport",
                                                   display="tcp.flags.syn == 1 && tcp.flags.ack == 0")}
    for i, (graph, conn) in enumerate(zip(graphs, graphed, strict=True)):
        lan = conn["flow"]["lan"]
        stream = streams[(str(lan["sport"]), str(lan["dport"]))]
        sacks = _tshark(real_capture, "tcp.options.sack_le", display=f"tcp.stream == {stream} && tcp.options.sack_le")
        assert _marks(graph[f"c{i}-sack-real.pcap"]) == sum(len(le.split(",")) for (le,) in sacks) > 0
        stamps = conn["rtt"]["real.pcap"]["timestamps"]
        assert _marks(graph[f"c{i}-rtt-timestamps-far-real.pcap"]) == stamps["to_server"]["samples"]
        assert _marks(graph[f"c{i}-rtt-timestamps-near-real.pcap"]) == stamps["to_client"]["samples"]
        assert _marks(graph[f"c{i}-rtt-data-real.pcap"]) >= conn["rtt"]["real.pcap"]["to_server"]["samples"]


def test_annotations_carry_the_rtt_medians_and_sack(real_capture, tmp_path):  # noqa: F811
    out = tmp_path / "a.pcapng"
    assert why_route("postmortem", str(real_capture), "--annotate", str(out)).returncode in (0, 1)
    doc = json.loads(why_route("postmortem", str(real_capture), "--json").stdout)
    comments = subprocess.run(["tshark", "-r", str(out), "-Y", "frame.comment", "-T", "fields", "-e",
                               "frame.comment"], capture_output=True, text=True, check=True).stdout
    for conn in doc["connections"]:
        lan = conn["flow"]["lan"]
        start = f"why-route: {lan['src']}:{lan['sport']} "
        head = next(line for line in comments.splitlines() if line.startswith(start))
        median = conn["rtt"]["real.pcap"]["timestamps"]["to_server"]["median"]
        assert re.search(rf"; RTT median: real\.pcap→server [0-9.]+ ms \(data/ACK\) {re.escape(f'{median:.1f}')} ms "
                         r"\(timestamps\)", head)
        holes = conn["retransmissions"]["real.pcap"]["sack_holes"]["to_server"]
        assert f"; SACK on real.pcap to the server: {holes} hole(s) signalled" in head
