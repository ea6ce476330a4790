"""Re-route after the output hook happens for a route-type chain (and NAT), not for a mark set in
a filter-type chain: the explanation says which, agrees with the kernel, and with the real packet."""

import json

import pytest

from tests.explain.explain_helpers import seed_lab_with
from tests.helpers.cli import why_route
from tests.lab.lab_helpers import install_observers, observe

SETUP = ("ip route add default via 123.150.232.1 dev ppp0 table 100",
         "ip rule add fwmark 0x1 lookup 100 pref 100")


def _marking(chain_type: str) -> str:
    return (f"nft 'add table ip marks; add chain ip marks out {{ type {chain_type} hook output priority -150; }}; "
            "add rule ip marks out tcp dport 443 meta mark set 0x1'")


@pytest.fixture(scope="module", params=["filter", "route"])
def lab(request):
    with seed_lab_with("ultimate", (*SETUP, _marking(request.param))) as state:
        install_observers(state)
        yield request.param, state


def test_only_a_route_chain_mark_reroutes(lab):
    chain_type, state = lab
    result = why_route("8.8.8.8", "--proto", "tcp", "--dport", "443", "--netns", state.ns("route"), "--json")
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    expected = "ppp0" if chain_type == "route" else "eth0.2"
    assert doc["egress"]["dev"] == expected
    assert bool(doc["reroutes"]) == (chain_type == "route")
    assert doc["kernel"]["agrees"], doc["kernel"]["differences"]
    internet = "internet2" if expected == "ppp0" else "internet1"
    before = observe(state, internet).requests
    state.run("route", ["python3", "-c", "import socket; s = socket.socket(); s.settimeout(0.3)\n"
                        "try: s.connect(('8.8.8.8', 443))\nexcept OSError: pass"], check=False)
    assert observe(state, internet).requests > before
