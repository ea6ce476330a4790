"""The differential test's findings as small deterministic cases, in the wire lab.

Each case loads the smallest ruleset that shows one behaviour, sends one or a few probes,
asserts first what the kernel does (where the probe arrives, with which addresses and
ports), then that why-route says the same (WhyRouteDisagrees otherwise). A case why-route
gets wrong is marked xfail(strict=True, raises=WhyRouteDisagrees) while the defect lasts (a
wrong assumption about the kernel still fails it; the fix turns it into an unexpected pass
that asks for the mark to go), and the defect keeps a feature out of
tests/sim/nflab_random.py (DISABLED) until fixed. None is marked today.

Lab (tests/sim/nfwire.py): client side r0 10.0.0.1/24; r1 10.1.0.1/24 (main's default route),
r2 10.2.0.1/24 + 172.16.2.1/24, r3 10.3.0.1/24; mark 0x1/0x3 selects table 100 (default via
172.16.2.254 dev r2), 0x2/0x3 table 101 (default via 10.3.0.254 dev r3, blackhole
203.0.113.128/25).
"""

from __future__ import annotations

import pytest

from tests.sim.nfwire import LOCAL, Arrival, Comparison, Probe, Ruleset, compare, expected_arrival
from tracer.collect.live import collect_state
from tracer.output.json_out import explanation_doc
from tracer.output.text import render
from tracer.sim.explain import explain
from tracer.vocab import UDP


class WhyRouteDisagrees(Exception):
    """why-route's explanation is not what the kernel did."""


def udp(src: str, dst: str, dport: int = 53, *, sport: int = 20000, origin: str = "forwarded", id: int = 1) -> Probe:
    return Probe(id, origin, UDP, src, dst, sport, dport)


def local_udp(src: str, dst: str) -> Probe:
    return udp(src, dst, origin="local-out")


def sent(lab, probes: list[Probe], **ruleset) -> list[Comparison]:
    return compare(lab, Ruleset(**ruleset), probes)


def agree(*comparisons: Comparison) -> None:
    wrong = [c for c in comparisons if not c.agrees]
    if wrong:
        raise WhyRouteDisagrees("\n".join(c.describe() for c in wrong))


def table(*chains: str) -> str:
    """An nft script: `table ip t` with these chains."""
    return "table ip t {\n" + "\n".join(chains) + "\n}\n"


def chain(name: str, *lines: str) -> str:
    body = "".join(f"\n    {line}" for line in lines)
    return f"  chain {name} {{{body}\n  }}"


def base(kind: str, hook: str, priority: int, policy: str = "accept") -> str:
    return f"type {kind} hook {hook} priority {priority}; policy {policy};"


# ------------------------------------------------------------ local-out to the router itself

def test_local_out_to_an_own_address_crosses_postrouting(wire_lab):
    (c,) = sent(wire_lab, [local_udp("10.1.0.1", "10.0.0.1")], nft=table(
        chain("post", base("filter", "postrouting", 0), 'oifname "lo" udp dport 53 drop')))
    assert c.seen == [] and c.refused == "Operation not permitted"  # dropped before it left: sendto says so
    agree(c)


def test_local_out_to_an_own_address_is_source_natted_in_postrouting(wire_lab):
    (c,) = sent(wire_lab, [local_udp("10.1.0.1", "10.0.0.1")], nft=table(
        chain("post", base("nat", "postrouting", 100), 'oifname "lo" snat to 10.2.0.50')))
    assert c.seen == [Arrival(LOCAL, "10.2.0.50", "10.0.0.1", 20000, 53)]
    agree(c)


def test_local_out_masquerade_out_of_lo_takes_another_devices_address(wire_lab):
    # lo has only 127.0.0.1 (scope host): inet_select_addr takes the first universe address of another device
    (c,) = sent(wire_lab, [local_udp("10.1.0.1", "10.1.0.1")], nft=table(
        chain("post", base("nat", "postrouting", 100), 'oifname "lo" masquerade')))
    assert c.seen == [Arrival(LOCAL, "10.0.0.1", "10.1.0.1", 20000, 53)]
    agree(c)


