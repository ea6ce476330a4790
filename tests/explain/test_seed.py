"""The seed's questions, answered live on the lab's nodes and offline from their snapshots.

Each case asserts what a user reads: the rule, table, route, gateway, device and
NAT — and that it is where the lab's traffic really went and what the kernel says.
"""

import json
import re
from pathlib import Path

import pytest

from tests.explain.explain_helpers import explain_json
from tests.helpers.cli import why_route_in_process
from tests.lab.lab_helpers import install_observers, observe, ping_from_macbook
from tracer.collect import snapshot
from tracer.collect.live import collect_state

FLOW = ("192.168.1.169", "8.8.8.8")

# variant → (node, rule priority that decides, table id, table name, gateway, dev, NAT (type, to) or None,
#            source on the wire, the internet node that receives the ping)
CASES = {
    "slow": ("route", 32766, 254, "main", "10.10.149.1", "eth0.2", ("masquerade", "10.10.149.4"),
             "10.10.149.4", "internet1"),
    "ultimate": ("route", 32765, 7375, "sunusroute", "123.150.232.1", "ppp0", ("snat", "123.150.232.74"),
                 "123.150.232.74", "internet2"),
    "ultimate-nosnat": ("route", 32765, 7375, "sunusroute", "123.150.232.1", "ppp0", None,
                        "192.168.1.169", "internet2"),
    "blog-as-written": ("route", 32766, 254, "main", "10.10.149.1", "eth0.2", ("masquerade", "10.10.149.4"),
                        "10.10.149.4", "internet1"),
    # The route says `via 180.134.135.173`, ArchLinux's own address: the kernel
    # uses no gateway at all and sends on-link out of the point-to-point ppp0.
    "faster": ("archlinux", 32765, 7375, "SunusRules", None, "ppp0", None,
               "192.168.1.169", "internet3"),
}


def _rule(doc, priority):
    return next(r for r in doc["rules"] if r["priority"] == priority)


@pytest.mark.parametrize("variant", sorted(CASES))
def test_live_explanation_names_rule_table_route_and_nat(variant, seed_lab, capsys):
    node, priority, table_id, table, gateway, dev, nat, wire_src, internet = CASES[variant]
    lab = seed_lab(variant)
    doc = explain_json(capsys, *FLOW, "--netns", lab.ns(node))

    assert doc["origin"] == "forwarded"
    assert doc["flow"]["iif"] in ("br-lan", "eth0")
    assert "inferred" in doc["iif_inferred"]
    decision = doc["decision"]
    assert decision["rule"]["priority"] == priority
    assert (decision["table_id"], decision["table"]) == (table_id, table)
    assert decision["route"]["dst"] == "default"
    assert (decision["gateway"], decision["dev"], decision["error"]) == (gateway, dev, None)
    rewrites = [(n["type"], n["to"]) for n in doc["nat"] if n["field"] == "src"]
    assert rewrites == ([nat] if nat else [])
    assert doc["egress"]["src"] == wire_src and doc["egress"]["dev"] == dev
    assert doc["verdict"] == "forwarded"
    assert doc["kernel"]["agrees"], doc["kernel"]["differences"]
    assert doc["kernel"]["table"] == table_id

    # …and it is where the kernel really sent the MacBook's ping, with that source.
    install_observers(lab)
    ping_from_macbook(lab)
    seen = observe(lab, internet)
    assert seen.requests >= 1 and wire_src in seen.sources


def test_blog_as_written_rule_matches_but_its_table_is_empty(seed_lab, capsys):
    doc = explain_json(capsys, *FLOW, "--netns", seed_lab("blog-as-written").ns("route"))
    rule = _rule(doc, 32765)
    assert rule["matched"] is True
    assert "sunusroute" in rule["text"]
    assert "empty" in (rule["reason"] or "") or "no route" in (rule["reason"] or "")
    assert doc["decision"]["rule"]["priority"] == 32766


