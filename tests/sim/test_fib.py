"""Pure tests of tracer.sim.fib on hand-built states (the kernel-checked
semantics are in test_fib_differential.py; these pin the explanation side:
steps, reasons, notes)."""

from __future__ import annotations

import time

from tracer.flow import RouteQuery
from tracer.model import Address, HostState, Link, Nexthop, Route, Rule
from tracer.sim.fib import lookup_rules, route, route_input, route_output
from tracer.vocab import AF_INET, AF_INET6

DEFAULT_RULES = (Rule(AF_INET, 0, table=255), Rule(AF_INET, 32766, table=254), Rule(AF_INET, 32767, table=253))


def connected(dev: str, net: str, plen: int, addr: str, table: int = 254) -> list[Route]:
    return [Route(AF_INET, table, net, plen, scope=253, protocol="kernel", prefsrc=addr,
                  nexthops=(Nexthop(None, dev),)),
            Route(AF_INET, 255, addr, 32, type="local", scope=254, protocol="kernel", prefsrc=addr,
                  nexthops=(Nexthop(None, dev),))]


def seed_router(extra_rules=(), extra_routes=(), sysctls=None) -> HostState:
    """The blog's router: br-lan, a slow eth0.2 uplink (default route) and the fast ppp0."""
    links = (Link(1, "lo", flags=("UP", "LOOPBACK")), Link(2, "br-lan", flags=("UP",)),
             Link(3, "eth0.2", flags=("UP",)), Link(4, "ppp0", flags=("UP", "POINTOPOINT")))
    addrs = (Address(AF_INET, "br-lan", "192.168.1.1", 24), Address(AF_INET, "eth0.2", "10.10.149.4", 24),
             Address(AF_INET, "ppp0", "123.150.232.74", 32, peer="123.150.232.1"))
    routes = [*connected("br-lan", "192.168.1.0", 24, "192.168.1.1"),
              *connected("eth0.2", "10.10.149.0", 24, "10.10.149.4"),
              Route(AF_INET, 254, "123.150.232.1", 32, scope=253, protocol="kernel", prefsrc="123.150.232.74",
                    nexthops=(Nexthop(None, "ppp0"),)),
              Route(AF_INET, 255, "123.150.232.74", 32, type="local", scope=254, protocol="kernel",
                    prefsrc="123.150.232.74", nexthops=(Nexthop(None, "ppp0"),)),
              Route(AF_INET, 254, "0.0.0.0", 0, nexthops=(Nexthop("10.10.149.1", "eth0.2"),)),
              *extra_routes]
    return HostState(links=links, addresses=addrs, rules=DEFAULT_RULES + tuple(extra_rules), routes=tuple(routes),
                     table_names={7375: "sunusroute"},
                     sysctls={"net.ipv4.ip_forward": "1", **(sysctls or {})})


MACBOOK = RouteQuery(AF_INET, dst="8.8.8.8", src="192.168.1.169", iif="br-lan")


def test_seed_rule_to_empty_table_falls_through_to_main():
    state = seed_router([Rule(AF_INET, 32765, table=7375, src="192.168.1.169", src_len=32)])
    res = route(state, MACBOOK)
    assert res.error is None and res.table == 254 and res.dev == "eth0.2" and res.gateway == "10.10.149.1"
    step = next(s for s in res.steps if s.rule.priority == 32765)
    assert step.text == "32765: from 192.168.1.169 lookup sunusroute"
    assert step.matched and step.result.startswith("fell through") and "sunusroute (7375) is empty" in step.reason


def test_seed_fixed_routes_via_ppp0_and_other_hosts_do_not_match():
    state = seed_router([Rule(AF_INET, 32765, table=7375, src="192.168.1.169", src_len=32)],
                        [Route(AF_INET, 7375, "0.0.0.0", 0, nexthops=(Nexthop("123.150.232.1", "ppp0"),))])
    res = route(state, MACBOOK)
    assert (res.table, res.dev, res.gateway, res.rule.priority) == (7375, "ppp0", "123.150.232.1", 32765)
    other = route(state, RouteQuery(AF_INET, dst="8.8.8.8", src="192.168.1.245", iif="br-lan"))
    assert other.dev == "eth0.2"
    miss = next(s for s in other.steps if s.rule.priority == 32765)
    assert miss.reason == "from 192.168.1.169 does not contain 192.168.1.245"


def test_only_default_rules_merge_local_into_main():
    res = lookup_rules(seed_router(), RouteQuery(AF_INET, dst="192.168.1.1"))
    assert res.type == "local" and res.table == 254
    assert any("one trie" in n for n in res.notes)
    unmerged = lookup_rules(seed_router([Rule(AF_INET, 100, table=7375, fwmark=1, fwmask=1)]),
                            RouteQuery(AF_INET, dst="192.168.1.1"))
    assert unmerged.table == 255


