"""Tailscale v1.102.3 as a subnet router and exit node, and a client using that exit node.

What tailscaled writes on Linux (netfilter mode "on", the iptables runner,
whose `iptables` is iptables-nft here):
  wgengine/router/osrouter/router_linux.go: baseIPRules at ipPolicyPrefBase
    5200 (5210 fwmark 0x80000/0xff0000 lookup main, 5230 … lookup default, 5250
    … unreachable, 5270 lookup 52), routes in table 52 (addRoute: one per
    peer, 100.100.100.100, and 0.0.0.0/0 when using an exit node), the
    connmark rules and src_valid_mark=1 (the rp_filter workaround),
  ipn/ipnlocal/local.go (routerConfig): a client using an exit node without
    --exit-node-allow-lan-access also routes its own LAN prefixes into
    table 52 "so that we do not leak any traffic",
  util/linuxfw/iptables_runner.go: AddChains/AddHooks (ts-input, ts-forward,
    ts-postrouting, each jumped to from rule 1 of INPUT, FORWARD, POSTROUTING),
    addBase4, AddLoopbackRule, AddExternalCGNATRules (CGNATModeDrop),
    AddSNATRule (--snat-subnet-routes, the default), AddConnmarkSaveRule.
tsconst/linuxfw.go: bypass mark 0x80000, subnet-route mark 0x40000, mask 0xff0000.
"""

import pytest

from tests.realtools.realtools_lab import (
    Flow,
    Path,
    check,
    errors,
    findings_naming,
    path_tests,
)

TOPOLOGY = "tailscale"

EXIT_TS, CLIENT_TS = "100.101.102.1", "100.101.102.2"
EXIT_LAN, LAN_ROUTER, LAN_HOST = "192.168.50.1", "192.168.50.254", "192.168.50.10"
CLIENT_WAN, CAFE, DERP = "203.0.113.2", "203.0.113.1", "192.0.2.100"
BYPASS_MARK = 0x80000


def ip_rules() -> str:
    return "\n".join([
        "ip rule add pref 5210 fwmark 0x80000/0xff0000 table main",
        "ip rule add pref 5230 fwmark 0x80000/0xff0000 table default",
        "ip rule add pref 5250 fwmark 0x80000/0xff0000 type unreachable",
        "ip rule add pref 5270 table 52",
    ])


CONNMARK_RESTORE = ("-A PREROUTING -m conntrack --ctstate RELATED,ESTABLISHED -m connmark ! --mark 0x0/0xff0000 "
                    "-j CONNMARK --restore-mark --nfmask 0xff0000 --ctmask 0xff0000")
CONNMARK_SAVE = ("-A OUTPUT -m conntrack --ctstate NEW -m mark ! --mark 0x0/0xff0000 "
                 "-j CONNMARK --save-mark --nfmask 0xff0000 --ctmask 0xff0000")


def netfilter(own_address: str) -> str:
    return f"""\
*mangle
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:FORWARD ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
{CONNMARK_RESTORE}
{CONNMARK_SAVE}
COMMIT
*filter
:INPUT ACCEPT [0:0]
:FORWARD ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:ts-forward - [0:0]
:ts-input - [0:0]
-A INPUT -j ts-input
-A FORWARD -j ts-forward
-A ts-forward -i tailscale0 -j MARK --set-xmark 0x40000/0xff0000
-A ts-forward -m mark --mark 0x40000/0xff0000 -j ACCEPT
-A ts-forward -s 100.64.0.0/10 -o tailscale0 -j DROP
-A ts-forward -o tailscale0 -j ACCEPT
-A ts-input -s {own_address}/32 -i lo -j ACCEPT
-A ts-input -i tailscale0 -j ACCEPT
-A ts-input -s 100.115.92.0/23 ! -i tailscale0 -j RETURN
-A ts-input -s 100.64.0.0/10 ! -i tailscale0 -j DROP
COMMIT
*nat
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
:ts-postrouting - [0:0]
-A POSTROUTING -j ts-postrouting
-A ts-postrouting -m mark --mark 0x40000/0xff0000 -j MASQUERADE
COMMIT
"""


TABLE_52 = {
    # The exit node's peers (its only peer is the client) and MagicDNS.
    "exit": [f"{CLIENT_TS} dev tailscale0", "100.100.100.100 dev tailscale0"],
    # The client's peers, MagicDNS, the exit node's default route, and its own
    # LAN (no --exit-node-allow-lan-access).
    "client": [f"{EXIT_TS} dev tailscale0", "100.100.100.100 dev tailscale0", "0.0.0.0/0 dev tailscale0",
               "203.0.113.0/24 dev tailscale0"],
}

BREAKAGES = {
    # The bypass rule deleted (a network manager that removes foreign rules,
    # or a hand-written `ip rule del`): tailscaled's own marked packets fall
    # through to 5250's unreachable, and the tunnel cannot reach its peers or DERP.
    "bypass-rule-deleted": ("client", "ip rule del pref 5210"),
    # IP forwarding off on the exit node ("IP forwarding is disabled" in the
    # admin console): it can no longer route its clients' traffic.
    "exit-forwarding-off": ("exit", "sysctl -q -w net.ipv4.ip_forward=0"),
}


def install(lab, state):
    for node, own in (("exit", EXIT_TS), ("client", CLIENT_TS)):
        lab.sh(node, "sysctl -q -w net.ipv4.conf.all.src_valid_mark=1\n" + ip_rules() + "\n"
               + "\n".join(f"ip route add {route} table 52" for route in TABLE_52[node]))
        lab.iptables_restore(node, netfilter(own))
    if state != "healthy":
        node, command = BREAKAGES[state]
        lab.sh(node, command)


