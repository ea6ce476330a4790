"""Fixtures of the probe tests: the seed lab (shared with the explanation tests' fixtures), and a
small router lab with SNAT, DNAT, marks, drops and a rule the simulator cannot evaluate."""

from __future__ import annotations

import os

import pytest

from tests.explain.conftest import kernel_lab, seed_lab  # noqa: F401 - fixtures used by the seed tests
from tests.lint.lint_helpers import replay_leftovers
from tests.probe.minilab import MiniLab
from tracer.collect.live import collect_state

ROUTER = [
    "iptables -t nat -A POSTROUTING -o r-wan1 -j SNAT --to-source 10.0.2.1",
    "iptables -t nat -A POSTROUTING -o r-wan2 -j MASQUERADE",
    # DNS goes out of the second uplink: a mark set in mangle, an ip rule on it
    "iptables -t mangle -A PREROUTING -p udp --dport 53 -j MARK --set-mark 0x2",
    "ip rule add pref 100 fwmark 0x2 lookup 102",
    # so does everything uid 1000 sends, and everything marked 0x3 by its socket
    "ip rule add pref 110 uidrange 1000-1000 lookup 102",
    "ip rule add pref 120 fwmark 0x3 lookup 102",
    # a port forward from the first uplink to the client
    "iptables -t nat -A PREROUTING -i r-wan1 -p tcp --dport 8080 -j DNAT --to-destination 10.0.1.2:80",
    "iptables -A FORWARD -p tcp --dport 23 -j DROP",
    "iptables -A FORWARD -p tcp --dport 25 -j REJECT",
    # small UDP datagrams to port 5000 are dropped: the simulator does not know a packet's length
    "iptables -A FORWARD -p udp --dport 5000 -m length --length 0:100 -j DROP",
    "ip6tables -A FORWARD -p tcp --dport 23 -j REJECT",
    # a destination reached over two uplinks at once
    "ip route add 203.0.113.0/24 nexthop via 10.0.2.2 dev r-wan1 nexthop via 10.0.3.2 dev r-wan2",
]


@pytest.fixture(scope="module")
def minilab(kernel_lab):  # noqa: F811 - the fixture of the same name, imported above
    """(the lab, the router's state collected before any traffic)."""
    lab = MiniLab()
    try:
        lab.up()
        lab.configure(*ROUTER)
        yield lab, collect_state(lab.ns("router"), conntrack=False)
    finally:
        lab.down()
    assert not replay_leftovers(os.getpid())
