"""The probe on SNAT, DNAT, marks, a uid, drops and a multipath fork, each checked against the real
traffic of a small router lab; and one case where the simulator is wrong and the probe says so."""

import json

import pytest

from tests.helpers.cli import why_route_in_process
from tests.probe.minilab import FAR, FAR6
from tracer.collect import snapshot
from tracer.flow import make_flow
from tracer.lint import probe as probe_mod
from tracer.model import ConntrackEntry
from tracer.sim.explain import explain
from tracer.vocab import UDP

# (sender, src of the flow, proto, dport, flow options) → (where it arrives: node, source, dport) or None: dropped
CASES = {
    "snat-ping": (("client", "10.0.1.2", "icmp", None, {}), ("r-wan1", "wan1", "10.0.2.1", None)),
    "mark-dns": (("client", "10.0.1.2", "udp", 53, {}), ("r-wan2", "wan2", "10.0.3.1", 53)),
    "snat-tcp": (("client", "10.0.1.2", "tcp", 443, {}), ("r-wan1", "wan1", "10.0.2.1", 443)),
    "drop": (("client", "10.0.1.2", "tcp", 23, {}), None),
    "reject": (("client", "10.0.1.2", "tcp", 25, {}), None),
    "local-uid": (("router", None, "udp", 9, {"uid": 1000}), ("r-wan2", "wan2", "10.0.3.1", 9)),
    "local-mark": (("router", None, "udp", 9, {"mark": 3}), ("r-wan2", "wan2", "10.0.3.1", 9)),
    "local": (("router", None, "udp", 9, {}), ("r-wan1", "wan1", "10.0.2.1", 9)),
}


def _flow(src, proto, dport, options, dst=FAR, **more):
    text = {k: str(v) for k, v in {**options, **more}.items()}
    return make_flow(dst, src, proto=proto, dport=str(dport) if dport else None, **text)


@pytest.fixture(scope="module")
def replica(minilab):
    with probe_mod.Replica(minilab[1]) as replica:
        yield replica


@pytest.mark.parametrize("case", sorted(CASES))
def test_probe_agrees_with_the_simulation_and_with_real_traffic(case, minilab, replica):
    lab, state = minilab
    (sender, src, proto, dport, options), expected = CASES[case]
    result = replica.probe(explain(state, _flow(src, proto, dport, options)))
    assert result.agrees, result.differences
    seen = result.observed
    if expected is None:
        assert seen.outcome == "dropped" and "whose counter moved" in seen.reason
    else:
        dev, _node, wire_src, wire_dport = expected
        assert (seen.outcome, seen.dev, seen.src, seen.dst) == ("left", dev, wire_src, FAR)
        assert seen.dport == wire_dport

    lab.forget()
    lab.send(sender, proto, dport=dport, uid=options.get("uid"), mark=options.get("mark"))
    arrived = [s for s in lab.seen() if s.dst == FAR]
    if expected is None:
        assert arrived == []
    else:
        _dev, node, wire_src, wire_dport = expected
        assert [(s.node, s.src, s.dport) for s in arrived] == [(node, wire_src, wire_dport)]


# IPv6: (sender, src, proto, dport) → (where it arrives: node, source) or None: rejected
CASES6 = {
    "ping6": (("client", "2001:db8:1::2", "icmp", None), ("r-wan1", "wan1", "2001:db8:1::2")),
    "udp6": (("client", "2001:db8:1::2", "udp", 53), ("r-wan1", "wan1", "2001:db8:1::2")),
    "reject6": (("client", "2001:db8:1::2", "tcp", 23), None),
    "local-udp6": (("router", None, "udp", 53), ("r-wan1", "wan1", "2001:db8:2::1")),
    "local-ping6": (("router", None, None, None), ("r-wan1", "wan1", "2001:db8:2::1")),
}