TAILNET_TO_SUBNET = Flow("exit", LAN_HOST, "tcp", 22, 43001, src=CLIENT_TS, iif="tailscale0", sender="client")
TAILNET_TO_INTERNET = Flow("exit", "8.8.8.8", "udp", 53, 43002, src=CLIENT_TS, iif="tailscale0", sender="client")
SUBNET_TO_TAILNET = Flow("exit", CLIENT_TS, "tcp", 22, 43003, src=LAN_HOST, iif="eth0", sender="lanhost")
SPOOFED_CGNAT = Flow("exit", EXIT_LAN, "tcp", 22, 43004, src="100.99.0.5", iif="eth0", sender="router")
CLIENT_TO_INTERNET = Flow("client", "8.8.8.8", "udp", 53, 43005)
CLIENT_DAEMON_TO_DERP = Flow("client", DERP, "udp", 41641, 43006, mark=BYPASS_MARK)
CLIENT_TO_ITS_LAN = Flow("client", CAFE, "tcp", 80, 43007)

HEALTHY = {
    # Subnet router: 5270's table 52 has no route for the LAN, main has; ts-forward
    # marks it 0x40000 and accepts, ts-postrouting masquerades to eth0's address.
    "tailnet-to-subnet": (TAILNET_TO_SUBNET, Path(
        "forwarded", rule=32766, table="main", dev="eth0", wire=(EXIT_LAN, LAN_HOST, 22),
        nat=(("masquerade", "src", EXIT_LAN),), sink="lanhost", sink_iif="eth0", outcome="refused")),
    # Exit node: the same mark and masquerade, to the LAN's router.
    "tailnet-to-internet": (TAILNET_TO_INTERNET, Path(
        "forwarded", rule=32766, table="main", dev="eth0", gateway=LAN_ROUTER, wire=(EXIT_LAN, "8.8.8.8", 53),
        nat=(("masquerade", "src", EXIT_LAN),), sink="router", sink_iif="br-lan", outcome="sent")),
    # A LAN host reaches the tailnet through table 52; not from tailscale0, so
    # no mark and no masquerade.
    "subnet-to-tailnet": (SUBNET_TO_TAILNET, Path(
        "forwarded", rule=5270, table="52", dev="tailscale0", wire=(LAN_HOST, CLIENT_TS, 22),
        sink="client", sink_iif="tailscale0", outcome="refused")),
    # A CGNAT source arriving off the tailnet: ts-input drops it (without the
    # drop, the exit node's RST would come back: "refused").
    "spoofed-cgnat-dropped": (SPOOFED_CGNAT, Path("dropped", outcome="timeout")),
    # The client's own traffic: 5270 → table 52's default into the tunnel,
    # from its tailnet address; nothing leaks to the café.
    "client-to-internet": (CLIENT_TO_INTERNET, Path(
        "sent", rule=5270, table="52", dev="tailscale0", wire=(CLIENT_TS, "8.8.8.8", 53), sink="exit",
        sink_iif="tailscale0", absent_from=("cafe",), outcome="sent")),
    # tailscaled's own packets carry the bypass mark: 5210 sends them by main.
    "daemon-bypasses-the-tunnel": (CLIENT_DAEMON_TO_DERP, Path(
        "sent", rule=5210, table="main", dev="eth0", gateway=CAFE, wire=(CLIENT_WAN, DERP, 41641), sink="cafe",
        sink_iif="eth0", outcome="sent")),
    # Without LAN access even the café's router is reached through the tunnel.
    "client-lan-goes-through-the-tunnel": (CLIENT_TO_ITS_LAN, Path(
        "sent", rule=5270, table="52", dev="tailscale0", wire=(CLIENT_TS, CAFE, 80), sink="exit",
        sink_iif="tailscale0", absent_from=("cafe",), outcome="timeout")),
}

BROKEN = {
    ("bypass-rule-deleted", "daemon-bypasses-the-tunnel"): (CLIENT_DAEMON_TO_DERP, Path(
        "unreachable", rule=5250, error="ENETUNREACH", absent_from=("cafe",), outcome="ENETUNREACH")),
    # The input route is EHOSTUNREACH; no ICMP either (the device does not forward).
    ("exit-forwarding-off", "tailnet-to-internet"): (TAILNET_TO_INTERNET, Path(
        "unreachable", error="EHOSTUNREACH", absent_from=("router",), outcome="sent")),
}

# Flow → why-route's defect, for the flows it gets wrong today (a strict xfail: a fix flips it).
WHY_ROUTE_DEFECTS = {
}


globals().update(path_tests(HEALTHY, BROKEN, WHY_ROUTE_DEFECTS))


@pytest.mark.parametrize("node", ["exit", "client"])
def test_check_finds_no_error_on_healthy_nodes(tool_lab, capsys, node):
    assert errors(check(capsys, tool_lab("healthy").ns(node))) == []


CHECK_EXPECTATIONS = {
    # The daemon's marked packets now end at 5250's unreachable.
    "bypass-rule-deleted": ("client", ("5250",)),
    "exit-forwarding-off": ("exit", ("ip_forward",)),
}


@pytest.mark.parametrize("state", CHECK_EXPECTATIONS)
def test_check_reports_the_breakage(tool_lab, capsys, state):
    node, words = CHECK_EXPECTATIONS[state]
    assert findings_naming(check(capsys, tool_lab(state).ns(node)), *words)
