"""`why-route capture` and `why-route trace -o` into one run directory, at the same time, on the seed
router (variant ultimate) while the MacBook downloads: the post-mortem reads the captures, the
trace's replay reads its events, and both name the same connection the same way."""

import json
import subprocess

from tests.helpers.cli import REPO_ROOT, why_route_argv
from tests.postmortem import pmlab
from tests.postmortem.test_lab_cases import lab  # noqa: F401  (the fixture: the seed lab, offloads off)
from tests.trace.trace_helpers import RunningTrace

TCP = 6


def test_capture_and_trace_share_a_run_directory(lab, tmp_path):  # noqa: F811
    run = tmp_path / "run"
    trace = RunningTrace("--netns", lab.ns("route"), "192.168.1.169", "8.8.8.8", "--proto", "tcp", "--count", "1",
                         "-o", str(run)).started()
    try:
        client = pmlab.transfer(lab, run, server="send", client="download", size=300_000)
        traced, summary = trace.finish()
    finally:
        trace.kill()  # (a failed transfer leaves none running)
    assert client["error"] is None and summary["lost"] == 0
    assert {"capture.pcapng", "conntrack.events", "capture.json", "snapshot.json", "events.jsonl",
            "summary.json"} <= {p.name for p in run.iterdir()}

    conn = pmlab.the_connection(pmlab.postmortem(run), client)
    # the whole download, read from the capture (its verdict is the lab cases' business: under load the
    # veth backlogs reorder segments, which tshark's and our counts take for retransmissions)
    assert conn["bytes"]["to_client"] == 300_000 and conn["verdict"] != "failed", conn["reasons"]
    replay = subprocess.run([*why_route_argv(), "trace", "--replay", str(run), "--json"], cwd=REPO_ROOT,
                            capture_output=True, text=True, timeout=60)
    assert replay.returncode == 0, replay.stderr
    replayed = [json.loads(line) for line in replay.stdout.splitlines()]
    flows = [d for d in replayed if d["type"] == "flow" and d["flow"]["proto"] == TCP]
    assert [d["flow"] for d in flows] == [d["flow"] for d in traced]
    (flow,) = flows
    lan, wan = conn["flow"]["lan"], conn["flow"]["wan"]
    assert (flow["flow"]["src"], flow["flow"]["sport"], flow["flow"]["dst"], flow["flow"]["dport"]) == \
        (lan["src"], lan["sport"], lan["dst"], lan["dport"])
    # what the trace saw leave is the post-mortem's WAN side, through the SNAT both report
    assert (flow["egress"]["dev"], flow["egress"]["src"], flow["egress"]["sport"]) == \
        (conn["interfaces"]["out"], wan["src"], wan["sport"])
    assert flow["sim"]["agrees"], flow["sim"]["differences"]
