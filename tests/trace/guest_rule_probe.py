"""The rule probe (fentry, else kprobe, on fib4_rule_action / fib6_rule_action) on a kernel that offers
both: run inside a qemu guest booted with Debian's 6.12 kernel by tests/trace/test_other_kernel.py (this
machine's kernel has neither). Not collected on the host: its name is not test_*.py."""

import time
from pathlib import Path

import pytest

from tests.helpers.cli import why_route
from tests.lab.lab_helpers import ping_from_macbook
from tests.trace import tracelab
from tests.trace.trace_helpers import RunningTrace, flow_to

ICMP, UDP, ICMPV6 = 1, 17, 58
KINDS = {"fentry": (), "kprobe": ("--without", "fentry")}
# Under qemu's TCG a trace compiles its probes in about 25 s (1-2 s on hardware): wait longer than the host
# tests. And its first simulation takes seconds there, so a second flow would be described too late to be
# compared (flows.COMPARE_LAG_SECONDS); what is tested here is the rule probe: compare every flow.
WAIT = 180
SLOW = ("--compare-lag", "inf")
ENABLED_FUNCTIONS = Path("/sys/kernel/tracing/enabled_functions")  # what ftrace calls out of (fentry, kprobes)


def _rules_tried(doc):
    return [(t["table_id"], t["result"], t["rule"]) for t in doc["tables_tried"]]


def _probing(function: str) -> bool:
    return any(line.split()[0] == function for line in ENABLED_FUNCTIONS.read_text().splitlines() if line.strip())


@pytest.fixture(scope="module")
def lab(router_lab):
    return router_lab


def test_check_says_the_rule_probe_is_used_and_how():
    import json

    for kind, extra in KINDS.items():
        result = why_route("trace", "--check", "--json", *extra)
        probe = {p["name"]: p for p in json.loads(result.stdout)["probes"]}["fib_rule"]
        assert (probe["used"], probe["why"], probe["as"]) == (True, None, kind), probe
    assert "fib_rule   used (fentry)" in why_route("trace", "--check").stdout


@pytest.mark.parametrize("kind", KINDS)
def test_the_kernel_names_the_seed_rule_of_each_lookup(trace_lab, kind):
    lab = trace_lab("ultimate")
    trace = RunningTrace("--netns", lab.ns("route"), "--proto", "icmp", "--count", "1", *KINDS[kind],
                         *SLOW).started(WAIT)
    assert _probing("fib4_rule_action") and _probing("fib6_rule_action")
    ping_from_macbook(lab)
    docs, summary = trace.finish(WAIT)
    doc = flow_to(docs, "8.8.8.8", ICMP)
    assert doc["rule"] == {"priority": 32765, "source": "kernel",
                           "text": "32765: from 192.168.1.169 lookup sunusroute"}, doc["rule"]
    assert _rules_tried(doc) == [(255, "EAGAIN", 0), (7375, "ok", 32765)]
    assert (doc["dev"], doc["gateway"], doc["egress"]["src"]) == ("ppp0", "123.150.232.1", "123.150.232.74")
    assert doc["sim"]["agrees"], f"{doc['sim']}"
    assert "fib_rule" in summary["probes"] and summary["attached_as"]["fib_rule"] == kind, summary
    assert "fib_rule" not in summary["unavailable"]


def test_a_rule_whose_table_does_not_exist_looks_nothing_up_and_main_decides(trace_lab):
    lab = trace_lab("blog-as-written")
    trace = RunningTrace("--netns", lab.ns("route"), "--proto", "icmp", "--count", "1", *SLOW).started(WAIT)
    ping_from_macbook(lab)
    docs, _summary = trace.finish(WAIT)
    doc = flow_to(docs, "8.8.8.8", ICMP)
    assert _rules_tried(doc) == [(255, "EAGAIN", 0), (254, "ok", 32766)]
    assert (doc["rule"]["priority"], doc["rule"]["source"], doc["dev"]) == (32766, "kernel", "eth0.2")
    assert doc["sim"]["agrees"], f"{doc['sim']}"


def test_a_rule_added_after_the_start_is_named_by_the_kernel_and_the_simulation_differs(own_lab):
    lab = own_lab("ultimate")
    trace = RunningTrace("--netns", lab.ns("route"), "--proto", "icmp", "--count", "1", *SLOW).started(WAIT)
    lab.run("route", ["ip", "rule", "add", "priority", "100", "from", "192.168.1.169", "lookup", "main"])
    ping_from_macbook(lab)
    docs, _summary = trace.finish(WAIT)
    doc = flow_to(docs, "8.8.8.8", ICMP)
    # The rule list at start would have given 32766 (the only rule of main); the kernel says 100.
    assert doc["rule"] == {"priority": 100, "source": "kernel", "text": None, "derived_priority": 32766,
                           "note": "not in the rule list at trace start"}, doc["rule"]
    assert _rules_tried(doc) == [(255, "EAGAIN", 0), (254, "ok", 100)]
    assert doc["sim"]["agrees"] is False
    assert "rule: kernel 100, simulation 32765" in doc["sim"]["differences"], doc["sim"]


@pytest.mark.parametrize("kind", KINDS)
def test_ipv6_policy_routing_the_kernel_names_the_source_rule(lab, kind):
    trace = RunningTrace("--netns", lab.ns("router"), tracelab.CLIENT6, tracelab.INTERNET6, "--count", "1",
                         *KINDS[kind], *SLOW).started(WAIT)
    lab.run("client", ["ping", "-n", "-6", "-c1", "-W1", tracelab.INTERNET6], check=False)
    docs, _summary = trace.finish(WAIT)
    doc = flow_to(docs, tracelab.INTERNET6, ICMPV6)
    assert _rules_tried(doc) == [(255, "EAGAIN", 0), (tracelab.POLICY_TABLE, "ok", tracelab.SOURCE_RULE)]
    assert (doc["rule"]["priority"], doc["rule"]["source"]) == (tracelab.SOURCE_RULE, "kernel")
    assert doc["sim"]["agrees"], f"{doc['sim']}"


def test_a_local_flows_socket_lookups_carry_their_rule(lab):
    trace = RunningTrace("--netns", lab.ns("router"), "--proto", "udp", "--dport", "53", "--count", "2",
                         *SLOW).started(WAIT)
    tracelab.send_udp(lab, "router", 53, tracelab.INTERNET4, tracelab.INTERNET6)
    docs, _summary = trace.finish(WAIT)
    for address in (tracelab.INTERNET4, tracelab.INTERNET6):
        doc = flow_to(docs, address, UDP)
        assert doc["origin"] == "local-out"
        assert _rules_tried(doc) == [(255, "EAGAIN", 0), (tracelab.POLICY_TABLE, "ok", tracelab.DNS_RULE)], doc
        assert (doc["rule"]["priority"], doc["rule"]["source"]) == (tracelab.DNS_RULE, "kernel")
        assert doc["sim"]["agrees"], f"{doc['sim']}"


@pytest.mark.parametrize("kind", KINDS)
def test_sigkill_leaves_no_rule_probe_attached(trace_lab, kind):
    lab = trace_lab("ultimate")
    trace = RunningTrace("--netns", lab.ns("route"), "--proto", "icmp", *KINDS[kind], *SLOW).started(WAIT)
    assert _probing("fib4_rule_action")
    trace.kill()
    deadline = time.monotonic() + 5  # the kernel frees a dead process's links a moment later
    while _probing("fib4_rule_action") and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _probing("fib4_rule_action") and not _probing("fib6_rule_action")
    assert Path("/sys/kernel/tracing/kprobe_events").read_text() == ""  # no legacy kprobe left either
