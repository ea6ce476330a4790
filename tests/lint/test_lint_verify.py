"""`why-route verify` on the seed lab's Route, and broken expectation files."""

import json

import pytest

from tests.helpers.cli import why_route
from tests.lint.lint_helpers import FIXTURES

ULTIMATE = str(FIXTURES / "seed-ultimate.toml")


def test_ultimate_passes(seed):
    result = why_route("verify", ULTIMATE, "--snapshot", seed["ultimate"], no_color=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "3 of 3 expectations hold" in result.stdout


def test_nosnat_fails_with_the_explanation(seed):
    result = why_route("verify", ULTIMATE, "--snapshot", seed["ultimate-nosnat"], no_color=True)
    assert result.returncode == 1
    out = result.stdout
    assert "FAIL  the MacBook leaves by the fast link, SNATed to the PPP address" in out
    assert "source is 192.168.1.169, expected 123.150.232.74" in out
    assert "nat is none, expected snat" in out
    assert "FAIL  no finding WR001, WR019" in out and "WR019:" in out
    assert "Why the MacBook leaves by the fast link, SNATed to the PPP address fails:" in out
    assert "Verdict: forwarded — leaves ppp0 via 123.150.232.1, source 192.168.1.169" in out
    assert "1 of 3 expectations hold" in out


def test_json_and_what_if(seed, tmp_path):
    fix = tmp_path / "fix.sh"
    fix.write_text("iptables -t nat -A POSTROUTING -o ppp0 -j SNAT --to-source 123.150.232.74\n")
    result = why_route("verify", ULTIMATE, "--snapshot", seed["ultimate-nosnat"], "--with", str(fix), "--json",
                       no_color=True)
    assert result.returncode == 0, result.stdout + result.stderr
    doc = json.loads(result.stdout)
    assert doc["ok"] and doc["outcomes"][0]["actual"]["source"] == "123.150.232.74"


@pytest.mark.parametrize("text, message", [
    ("[[expect]\nfrom = 1", "not valid TOML"),
    ("[[expect]]\nfrom = \"192.168.1.169\"\nto = \"8.8.8.8\"\nleave_via = \"ppp0\"\n",
     "expect #1: unknown key 'leave_via' (did you mean 'leaves_via'?)"),
    ("[[expect]]\nfrom = \"192.168.1.169\"\nleaves_via = \"ppp0\"\n", "expect #1: a flow needs `to`"),
    ("[[expect]]\nto = \"8.8.8.8\"\n", "expect #1: nothing to check"),
    ("[[expect]]\nno_finding = \"WR999\"\n", "unknown rule ID 'WR999'"),
    ("[[expect]]\nto = \"8.8.8.8\"\nsource = \"1123.150.232.74\"\n", "is not an IP address"),
    ("[[expect]]\nto = \"8.8.8.8\"\nrule = \"32765\"\n", "rule = '32765': wrong type"),
    ("title = 1\n", "unknown top-level key 'title'"),
    ("", "no expectations"),
])
def test_broken_expectations_exit_2_with_one_line(seed, tmp_path, text, message):
    path = tmp_path / "broken.toml"
    path.write_text(text)
    result = why_route("verify", str(path), "--snapshot", seed["ultimate"], no_color=True)
    assert result.returncode == 2
    assert not result.stdout
    assert len(result.stderr.strip().splitlines()) == 1 and message in result.stderr
