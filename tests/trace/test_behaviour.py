"""Filters, namespaces, drops, a disagreement with the simulation made on purpose, run directories."""

import json
import shutil

import pytest

from tests.helpers.cli import REPO_ROOT, why_route
from tests.lab.lab_helpers import ping_from_macbook
from tests.trace.trace_helpers import RunningTrace, flow_to, tcp_connect

ICMP, TCP = 1, 6


def test_only_the_filtered_flow_is_reported(trace_lab):
    lab = trace_lab("ultimate")
    trace = RunningTrace("--netns", lab.ns("route"), "--proto", "tcp", "--dport", "443", "--duration", "4").started()
    ping_from_macbook(lab)
    tcp_connect(lab, "macbook", "8.8.8.8", 80)
    tcp_connect(lab, "macbook", "8.8.8.8", 443)
    docs, summary = trace.finish()
    assert [(d["flow"]["proto"], d["flow"]["dport"]) for d in docs] == [(TCP, 443)], docs
    assert summary["flows"] == 1


@pytest.mark.parametrize(("lag", "agrees", "not_compared"), [("0", None, 1), ("inf", True, 0)])
def test_compare_lag_bounds_how_late_a_flow_is_still_compared(trace_lab, lag, agrees, not_compared):
    # 0: every flow is described some time after its fate, so none is compared; inf: each is.
    lab = trace_lab("ultimate")
    trace = RunningTrace("--netns", lab.ns("route"), "--proto", "icmp", "--count", "1", "--reply-wait", "0.2",
                         "--compare-lag", lag).started()
    ping_from_macbook(lab)
    docs, summary = trace.finish()
    sim = flow_to(docs, "8.8.8.8", ICMP)["sim"]
    assert (sim["agrees"], summary["not_compared"]) == (agrees, not_compared), (sim, summary)
    if agrees is None:
        assert sim["note"].startswith("not compared: why-route fell more than 0 s behind the kernel"), sim


def test_flows_of_other_namespaces_never_leak_in(trace_lab):
    lab = trace_lab("ultimate")
    trace = RunningTrace("--netns", lab.ns("route"), "--duration", "4").started()
    # Traffic inside other namespaces: the internet node talks to itself, the MacBook to its own address.
    lab.run("internet2", ["ping", "-n", "-c", "1", "-W", "1", "127.0.0.1"], check=False)
    lab.run("macbook", ["ping", "-n", "-c", "1", "-W", "1", "192.168.1.169"], check=False)
    ping_from_macbook(lab)
    docs, _summary = trace.finish()
    assert docs, trace.stderr
    assert {d["flow"]["src"] for d in docs} == {"192.168.1.169"}, docs
    assert {d["flow"]["dst"] for d in docs} == {"8.8.8.8"}, docs


def test_a_drop_by_an_nft_rule_is_reported_with_its_reason(own_lab):
    lab = own_lab("ultimate")
    ruleset = ("table ip wrdrop {\n chain dropping {\n  type filter hook forward priority 0;\n"
               "  tcp dport 8443 drop\n }\n}\n")
    lab.run("route", ["nft", "-f", "-"], input=ruleset)
    trace = RunningTrace("--netns", lab.ns("route"), "--dport", "8443", "--count", "1", "--rules").started()
    tcp_connect(lab, "macbook", "8.8.8.8", 8443)
    docs, summary = trace.finish()
    doc = flow_to(docs, "8.8.8.8", TCP)
    assert doc["verdict"] == "dropped"
    assert doc["drop"]["reason"] == "NETFILTER_DROP"
    assert [(h["hook"], h["verdict"]) for h in doc["hooks"]] == [("prerouting", "accept"), ("forward", "drop")]
    # --rules names the rule, with its handle (NETFILTER_DROP alone does not say which).
    (rule,) = doc["hooks"][1]["rules"]
    named = (rule["table"], rule["chain"], rule["rule"], rule["verdict"])
    assert named == ("wrdrop", "dropping", "tcp dport 8443 drop", "drop")
    assert isinstance(rule["handle"], int)
    assert "rules" in summary["probes"]
    assert doc["rule"]["priority"] == 32765  # routed before the forward hook dropped it
    assert doc["sim"]["agrees"], doc["sim"]["differences"]  # the rule was there when the trace started


