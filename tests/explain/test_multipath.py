"""A multipath default route on the seed router: every nexthop is an outcome with its share,
none is printed as `None`, and live the kernel's pick for the exact flow is explained first —
the one where the real packet arrives."""

import json

import pytest

from tests.explain.explain_helpers import seed_lab_with
from tests.helpers.cli import why_route
from tests.lab.lab_helpers import install_observers, observe

MULTIPATH = ("ip route replace default nexthop via 10.10.149.1 dev eth0.2 weight 1 "
             "nexthop via 123.150.232.1 dev ppp0 weight 3")
SNAT_PPP0 = "iptables -t nat -A POSTROUTING -o ppp0 -j SNAT --to-source 123.150.232.74"
L4_HASH = "sysctl -qw net.ipv4.fib_multipath_hash_policy=1"  # ports choose the nexthop too
ARRIVES_AT = {"eth0.2": ("internet1", "10.10.149.4"), "ppp0": ("internet2", "123.150.232.74")}


@pytest.fixture(scope="module")
def lab():
    with seed_lab_with("slow", (MULTIPATH, SNAT_PPP0, L4_HASH)) as state:
        install_observers(state)
        yield state


def _explain(lab, *args):
    result = why_route("192.168.1.169", "8.8.8.8", "--netns", lab.ns("route"), "--json", *args)
    assert result.returncode == 0, result.stdout + result.stderr
    return json.loads(result.stdout)


def test_every_nexthop_is_an_outcome_with_its_weighted_share(lab):
    doc = _explain(lab, "--proto", "udp", "--sport", "40000", "--dport", "53")
    outcomes = [doc, *doc["alternatives"]]
    assert sorted(o["egress"]["dev"] for o in outcomes) == ["eth0.2", "ppp0"]
    shares = {o["egress"]["dev"]: o["share"] for o in outcomes}
    assert shares == {"eth0.2": 0.25, "ppp0": 0.75}
    sources = {o["egress"]["dev"]: o["egress"]["src"] for o in outcomes}
    assert sources == {"eth0.2": "10.10.149.4", "ppp0": "123.150.232.74"}  # NAT per nexthop
    assert "None" not in json.dumps(doc) and "null" not in json.dumps(doc["egress"])
    assert doc["kernel"]["agrees"], doc["kernel"]


def test_the_kernels_pick_is_explained_first_and_is_where_the_packet_goes(lab):
    picked = set()
    for sport in range(40000, 40012):
        doc = _explain(lab, "--proto", "udp", "--sport", str(sport), "--dport", "53")
        assert doc["kernel"]["agrees"], doc["kernel"]
        dev = doc["egress"]["dev"]
        picked.add(dev)
        node, source = ARRIVES_AT[dev]
        before = observe(lab, node).requests
        lab.run("macbook", ["python3", "-c", "import socket; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); "
                            f"s.bind(('192.168.1.169', {sport})); s.sendto(b'x', ('8.8.8.8', 53))"])
        seen = observe(lab, node)
        assert seen.requests == before + 1 and source in seen.sources, (sport, dev)
    assert picked == {"eth0.2", "ppp0"}  # the hash spread these flows over both nexthops


def test_text_lists_the_outcomes(lab):
    result = why_route("192.168.1.169", "8.8.8.8", "--netns", lab.ns("route"), "--proto", "icmp", no_color=True)
    assert result.returncode == 0, result.stderr
    assert "Outcomes (the path forks: multipath)" in result.stdout
    assert " 25%  nexthop via 10.10.149.1 dev eth0.2, weight 1 of 4" in result.stdout
    assert " 75%  nexthop via 123.150.232.1 dev ppp0, weight 3 of 4" in result.stdout
    assert "device None" not in result.stdout and "leaves None" not in result.stdout
