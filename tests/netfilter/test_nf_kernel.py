"""The simulation against the real kernel.

Each test builds a fresh client/router/server namespace trio, loads a ruleset
in the router, sends one real packet, then collects the router's ruleset with
its per-rule counters and checks that the rules the simulation says matched
are exactly the rules whose counters moved, that the verdict agrees with
what reached the server, and that NAT agrees with `conntrack -L`.
"""

import time

import pytest

from tests.netfilter import nflab
from tests.netfilter.nflab import CLIENT4, CLIENT6, ROUTER_OUT4, SERVER4, SERVER6
from tests.netfilter.nfsim import ROUTER, check_agrees, conntrack_tuples, kernel_hits, run, sim_hits, simulate, udp
from tracer.collect.netfilter import collect_netfilter
from tracer.sim.netfilter import PacketView, load_ruleset, traverse

# ----------------------------------------------------------------- tests

@pytest.mark.parametrize("dport, verdict", [(5000, "accept"), (5001, "drop")])
def test_accept_does_not_stop_later_base_chains(lab, dport, verdict):
    rs, trs = run(lab, "multi_base", udp(dport, 40000 + dport), lambda: lab.send_udp(SERVER4, dport, 40000 + dport))
    check_agrees(lab, rs, trs)
    fwd = trs[1]
    assert fwd.hook == "forward" and fwd.verdict == verdict
    assert [c.table for c in fwd.chains] == ["first", "second", "third"]
    assert fwd.chains[0].verdict == "accept"
    if verdict == "drop":
        assert fwd.chains[2].skipped and fwd.chains[2].steps == ()


@pytest.mark.parametrize("dport, verdict", [(5000, "accept"), (5001, "drop"), (5002, "accept")])
def test_jump_goto_return(lab, dport, verdict):
    rs, trs = run(lab, "jumps", udp(dport, 41000 + dport), lambda: lab.send_udp(SERVER4, dport, 41000 + dport))
    check_agrees(lab, rs, trs)
    steps = trs[1].chains[0].steps
    if dport == 5000:  # a -> c (implicit return) -> a (implicit return) -> goto b -> end of b: policy
        assert [s.text for s in steps if s.handle is None] == ["(end of chain c: return)", "(end of chain a: return)"]
        assert trs[1].chains[0].verdict_from == "policy"
    # the rule after `goto b` is never reached
    assert not any(s.text.startswith("counter drop") for s in steps)
    assert trs[1].verdict == verdict


def test_mark_set_changes_later_matches(lab):
    rs, trs = run(lab, "marks", udp(5000, 42000), lambda: lab.send_udp(SERVER4, 5000, 42000))
    check_agrees(lab, rs, trs)
    assert trs[0].packet.mark == 0x15 and trs[0].packet.ct_mark == 0x15
    fwd = trs[1].chains[0]
    assert fwd.verdict == "accept" and fwd.verdict_from == "rule"
    assert [s.chain for s in fwd.steps if s.matched] == ["fw", "ok"]


def test_several_nat_chains_first_mapping_wins(lab):
    pkt = udp(7000, 43000, dst="198.51.100.99")
    rs, trs = run(lab, "nat_chains", pkt, lambda: lab.send_udp("198.51.100.99", 7000, 43000))
    assert sim_hits(trs) == kernel_hits(rs)
    (orig, reply), = [t for t in conntrack_tuples(lab) if t[0]["dport"] == "7000"]
    dnat = [n for t in trs for n in t.nat if n.field == "dst"]
    snat = [n for t in trs for n in t.nat if n.field == "src"]
    assert len(dnat) == 1 and len(snat) == 1
    # the reply tuple is the packet after NAT, reversed
    assert reply["src"] == dnat[0].to and reply["dst"] == snat[0].to
    assert int(reply["sport"]) == dnat[0].to_port and int(reply["dport"]) == snat[0].to_port
    # exactly one nat chain per hook set up the mapping; the rest were not consulted
    for t in trs:
        nat_chains = [c for c in t.chains if c.type == "nat"]
        if nat_chains:
            assert sum(1 for c in nat_chains if c.skipped is None) >= 1
            assert any(c.skipped and "mapping already set" in c.skipped for c in nat_chains)


def test_nat_not_consulted_for_established(lab):
    lab.load(nflab.RULESETS["nat_chains"])
    rs = load_ruleset(collect_netfilter(lab.r))
    tr = traverse(rs, "postrouting", udp(5000, 1, ct_state="established"), addresses=ROUTER)
    assert tr.nat == () and all(c.skipped for c in tr.chains if c.type == "nat")