@pytest.mark.parametrize("hook", ["prerouting", "input"])
def test_local_out_to_an_own_address_comes_back_in_through(wire_lab, hook):
    (c,) = sent(wire_lab, [local_udp("10.1.0.1", "10.0.0.1")], nft=table(
        chain("back", base("filter", hook, 0), 'iifname "lo" udp dport 53 drop')))
    assert c.seen == [] and c.refused is None  # sent, then dropped on the way back in
    agree(c)



@pytest.mark.parametrize("match, arrives", [("ct state new", False), ("ct state invalid", True)])
def test_a_looped_back_packet_has_its_conntrack_entry_below_conntracks_priority(wire_lab, match, arrives):
    (c,) = sent(wire_lab, [local_udp("10.1.0.1", "10.0.0.1")], nft=table(
        chain("raw_pre", base("filter", "prerouting", -300), f'iifname "lo" {match} drop')))
    assert c.seen == ([Arrival(LOCAL, "10.1.0.1", "10.0.0.1", 20000, 53)] if arrives else [])
    agree(c)


def test_notrack_is_ignored_for_a_looped_back_packet(wire_lab):
    (c,) = sent(wire_lab, [local_udp("10.1.0.1", "10.0.0.1")], nft=table(
        chain("raw_pre", base("filter", "prerouting", -300), 'iifname "lo" notrack'),
        chain("in", base("filter", "input", 0), "ct state untracked drop")))
    assert c.seen == [Arrival(LOCAL, "10.1.0.1", "10.0.0.1", 20000, 53)]
    agree(c)


# ------------------------------------------------------------ a device the hook does not have

ABSENT_DEVICE_PROBES = {"output": local_udp("10.1.0.1", "10.1.0.9"), "prerouting": udp("10.0.0.2", "10.1.0.9")}


@pytest.mark.parametrize("hook, match", [("output", 'iif != "r3"'), ("prerouting", 'oif != "r3"')])
def test_a_device_the_hook_does_not_have_is_index_zero(wire_lab, hook, match):
    probe = ABSENT_DEVICE_PROBES[hook]
    (c,) = sent(wire_lab, [probe], nft=table(chain("f", base("filter", hook, 0), f"{match} drop")))
    assert c.seen == []
    agree(c)


@pytest.mark.parametrize("hook, match", [("output", 'iifname != "r3"'), ("prerouting", 'oifname != "r3"')])
def test_a_device_the_hook_does_not_have_is_an_empty_name(wire_lab, hook, match):
    probe = ABSENT_DEVICE_PROBES[hook]
    (c,) = sent(wire_lab, [probe], nft=table(chain("f", base("filter", hook, 0), f"{match} drop")))
    assert c.seen == []
    agree(c)


# ------------------------------------------------------------ source NAT to a port range

TWELVE_DESTINATIONS = [f"8.8.8.{n}" for n in range(1, 13)]  # via main's default route (r1), no two flows alike


def twelve_flows() -> list[Probe]:
    return [udp("10.0.0.2", dst, sport=20000 + n, id=n + 1) for n, dst in enumerate(TWELVE_DESTINATIONS)]


@pytest.mark.parametrize("mapping", ["snat to 10.1.0.1:2000-2002", "masquerade to :2000-2002"])
def test_source_nat_to_a_port_range_picks_a_random_port_in_it(wire_lab, mapping):
    comparisons = sent(wire_lab, twelve_flows(), nft=table(
        chain("post", base("nat", "postrouting", 100), f"meta l4proto udp {mapping}")))
    ports = [c.seen[0].sport for c in comparisons]
    assert all(c.seen[0].src == "10.1.0.1" for c in comparisons)
    assert set(ports) <= {2000, 2001, 2002} and len(set(ports)) > 1, ports  # all 2000: chance 1 in 3**11
    agree(*comparisons)


def test_destination_nat_to_a_port_range_takes_its_first_port(wire_lab):
    comparisons = sent(wire_lab, twelve_flows(), nft=table(
        chain("pre", base("nat", "prerouting", -100), "meta l4proto udp dnat to 10.3.0.9:2000-2002")))
    assert [c.seen for c in comparisons] == [[Arrival("r3", "10.0.0.2", "10.3.0.9", 20000 + n, 2000)]
                                             for n in range(len(comparisons))]
    agree(*comparisons)


