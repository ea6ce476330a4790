"""The seed's questions answered from live traffic: the MacBook pings 8.8.8.8 and opens a TCP
connection through the lab's router while `why-route trace` watches the router's namespace."""

from tests.lab.lab_helpers import ping_from_macbook
from tests.trace.trace_helpers import RunningTrace, flow_to, tcp_connect

ICMP, TCP = 1, 6


def _trace_ping_and_tcp(lab, *extra):
    trace = RunningTrace("--netns", lab.ns("route"), "192.168.1.169", "8.8.8.8", "--count", "2", *extra).started()
    ping_from_macbook(lab)
    tcp_connect(lab, "macbook", "8.8.8.8", 80)
    return trace.finish()


def test_ultimate_rule_table_gateway_snat_reply_and_simulation(trace_lab):
    lab = trace_lab("ultimate")
    docs, summary = _trace_ping_and_tcp(lab)
    for proto in (ICMP, TCP):
        doc = flow_to(docs, "8.8.8.8", proto)
        assert doc["origin"] == "forwarded" and doc["flow"]["iif"] == "br-lan"
        assert doc["rule"]["priority"] == 32765, doc
        assert (doc["table_id"], doc["table"]) == (7375, "sunusroute")
        assert [t["table_id"] for t in doc["tables_tried"]][-1] == 7375
        assert (doc["dev"], doc["gateway"]) == ("ppp0", "123.150.232.1")
        assert [(n["type"], n["field"], n["to"]) for n in doc["nat"]] == [("snat", "src", "123.150.232.74")]
        assert doc["egress"]["dev"] == "ppp0" and doc["egress"]["src"] == "123.150.232.74"
        assert [h["hook"] for h in doc["hooks"]] == ["prerouting", "forward", "postrouting"]
        assert all(h["verdict"] == "accept" for h in doc["hooks"])
        assert doc["verdict"] == "forwarded" and doc["drop"] is None
        assert doc["reply_seen"] is True
        assert doc["sim"]["agrees"], doc["sim"]["differences"]
    tcp = flow_to(docs, "8.8.8.8", TCP)
    assert tcp["flow"]["dport"] == 80 and tcp["egress"]["dport"] == 80
    assert summary["flows"] == 2 and summary["lost"] == 0
    assert set(summary["probes"]) == {"netfilter", "fib", "fib6", "drop", "conntrack"}


def test_blog_as_written_tries_the_empty_table_then_main_decides(trace_lab):
    lab = trace_lab("blog-as-written")
    docs, _summary = _trace_ping_and_tcp(lab)
    doc = flow_to(docs, "8.8.8.8", ICMP)
    tried = [(t["table_id"], t["result"]) for t in doc["tables_tried"]]
    # The rule matches, but its table is empty, so it does not exist: the kernel looks nothing up there.
    assert tried == [(255, "EAGAIN"), (254, "ok")], tried
    walked = {r["priority"]: r["result"] for r in doc["rules_matched"]}
    assert walked[32765] == "no such table: no lookup", walked
    assert walked[32766] == "decided"
    assert "rule 32765 → sunusroute: no such table" in _text_of(doc)
    assert doc["rule"]["priority"] == 32766 and doc["table"] == "main"
    assert (doc["dev"], doc["gateway"]) == ("eth0.2", "10.10.149.1")
    assert [(n["rule_type"], n["to"]) for n in doc["nat"]] == [("masquerade", "10.10.149.4")]
    assert doc["egress"]["src"] == "10.10.149.4"
    assert doc["sim"]["agrees"], doc["sim"]["differences"]


def test_text_output_is_one_line_per_flow(trace_lab):
    lab = trace_lab("ultimate")
    trace = RunningTrace("--netns", lab.ns("route"), "--proto", "icmp", "--count", "1", json_lines=False).started()
    ping_from_macbook(lab)
    trace.finish()
    lines = trace.out.splitlines()
    assert len(lines) == 1, trace.out
    line = lines[0]
    for words in ("192.168.1.169 → 8.8.8.8", "rule 32765", "table sunusroute (7375)", "via 123.150.232.1 dev ppp0",
                  "SNAT 192.168.1.169 → 123.150.232.74", "reply seen", "sim: agrees"):
        assert words in line, line
    assert "1 flows" in trace.stderr and "0 lost" in trace.stderr


def test_ultimate_nosnat_leaves_ppp0_unmasked_gets_no_reply_and_carries_wr019(trace_lab):
    lab = trace_lab("ultimate-nosnat")
    trace = RunningTrace("--netns", lab.ns("route"), "--proto", "icmp", "--count", "1",
                         "--reply-wait", "0.5").started()
    ping_from_macbook(lab)
    docs, _summary = trace.finish()
    doc = flow_to(docs, "8.8.8.8", ICMP)
    assert doc["rule"]["priority"] == 32765 and doc["dev"] == "ppp0"
    assert doc["nat"] == [] and doc["egress"]["src"] == "192.168.1.169"
    assert doc["reply_seen"] is False
    assert "WR019" in [f["id"] for f in doc["sim"]["findings"]]
    assert doc["sim"]["agrees"], doc["sim"]["differences"]


def test_faster_traced_on_archlinux(trace_lab):
    lab = trace_lab("faster")
    trace = RunningTrace("--netns", lab.ns("archlinux"), "192.168.1.169", "8.8.8.8", "--count", "1",
                         "--reply-wait", "0.5").started()
    ping_from_macbook(lab)
    docs, _summary = trace.finish()
    doc = flow_to(docs, "8.8.8.8", ICMP)
    assert doc["rule"]["priority"] == 32765 and (doc["table_id"], doc["table"]) == (7375, "SunusRules")
    assert doc["dev"] == "ppp0" and doc["egress"]["src"] == "192.168.1.169"
    assert doc["sim"]["agrees"], doc["sim"]["differences"]


def _text_of(doc):
    from tracer.trace.flows import text_line

    return text_line(doc)


def test_rules_name_the_iptables_nft_snat_rule_at_postrouting(trace_lab):
    lab = trace_lab("ultimate")
    trace = RunningTrace("--netns", lab.ns("route"), "--proto", "icmp", "--count", "1", "--rules").started()
    ping_from_macbook(lab)
    docs, _summary = trace.finish()
    doc = flow_to(docs, "8.8.8.8", ICMP)
    post = next(h for h in doc["hooks"] if h["hook"] == "postrouting")
    snat = [r for r in post["rules"] if "snat to 123.150.232.74" in r["rule"]]
    assert snat and snat[0]["table"] == "nat" and snat[0]["chain"] == "POSTROUTING" and snat[0]["verdict"] == "accept"
    assert not lab.run("route", ["nft", "list", "tables"]).stdout.count("whyroute_trace")