@pytest.mark.parametrize("case", sorted(CASES6))
def test_ipv6_probe_agrees_with_real_traffic(case, minilab, replica):
    lab, state = minilab
    (sender, src, proto, dport), expected = CASES6[case]
    result = replica.probe(explain(state, _flow(src, proto, dport, {}, dst=FAR6)))
    assert result.agrees, result.differences
    seen = result.observed
    lab.forget()
    lab.send(sender, proto or "icmp", dst=FAR6, dport=dport)
    arrived = [(s.node, s.src) for s in lab.seen() if s.dst == FAR6]
    if expected is None:
        assert seen.outcome == "dropped" and seen.reason.startswith("ICMPv6 destination unreachable, port unreachable")
        assert seen.reason.endswith("`tcp dport 23 reject`, whose counter moved")
        assert arrived == []
    else:
        dev, node, wire_src = expected
        assert (seen.dev, seen.src, seen.nexthop) == (dev, wire_src, "2001:db8:2::2")
        assert arrived == [(node, wire_src)]


def test_a_forwarded_flow_asked_with_a_mark_carries_it(minilab, replica):
    """A mark on a forwarded flow (set by an earlier rule, say) is set on arrival by the probe's own rule."""
    result = replica.probe(explain(minilab[1], _flow("10.0.1.2", "udp", 9, {"mark": 3})))
    assert result.agrees, result.differences
    assert (result.observed.dev, result.observed.src) == ("r-wan2", "10.0.3.1")
    assert any(line.startswith("mark 0x3: set on the packet by the probe's own") for line in result.cannot_reproduce)
    # the next probe without a mark goes the unmarked way again
    result = replica.probe(explain(minilab[1], _flow("10.0.1.2", "udp", 9, {})))
    assert result.agrees and result.observed.dev == "r-wan1"


def test_reject_is_seen_as_the_icmp_error_sent_back(minilab, replica):
    result = replica.probe(explain(minilab[1], _flow("10.0.1.2", "tcp", 25, {})))
    assert result.observed.reason == ("ICMP destination unreachable, port unreachable from 10.0.1.1, sent out of "
                                      "r-lan; by ip filter FORWARD #5 `tcp dport 25 reject`, whose counter moved")


def test_dnat_port_forward(minilab, replica):
    lab, state = minilab
    flow = _flow("10.0.2.2", "tcp", 8080, {}, dst="10.0.2.1", iif="r-wan1")
    result = replica.probe(explain(state, flow))
    assert result.agrees, result.differences
    seen = result.observed
    assert (seen.dev, seen.dst, seen.dport, seen.nexthop) == ("r-lan", "10.0.1.2", 80, "10.0.1.2")
    lab.forget()
    lab.send("wan1", "tcp", dst="10.0.2.1", dport=8080)
    assert [(s.src, s.dport) for s in lab.seen() if s.node == "client"] == [("10.0.2.2", 80)]


def test_a_forked_path_says_which_outcome_the_packet_took(minilab, replica):
    explanation = explain(minilab[1], _flow("10.0.1.2", "udp", 7, {}, dst="203.0.113.9"))
    assert len(explanation.outcomes) == 2
    result = replica.probe(explanation)
    assert result.agrees and result.outcomes == 2 and result.outcome in (0, 1)
    taken = explanation.outcomes[result.outcome]
    assert result.observed.dev == taken.egress.dev
    assert "nexthop via" in result.took
    assert any(line.startswith("multipath:") for line in result.cannot_reproduce)


def test_probe_disagrees_where_the_simulator_cannot_evaluate_the_rule(minilab, tmp_path, capsys):
    """`-m length` is not simulated (a packet's length is unknown): the simulator lets the datagram
    through, the kernel drops it, and so does the lab's real traffic."""
    lab, state = minilab
    path = tmp_path / "router.json"
    snapshot.save(state, str(path))
    status, out, err = why_route_in_process(capsys, "10.0.1.2", FAR, "--proto", "udp", "--dport", "5000",
                                            "--snapshot", str(path), "--probe")
    assert status == 1, err
    assert "Verdict: forwarded" in out
    assert ("Probe: DISAGREES — dropped (by ip filter FORWARD #6 `udp dport 5000 meta length 0-100 drop`, "
            "whose counter moved)") in out
    assert "the explanation says it leaves r-wan1" in out
    status, out, _ = why_route_in_process(capsys, "10.0.1.2", FAR, "--proto", "udp", "--dport", "5000",
                                          "--snapshot", str(path), "--probe", "--json")
    doc = json.loads(out)
    assert doc["verdict"] == "forwarded"
    assert doc["probe"]["agrees"] is False and doc["probe"]["dropped"] is True and doc["probe"]["observed"] is None
    assert doc["probe"]["differences"]

    lab.forget()
    lab.send("client", "udp", dport=5000)
    assert [s for s in lab.seen() if s.dst == FAR] == []