def test_the_simulation_disagrees_when_the_host_changed_after_the_start(own_lab):
    lab = own_lab("ultimate")
    trace = RunningTrace("--netns", lab.ns("route"), "--proto", "icmp", "--count", "1").started()
    # The state was collected at start: delete the policy rule behind the simulation's back.
    lab.run("route", ["ip", "rule", "del", "priority", "32765"])
    ping_from_macbook(lab)
    docs, _summary = trace.finish()
    doc = flow_to(docs, "8.8.8.8", ICMP)
    assert doc["rule"]["priority"] == 32766 and doc["dev"] == "eth0.2"
    assert doc["sim"]["agrees"] is False
    differences = " | ".join(doc["sim"]["differences"])
    assert "rule: kernel 32766, simulation 32765" in differences
    assert "device: kernel eth0.2, simulation ppp0" in differences


def test_run_directory_replays_the_same_flows_without_the_host(trace_lab, tmp_path):
    lab = trace_lab("ultimate")
    run_dir = tmp_path / "run"
    trace = RunningTrace("--netns", lab.ns("route"), "--proto", "icmp", "--count", "1", "-o", str(run_dir)).started()
    ping_from_macbook(lab)
    docs, summary = trace.finish()
    assert {p.name for p in run_dir.iterdir()} == {"events.jsonl", "snapshot.json", "summary.json"}
    assert json.loads((run_dir / "summary.json").read_text())["flows"] == 1
    replayed = why_route("trace", "--replay", str(run_dir), "--json")
    assert replayed.returncode == 0, replayed.stderr
    lines = [json.loads(line) for line in replayed.stdout.splitlines()]
    flows = [d for d in lines if d["type"] == "flow"]
    assert [(d["rule"], d["table_id"], d["nat"], d["reply_seen"]) for d in flows] == \
        [(d["rule"], d["table_id"], d["nat"], d["reply_seen"]) for d in docs]
    assert lines[-1]["type"] == "summary" and lines[-1]["events"] == summary["events"]


def test_replay_of_a_missing_directory_is_a_usage_error(tmp_path):
    result = why_route("trace", "--replay", str(tmp_path / "nothing"))
    assert result.returncode == 2 and "cannot read the run directory" in result.stderr


def test_replay_of_an_edited_event_names_its_line_and_field(tmp_path):
    shutil.copy(REPO_ROOT / "tests/explain/fixtures/ultimate-route.json", tmp_path / "snapshot.json")
    flow = {"netns": 1, "proto": 1, "src": "192.168.1.169", "dst": "8.8.8.8", "sport": 7, "dport": 0}
    reply = {"kind": "reply", "ts": 1, "cpu": 0, "flow": flow, "hook": "prerouting"}
    (tmp_path / "events.jsonl").write_text(json.dumps(reply) + "\n" + json.dumps({**reply, "cpu": "0"}) + "\n")
    result = why_route("trace", "--replay", str(tmp_path))
    assert result.returncode == 2, result
    assert result.stderr == f"why-route: error: {tmp_path}/events.jsonl line 2: reply.cpu: int expected, not '0'\n"


@pytest.mark.parametrize(("args", "said"), [
    (["--duration", "-1"], "Invalid value for '--duration': -1.0 is not in the range x>0"),
    (["--duration", "0"], "Invalid value for '--duration': 0.0 is not in the range x>0"),
    (["--count", "0"], "Invalid value for '--count': 0 is not in the range x>=1"),
    (["--reply-wait", "-3"], "Invalid value for '--reply-wait': -3.0 is not in the range x>=0"),
    (["--compare-lag", "-1"], "Invalid value for '--compare-lag': -1.0 is not in the range x>=0"),
    (["-o", "{file}/run", "--duration", "1"], "cannot make the run directory {file}/run: Not a directory"),
    (["--without", "netfliter", "--duration", "1"], "--without: no probe named 'netfliter' (probes: netfilter,"),
])
def test_bad_trace_options_get_one_line_and_exit_2_before_anything_is_attached(tmp_path, args, said):
    file = tmp_path / "file"
    file.write_text("")
    result = why_route("trace", *(arg.format(file=file) for arg in args))
    assert result.returncode == 2 and said.format(file=file) in result.stderr, result.stderr
    assert "Traceback" not in result.stderr and "Ctrl-C to stop" not in result.stderr