# ------------------------------------------------------------ jhash and symhash

@pytest.mark.parametrize("rule", [
    "jhash ip daddr . udp sport mod 2 seed 0x5 vmap { 0 : accept, 1 : drop }",  # a concatenation: 4 + 4 bytes
    "jhash udp sport mod 2 seed 0xdeadbeef == 1 drop",  # one port: 2 bytes
])
def test_jhash_with_a_seed_is_computed_as_the_kernel_does(wire_lab, rule):
    comparisons = sent(wire_lab, twelve_flows(), nft=table(chain("pre", base("filter", "prerouting", 0), rule)))
    passed = sum(bool(c.seen) for c in comparisons)
    assert 0 < passed < len(comparisons), passed  # both halves taken: chance 1 in 2**11 otherwise
    agree(*comparisons)


def test_jhash_sets_the_mark_that_selects_the_route(wire_lab):
    # values 10, 11, 12: 10 & 0x3 = 0x2 selects table 101 (default via r3), 11 and 12 stay in main (r1)
    marking = "meta mark set jhash udp sport mod 3 seed 0x7 offset 10"
    comparisons = sent(wire_lab, twelve_flows(), nft=table(chain("pre", base("filter", "prerouting", -150), marking)))
    assert {c.seen[0].place for c in comparisons} == {"r1", "r3"}
    agree(*comparisons)


@pytest.mark.parametrize("hashing", ["symhash mod 2", "jhash ip saddr mod 2"])  # without a seed: drawn at load
def test_a_hash_keyed_at_random_forks_into_equal_shares(wire_lab, hashing):
    comparisons = sent(wire_lab, twelve_flows(), nft=table(
        chain("pre", base("filter", "prerouting", 0), f"{hashing} vmap {{ 0 : accept, 1 : drop }}")))
    for c in comparisons:
        outcomes = c.explanation.outcomes
        assert [(o.share, o.verdict) for o in outcomes] == [(0.5, "forwarded"), (0.5, "dropped")]
        assert expected_arrival(outcomes[0 if c.seen else 1]) == (c.seen[0] if c.seen else None)


# ------------------------------------------------------------ routing again after the output hook


def test_a_mark_changed_after_the_route_chain_does_not_route_again(wire_lab):
    (c,) = sent(wire_lab, [local_udp("10.1.0.1", "10.1.0.9")], nft=table(
        chain("out_route", base("route", "output", -150), "meta mark set 0x1"),
        chain("out_filter", base("filter", "output", 0), "meta mark set 0x0")))
    assert c.seen == [Arrival("r2", "10.1.0.1", "10.1.0.9", 20000, 53)]  # table 100, by the route chain's mark
    agree(c)


def test_a_mark_set_after_an_output_dnat_does_not_route_again(wire_lab):
    (c,) = sent(wire_lab, [local_udp("10.1.0.1", "203.0.113.5")], nft=table(
        chain("out_nat", base("nat", "output", -100), "udp dport 53 dnat to 10.3.0.9"),
        chain("out_filter", base("filter", "output", 0), "meta mark set 0x1")))
    assert c.seen == [Arrival("r3", "10.1.0.1", "10.3.0.9", 20000, 53)]  # routed at the DNAT, mark still 0: main
    agree(c)


def test_a_route_chain_that_routes_into_a_blackhole_drops_before_a_later_dnat(wire_lab):
    (c,) = sent(wire_lab, [local_udp("10.1.0.1", "203.0.113.200")], nft=table(
        chain("out_route", base("route", "output", -150), "meta mark set 0x2"),
        chain("out_nat", base("nat", "output", -100), "dnat to 10.3.0.9")))
    assert c.seen == [] and c.refused == "Invalid argument"  # table 101's blackhole 203.0.113.128/25
    agree(c)


