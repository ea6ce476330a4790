"""Random balancing (`-m statistic`, as kube-proxy writes it): every branch is an outcome with its
probability, never only the last one; the kernel really spreads new connections over them."""

import json
import re

import pytest

from tests.explain.explain_helpers import seed_lab_with
from tests.helpers.cli import why_route

# kube-proxy's shape (proxier.go): the first endpoint with probability 1/n, the last unconditionally.
BALANCE = ("iptables -t nat -N SVC",
           "iptables -t nat -A PREROUTING -i br-lan -p tcp --dport 8080 -j SVC",
           "iptables -t nat -A SVC -p tcp -m statistic --mode random --probability 0.25"
           " -j DNAT --to-destination 8.8.8.8:80",
           "iptables -t nat -A SVC -p tcp -j DNAT --to-destination 8.8.8.8:81")


@pytest.fixture(scope="module")
def lab():
    with seed_lab_with("ultimate", BALANCE) as state:
        yield state


def test_each_branch_is_an_outcome_with_its_probability(lab):
    result = why_route("192.168.1.169", "8.8.8.8", "--proto", "tcp", "--dport", "8080",
                       "--netns", lab.ns("route"), "--json")
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    outcomes = {o["egress"]["dport"]: o["share"] for o in (doc, *doc["alternatives"])}
    assert outcomes == {80: 0.25, 81: 0.75}
    text = why_route("192.168.1.169", "8.8.8.8", "--proto", "tcp", "--dport", "8080", "--netns", lab.ns("route"),
                     no_color=True).stdout
    assert "Outcomes (the path forks: random)" in text
    assert " 75%  -m statistic --mode random --probability 0.25 does not match: forwarded" in text


def test_the_kernel_uses_both_branches(lab):
    lab.run("macbook", ["python3", "-c", "import socket\nfor i in range(24):\n"
                        "    s = socket.socket(); s.settimeout(0.05)\n"
                        "    try: s.connect(('8.8.8.8', 8080))\n    except OSError: pass\n    s.close()"],
            check=False)
    listing = lab.run("route", ["iptables", "-t", "nat", "-L", "SVC", "-v", "-n", "-x"]).stdout
    hits = {port: int(packets) for packets, port in re.findall(r"^\s*(\d+)\s+\d+\s+DNAT.*to:8\.8\.8\.8:(\d+)",
                                                                listing, re.M)}
    assert set(hits) == {"80", "81"} and all(hits.values()), listing  # new connections went both ways
