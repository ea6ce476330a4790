"""The probe on the seed lab's variants: the real packet leaves where the lab's real ping goes."""

import json

import pytest

from tests.helpers.cli import why_route_in_process
from tests.lab.lab_helpers import install_observers, observe, ping_from_macbook

FLOW = ("192.168.1.169", "8.8.8.8")

# variant → (device the packet leaves by, its source on the wire, the internet node that gets the ping)
CASES = {
    "ultimate": ("ppp0", "123.150.232.74", "internet2"),
    "ultimate-nosnat": ("ppp0", "192.168.1.169", "internet2"),
    "blog-as-written": ("eth0.2", "10.10.149.4", "internet1"),
}


def _probe_json(capsys, *args):
    status, out, err = why_route_in_process(capsys, *FLOW, *args, "--probe", "--json")
    assert status == 0, err
    return json.loads(out)["probe"]


@pytest.mark.parametrize("variant", sorted(CASES))
def test_probe_leaves_where_the_lab_really_sends_it(variant, seed_lab, capsys, tmp_path):
    dev, wire_src, internet = CASES[variant]
    lab = seed_lab(variant)
    probe = _probe_json(capsys, "--netns", lab.ns("route"))
    assert probe["agrees"], probe["differences"]
    assert probe["observed"]["dev"] == dev
    assert (probe["observed"]["src"], probe["observed"]["dst"]) == (wire_src, "8.8.8.8")
    assert not probe["dropped"] and not probe["delivered"]
    assert probe["seconds"] < 5

    # offline, from a snapshot of the same router: the same packet
    path = tmp_path / "route.json"
    status, _, err = why_route_in_process(capsys, "snapshot", "--netns", lab.ns("route"), "-o", str(path))
    assert status == 0, err
    offline = _probe_json(capsys, "--snapshot", str(path))
    assert offline["observed"] == probe["observed"]

    # …and that is where the MacBook's real ping goes, with that source
    install_observers(lab)
    ping_from_macbook(lab)
    seen = observe(lab, internet)
    assert seen.requests >= 1 and wire_src in seen.sources


def test_probe_text_says_what_it_saw_and_what_it_cannot_reproduce(seed_lab, capsys):
    status, out, err = why_route_in_process(capsys, *FLOW, "--netns", seed_lab("blog-as-written").ns("route"),
                                            "--probe")
    assert status == 0, err
    assert "Probe: agrees — left eth0.2 to next hop 10.10.149.1: 10.10.149.4 → 8.8.8.8" in out
    assert "sent: ICMP echo request 192.168.1.169 → 8.8.8.8" in out and "injected on br-lan" in out
    # the replica's br-lan is no bridge, and its sinks answer every ARP request: said, not hidden
    assert "cannot reproduce: br-lan is a bridge on the host, a veth in the replica" in out
    assert "cannot reproduce: neighbours: the sinks answer every ARP request" in out


def test_probe_of_a_local_flow_and_of_a_delivered_one(seed_lab, capsys):
    ns = seed_lab("ultimate").ns("route")
    status, out, err = why_route_in_process(capsys, "8.8.8.8", "--proto", "udp", "--dport", "53", "--netns", ns,
                                            "--probe", "--json")
    assert status == 0, err
    probe = json.loads(out)["probe"]
    assert probe["agrees"] and probe["observed"]["dev"] == "eth0.2" and probe["observed"]["src"] == "10.10.149.4"
    assert "sent by a socket in the replica" in probe["packet"]
    status, out, err = why_route_in_process(capsys, "192.168.1.169", "192.168.1.1", "--netns", ns, "--probe", "--json")
    assert status == 0, err
    probe = json.loads(out)["probe"]
    assert probe["agrees"] and probe["delivered"] and probe["observed"] is None
