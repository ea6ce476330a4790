"""Capability detection (`trace --check`), the fallback without BPF netfilter links, and cleanup:
nothing is left behind by SIGTERM or SIGKILL."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers.cli import why_route
from tests.lab.lab_helpers import leftovers, ping_from_macbook
from tests.trace.trace_helpers import RunningTrace, flow_to, netfilter_links
from tracer.lab import builder

DISABLE_NETFILTER = {"WHYROUTE_TRACE_DISABLE": "netfilter"}


def _check(env=None) -> dict:
    result = why_route("trace", "--check", "--json", env=env)
    assert result.returncode == 0, result.stderr
    return {p["name"]: p for p in json.loads(result.stdout)["probes"]}


def test_check_lists_every_probe_with_the_reason_for_each_missing_one():
    probes = _check()
    for name in ("netfilter", "fib", "fib6", "drop", "conntrack"):
        assert probes[name]["used"] and probes[name]["why"] is None, probes[name]
    assert probes["rules"]["used"] is False and "opt-in with --rules" in probes["rules"]["why"]
    missing = [p for p in probes.values() if not p["used"]]
    assert missing and all(p["why"] for p in missing)
    # The rule probe: fentry, else kprobe. This machine refuses fentry (EPERM) and has no kprobes.
    rule = probes["fib_rule"]
    if not rule["used"]:
        assert not Path("/sys/bus/event_source/devices/kprobe").exists()
        assert "EPERM" in rule["why"] and "no kprobes" in rule["why"], rule
        assert "derived from the rule list and the tables looked up" in rule["why"]
    text = why_route("trace", "--check").stdout
    assert "netfilter" in text and "why:" in text


def test_the_rule_probe_compiles_and_this_kernel_refuses_it_as_check_says():
    # This machine has neither fentry nor kprobes, so a trace never compiles probes/fib_rule.c: built
    # here with the others, each of its programs exists, and the kernel refuses both ways to attach.
    from tracer.trace import kernel
    from tracer.trace.btf import KernelFacts

    facts = KernelFacts.load()
    probes = kernel.compile_probes(["netfilter.c", "fib.c", "fib6.c", "drop.c", "fib_rule.c"], facts)
    try:
        for family in (4, 6):
            for kind in ("fentry", "kprobe"):
                assert len(probes.bpf.dump_func(f"wr_rule{family}_{kind}".encode())) > 8
        with pytest.raises(kernel.KernelError, match=r"refused the fentry program on fib4_rule_action"):
            kernel.attach_fentry(probes, "wr_rule4_fentry", "fib4_rule_action", facts.func_id("fib4_rule_action"))
        with pytest.raises(Exception, match="fib4_rule_action"):
            probes.bpf.attach_kprobe(event=b"fib4_rule_action", fn_name=b"wr_rule4_kprobe")
    finally:
        probes.cleanup()
    assert kernel.fentry_refused("fib4_rule_action", facts.func_id("fib4_rule_action")) == \
        "the kernel refuses fentry programs (EPERM when loading one)"
    assert _check({"WHYROUTE_TRACE_DISABLE": "fib"})["fib_rule"]["why"].startswith("needs the fib probe")


def test_check_says_why_when_netfilter_links_are_disabled():
    probes = _check(DISABLE_NETFILTER)
    assert probes["netfilter"]["used"] is False and "disabled" in probes["netfilter"]["why"]
    assert probes["fib"]["used"] is False and "needs the netfilter probe" in probes["fib"]["why"]
    assert probes["conntrack"]["used"] and probes["drop"]["used"]


def test_without_netfilter_links_conntrack_still_gives_the_nat_and_the_reply(trace_lab):
    lab = trace_lab("ultimate")
    trace = RunningTrace("--netns", lab.ns("route"), "--proto", "icmp", "--count", "1", env=DISABLE_NETFILTER)
    trace.started()
    assert "unavailable: netfilter (disabled" in trace.stderr
    ping_from_macbook(lab)
    docs, summary = trace.finish()
    doc = flow_to(docs, "8.8.8.8", 1)
    assert doc["hooks"] == [] and doc["tables_tried"] == [] and doc["verdict"] == "confirmed"
    assert [(n["type"], n["to"]) for n in doc["nat"]] == [("snat", "123.150.232.74")]
    assert doc["reply_seen"] is True
    assert doc["sim"]["agrees"], doc["sim"]["differences"]
    assert "netfilter" not in summary["probes"] and "netfilter" in summary["unavailable"]


@pytest.mark.parametrize("without", [(), ("--without", "tp_btf")], ids=["tp_btf", "raw_tracepoint"])
def test_a_start_prints_its_own_lines_only_not_the_compilers(trace_lab, without):
    lab = trace_lab("ultimate")
    result = why_route("trace", "--netns", lab.ns("route"), "--duration", "0.01", *without)
    assert result.returncode == 0, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 2 and all(line.startswith("why-route trace: ") for line in lines), result.stderr


def _ctnetlink_groups(netns: str) -> set[str]:
    """The group masks of the NETLINK_NETFILTER sockets subscribed to anything in `netns` (/proc/net/netlink)."""
    lines = subprocess.run(["ip", "netns", "exec", netns, "cat", "/proc/net/netlink"], capture_output=True, text=True,
                           check=True).stdout.splitlines()[1:]
    return {fields[3] for fields in map(str.split, lines) if fields[1] == "12" and int(fields[3], 16)}


def test_beside_the_netfilter_probe_conntrack_hears_only_updates(trace_lab):
    # The probe reads each flow's entry itself: a NEW event would cost a netlink message per flow for
    # nothing. Without the probe, conntrack is the source of the NAT and the flow: every group.
    lab = trace_lab("ultimate")
    for env, groups in ((None, {"00000002"}), (DISABLE_NETFILTER, {"00000007"})):
        trace = RunningTrace("--netns", lab.ns("route"), "--proto", "icmp", "--count", "1", env=env).started()
        try:
            assert _ctnetlink_groups(lab.ns("route")) == groups
            ping_from_macbook(lab)
            docs, _summary = trace.finish()
        finally:
            trace.kill()
        doc = flow_to(docs, "8.8.8.8", 1)
        assert [(n["type"], n["to"]) for n in doc["nat"]] == [("snat", "123.150.232.74")] and doc["reply_seen"]


def _wait_for_links(expected: int, before: set[str], timeout: float = 5) -> set[str]:
    deadline = time.monotonic() + timeout
    while True:
        now = set(netfilter_links()) - before
        if len(now) == expected or time.monotonic() > deadline:
            return now
        time.sleep(0.05)


def test_sigkill_leaves_no_link_no_pinned_object_and_the_namespace_can_go(own_lab):
    lab = own_lab("ultimate")
    pinned = set(os.listdir("/sys/fs/bpf")) if os.path.isdir("/sys/fs/bpf") else set()
    before = set(netfilter_links())
    trace = RunningTrace("--netns", lab.ns("route"), "--rules").started()
    try:
        ours = {link for link in set(netfilter_links()) - before if link.startswith(f"{trace.proc.pid}:")}
        assert len(ours) == 14  # IPv4 and IPv6 × (5 hooks after their chains, prerouting and output before)
        assert "whyroute_trace_" in lab.run("route", ["nft", "list", "tables"]).stdout
    finally:
        trace.kill()  # also when an assertion failed: the trace must not outlive the test
    assert trace.proc.returncode == -signal.SIGKILL
    assert not _wait_for_links(0, before)
    deadline = time.monotonic() + 5  # the owner table goes with its nft process (which dies with the trace)
    while "whyroute_trace_" in lab.run("route", ["nft", "list", "tables"]).stdout and time.monotonic() < deadline:
        time.sleep(0.05)
    assert "whyroute_trace_" not in lab.run("route", ["nft", "list", "tables"]).stdout
    assert (set(os.listdir("/sys/fs/bpf")) if os.path.isdir("/sys/fs/bpf") else set()) == pinned
    builder.down(lab.prefix)
    assert not leftovers(lab.prefix)
    assert not Path("/run/netns", lab.ns("route")).exists()


def test_sigterm_prints_the_summary_and_detaches(trace_lab):
    lab = trace_lab("ultimate")
    before = set(netfilter_links())
    trace = RunningTrace("--netns", lab.ns("route"), "--proto", "icmp").started()
    ping_from_macbook(lab)
    time.sleep(0.3)
    trace.signal(signal.SIGTERM)
    docs, summary = trace.finish()
    assert trace.proc.returncode == 128 + signal.SIGTERM
    assert summary is not None and summary["flows"] == len(docs) == 1 and summary["events"] > 0
    assert not _wait_for_links(0, before)


def test_ctrl_c_prints_the_summary_and_exits_130(trace_lab):
    lab = trace_lab("ultimate")
    trace = RunningTrace("--netns", lab.ns("route"), "--proto", "icmp").started()
    trace.signal(signal.SIGINT)
    docs, summary = trace.finish()
    assert trace.proc.returncode == 130
    assert docs == [] and summary["flows"] == 0 and summary["lost"] == 0


def test_two_traces_of_one_namespace_both_attach_and_both_see_the_flow(trace_lab):
    lab = trace_lab("ultimate")
    first = RunningTrace("--netns", lab.ns("route"), "--proto", "icmp", "--count", "1").started()
    second = RunningTrace("--netns", lab.ns("route"), "--proto", "icmp", "--count", "1").started()
    ping_from_macbook(lab)
    for trace in (first, second):
        docs, summary = trace.finish()
        assert flow_to(docs, "8.8.8.8", 1)["rule"]["priority"] == 32765
        # all attached (the rule probe is a kernel's that offers fentry or kprobes: not this one)
        assert set(summary["unavailable"]) <= {"fib_rule"}, summary["unavailable"]
        assert {"netfilter", "fib", "fib6", "drop", "conntrack"} <= set(summary["probes"]), summary["probes"]


# 2,000 new UDP flows from the MacBook, one a destination port (internet2 drops them unanswered).
MANY_FLOWS = ("import socket; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
              "for port in range(20000, 22000):\n    s.sendto(b'x', ('8.8.8.8', port))")


@pytest.mark.parametrize("rules", [False, True], ids=["records", "and-rule-events"])
def test_a_trace_whose_printing_is_held_up_bounds_its_backlog_and_counts_what_it_dropped(own_lab, rules):
    # Nobody reads the trace's output until finish(): after a pipe's worth of lines it blocks
    # writing, while its drain thread keeps emptying the kernel's ring into at most --backlog records
    # (and, with --rules, the nftables trace socket into as many bytes as those records take).
    lab = own_lab("ultimate")
    lab.run("internet2", ["iptables", "-A", "INPUT", "-p", "udp", "--dport", "20000:21999", "-j", "DROP"])
    trace = RunningTrace("--netns", lab.ns("route"), "--proto", "udp", "--reply-wait", "0", "--duration", "3",
                         "--backlog", "100", *(["--rules"] if rules else [])).started()
    lab.run("macbook", [sys.executable, "-c", MANY_FLOWS])
    time.sleep(1)
    docs, summary = trace.finish()
    flows = [d for d in docs if d["type"] == "flow" and 20000 <= d["flow"]["dport"] < 22000]
    lost_by = {cause: count for cause, count in summary["lost_by"].items() if count}
    assert set(lost_by) == ({"backlog", "rules_backlog"} if rules else {"backlog"}), summary
    assert summary["lost"] == sum(lost_by.values()), summary
    assert len(flows) + lost_by["backlog"] == 2000, (len(flows), summary)  # each flow printed or counted, none both
