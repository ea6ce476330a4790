"""Local TCP without a bound source: connect() looks the route up again with the source it
selected, so a `from` rule can send the SYN elsewhere than `ip route get DST`; sendto() does not."""

import json

import pytest

from tests.explain.explain_helpers import seed_lab_with
from tests.helpers.cli import why_route
from tests.lab.lab_helpers import install_observers, observe

SETUP = ("ip route add default via 123.150.232.1 dev ppp0 table 100",
         "ip rule add from 10.10.149.4 lookup 100 pref 100")


@pytest.fixture(scope="module")
def lab():
    with seed_lab_with("ultimate", SETUP) as state:
        install_observers(state)
        yield state


def _explain(lab, proto):
    result = why_route("8.8.8.8", "--proto", proto, "--dport", "443", "--netns", lab.ns("route"), "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


SEND = {"tcp": "import socket; s = socket.socket(); s.settimeout(0.3)\ntry: s.connect(('8.8.8.8', 443))\n"
               "except OSError: pass",
        "udp": "import socket; socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b'x', ('8.8.8.8', 443))"}


@pytest.mark.parametrize("proto, leaves, internet", [("tcp", "ppp0", "internet2"), ("udp", "eth0.2", "internet1")])
def test_where_the_first_packet_really_goes(lab, proto, leaves, internet):
    doc = _explain(lab, proto)
    assert doc["egress"]["dev"] == leaves
    assert doc["kernel"]["agrees"], doc["kernel"]["differences"]
    if proto == "tcp":
        assert doc["decision"]["stage"] == "connect() with the selected source"
        assert any("TCP connect() looks the route up again with the source it selected (10.10.149.4)" in n
                   for n in doc["notes"])
    else:
        assert any("this is unconnected UDP (sendto)" in n for n in doc["notes"])
    before = observe(lab, internet).requests
    lab.run("route", ["python3", "-c", SEND[proto]], check=False)
    assert observe(lab, internet).requests > before
