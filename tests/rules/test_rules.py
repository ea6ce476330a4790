"""Every rule against its bad and good fixture (snapshots collected from real
namespaces by fixtures/make_fixtures.py), plus the engine, the docs and the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.helpers.cli import why_route
from tracer.checks import docs, engine
from tracer.checks.base import DOC_SECTIONS, Finding, Fix
from tracer.collect import snapshot
from tracer.errors import UsageError

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = Path(__file__).resolve().parent / "fixtures"
GOLDEN = Path(__file__).resolve().parent / "golden"

# What each rule's finding on its bad fixture must name (in its message or fix).
EXPECT = {
    "WR001": ["sunusroute (7375)", "rule 32765", "default via 10.10.149.1 dev eth0.2", "without `table sunusroute`",
              "ip route add default via 123.150.232.1 dev ppp0 table sunusroute"],
    "WR002": ["table fast", "none for default", "ip route add default via 123.150.232.1 dev ppp0 table fast"],
    "WR003": ["10.9.0.1", "br-lan", "192.168.1.0/24", "172.16.0.0/12"],
    "WR004": ["10.10.149.4", "eth0.2", "resolves neighbours", "ip route replace 172.16.0.0/12 via GATEWAY dev eth0.2"],
    "WR005": ["123.150.108.1", "123.150.232.1", "ip route replace 172.16.0.0/12 via 123.150.232.1 dev ppp0"],
    "WR006": ["10.10.149.9", "eth0.2", "INCOMPLETE", "ip neigh flush dev eth0.2 to 10.10.149.9"],
    "WR007": ["10.10.149.0/24", "eth0.2", "ppp0",
              "ip route add 10.10.149.0/24 dev eth0.2 src 10.10.149.4 table sunusroute"],
    "WR008": ["rule 40000", "32766: from all lookup main", "ip rule del priority 40000",
              "ip rule add from 192.168.1.169 lookup fast priority 32765"],
    "WR009": ["goto 200", "no rule at priority 200"],
    "WR010": ["table main", "default via 10.10.149.1 dev eth0.2", "default via 123.150.232.1 dev ppp0",
              "ip route del default via 123.150.232.1 dev ppp0 metric 0"],
    "WR011": ["7375", "SunusRules", "sunusroute", "/etc/iproute2/rt_tables", "sed -i"],
    "WR012": ["isp2", "100, 200", "means 100", "200[[:space:]]\\+isp2"],
    "WR013": ["table 7375", "echo '7375 NAME' >> /etc/iproute2/rt_tables"],
    "WR014": ["192.168.11.169", "ip rule del priority 100"],
    "WR015": ["net.ipv4.ip_forward is 0", "from 192.168.1.169", "sysctl -w net.ipv4.ip_forward=1"],
    "WR016": ["br-lan", "sysctl -w net.ipv4.conf.br-lan.forwarding=1"],
    "WR017": ["123.150.232.74", "ppp0", "8.8.8.8", "sysctl -w net.ipv4.conf.all.rp_filter=2",
              "ip rule add from 123.150.232.74 lookup sunusroute"],
    "WR018": ["fwmark 0x2", "ppp0", "sysctl -w net.ipv4.conf.all.src_valid_mark=1"],
    "WR019": ["ppp0", "192.168.1.169", "sunusroute", "123.150.232.74",
              "iptables -t nat -A POSTROUTING -o ppp0 -j SNAT --to-source 123.150.232.74"],
    # issue 9: the bad rule is replaced where it stands (an appended rule would never be reached)
    "WR020": ["10.10.149.4", "eth0.2", "ppp0", "123.150.232.74",
              "iptables -t nat -R POSTROUTING 2 -o ppp0 -j MASQUERADE"],
    "WR021": ["ppp0", "123.150.232.74", "iptables -t nat -R POSTROUTING 2 -o ppp0 -j MASQUERADE"],
    "WR022": ["192.168.1.169", "no NAT", "123.150.232.74", "conntrack -D -p icmp -s 192.168.1.169 -d 8.8.8.8"],
    "WR023": ["ip nat", "iptables-legacy -t nat -F"],
    "WR024": ["192.168.1.169", "ppp0", "FORWARD policy drop",
              "iptables -I FORWARD -i br-lan -o ppp0 -s 192.168.1.169 -j ACCEPT"],
    "WR025": ["192.168.1.169", "ppp0", "FORWARD policy drop",
              "iptables -I FORWARD -i ppp0 -o br-lan -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT"],
    "WR026": ["ppp0", "MTU 1400",
              "iptables -t mangle -A FORWARD -o ppp0 -p tcp --tcp-flags SYN,RST SYN -j TCPMSS --clamp-mss-to-pmtu"],
    "WR027": ["ppp0", "linkdown", "table sunusroute"],
    "WR028": ["iif eth1", "ip rule del priority 100"],
    "WR029": ["table sunusroute", "no rule looks it up", "lookup sunusroute"],
    "WR030": ["0x80000/0xff0000", "rule 5250", "ENETUNREACH", "eth0.2",
              "ip rule add fwmark 0x80000/0xff0000 lookup main priority 5249"],
    "WR031": ["not from all fwmark 0xca6c lookup 51820", "192.168.1.0/24", "br-lan", "wg0",
              "ip rule add table main suppress_prefixlength 0 priority 32764",
              "ip route add 192.168.1.0/24 dev br-lan src 192.168.1.1 table 51820"],
    "WR032": ["ppp0", "fwmark 0x2 lookup fast", "192.168.1.2", "123.150.232.74",
              "iptables -t nat -A POSTROUTING -o ppp0 -j MASQUERADE"],
    "WR033": ["192.168.1.2 on bridge br-lan", "123.150.232.74:8080", "192.168.1.245:80",
              "net.bridge.bridge-nf-call-iptables = 0", "sysctl -w net.bridge.bridge-nf-call-iptables=1",
              "ip link set br-lan type bridge nf_call_iptables 1",
              "iptables -t nat -I POSTROUTING -s 192.168.1.0/24 -d 192.168.1.245 -o br-lan -j MASQUERADE"],
    "WR034": ["192.168.1.169 → 8.8.8.8", "leaves by eth0.2 (mark 0x1, rule 100: from all fwmark 0x1 lookup main)",
              "its later packets are routed to ppp0 (mark 0x0",
              "NAT drops it: the connection was masqueraded on eth0.2 and this packet leaves by ppp0",
              "iptables -t mangle -I PREROUTING 1 -j CONNMARK --restore-mark",
              "iptables -t mangle -A PREROUTING -j CONNMARK --save-mark"],
}
IDS = [c.id for c in engine.catalogue()]


def load(rule_id: str, kind: str):
    return snapshot.load(str(FIXTURES / rule_id / f"{kind}.json"))


def test_catalogue_is_complete():
    assert len(IDS) >= 25
    assert sorted(EXPECT) == IDS
    assert sorted(p.name for p in FIXTURES.iterdir() if p.is_dir()) == IDS


@pytest.mark.parametrize("rule_id", IDS)
def test_rule_fires_on_bad_only(rule_id):
    check = engine.resolve(rule_id)
    bad = engine.run(load(rule_id, "bad"), [check])
    assert bad, f"{rule_id} did not fire on its bad fixture"
    assert {f.id for f in bad} == {rule_id}
    text = "\n".join(f.message + "\n" + "\n".join(f.fix) for f in bad)
    missing = [s for s in EXPECT[rule_id] if s not in text]
    assert not missing, f"{rule_id} finding lacks {missing}:\n{text}"
    for f in bad:
        assert f.severity in ("error", "warning", "info") and f.title == check.title and f.fix
    good = engine.run(load(rule_id, "good"), [check])
    assert not good, f"{rule_id} fired on its good fixture: {[f.message for f in good]}"


def test_own_address_gateway_severity_depends_on_the_link():
    state = load("WR004", "bad")
    (eth,) = engine.run(state, [engine.resolve("WR004")])
    assert eth.severity == "error"
    links = tuple(link if link.name != "eth0.2"
                  else link.__class__(**{**link.__dict__, "flags": (*link.flags, "NOARP")})
                  for link in state.links)
    (noarp,) = engine.run(state.replace(links=links), [engine.resolve("WR004")])
    assert noarp.severity == "info" and "harmless" in noarp.message


def test_finding_dict_contract():
    from tracer.output.json_out import finding_doc

    (f,) = engine.run(load("WR019", "bad"), [engine.resolve("WR019")])
    assert isinstance(f, Finding)
    assert list(finding_doc(f)) == ["id", "severity", "title", "message", "fix"]
    # issue 9: the fix says what its commands are (here: MASQUERADE, or SNAT if the address is static)
    assert finding_doc(f)["fix"] == {"kind": "alternatives", "commands": list(f.fix)}
    assert f.fix.kind == "alternatives" and f.fix.commands == tuple(f.fix)


# What each rule's fix on its bad fixture is (issue 9): steps run in order, alternatives, a probe.
FIX_KIND = {"WR002": "alternatives", "WR006": "probe", "WR010": "alternatives", "WR019": "alternatives",
            "WR027": "alternatives", "WR031": "alternatives", "WR033": "alternatives"}


@pytest.mark.parametrize("rule_id", IDS)
def test_every_fix_says_what_it_is(rule_id):
    for f in engine.run(load(rule_id, "bad"), [engine.resolve(rule_id)]):
        assert isinstance(f.fix, Fix) and f.fix.kind == FIX_KIND.get(rule_id, "steps"), (rule_id, f.fix)


def test_fix_text_labels():
    from tracer.output import check as render

    def shown(fix):
        finding = Finding("WR999", "error", "t", "m", fix)
        return render.text([finding], colour=False, source="x", rules_run=1).splitlines()[5:]

    assert shown(Fix.steps("a")) == ["      fix: a"]
    assert shown(Fix.steps("a", "b")) == ["      fix (run in order):", "        a", "        b"]
    assert shown(Fix.alternatives("a", "b")) == ["      fix (one of):", "        a", "        b"]
    assert shown(Fix.probe("a")) == ["      probe: a"]
    assert Finding("WR999", "error", "t", "m", ("a", "b")).fix.kind == "steps"
    assert Fix.alternatives("a").kind == "steps"  # one choice is no choice
    with pytest.raises(ValueError):
        Fix(("a",), "maybe")


def test_wr006_probe_uses_only_tools_every_host_has():
    (f,) = engine.run(load("WR006", "bad"), [engine.resolve("WR006")])
    assert f.fix == ("ip neigh flush dev eth0.2 to 10.10.149.9", "ping -n -c 3 -W 1 -I eth0.2 10.10.149.9",
                     "ip neigh show 10.10.149.9 dev eth0.2")
    assert not any(tool in " ".join(f.fix) for tool in ("arping", "ndisc6"))


def test_select_ignore_and_unknown_ids():
    assert [c.id for c in engine.select("wr001,WR019")] == ["WR001", "WR019"]
    assert [c.id for c in engine.select(["WR001 WR002"], ignore="WR002")] == ["WR001"]
    assert "WR019" not in [c.id for c in engine.select(None, ["WR019"])]
    with pytest.raises(UsageError, match="unknown rule ID 'WR999'"):
        engine.select("WR999")


def test_redirects_follow_renamed_ids(monkeypatch):
    from rules import redirects

    monkeypatch.setitem(redirects.REDIRECTS, "WR900", "WR019")
    assert engine.resolve("wr900").id == "WR019"
    assert not set(redirects.REDIRECTS) & set(IDS) - {"WR900"}, "a retired ID must not be reused"


def test_docs_have_every_section_and_are_current():
    for check in engine.catalogue():
        summary, found = docs.sections(check)
        assert summary and set(found) == set(DOC_SECTIONS)
        assert check.id in docs.page(check)
    assert docs.stale() == [], "run `python -m tracer.checks.docs`"


def test_docs_refuse_a_missing_section():
    from tracer.checks.base import Check

    class Broken(Check):
        """Something

        ## What it checks
        x

        ## Fix
        y
        """

        id = "WR999"

    with pytest.raises(docs.DocError, match="Why it breaks forwarding"):
        docs.sections(Broken())


def test_check_never_scans_routes_per_rule():
    """The engine and the rules walk the routes once (the FIB index is the simulator's)."""
    import traceback

    from tracer.checks.context import CheckContext

    state = load("WR019", "bad")
    walks = []

    class Counting(tuple):
        def __iter__(self):
            callers = [f.filename for f in traceback.extract_stack()[:-1]]
            walks.append(next((c for c in reversed(callers) if "/tracer/" in c or "/rules/" in c), "?"))
            return super().__iter__()

    ctx = CheckContext(state.replace(routes=Counting(state.routes)))
    engine.run(ctx.state, ctx=ctx)
    ours = [w for w in walks if "/tracer/checks/" in w or "/rules/wr" in w]
    assert len(ours) == 1, f"routes walked {len(ours)} times by the checks: {ours}"


# ------------------------------------------------------------------ CLI

def test_cli_golden_text_for_ultimate_nosnat():
    result = why_route("check", "--snapshot", "tests/rules/fixtures/WR019/bad.json")
    assert result.returncode == 1, result.stderr
    assert "\033[" not in result.stdout  # piped: plain
    assert result.stdout == (GOLDEN / "check_ultimate_nosnat.txt").read_text()


def test_cli_exit_status_and_json():
    ok = why_route("check", "--snapshot", "tests/rules/fixtures/WR001/good.json", "--json")
    assert ok.returncode == 0, ok.stderr
    doc = json.loads(ok.stdout)
    assert doc["summary"]["error"] == 0 and {f["id"] for f in doc["findings"]} == {"WR007", "WR021", "WR026"}
    only = why_route("check", "--snapshot", "tests/rules/fixtures/WR001/good.json", "--select", "WR021", "--json")
    assert [f["id"] for f in json.loads(only.stdout)["findings"]] == ["WR021"]
    ignored = why_route("check", "--snapshot", "tests/rules/fixtures/WR019/bad.json", "--ignore", "WR019")
    assert ignored.returncode == 0 and "WR019 missing SNAT" not in ignored.stdout


@pytest.mark.parametrize("args, message", [
    (("check", "--snapshot", "tests/rules/fixtures/WR019/bad.json", "--select", "WR999"), "unknown rule ID 'WR999'"),
    (("check", "--snapshot", "/nonexistent/x.json"), "cannot read snapshot"),
    (("check", "--snapshot", "pyproject.toml"), "not valid JSON"),
    (("rules", "XX1"), "unknown rule ID 'XX1'"),
])
def test_cli_bad_input_is_one_line(args, message):
    result = why_route(*args)
    assert result.returncode == 2
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert "Traceback" not in result.stderr


def test_cli_rules_lists_and_prints_pages():
    listing = why_route("rules")
    assert listing.returncode == 0
    assert all(i in listing.stdout for i in IDS)
    page = why_route("rules", "wr019")
    assert page.stdout == (ROOT / "docs" / "rules" / "WR019.md").read_text()


def test_cli_colour_only_when_asked_for():
    plain = why_route("check", "--snapshot", "tests/rules/fixtures/WR019/bad.json", no_color=True)
    assert "\033[" not in plain.stdout
    from tracer.output import check as render

    findings = engine.run(load("WR019", "bad"))
    assert "\033[" in render.text(findings, colour=True, source="x", rules_run=1)


def test_flow_findings_for_why_route_src_dst():
    """The `findings` of an explanation: the flow-level rules on that one flow."""
    from tracer.checks.engine import flow_findings
    from tracer.flow import make_flow
    from tracer.sim.explain import explain

    state = load("WR024", "bad")
    dropped = explain(state, make_flow("8.8.8.8", "192.168.1.169", proto="tcp", dport="443"))
    assert [f.id for f in flow_findings(dropped)] == ["WR024"]
    local = explain(state, make_flow("8.8.8.8"))
    assert flow_findings(local) == []
    nosnat = explain(load("WR019", "bad"), make_flow("8.8.8.8", "192.168.1.169", proto="tcp", dport="443"))
    assert "WR019" in [f.id for f in flow_findings(nosnat)]