def test_goto_nop_and_unresolved_goto():
    rules = [Rule(AF_INET, 10, action="goto", goto=30, dst="8.0.0.0", dst_len=8),
             Rule(AF_INET, 20, action="prohibit"),
             Rule(AF_INET, 30, action="nop"),
             Rule(AF_INET, 40, action="goto", goto=45),  # no rule 45: skipped
             Rule(AF_INET, 50, table=7375)]
    routes = [Route(AF_INET, 7375, "8.0.0.0", 8, nexthops=(Nexthop("123.150.232.1", "ppp0"),))]
    state = seed_router(rules, routes)
    res = route(state, RouteQuery(AF_INET, dst="8.8.8.8"))
    assert res.table == 7375 and res.dev == "ppp0"
    assert [s.rule.priority for s in res.steps] == [0, 10, 30, 40, 50]
    assert "unresolved goto" in res.steps[3].reason
    blocked = route(state, RouteQuery(AF_INET, dst="9.9.9.9"))
    assert blocked.error == "EACCES" and blocked.rule.priority == 20


def test_suppress_prefixlength_skips_the_default_route():
    state = seed_router([Rule(AF_INET, 100, table=254, suppress_prefixlength=0),
                         Rule(AF_INET, 200, table=7375)],
                        [Route(AF_INET, 7375, "0.0.0.0", 0, nexthops=(Nexthop("123.150.232.1", "ppp0"),))])
    res = route(state, RouteQuery(AF_INET, dst="8.8.8.8"))
    assert res.dev == "ppp0"
    assert next(s for s in res.steps if s.rule.priority == 100).reason == "suppressed: prefix length 0 <= 0"
    assert route(state, RouteQuery(AF_INET, dst="10.10.149.9")).dev == "eth0.2"


def test_route_tos_metric_and_throw():
    routes = [Route(AF_INET, 7375, "8.8.0.0", 16, metric=20, nexthops=(Nexthop("10.10.149.1", "eth0.2"),)),
              Route(AF_INET, 7375, "8.8.0.0", 16, metric=10, nexthops=(Nexthop("123.150.232.1", "ppp0"),)),
              Route(AF_INET, 7375, "8.8.0.0", 16, tos=0x10, metric=50, nexthops=(Nexthop("192.168.1.9", "br-lan"),)),
              Route(AF_INET, 7375, "8.8.8.0", 24, type="throw")]
    state = seed_router([Rule(AF_INET, 100, table=7375)], routes)
    assert route(state, RouteQuery(AF_INET, dst="8.8.4.4")).dev == "ppp0"          # lowest metric
    assert route(state, RouteQuery(AF_INET, dst="8.8.4.4", tos=0x10)).dev == "br-lan"  # tos match first
    thrown = route(state, RouteQuery(AF_INET, dst="8.8.8.8"))
    assert thrown.table == 254 and "throw" in thrown.steps[1].reason


def test_error_route_types_and_rule_actions():
    routes = [Route(AF_INET, 254, "1.0.0.0", 8, type="blackhole"),
              Route(AF_INET, 254, "2.0.0.0", 8, type="unreachable"),
              Route(AF_INET, 254, "3.0.0.0", 8, type="prohibit")]
    state = seed_router([Rule(AF_INET, 5, action="unreachable", dst="4.0.0.0", dst_len=8)], routes)
    errors = [route(state, RouteQuery(AF_INET, dst=d)).error for d in ("1.1.1.1", "2.2.2.2", "3.3.3.3", "4.4.4.4")]
    assert errors == ["EINVAL", "EHOSTUNREACH", "EACCES", "ENETUNREACH"]


def test_absent_iif_never_matches_but_inverted_does():
    state = seed_router([Rule(AF_INET, 100, action="prohibit", iif="eth9"),
                         Rule(AF_INET, 200, action="blackhole", iif="eth9", invert=True)])
    res = route(state, RouteQuery(AF_INET, dst="8.8.8.8"))
    assert res.error == "EINVAL" and res.rule.priority == 200
    assert res.steps[1].reason == "iif eth9 does not exist"


def test_rp_filter_strict_and_forwarding_off():
    state = seed_router(sysctls={"net.ipv4.conf.ppp0.rp_filter": "1", "net.ipv4.conf.ppp0.forwarding": "1",
                                 "net.ipv4.conf.br-lan.forwarding": "0"})
    spoofed = route(state, RouteQuery(AF_INET, dst="192.168.1.20", src="192.168.1.169", iif="ppp0"))
    assert spoofed.error == "EINVAL"
    assert spoofed.error_reason == ("rp_filter=1 (strict): reverse route to 192.168.1.169 leaves via br-lan, "
                                    "not ppp0")
    off = route(state, MACBOOK)
    assert off.error == "EHOSTUNREACH" and "forwarding is off on br-lan" in off.error_reason
    local = route(state, RouteQuery(AF_INET, dst="192.168.1.1", src="192.168.1.169", iif="br-lan"))
    assert local.type == "local" and local.dev == "lo" and local.error is None