@pytest.mark.parametrize("dport, snat_to", [(80, ROUTER_OUT4), (8080, "198.51.100.50")])
def test_iptables_nft_mark_tcpmss_snat_masquerade(lab, dport, snat_to):
    sport = 44000 + dport
    pkt = PacketView("ip", CLIENT4, SERVER4, 6, sport, dport, iif="r0", oif="r1", tcp_flags=0x02, length=60)
    rs, trs = run(lab, "iptables_nft", pkt, lambda: lab.send_syn(SERVER4, dport, sport))
    check_agrees(lab, rs, trs)
    assert trs[0].packet.mark == 0x7
    assert trs[1].mss_clamp and rs.has_mss_clamp("r1")
    (nat,) = trs[2].nat
    assert nat.to == snat_to and nat.source == "iptables-nft"
    assert nat.rule.startswith("-A POSTROUTING")
    (orig, reply), = [t for t in conntrack_tuples(lab) if t[0]["dport"] == str(dport)]
    assert reply["dst"] == snat_to
    # iptables rules are shown as iptables-save prints them, with rule numbers
    steps = trs[1].chains[1].steps
    assert steps[0].text.startswith("-A FORWARD -p tcp -m multiport") and steps[0].handle == 1
    assert steps[0].nft_handle is not None


@pytest.mark.parametrize("dport, verdict", [(5000, "accept"), (5001, "drop")])
def test_legacy_and_nft_both_run(lab, dport, verdict):
    rs, trs = run(lab, "legacy_and_nft", udp(dport, 45000 + dport), lambda: lab.send_udp(SERVER4, dport, 45000 + dport))
    check_agrees(lab, rs, trs)
    assert rs.legacy_and_nft_both_loaded()
    fwd = trs[1]
    assert [c.source for c in fwd.chains] == ["nft", "iptables-legacy"]
    assert fwd.chains[0].verdict == "accept" and fwd.verdict == verdict


def test_unknown_expression_is_none_and_uncertain(lab):
    rs, trs = run(lab, "unknown_expr", udp(5000, 46000), lambda: lab.send_udp(SERVER4, 5000, 46000))
    check_agrees(lab, rs, trs)
    fwd = trs[1]
    assert fwd.uncertain and len(fwd.uncertain_reasons) == 2
    first, second, third = fwd.chains[0].steps
    assert first.matched is None and "cannot evaluate" in first.reason and "meta cpu" in first.reason
    assert second.matched is None and "fib" in second.reason
    assert third.matched is True


@pytest.mark.parametrize("lab", [True], indirect=True)
@pytest.mark.parametrize("dport, verdict", [(5000, "accept"), (5001, "drop")])
def test_ipv6_ip6tables_nft_and_inet(lab, dport, verdict):
    pkt = udp(dport, 47000 + dport, src=CLIENT6, dst=SERVER6)
    rs, trs = run(lab, "ipv6", pkt, lambda: lab.send_udp(SERVER6, dport, 47000 + dport))
    check_agrees(lab, rs, trs)
    assert trs[1].verdict == verdict
    assert {c.source for c in trs[1].chains} == {"iptables-nft", "nft"}


def test_postrouting_sees_the_input_device_of_forwarded_packets(lab):
    rs, trs = run(lab, "postrouting_iif", udp(5000, 48500), lambda: lab.send_udp(SERVER4, 5000, 48500))
    check_agrees(lab, rs, trs)
    assert [s.matched for s in trs[2].chains[0].steps] == [True, True, False]


def test_local_out_mark_and_nat(lab):
    pkt = PacketView("ip", ROUTER_OUT4, "198.51.100.99", 17, 48000, 6000, oif="r1", uid=0, length=29)
    lab.load(nflab.RULESETS["local_out"])
    lab.flush_conntrack()
    lab.send_udp("198.51.100.99", 6000, 48000, ns=lab.r)
    rs = load_ruleset(collect_netfilter(lab.r))
    trs = simulate(rs, pkt, origin="local-out")
    assert sim_hits(trs) == kernel_hits(rs)
    assert lab.server_received() == 1
    assert trs[0].packet.mark == 0x9 and trs[0].packet.dst == SERVER4 and trs[0].packet.dport == 5000
    (orig, reply), = [t for t in conntrack_tuples(lab) if t[0]["dport"] == "6000"]
    assert reply["src"] == SERVER4 and reply["sport"] == "5000"


def test_ten_thousand_rules(lab):
    rules = "\n".join(f"ip saddr 10.{i // 250}.{i % 250}.1 udp dport {1000 + i % 5000} counter accept"
                      for i in range(10_000))
    lab.nft(lab.r, f"table ip big {{ chain fw {{ type filter hook forward priority 0; policy accept;\n{rules}\n"
                   "udp dport 5000 counter accept\n}\n}\n")
    lab.send_udp(SERVER4, 5000, 49000)
    t0 = time.perf_counter()
    raw = collect_netfilter(lab.r)
    t1 = time.perf_counter()
    rs = load_ruleset(raw)
    t2 = time.perf_counter()
    pkt = udp(5000, 49000)
    trs = simulate(rs, pkt)
    t3 = time.perf_counter()
    check_agrees(lab, rs, trs)
    # the address index skipped the rules for other sources; the verdict still agrees with the kernel
    fw = next(c for c in trs[1].chains if c.table == "big")
    assert fw.skipped_rules + len(fw.steps) == 10_001 and fw.skipped_rules >= 9_999
    print(f"collect {t1 - t0:.2f}s load {t2 - t1:.2f}s walk {t3 - t2:.3f}s")  # figures only: bench/ measures speed
