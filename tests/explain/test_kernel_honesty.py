"""The kernel check says what it checked: which packet's routing the kernel confirmed, which
fields it holds too, and what was simulated (netfilter, NAT, marks) rather than confirmed."""

import json

import pytest

from tests.explain.explain_helpers import seed_lab_with
from tests.helpers.cli import why_route

# A port-changing DNAT on the seed router: the kernel is asked about the packet after it.
DNAT = "iptables -t nat -A PREROUTING -i br-lan -p tcp --dport 8080 -j DNAT --to-destination 8.8.4.4:80"


@pytest.fixture(scope="module")
def lab():
    with seed_lab_with("ultimate", (DNAT,)) as state:
        yield state


def _explain(lab, *args):
    result = why_route(*args, "--netns", lab.ns("route"), "--json")
    assert result.returncode == 0, result.stdout + result.stderr
    return json.loads(result.stdout)


def test_confirmed_fields_are_named_and_netfilter_is_said_to_be_simulated(lab):
    kernel = _explain(lab, "192.168.1.169", "8.8.8.8", "--proto", "icmp")["kernel"]
    assert kernel["agrees"]
    assert {"table 7375", "route default", "gateway 123.150.232.1", "device ppp0"} <= set(kernel["confirmed"])
    assert kernel["assumed"] == ["netfilter verdicts and NAT are simulated: a route query does not confirm them"]


def test_the_kernel_is_asked_about_the_packet_after_dnat_and_says_so(lab):
    doc = _explain(lab, "192.168.1.169", "8.8.8.8", "--proto", "tcp", "--dport", "8080")
    kernel = doc["kernel"]
    assert kernel["agrees"], kernel["differences"]
    assert doc["decision"]["rule"]["priority"] == 32765
    assert ("the packet as it leaves prerouting: destination 8.8.4.4 port 80 after NAT (simulated)"
            in kernel["assumed"]), kernel["assumed"]
    text = why_route("192.168.1.169", "8.8.8.8", "--proto", "tcp", "--dport", "8080", "--netns", lab.ns("route"),
                     no_color=True).stdout
    assert "Kernel: agrees on the routing decision" in text
    assert "assumed: the packet as it leaves prerouting: destination 8.8.4.4 port 80 after NAT (simulated)" in text
    assert "DNAT dst 8.8.8.8:8080 → 8.8.4.4:80" in text


def test_limited_broadcast_is_no_false_alarm(lab):
    doc = _explain(lab, "255.255.255.255")
    assert doc["kernel"]["agrees"], doc["kernel"]["differences"]
    assert "None" not in json.dumps(doc)