def test_martians():
    state = seed_router()
    for src, dst in (("127.0.0.1", "8.8.8.8"), ("0.1.2.3", "8.8.8.8"), ("224.1.1.1", "8.8.8.8"),
                     ("192.168.1.9", "127.0.0.1"), ("192.168.1.9", "0.0.0.1")):
        res = route_input(state, RouteQuery(AF_INET, dst=dst, src=src, iif="br-lan"))
        assert res.error == "EINVAL" and "martian" in res.error_reason, (src, dst, res)
    assert route_input(state, RouteQuery(AF_INET, dst="255.255.255.255", src="192.168.1.9",
                                       iif="br-lan")).type == "broadcast"


def test_output_source_selection_and_oif():
    state = seed_router()
    res = route_output(state, RouteQuery(AF_INET, dst="8.8.8.8"))
    assert (res.prefsrc, res.dev, res.gateway) == ("10.10.149.4", "eth0.2", "10.10.149.1")
    assert route_output(state, RouteQuery(AF_INET, dst="192.168.1.50")).prefsrc == "192.168.1.1"
    onlink = route_output(state, RouteQuery(AF_INET, dst="8.8.8.8", oif="ppp0"))
    assert onlink.dev == "ppp0" and onlink.gateway is None and onlink.prefsrc == "123.150.232.74"
    assert route_output(state, RouteQuery(AF_INET, dst="8.8.8.8", src="1.2.3.4")).error == "ENETUNREACH"


def test_uidrange_applies_to_local_out_only():
    state = seed_router([Rule(AF_INET, 100, action="prohibit", uidrange=(1000, 1999))])
    assert route(state, RouteQuery(AF_INET, dst="8.8.8.8", uid=1500)).error == "EACCES"
    assert route(state, RouteQuery(AF_INET, dst="8.8.8.8", uid=5)).error is None
    assert route(state, RouteQuery(AF_INET, dst="8.8.8.8", src="192.168.1.9", iif="br-lan", uid=1500)).error is None


def test_multipath_lists_candidates_and_says_hash_dependent():
    mp = Route(AF_INET, 254, "8.0.0.0", 8, nexthops=(Nexthop("10.10.149.1", "eth0.2"),
                                                       Nexthop("123.150.232.1", "ppp0")))
    res = route(seed_router(extra_routes=[mp]), RouteQuery(AF_INET, dst="8.8.8.8"))
    assert res.nexthop is None and len(res.nexthops) == 2
    assert res.multipath_note.startswith("hash-dependent (fib_multipath_hash_policy=0, L3)")


def test_ipv6_rules_and_longest_prefix():
    routes = (Route(AF_INET6, 254, "2001:db8::", 32, nexthops=(Nexthop("fe80::1", "eth0.2"),)),
              Route(AF_INET6, 254, "2001:db8:1::", 48, type="unreachable"),
              Route(AF_INET6, 100, "::", 0, nexthops=(Nexthop("fe80::2", "ppp0"),)))
    rules = (Rule(AF_INET6, 0, table=255), Rule(AF_INET6, 1000, table=100, src="2001:db8:9::", src_len=48),
             Rule(AF_INET6, 32766, table=254))
    state = seed_router().replace(routes=routes, rules=rules)
    assert route(state, RouteQuery(AF_INET6, dst="2001:db8:2::1")).dev == "eth0.2"
    assert route(state, RouteQuery(AF_INET6, dst="2001:db8:1::1")).error == "EHOSTUNREACH"
    assert route(state, RouteQuery(AF_INET6, dst="2001:db8:1::1", src="2001:db8:9::5")).dev == "ppp0"


def test_index_handles_a_large_table_quickly():
    routes = [Route(AF_INET, 254, f"{10 + i // 65536}.{i // 256 % 256}.{i % 256}.0", 24,
                    nexthops=(Nexthop("10.10.149.1", "eth0.2"),)) for i in range(200_000)]
    rules = [Rule(AF_INET, 100 + i, table=7375, src=f"172.16.{i // 256}.{i % 256}", src_len=32) for i in range(5000)]
    state = seed_router(rules, routes)
    started = time.perf_counter()
    route(state, RouteQuery(AF_INET, dst="11.2.3.4"))
    build = time.perf_counter() - started
    started = time.perf_counter()
    for i in range(2000):
        res = route(state, RouteQuery(AF_INET, dst=f"10.{i % 200}.{i % 256}.9", src="192.168.1.9", iif="br-lan"))
        assert res.dev == "eth0.2"
    per_query = (time.perf_counter() - started) / 2000
    assert build < 5 and per_query < 0.001, (build, per_query)
    assert any("left out of the steps" in n for n in res.notes)