def test_each_reroute_at_output_is_shown_with_the_keys_of_its_moment(wire_lab):
    # main: 203.0.113.0/24 via r2; mark 0x1 -> table 100: 203.0.113.0/24 via r3, default via r2
    (c,) = sent(wire_lab, [local_udp("10.1.0.1", "203.0.113.5")], nft=table(
        chain("out_route", base("route", "output", -150), "meta mark set 0x1"),
        chain("out_nat", base("nat", "output", -100), "udp dport 53 dnat to 10.3.0.9"),
        chain("out_filter", base("filter", "output", 0), "meta mark set 0x2")))
    assert c.seen == [Arrival("r2", "10.1.0.1", "10.3.0.9", 20000, 53)]  # table 100's default, by mark 0x1
    agree(c)
    doc = explanation_doc(c.explanation)
    assert [(s["mark"], s["dst"], s["reason"]) for s in doc["steps"] if s["type"] == "reroute"] == [
        (0x1, "203.0.113.5", "ip t out_route (type route): mark 0x0 -> 0x1"),
        (0x1, "10.3.0.9", "NAT (ip t out_nat): destination 203.0.113.5 -> 10.3.0.9")]
    assert [(d["stage"], d["table_id"], d["dev"]) for d in (*doc["reroutes"], doc["decision"])] == [
        ("routing", 254, "r2"), ("re-route after output", 100, "r3"), ("re-route after output", 100, "r2")]
    text = render(c.explanation)
    assert "re-routed after ip t out_route (type route): mark 0x0 -> 0x1" in text
    assert "re-routed after NAT (ip t out_nat): destination 203.0.113.5 -> 10.3.0.9" in text


def test_a_mark_set_by_a_filter_output_chain_does_not_route_again(wire_lab):
    (c,) = sent(wire_lab, [local_udp("10.1.0.1", "10.1.0.9")], nft=table(
        chain("out_filter", base("filter", "output", 0), "meta mark set 0x1")))
    assert c.seen == [Arrival("r1", "10.1.0.1", "10.1.0.9", 20000, 53)]
    agree(c)


# ------------------------------------------------------------ the NAT core hook among equal priorities

OUTPUT_DNAT = chain("out_nat", base("nat", "output", -100), "dnat to 10.3.0.9")
DROPS_THE_DNAT_TARGET = chain("out_filter", base("filter", "output", -100), "ip daddr 10.3.0.9 drop")
IPT_NAT_TABLE = {"nat": {"POSTROUTING": ("ACCEPT", ["-o r1 -j MASQUERADE"])}}


@pytest.mark.parametrize("loaded, nft_first, dnatted_before_the_filter", [
    ((DROPS_THE_DNAT_TARGET, OUTPUT_DNAT), True, True),  # the NAT core came last: it runs first
    ((OUTPUT_DNAT, DROPS_THE_DNAT_TARGET), True, False),
    # iptables-nft's nat table (postrouting) registered the NAT core of every hook, before both
    ((DROPS_THE_DNAT_TARGET, OUTPUT_DNAT), False, False),
])
def test_the_nat_core_hook_ties_by_the_familys_first_nat_chain(wire_lab, loaded, nft_first, dnatted_before_the_filter):
    (c,) = sent(wire_lab, [local_udp("10.1.0.1", "10.2.0.9")], nft=table(*loaded), iptables_nft=IPT_NAT_TABLE,
                nft_first=nft_first)
    assert c.seen == ([] if dnatted_before_the_filter else [Arrival("r3", "10.1.0.1", "10.3.0.9", 20000, 53)])
    agree(c)


# ------------------------------------------------------------ nat chains need conntrack


def test_a_nat_chain_without_any_conntrack_user_never_runs_its_policy(wire_lab):
    (c,) = sent(wire_lab, [udp("10.0.0.2", "10.1.0.9")], nft=table(
        chain("pre", base("nat", "prerouting", -100, policy="drop"))))
    assert c.seen == [Arrival("r1", "10.0.0.2", "10.1.0.9", 20000, 53)]
    agree(c)


def test_a_nat_chain_without_any_conntrack_user_never_sets_its_mark(wire_lab):
    (c,) = sent(wire_lab, [udp("10.0.0.2", "10.1.0.9")], nft=table(
        chain("pre", base("nat", "prerouting", -100), "meta mark set 0x1")))
    assert c.seen == [Arrival("r1", "10.0.0.2", "10.1.0.9", 20000, 53)]  # main, not table 100
    agree(c)


NAT_DROPS = table(chain("pre", base("nat", "prerouting", -100, policy="drop")))


