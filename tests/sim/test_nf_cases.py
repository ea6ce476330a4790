"""The differential test's findings as small deterministic cases, in the wire lab.

Each case loads the smallest ruleset that shows one behaviour, sends one or a few probes,
asserts first what the kernel does (where the probe arrives, with which addresses and
ports), then that why-route says the same. A case why-route gets wrong today is marked
xfail(strict, raises=WhyRouteDisagrees): a wrong assumption about the kernel still fails
it, and the fix turns it into an unexpected pass that asks for the mark to go. Each of
those defects keeps a feature out of tests/sim/nflab_random.py (DISABLED) until fixed.

Lab (tests/sim/nfwire.py): client side r0 10.0.0.1/24; r1 10.1.0.1/24 (main's default route),
r2 10.2.0.1/24 + 172.16.2.1/24, r3 10.3.0.1/24; mark 0x1/0x3 selects table 100 (default via
172.16.2.254 dev r2), 0x2/0x3 table 101 (default via 10.3.0.254 dev r3, blackhole
203.0.113.128/25).
"""

from __future__ import annotations

import pytest

from tests.sim.nfwire import LOCAL, Arrival, Comparison, Probe, Ruleset, compare
from tracer.vocab import UDP


class WhyRouteDisagrees(Exception):
    """why-route's explanation is not what the kernel did."""


def xfail_because(defect: str):
    return pytest.mark.xfail(strict=True, raises=WhyRouteDisagrees, reason=defect)


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


LOOPED_CONNTRACK = ("on the loopback path tracer/sim/netfilter.py traverse() treats prerouting chains below "
                    "conntrack's priority (-200) as seeing no conntrack entry (`st.ct_attached = not (hook in "
                    "(prerouting, output) and c.priority < PRIO_CONNTRACK)`: ct state invalid, notrack applies); "
                    "the looped-back skb still carries the entry it got at output: ct state new, its ct mark, and "
                    "notrack is ignored (nft_notrack_eval, xt_CT: 'Previously seen (loopback)? Ignore')")


@xfail_because(LOOPED_CONNTRACK)
@pytest.mark.parametrize("match, arrives", [("ct state new", False), ("ct state invalid", True)])
def test_a_looped_back_packet_has_its_conntrack_entry_below_conntracks_priority(wire_lab, match, arrives):
    (c,) = sent(wire_lab, [local_udp("10.1.0.1", "10.0.0.1")], nft=table(
        chain("raw_pre", base("filter", "prerouting", -300), f'iifname "lo" {match} drop')))
    assert c.seen == ([Arrival(LOCAL, "10.1.0.1", "10.0.0.1", 20000, 53)] if arrives else [])
    agree(c)


@xfail_because(LOOPED_CONNTRACK)
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


# ------------------------------------------------------------ routing again after the output hook

REROUTE = ("explain() routes a local packet again once, with the mark and destination as the whole output hook "
           "left them (tracer/sim/explain.py _explain_output; HookTraversal keeps no keys per trigger); the kernel "
           "routes again right after each route chain (nf_route_table_hook4, ipt_mangle_out) or NAT "
           "(nf_nat_ipv4_local_fn) that changed them, with the keys of that moment: later changes are not routed, "
           "and an intermediate route that fails drops the packet")


@xfail_because(REROUTE)
def test_a_mark_changed_after_the_route_chain_does_not_route_again(wire_lab):
    (c,) = sent(wire_lab, [local_udp("10.1.0.1", "10.1.0.9")], nft=table(
        chain("out_route", base("route", "output", -150), "meta mark set 0x1"),
        chain("out_filter", base("filter", "output", 0), "meta mark set 0x0")))
    assert c.seen == [Arrival("r2", "10.1.0.1", "10.1.0.9", 20000, 53)]  # table 100, by the route chain's mark
    agree(c)


@xfail_because(REROUTE)
def test_a_mark_set_after_an_output_dnat_does_not_route_again(wire_lab):
    (c,) = sent(wire_lab, [local_udp("10.1.0.1", "203.0.113.5")], nft=table(
        chain("out_nat", base("nat", "output", -100), "udp dport 53 dnat to 10.3.0.9"),
        chain("out_filter", base("filter", "output", 0), "meta mark set 0x1")))
    assert c.seen == [Arrival("r3", "10.1.0.1", "10.3.0.9", 20000, 53)]  # routed at the DNAT, mark still 0: main
    agree(c)


@xfail_because(REROUTE)
def test_a_route_chain_that_routes_into_a_blackhole_drops_before_a_later_dnat(wire_lab):
    (c,) = sent(wire_lab, [local_udp("10.1.0.1", "203.0.113.200")], nft=table(
        chain("out_route", base("route", "output", -150), "meta mark set 0x2"),
        chain("out_nat", base("nat", "output", -100), "dnat to 10.3.0.9")))
    assert c.seen == [] and c.refused == "Invalid argument"  # table 101's blackhole 203.0.113.128/25
    agree(c)


def test_a_mark_set_by_a_filter_output_chain_does_not_route_again(wire_lab):
    (c,) = sent(wire_lab, [local_udp("10.1.0.1", "10.1.0.9")], nft=table(
        chain("out_filter", base("filter", "output", 0), "meta mark set 0x1")))
    assert c.seen == [Arrival("r1", "10.1.0.1", "10.1.0.9", 20000, 53)]
    agree(c)


# ------------------------------------------------------------ nat chains need conntrack

NO_CONNTRACK = ("tracer/sim/netfilter.py traverse() runs nat chains for every new packet; the kernel runs them "
                "only while conntrack is enabled in the namespace (nf_nat_inet_fn needs the packet's ct), which "
                "takes a rule that uses it: a NAT statement or target, a ct expression, -m conntrack/state "
                "(nf_ct_netns_get). A nat chain alone, its drops and marks included, never runs")


@xfail_because(NO_CONNTRACK)
def test_a_nat_chain_without_any_conntrack_user_never_runs_its_policy(wire_lab):
    (c,) = sent(wire_lab, [udp("10.0.0.2", "10.1.0.9")], nft=table(
        chain("pre", base("nat", "prerouting", -100, policy="drop"))))
    assert c.seen == [Arrival("r1", "10.0.0.2", "10.1.0.9", 20000, 53)]
    agree(c)


@xfail_because(NO_CONNTRACK)
def test_a_nat_chain_without_any_conntrack_user_never_sets_its_mark(wire_lab):
    (c,) = sent(wire_lab, [udp("10.0.0.2", "10.1.0.9")], nft=table(
        chain("pre", base("nat", "prerouting", -100), "meta mark set 0x1")))
    assert c.seen == [Arrival("r1", "10.0.0.2", "10.1.0.9", 20000, 53)]  # main, not table 100
    agree(c)


@pytest.mark.parametrize("user", [
    chain("f", base("filter", "forward", 0), "ct state new counter"),
    chain("unused", "dnat to 192.0.2.9"),  # never reached: loading it is what counts
])
def test_any_conntrack_user_makes_nat_chains_run(wire_lab, user):
    (c,) = sent(wire_lab, [udp("10.0.0.2", "10.1.0.9")], nft=table(
        chain("pre", base("nat", "prerouting", -100, policy="drop")), user))
    assert c.seen == []
    agree(c)


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
