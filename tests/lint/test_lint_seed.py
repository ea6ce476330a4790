"""`why-route lint` of the seed blog's script on the seed lab's Route (slow variant), as users see it."""

import json

from tests.helpers.cli import why_route
from tests.lint.lint_helpers import FIXTURES, orphaned_leftovers

SEED_BLOG = str(FIXTURES / "seed-blog.sh")


def test_text_reports_the_failing_lines_with_the_tools_messages(seed):
    result = why_route("lint", SEED_BLOG, "--snapshot", seed["slow"], no_color=True)
    assert result.returncode == 1, result.stderr
    out = result.stdout
    flat = " ".join(out.split())  # explanations are wrapped to the terminal
    assert "line  9  FAILED       ip route add default via 123.150.232.1 dev ppp0" in out
    assert "RTNETLINK answers: File exists" in out
    assert "a route for default already exists in table main (`default via 10.10.149.1 dev eth0.2`)" in flat
    assert "fix: ip route add default via 123.150.232.1 dev ppp0 table sunusroute" in out
    assert "line 17  FAILED       iptables -t nat -o ppp0 -j SNAT --to-address 123.150.232.74" in out
    assert 'unknown option "--to-address"' in out
    assert "it is --to-source" in flat and "add `-A POSTROUTING`" in flat
    assert "fix: iptables -t nat -A POSTROUTING -o ppp0 -j SNAT --to-source 123.150.232.74" in out
    assert "line 11  not checked  the packet should use the route table" in out
    assert "2 failed, 2 not checked, 6 ok" in out
    assert "192.168.1.169 → 8.8.8.8: same path out" in out
    assert "rule 32765 matched but fell through (table sunusroute (7375) is empty)" in flat
    assert "WR001" in out
    assert not result.stderr
    assert not orphaned_leftovers()


def test_json_lists_exactly_the_failed_and_not_checked_lines(seed):
    result = why_route("lint", SEED_BLOG, "--snapshot", seed["slow"], "--json", no_color=True)
    assert result.returncode == 1
    doc = json.loads(result.stdout)
    failed = {r["line"]: r for r in doc["lines"] if r["status"] == "failed"}
    assert sorted(failed) == [9, 17]
    assert failed[9]["message"] == "RTNETLINK answers: File exists"
    assert failed[17]["message"] == 'iptables v1.8.9 (nf_tables): unknown option "--to-address"' \
        or 'unknown option "--to-address"' in failed[17]["message"]
    assert [r["line"] for r in doc["lines"] if r["status"] == "not checked"] == [11, 12]
    flow = next(f for f in doc["flows"] if (f["src"], f["dst"]) == ("192.168.1.169", "8.8.8.8"))
    assert flow["before"]["leaves_via"] == flow["after"]["leaves_via"] == "eth0.2"
    assert flow["before"]["rule"] == 32766 and "32765" in flow["after"]["text"]
    assert [f["id"] for f in doc["new_findings"]] == ["WR001"]


def test_a_correct_script_passes_and_moves_the_macbook_to_ppp0(seed, tmp_path):
    script = tmp_path / "fix.sh"
    script.write_text("sudo echo '7375 sunusroute' | sudo tee -a /etc/iproute2/rt_tables\n"
                      "ip route add default via 123.150.232.1 dev ppp0 \\\n    table sunusroute\n"
                      "ip rule add from 192.168.1.169 table sunusroute && ip route flush cache\n"
                      "iptables -t nat -A POSTROUTING -o ppp0 -j SNAT --to-source 123.150.232.74\n"
                      "systemctl restart network\n")
    result = why_route("lint", str(script), "--snapshot", seed["slow"], "--json", no_color=True)
    assert result.returncode == 0, result.stdout
    doc = json.loads(result.stdout)
    assert doc["summary"] == {"failed": 0, "not_checked": 1, "ok": 5}
    skipped = next(r for r in doc["lines"] if r["status"] == "not checked")
    assert skipped["line"] == 6 and "manages services of the host" in skipped["message"]
    flow = next(f for f in doc["flows"] if (f["src"], f["dst"]) == ("192.168.1.169", "8.8.8.8"))
    assert flow["changed"]
    assert flow["after"]["leaves_via"] == "ppp0" and flow["after"]["source"] == "123.150.232.74"
    assert flow["after"]["table"] == "sunusroute" and flow["after"]["nat"] == "snat"


def test_typo_gateway_is_explained(seed, tmp_path):
    script = tmp_path / "typo.sh"
    script.write_text("echo '7375 sunusroute' >> /etc/iproute2/rt_tables\n"
                      "ip route add default via 1123.150.232.1 dev ppp0 table sunusroute\n"
                      "ip route add default via 10.99.0.1 table sunusroute\n"
                      "ip route add default via 123.150.232.1 dev ppp9 table sunusroute\n"
                      "ip rule add from 192.168.1.169 table sunusrout\n")
    result = why_route("lint", str(script), "--snapshot", seed["slow"], "--json", no_color=True)
    assert result.returncode == 1
    lines = {r["line"]: r for r in json.loads(result.stdout)["lines"]}
    assert '"1123.150.232.1"' in lines[2]["message"]
    assert lines[2]["why"] == ("1123.150.232.1 is not an IPv4 address: 1123 is more than 255; "
                               "did you mean 123.150.232.1?")
    assert lines[2]["fix"] == ["ip route add default via 123.150.232.1 dev ppp0 table sunusroute"]
    assert lines[3]["message"] == "Error: Nexthop has invalid gateway."
    assert "not on a network directly" in lines[3]["why"]
    assert lines[4]["message"] == 'Cannot find device "ppp9"' and "did you mean ppp0?" in lines[4]["why"]
    assert "no table named 'sunusrout'" in lines[5]["why"]


def test_unsafe_lines_are_not_run(seed, tmp_path):
    script = tmp_path / "unsafe.sh"
    script.write_text("ip netns add evil\nip link set dev ppp0 netns 1\nip -n evil link\n"
                      "echo 1 > /etc/evil\nsysctl -w kernel.panic=1\nmodprobe dummy\nreboot\n"
                      "ip route add $NET via 1.2.3.4\nip route | grep default\n")
    result = why_route("lint", str(script), "--snapshot", seed["slow"], "--json", no_color=True)
    doc = json.loads(result.stdout)
    assert result.returncode == 0
    assert doc["summary"]["not_checked"] == 9 and doc["summary"]["ok"] == 0
    assert "evil" not in (why_route("lab", "--help", no_color=True).stdout)
    import os
    assert not os.path.exists("/run/netns/evil") and not os.path.exists("/etc/evil")


def test_what_if_with_script(seed, tmp_path):
    script = tmp_path / "fix.sh"
    script.write_text("echo '7375 sunusroute' >> /etc/iproute2/rt_tables\n"
                      "ip route add default via 123.150.232.1 dev ppp0 table sunusroute\n"
                      "ip rule add from 192.168.1.169 table sunusroute\n")
    result = why_route("192.168.1.169", "8.8.8.8", "--snapshot", seed["slow"], "--with", str(script), "--json",
                       no_color=True)
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["decision"]["table"] == "sunusroute" and doc["egress"]["dev"] == "ppp0"
    assert doc["egress"]["src"] == "192.168.1.169"  # no SNAT in this script
    blog = why_route("192.168.1.169", "8.8.8.8", "--snapshot", seed["slow"], "--with", SEED_BLOG, no_color=True)
    assert "line 9 failed, so it is not part of this what-if: RTNETLINK answers: File exists" in blog.stderr
    assert "Verdict: forwarded — leaves eth0.2 via 10.10.149.1" in blog.stdout
