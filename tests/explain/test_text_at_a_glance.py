"""What a senior engineer reads at a glance: rule marks that tell decided from fell-through,
why no NAT applied, and a verdict that is not green when an error finding says the flow fails."""

from pathlib import Path

from tracer.checks.engine import flow_findings
from tracer.collect import snapshot
from tracer.flow import make_flow
from tracer.output import text
from tracer.sim.explain import explain

FIXTURES = Path(__file__).resolve().parent / "fixtures"


def _render(case: str, colour: bool = False) -> str:
    e = explain(snapshot.load(str(FIXTURES / f"{case}.json")), make_flow("8.8.8.8", "192.168.1.169"))
    return text.render(e.with_findings(flow_findings(e)), colour=colour)


def test_marks_tell_decided_from_fell_through():
    out = _render("blog-as-written-route")
    assert "  ↷ 32765: from 192.168.1.169 lookup sunusroute" in out  # matched, its table is empty
    assert "  ✓ 32766: from all lookup main" in out


def test_why_no_nat_names_the_rule_and_the_failed_match():
    out = _render("ultimate-nosnat-route")
    why = "postrouting: #1 -A POSTROUTING -s 192.168.1.0/24 -o eth0.2 -j MASQUERADE: -o eth0.2 (oif is ppp0)"
    assert f"no NAT rule matched:\n    {why}" in out


def test_verdict_is_not_green_when_an_error_finding_says_it_fails():
    doomed = _render("ultimate-nosnat-route", colour=True)
    assert "\033[33mforwarded\033[0m" in doomed and "but see the error findings below" in doomed
    healthy = _render("ultimate-route", colour=True)
    assert "\033[32mforwarded\033[0m" in healthy