def other_table(family: str, *chains: str) -> str:
    return f"table {family} u {{\n" + "\n".join(chains) + "\n}\n"


FORWARD_CT_MATCH = chain("f", base("filter", "forward", 0), "ct state new counter")
CONNTRACK_USERS = {
    "a ct match": dict(nft=NAT_DROPS + other_table("ip", FORWARD_CT_MATCH)),
    "a ct match in an inet table": dict(nft=NAT_DROPS + other_table("inet", FORWARD_CT_MATCH)),
    "a dnat never reached": dict(nft=NAT_DROPS + other_table("ip", chain("unused", "dnat to 192.0.2.9"))),
    "a ct helper object": dict(nft=NAT_DROPS + 'table ip u {\n  ct helper ftp { type "ftp" protocol tcp; }\n}\n'),
    "iptables-nft -m conntrack": dict(nft=NAT_DROPS, iptables_nft={
        "filter": {"FORWARD": ("ACCEPT", ["-m conntrack --ctstate NEW"])}}),
    "iptables-legacy DNAT never reached": dict(nft=NAT_DROPS, legacy_tables=True, iptables_legacy={
        "nat": {"UNUSED": (None, ["-p tcp -j DNAT --to-destination 192.0.2.9"])}}),
}
NO_CONNTRACK_USERS = {
    "notrack": dict(nft=NAT_DROPS + other_table("ip", chain("r", base("filter", "prerouting", -300), "notrack"))),
    "a ct match in an ip6 table": dict(nft=NAT_DROPS + other_table("ip6", FORWARD_CT_MATCH)),
    "iptables-nft CT --notrack and -m mark": dict(nft=NAT_DROPS, iptables_nft={
        "raw": {"PREROUTING": ("ACCEPT", ["-p tcp -j CT --notrack"])},
        "filter": {"FORWARD": ("ACCEPT", ["-m mark --mark 0x5"])}}),
    "an iptables-nft nat table": dict(nft=NAT_DROPS, iptables_nft={"nat": {"PREROUTING": ("ACCEPT", ["-j ACCEPT"])}}),
}


@pytest.mark.parametrize("user", CONNTRACK_USERS)
def test_any_conntrack_user_makes_nat_chains_run(wire_lab, user):
    (c,) = sent(wire_lab, [udp("10.0.0.2", "10.1.0.9")], **CONNTRACK_USERS[user])
    assert c.seen == []
    agree(c)


@pytest.mark.parametrize("loaded", NO_CONNTRACK_USERS)
def test_what_does_not_use_conntrack_leaves_nat_chains_out(wire_lab, loaded):
    (c,) = sent(wire_lab, [udp("10.0.0.2", "10.1.0.9")], **NO_CONNTRACK_USERS[loaded])
    assert c.seen == [Arrival("r1", "10.0.0.2", "10.1.0.9", 20000, 53)]
    agree(c)
    assert "not run: conntrack is off for IPv4" in render(c.explanation)


def test_conntrack_entries_left_by_a_removed_user_are_said_to_leave_it_open(wire_lab):
    tracked = udp("10.0.0.2", "10.1.0.9", id=1)
    sent(wire_lab, [tracked], nft=table(chain("f", base("filter", "forward", 0), "ct state new counter")))
    # the user goes, its entry stays (conntrack's hooks go with the last user, entries time out)
    wire_lab.run(["nft", "flush", "ruleset"])
    wire_lab.run(["nft", "-f", "-"], input=table(chain("pre", base("nat", "prerouting", -100, policy="drop"))))
    state = collect_state(wire_lab.router)
    assert any(e.orig_dst == "10.1.0.9" for e in state.conntrack)
    probe = udp("10.0.0.2", "10.2.0.9", sport=20001, id=2)
    e = explain(state, probe.flow())
    wire_lab.send([probe])
    assert wire_lab.arrivals({2}).get(2) == [Arrival("r2", "10.0.0.2", "10.2.0.9", 20001, 53)]  # conntrack is off
    assert e.verdict == "forwarded" and e.egress.dev == "r2"
    assert any("no loaded rule uses conntrack, yet conntrack holds 1 entry" in note for note in e.notes), e.notes
    assert "not run: conntrack is off for IPv4 in this namespace" in render(e)