def test_a_probe_the_environment_disables_by_a_wrong_name_is_refused_not_ignored():
    result = why_route("trace", "--check", env={"WHYROUTE_TRACE_DISABLE": "fib,dorp"})
    assert result.returncode == 2 and result.stdout == "", result
    assert result.stderr.startswith("why-route: error: WHYROUTE_TRACE_DISABLE: no probe named 'dorp'"), result.stderr




def test_port_changing_dnat_is_read_from_the_conntrack_tuples(own_lab):
    lab = own_lab("ultimate")
    lab.run("route", ["iptables", "-t", "nat", "-A", "PREROUTING", "-i", "br-lan", "-p", "tcp", "--dport", "8080",
                      "-j", "DNAT", "--to-destination", "8.8.4.4:80"])
    trace = RunningTrace("--netns", lab.ns("route"), "--dport", "8080", "--count", "1", "--reply-wait", "0.3")
    trace.started()
    tcp_connect(lab, "macbook", "8.8.8.8", 8080)
    docs, _summary = trace.finish()
    doc = flow_to(docs, "8.8.8.8", TCP)
    dnat = next(n for n in doc["nat"] if n["field"] == "dst")
    assert (dnat["from"], dnat["to"], dnat["from_port"], dnat["to_port"]) == ("8.8.8.8", "8.8.4.4", 8080, 80)
    assert (doc["egress"]["dst"], doc["egress"]["dport"]) == ("8.8.4.4", 80)
    assert doc["rule"]["priority"] == 32765 and doc["dev"] == "ppp0"
    assert doc["sim"]["agrees"], doc["sim"]["differences"]


def test_a_mark_set_in_mangle_changes_the_table(own_lab):
    lab = own_lab("ultimate")
    lab.run("route", ["iptables", "-t", "mangle", "-A", "PREROUTING", "-p", "tcp", "--dport", "8081",
                      "-j", "MARK", "--set-mark", "0x10"])
    lab.run("route", ["ip", "rule", "add", "fwmark", "0x10", "lookup", "main", "priority", "100"])
    trace = RunningTrace("--netns", lab.ns("route"), "--dport", "8081", "--count", "1", "--reply-wait", "0.3")
    trace.started()
    tcp_connect(lab, "macbook", "8.8.8.8", 8081)
    docs, _summary = trace.finish()
    doc = flow_to(docs, "8.8.8.8", TCP)
    pre = doc["hooks"][0]
    assert (pre["hook"], pre["mark_from"], pre["mark"]) == ("prerouting", 0, 0x10)
    assert doc["rule"]["priority"] == 100 and doc["table"] == "main" and doc["dev"] == "eth0.2"
    assert doc["sim"]["agrees"], doc["sim"]["differences"]


def test_a_packet_without_a_route_is_dropped_with_the_routing_error(own_lab):
    lab = own_lab("ultimate")
    lab.run("route", ["ip", "route", "add", "unreachable", "203.0.113.0/24", "table", "sunusroute"])
    trace = RunningTrace("--netns", lab.ns("route"), "--proto", "icmp", "--count", "1").started()
    lab.run("macbook", ["ping", "-n", "-c", "1", "-W", "1", "203.0.113.9"], check=False)
    docs, _summary = trace.finish()
    doc = flow_to(docs, "203.0.113.9", 1)
    assert doc["tables_tried"][-1] == {"table_id": 7375, "table": "sunusroute", "result": "EHOSTUNREACH",
                                         "rule": None}
    assert doc["route_error"] == "EHOSTUNREACH" and doc["verdict"] == "dropped"
    assert doc["drop"]["reason"], doc["drop"]
    assert doc["rule"]["priority"] == 32765
    assert doc["sim"]["agrees"], doc["sim"]["differences"]