def test_rules_before_the_decision_say_why_they_did_not_decide(seed_lab, capsys):
    doc = explain_json(capsys, *FLOW, "--netns", seed_lab("ultimate").ns("route"))
    assert [r["priority"] for r in doc["rules"]] == [0, 32765]
    local = _rule(doc, 0)
    assert local["matched"] is True and "local" in local["text"]
    assert local["reason"]  # no route for 8.8.8.8 in table local


def test_non_matching_rule_names_the_failed_selector(seed_lab, capsys):
    doc = explain_json(capsys, "192.168.1.245", "8.8.8.8", "--netns", seed_lab("ultimate").ns("route"))
    rule = _rule(doc, 32765)
    assert rule["matched"] is False
    assert "192.168.1.169" in rule["reason"] and "192.168.1.245" in rule["reason"]
    assert doc["decision"]["table"] == "main"


def test_offline_snapshot_gives_the_live_answer(seed_lab, capsys, tmp_path):
    lab = seed_lab("ultimate")
    path = tmp_path / "route.json"
    status, _, err = why_route_in_process(capsys, "snapshot", "--netns", lab.ns("route"), "-o", str(path))
    assert status == 0, err
    live = explain_json(capsys, *FLOW, "--netns", lab.ns("route"))
    offline = explain_json(capsys, *FLOW, "--snapshot", str(path))
    assert offline["kernel"] is None
    for key in ("rules", "decision", "nat", "egress", "verdict", "origin"):
        assert offline[key] == live[key], key


def test_local_out_selects_the_source_address(seed_lab, capsys):
    doc = explain_json(capsys, "8.8.8.8", "--netns", seed_lab("ultimate").ns("route"))
    assert doc["origin"] == "local-out"
    assert doc["decision"]["dev"] == "eth0.2"
    assert doc["decision"]["prefsrc"] == "10.10.149.4"
    assert doc["kernel"]["agrees"], doc["kernel"]["differences"]


def test_local_destination_is_delivered_locally(seed_lab, capsys):
    doc = explain_json(capsys, "192.168.1.169", "192.168.1.1", "--netns", seed_lab("ultimate").ns("route"))
    assert doc["origin"] == "local-in"
    assert doc["verdict"] == "delivered-locally"
    assert doc["kernel"]["agrees"], doc["kernel"]["differences"]


def test_batch_prints_one_json_line_per_query_and_survives_bad_lines(seed_lab, capsys, tmp_path):
    queries = tmp_path / "q.txt"
    queries.write_text("# seed flows\n192.168.1.169 8.8.8.8\n\n999.1.1.1 8.8.8.8\n8.8.8.8 --proto tcp --dport 443\n")
    status, out, err = why_route_in_process(capsys, "batch", "--netns", seed_lab("ultimate").ns("route"), str(queries))
    assert status == 0, err
    lines = [json.loads(line) for line in out.splitlines()]
    assert len(lines) == 3
    assert lines[0]["decision"]["dev"] == "ppp0"
    assert lines[1]["line"] == 4 and "invalid source address" in lines[1]["error"]
    assert lines[2]["flow"]["dport"] == 443 and lines[2]["origin"] == "local-out"


FIXTURES = Path(__file__).parent / "fixtures"


@pytest.mark.parametrize("case", sorted(p.stem for p in FIXTURES.glob("*.json")))
def test_committed_snapshots_still_match_the_lab(case, seed_lab):
    """The golden tests explain these files; they must stay what the lab really is."""
    variant, node = case.rsplit("-", 1)
    committed = snapshot.load(str(FIXTURES / f"{case}.json"))
    fresh = collect_state(seed_lab(variant).ns(node))
    for field in ("rules", "routes", "addresses", "table_names", "sysctls"):
        assert getattr(fresh, field) == getattr(committed, field), field
    assert [(link.name, link.flags, link.mtu, link.kind) for link in fresh.links] == \
        [(link.name, link.flags, link.mtu, link.kind) for link in committed.links]
    assert _without_counters(fresh.netfilter["nft"]["text"]) == _without_counters(committed.netfilter["nft"]["text"])


def _without_counters(text: str) -> str:
    return re.sub(r"packets \d+ bytes \d+", "packets N bytes N", text)