# ------------------------------------------------------------ NAT in regular chains

DNAT_5353 = "-j DNAT --to-destination 10.3.0.9:5353"
NAT_IN_REGULAR_CHAINS = {
    "nft jump": dict(nft=table(chain("pre", base("nat", "prerouting", -100), "jump dn"),
                               chain("dn", "udp dport 53 dnat to 10.3.0.9:5353"))),
    "nft goto, nested": dict(nft=table(chain("pre", base("nat", "prerouting", -100), "goto a"),
                                       chain("a", "ip saddr 10.0.0.0/24 jump b"),
                                       chain("b", "meta l4proto udp dnat to 10.3.0.9:5353"))),
    "iptables-nft": dict(iptables_nft={"nat": {"PREROUTING": ("ACCEPT", ["-j DN"]),
                                               "DN": (None, [f"-p udp --dport 53 {DNAT_5353}"])}}),
    "iptables-legacy": dict(legacy_tables=True, iptables_legacy={"nat": {"PREROUTING": ("ACCEPT", ["-g DN"]),
                                                                         "DN": (None, [f"-p udp {DNAT_5353}"])}}),
}


@pytest.mark.parametrize("ruleset", NAT_IN_REGULAR_CHAINS)
def test_dnat_in_a_regular_chain_applies(wire_lab, ruleset):
    (c,) = sent(wire_lab, [udp("10.0.0.2", "10.1.0.9")], **NAT_IN_REGULAR_CHAINS[ruleset])
    assert c.seen == [Arrival("r3", "10.0.0.2", "10.3.0.9", 20000, 5353)]
    agree(c)


def test_masquerade_in_a_regular_chain_applies(wire_lab):
    (c,) = sent(wire_lab, [udp("10.0.0.2", "203.0.113.5")], nft=table(
        chain("post", base("nat", "postrouting", 100), 'oifname "r2" jump m'), chain("m", "masquerade")))
    assert c.seen == [Arrival("r2", "10.2.0.1", "203.0.113.5", 20000, 53)]  # the address on the gateway's subnet
    agree(c)


# ------------------------------------------------------------ a DNAT'd port in later hooks

@pytest.mark.parametrize("later, arrival", [
    (chain("f", base("filter", "forward", 0), "udp dport 5353 drop"), None),
    (chain("f", base("filter", "forward", 0), "udp dport 53 drop"),
     Arrival("r3", "10.0.0.2", "10.3.0.9", 20000, 5353)),
    (chain("p", base("nat", "postrouting", 100), "udp dport 5353 snat to 10.3.0.1:7000"),
     Arrival("r3", "10.3.0.1", "10.3.0.9", 7000, 5353)),
])
def test_later_hooks_see_the_dnatted_port(wire_lab, later, arrival):
    (c,) = sent(wire_lab, [udp("10.0.0.2", "10.1.0.9")], nft=table(
        chain("pre", base("nat", "prerouting", -100), "udp dport 53 dnat to 10.3.0.9:5353"), later))
    assert c.seen == ([arrival] if arrival else [])
    agree(c)


def test_routing_sees_the_dnatted_port(wire_lab):
    # ip rule `iif r0 ipproto udp dport 5353 lookup 101`: table 101's default route leaves by r3
    (c,) = sent(wire_lab, [udp("10.0.0.2", "8.8.8.8")], nft=table(
        chain("pre", base("nat", "prerouting", -100), "udp dport 53 dnat to :5353")))
    assert c.seen == [Arrival("r3", "10.0.0.2", "8.8.8.8", 20000, 5353)]
    agree(c)


def test_postrouting_sees_the_port_an_output_dnat_set(wire_lab):
    (c,) = sent(wire_lab, [local_udp("10.1.0.1", "10.3.0.9")], nft=table(
        chain("out", base("nat", "output", -100), "udp dport 53 dnat to :5353"),
        chain("p", base("nat", "postrouting", 100), "udp dport 5353 snat to 10.3.0.1")))
    assert c.seen == [Arrival("r3", "10.3.0.1", "10.3.0.9", 20000, 5353)]
    agree(c)
