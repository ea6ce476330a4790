"""Issue 9's rules-engine changes on the fixtures (snapshots of real namespaces), varied where
a case needs one more rule or route: no false alarm on what the tools deliberately write,
the breakages caught. The lab proofs are in test_tunnel_scenarios.py."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from tracer.checks import engine
from tracer.collect import snapshot
from tracer.model import Nexthop, Route, Rule

FIXTURES = Path(__file__).resolve().parent / "fixtures"


def load(rule_id: str, kind: str):
    return snapshot.load(str(FIXTURES / rule_id / f"{kind}.json"))


def run(state, rule_id):
    return engine.run(state, [engine.resolve(rule_id)])


def with_rules(state, *rules, routes=()):
    return state.replace(rules=state.rules + tuple(rules), routes=state.routes + tuple(routes))


# ------------------------------------------------------------------ WR008

def test_wr008_tailscale_fallback_is_not_shadowed():
    state = load("WR030", "good")  # Tailscale's 5210 lookup main, 5230 lookup default, 5250 unreachable
    assert [r.priority for r in state.rules if 5200 <= r.priority < 5300] == [5210, 5230, 5250, 5270]
    assert run(state, "WR008") == []


def test_wr008_mwan3_per_interface_unreachable_is_not_shadowed():
    base = load("WR008", "good")
    uplink = (Nexthop("123.150.232.1", "ppp0"),)
    state = with_rules(base, Rule(4, 2001, table=1, fwmark=0x100, fwmask=0x3F00),
                       Rule(4, 3001, action="unreachable", fwmark=0x100, fwmask=0x3F00),
                       routes=[Route(4, 1, "0.0.0.0", 0, nexthops=uplink)])
    assert run(state, "WR008") == []


def test_wr008_main_after_a_table_with_throw_routes_is_not_shadowed():
    base = load("WR008", "good")
    uplink = (Nexthop("123.150.232.1", "ppp0"),)
    routes = [Route(4, 100, "0.0.0.0", 0, nexthops=uplink), Route(4, 100, "10.0.0.0", 8, type="throw")]
    state = with_rules(base, Rule(4, 100, table=100), routes=routes)
    assert not [f for f in run(state, "WR008") if f.objects["rule"] == 32766]
    # without the throw route, main after a catch-all table with a default is dead
    dead = with_rules(base, Rule(4, 100, table=100), routes=routes[:1])
    assert [f.objects["rule"] for f in run(dead, "WR008")] == [30000, 32766]


def test_wr008_a_throw_route_elsewhere_does_not_save_a_to_rule():
    base = load("WR008", "good")
    uplink = (Nexthop("123.150.232.1", "ppp0"),)
    routes = [Route(4, 100, "0.0.0.0", 0, nexthops=uplink), Route(4, 100, "10.0.0.0", 8, type="throw")]
    state = with_rules(base, Rule(4, 100, table=100), Rule(4, 200, table=254, dst="172.16.0.0", dst_len=12),
                       routes=routes)
    assert 200 in [f.objects["rule"] for f in run(state, "WR008")]


def test_wr008_duplicate_is_deleted_not_moved():
    base = load("WR008", "good")  # 30000: from 192.168.1.169 lookup fast
    state = with_rules(base, Rule(4, 31000, table=7375, src="192.168.1.169", src_len=32))
    (dup,) = [f for f in run(state, "WR008") if f.objects["rule"] == 31000]
    assert "duplicate" in dup.message and "30000" in dup.message
    assert dup.fix == ("ip rule del from 192.168.1.169 lookup fast priority 31000",) and dup.fix.kind == "steps"


# ------------------------------------------------------------------ WR019, WR032: tunnels

def test_wr019_into_a_tunnel_the_host_terminates_is_only_a_warning():
    (into_wg0,) = [f for f in run(load("WR031", "good"), "WR019") if f.objects["dev"] == "wg0"]
    assert into_wg0.severity == "warning"
    assert "tunnel this host terminates" in into_wg0.message and "AllowedIPs" in into_wg0.message
    # the seed's ppp0 is an ISP uplink, not a tunnel: still an error
    assert [f.severity for f in run(load("WR019", "bad"), "WR019")] == ["error"]


def test_wr019_documentation_prefixes_are_not_private():
    from tracer.checks.context import is_private

    assert is_private("192.168.1.2") and is_private("100.64.0.1") and is_private("fd00::1")
    assert not any(is_private(a) for a in ("203.0.113.1", "198.51.100.2", "192.0.2.1", "198.18.0.1"))


# ------------------------------------------------------------------ WR030, WR031

def test_wr030_quiet_without_a_tunnel_device():
    # mwan3-style marks and unreachable fallbacks on a host without a tunnel: not bypass marks
    base = load("WR008", "good")
    state = with_rules(base, Rule(4, 3001, action="unreachable", fwmark=0x100, fwmask=0x3F00))
    assert run(state, "WR030") == []


def test_wr030_wg_quick_mark_is_a_bypass_mark():
    state = load("WR031", "good")  # wg-quick's rules: marked packets leave by main
    assert run(state, "WR030") == []
    # a hand-written "everything through the VPN" rule before wg-quick's: the encrypted packets loop into wg0
    looping = with_rules(state, Rule(4, 100, table=51820))
    found = run(looping, "WR030")
    assert len(found) == 1 and "wg0" in found[0].message and "loop" in found[0].message
    assert found[0].fix == ("ip rule add fwmark 0xca6c lookup main priority 99",)


def test_wr031_a_deliberate_lan_route_into_the_tunnel_is_not_reported():
    # Tailscale without LAN access routes the LAN itself into tailscale0: as specific as the subnet
    base = load("WR030", "good")
    routes = [Route(4, 52, "0.0.0.0", 0, nexthops=(Nexthop(None, "tailscale0"),)),
              Route(4, 52, "192.168.1.0", 24, nexthops=(Nexthop(None, "tailscale0"),))]
    deliberate = base.replace(routes=base.routes + tuple(routes[1:2]) + tuple(routes[:1]))
    assert not [f for f in run(deliberate, "WR031") if f.objects["subnet"] == "192.168.1.0/24"]
    # the default alone captures it
    captured = base.replace(routes=base.routes + tuple(routes[:1]))
    assert [f for f in run(captured, "WR031") if f.objects["subnet"] == "192.168.1.0/24"]


# ------------------------------------------------------------------ WR015

def test_wr015_nat_rules_alone_only_suggest_routing():
    # tailscaled installs ts-postrouting's MASQUERADE on every node, forwarding or not
    state = load("WR030", "good")
    off = state.replace(sysctls={**state.sysctls, "net.ipv4.ip_forward": "0"})
    assert not [r for r in off.rules if r.src or (r.iif and r.iif != "lo")]
    (nat_only,) = run(off, "WR015")
    assert nat_only.severity == "warning" and "only NAT rules suggest it" in nat_only.message
    assert [f.severity for f in run(load("WR015", "bad"), "WR015")] == ["error"]  # a `from` rule: routing


# ------------------------------------------------------------------ WR033

def test_wr033_is_quiet_when_the_state_does_not_say_whether_br_netfilter_is_loaded():
    old = load("WR033", "bad").replace(br_netfilter=None)  # a snapshot taken before why-route read it
    assert run(old, "WR033") == []


def test_wr033_without_br_netfilter_loads_it_first():
    state = load("WR033", "bad")
    unloaded = state.replace(br_netfilter=False,
                             sysctls={k: v for k, v in state.sysctls.items() if not k.startswith("net.bridge.")})
    (finding,) = run(unloaded, "WR033")
    assert "br_netfilter is not loaded" in finding.message
    assert finding.fix[:2] == ("modprobe br_netfilter && sysctl -w net.bridge.bridge-nf-call-iptables=1",
                               "modprobe br_netfilter && ip link set br-lan type bridge nf_call_iptables 1")


def test_wr033_the_bridge_option_alone_lets_the_replies_through_iptables():
    state = load("WR033", "bad")  # net.bridge.bridge-nf-call-iptables = 0
    links = tuple(dataclasses.replace(link, nf_call=("iptables",)) if link.name == "br-lan" else link
                  for link in state.links)
    assert run(state.replace(links=links), "WR033") == []
