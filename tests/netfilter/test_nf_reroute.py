"""HookTraversal.reroute_needed against the kernel.

After the output hook the kernel routes a locally generated packet again
(ip_route_me_harder) only when a `type route` chain — iptables' mangle OUTPUT
is one, in iptables-nft and legacy alike — changed its mark, addresses or
dscp, or when NAT changed its destination. A mark set in a `type filter`
output chain, or a port-only DNAT, leaves the first route in place.

The router sends one UDP packet to 203.0.113.9, which both the client and the
server own: the main table routes it to the server (r1), table 100 — chosen by
`ip rule fwmark 0x1` or `tos 0x10` — to the client (r0). Where it arrives says
whether the kernel re-routed.
"""

import pytest

from tests.netfilter.nflab import CLIENT4, ROUTER_OUT4, SERVER4
from tests.netfilter.nfsim import ROUTER, counted, counting_table, kernel_hits, nft_ruleset, sim_hits
from tracer.collect.netfilter import collect_netfilter
from tracer.sim.netfilter import PacketView, load_ruleset, traverse

TARGET = "203.0.113.9"

CASES = {
    "nft filter chain sets the mark": (False, [("nft", """
        table inet t { chain out { type filter hook output priority 0; policy accept;
          udp dport 6000 counter meta mark set 0x1
        }
        }""")]),
    "nft route chain sets the mark": (True, [("nft", """
        table inet t { chain out { type route hook output priority mangle; policy accept;
          udp dport 6000 counter meta mark set 0x1
        }
        }""")]),
    "nft route chain sets the same mark": (False, [("nft", """
        table inet t { chain out { type route hook output priority mangle; policy accept;
          udp dport 6000 counter meta mark set 0x0
        }
        }""")]),
    "nft route chain sets dscp": (True, [("nft", """
        table inet t { chain out { type route hook output priority mangle; policy accept;
          udp dport 6000 counter ip dscp set 4
        }
        }""")]),
    "iptables-nft mangle OUTPUT sets the mark": (True, [
        "iptables-nft -t mangle -A OUTPUT -p udp --dport 6000 -j MARK --set-mark 0x1"]),
    "iptables-legacy mangle OUTPUT sets the mark": (True, [
        "iptables-legacy -t mangle -A OUTPUT -p udp --dport 6000 -j MARK --set-mark 0x1"]),
    "iptables-legacy filter OUTPUT sets the mark": (False, [
        "iptables-legacy -A OUTPUT -p udp --dport 6000 -j MARK --set-mark 0x1"]),
    "nft nat output changes the destination": (True, [("nft", f"""
        table ip n {{ chain out {{ type nat hook output priority -100; policy accept;
          udp dport 6000 counter dnat to {CLIENT4}
        }}
        }}""")]),
    "nft nat output changes only the port": (False, [("nft", """
        table ip n { chain out { type nat hook output priority -100; policy accept;
          udp dport 6000 counter dnat to :6001
        }
        }""")]),
}


def routes(lab):
    for ns, dev in ((lab.c, "c0"), (lab.s, "s0")):
        lab.ex(["ip", "addr", "add", f"{TARGET}/32", "dev", dev], ns=ns)
    lab.ex(["ip", "route", "add", "203.0.113.0/24", "via", SERVER4])
    lab.ex(["ip", "route", "add", "203.0.113.0/24", "via", CLIENT4, "table", "100"])
    lab.ex(["ip", "rule", "add", "fwmark", "0x1", "lookup", "100"])
    lab.ex(["ip", "rule", "add", "tos", "0x10", "lookup", "100"])


@pytest.mark.parametrize("case", CASES)
def test_reroute_after_output_agrees_with_the_kernel(lab, case):
    expected, steps = CASES[case]
    routes(lab)
    counting_table(lab, lab.c, "probe", "udp dport { 6000, 6001 }")
    lab.load(steps)
    lab.send_udp(TARGET, 6000, 48000, ns=lab.r)
    rs = load_ruleset(collect_netfilter(lab.r))
    out = traverse(rs, "output", PacketView("ip", ROUTER_OUT4, TARGET, 17, 48000, 6000, oif="r1", uid=0, length=29),
                   addresses=ROUTER)
    assert sim_hits([out]) == kernel_hits(rs)
    to_client, to_server = counted(lab, lab.c, "probe"), lab.server_received()
    assert (to_client, to_server) == ((1, 0) if out.reroute_needed else (0, 1))
    assert out.reroute_needed is expected
    assert bool(out.reroute_reasons) is expected


def test_reroute_is_only_for_the_output_hook(raw_fixture):
    rs = load_ruleset(raw_fixture("local_out"))  # a route chain that sets a mark, a nat output DNAT
    out = traverse(rs, "output", PacketView("ip", ROUTER_OUT4, "198.51.100.99", 17, 48000, 6000, oif="r1", uid=0),
                   addresses=ROUTER)
    assert out.reroute_needed
    assert out.reroute_reasons == ("inet lo_t outc (type route): mark 0x0 -> 0x9",
                                   "NAT (ip lo_nat outc): destination 198.51.100.99 -> 198.51.100.2")
    post = traverse(rs, "postrouting", out.packet, addresses=ROUTER)
    assert not post.reroute_needed and post.reroute_reasons == ()


def test_established_packets_reroute_only_for_the_route_chain(raw_fixture):
    rs = load_ruleset(raw_fixture("local_out"))
    out = traverse(rs, "output", PacketView("ip", ROUTER_OUT4, "198.51.100.99", 17, 48000, 6000, oif="r1",
                                            uid=0, ct_state="established"), addresses=ROUTER)
    # nat chains are not consulted (the mapping is in conntrack); the route chain still sets the mark
    assert out.reroute_needed and out.reroute_reasons == ("inet lo_t outc (type route): mark 0x0 -> 0x9",)


def test_no_reroute_when_a_route_chain_drops():
    mark_then_drop = [{"mangle": {"key": {"meta": {"key": "mark"}}, "value": 1}}, {"drop": None}]
    rs = load_ruleset(nft_ruleset("ip", {"out": ("output", -150, "route", [mark_then_drop])}))
    out = traverse(rs, "output", PacketView("ip", ROUTER_OUT4, TARGET, 17, 48000, 6000, oif="r1"), addresses=ROUTER)
    assert out.verdict == "drop" and not out.reroute_needed