def test_batch_probes_every_line_in_one_replica(minilab, tmp_path, capsys, monkeypatch):
    path = tmp_path / "router.json"
    snapshot.save(minilab[1], str(path))
    queries = tmp_path / "q.txt"
    queries.write_text(f"10.0.1.2 {FAR} --proto udp --dport 53\nbad line\n10.0.1.2 {FAR} --proto tcp --dport 23\n"
                       f"10.0.1.2 {FAR} --proto udp --dport 5000\n")
    made = []
    real_init = probe_mod.Replica.__init__
    monkeypatch.setattr(probe_mod.Replica, "__init__", lambda self, state: made.append(1) or real_init(self, state))
    status, out, err = why_route_in_process(capsys, "batch", "--snapshot", str(path), "--probe", str(queries))
    assert status == 0, err
    lines = [json.loads(line) for line in out.splitlines()]
    assert len(made) == 1
    assert lines[0]["probe"]["observed"]["dev"] == "r-wan2" and lines[0]["probe"]["agrees"]
    assert "error" in lines[1]
    assert lines[2]["probe"]["dropped"] and lines[2]["probe"]["agrees"]
    assert lines[3]["probe"]["agrees"] is False


def test_verify_probe_fails_an_expectation_the_real_packet_breaks(minilab, tmp_path, capsys):
    path = tmp_path / "router.json"
    snapshot.save(minilab[1], str(path))
    toml = tmp_path / "router.toml"
    toml.write_text(f'[[expect]]\nfrom = "10.0.1.2"\nto = "{FAR}"\nproto = "udp"\ndport = 53\nleaves_via = "r-wan2"\n'
                    f'source = "10.0.3.1"\n\n[[expect]]\nname = "app traffic"\nfrom = "10.0.1.2"\nto = "{FAR}"\n'
                    f'proto = "udp"\ndport = 5000\nleaves_via = "r-wan1"\n')
    status, out, err = why_route_in_process(capsys, "verify", str(toml), "--snapshot", str(path))
    assert status == 0, out + err  # the simulation alone says both hold
    status, out, err = why_route_in_process(capsys, "verify", str(toml), "--snapshot", str(path), "--probe")
    assert status == 1, out + err
    assert "probe: agrees — left r-wan2" in out
    assert "FAIL  app traffic" in out and "probe: the packet was dropped" in out
    status, out, err = why_route_in_process(capsys, "verify", str(toml), "--snapshot", str(path), "--probe", "--json")
    doc = json.loads(out)
    assert [o["ok"] for o in doc["outcomes"]] == [True, False]
    assert doc["outcomes"][0]["probe"]["agrees"] and not doc["outcomes"][1]["probe"]["agrees"]


def test_a_conntrack_entry_the_replica_lacks_is_said(minilab, replica):
    """The host's entry maps the flow to an old address; the replica has no entry, so its packet is a
    new connection: the difference is shown, and why the replica cannot settle it."""
    lab, state = minilab
    entry = ConntrackEntry(UDP, "10.0.1.2", FAR, FAR, "10.0.3.99", 4000, 53, 53, 4000, state=None,
                           text=f"udp src=10.0.1.2 dst={FAR} sport=4000 dport=53 src={FAR} dst=10.0.3.99")
    with_entry = state.replace(conntrack=(entry,))
    explanation = explain(with_entry, make_flow(FAR, "10.0.1.2", proto="udp", sport="4000", dport="53"))
    assert explanation.egress.src == "10.0.3.99"
    result = replica.probe(explanation)
    assert not result.agrees
    assert result.differences == ("source 10.0.3.1 on the wire, explained 10.0.3.99",)
    assert any(line.startswith("the conntrack entry the explanation uses is not recreated")
               for line in result.cannot_reproduce)
