"""wg-quick (wireguard-tools v1.0.20260223, src/wg-quick/linux.bash) with AllowedIPs = 0.0.0.0/0.

cmd_up adds the address, sets the MTU (1420: the uplink's 1500 minus 80), and
for the /0 allowed IP calls add_default, which runs
  wg set wg0 fwmark 51820
  ip -4 rule add not fwmark 51820 table 51820
  ip -4 rule add table main suppress_prefixlength 0
  ip -4 route add 0.0.0.0/0 dev wg0 table 51820
  sysctl -q net.ipv4.conf.all.src_valid_mark=1
  nft -f <table ip wg-quick-wg0: preraw, premangle, postmangle>
(the nft script is the one add_default prints with printf; with nft present it
is used instead of iptables-restore). The stand-in wg0 cannot mark packets, so
`wg set wg0 fwmark 51820` shows up as the flows that carry mark 51820: the
encrypted UDP to the endpoint, which WireGuard's socket marks.
"""

import pytest

from tests.realtools.realtools_lab import (
    Flow,
    Path,
    check,
    errors,
    findings_naming,
    kernel_mismatches,
    path_tests,
)

TOPOLOGY = "wireguard"

LAPTOP, HOME_ROUTER, PRINTER, ENDPOINT, TUNNEL_ADDRESS = (
    "192.168.1.50", "192.168.1.1", "192.168.1.20", "203.0.113.1", "10.0.0.2")
FWMARK = 51820

ADD_DEFAULT = f"""\
ip -4 rule add not fwmark {FWMARK} table {FWMARK}
ip -4 rule add table main suppress_prefixlength 0
ip -4 route add 0.0.0.0/0 dev wg0 table {FWMARK}
sysctl -q net.ipv4.conf.all.src_valid_mark=1
"""

WG_QUICK_NFT = f"""\
add table ip wg-quick-wg0
add chain ip wg-quick-wg0 preraw {{ type filter hook prerouting priority -300; }}
add chain ip wg-quick-wg0 premangle {{ type filter hook prerouting priority -150; }}
add chain ip wg-quick-wg0 postmangle {{ type filter hook postrouting priority -150; }}
add rule ip wg-quick-wg0 preraw iifname != "wg0" ip daddr {TUNNEL_ADDRESS} fib saddr type != local drop
add rule ip wg-quick-wg0 postmangle meta l4proto udp mark {FWMARK} ct mark set mark
add rule ip wg-quick-wg0 premangle meta l4proto udp meta mark set ct mark
"""

BREAKAGES = {
    # The suppress rule deleted (by hand, or a script that "cleans up" rules):
    # the connected LAN now goes into the tunnel too.
    "suppress-rule-deleted": "ip -4 rule del table main suppress_prefixlength 0",
    # Only the tunnel rule deleted: the suppress rule left alone hands every
    # destination but main's default route to main, and then main's own rule
    # takes the default too: traffic leaks past the tunnel.
    "tunnel-rule-deleted": f"ip -4 rule del not fwmark {FWMARK} table {FWMARK}",
    # systemd-networkd restarted with ManageForeignRoutingPolicyRules=yes (its
    # default) removes both of wg-quick's rules: traffic leaks past the tunnel.
    "rules-removed-by-networkd": f"ip -4 rule del not fwmark {FWMARK} table {FWMARK}\n"
                                 "ip -4 rule del table main suppress_prefixlength 0",
}


def install(lab, state):
    lab.sh("laptop", ADD_DEFAULT)
    lab.nft("laptop", WG_QUICK_NFT)
    if state != "healthy":
        lab.sh("laptop", BREAKAGES[state])


TO_INTERNET = Flow("laptop", "8.8.8.8", "udp", 53, 44001)
TO_PRINTER = Flow("laptop", PRINTER, "tcp", 631, 44002)
ENCRYPTED_TO_ENDPOINT = Flow("laptop", ENDPOINT, "udp", 51820, 44003, mark=FWMARK)
LAN_TO_TUNNEL_ADDRESS = Flow("laptop", TUNNEL_ADDRESS, "tcp", 22, 44004, src=PRINTER, iif="eth0", sender="home")

HEALTHY = {
    # 32764 looks up main but suppresses its default route (prefix length 0),
    # 32765 sends every unmarked packet to table 51820: into the tunnel.
    "internet-through-the-tunnel": (TO_INTERNET, Path(
        "sent", rule=32765, table="51820", dev="wg0", wire=(TUNNEL_ADDRESS, "8.8.8.8", 53), sink="vpn",
        sink_iif="wg0", absent_from=("home",), outcome="sent")),
    # The connected LAN route is longer than /0, so 32764 keeps it.
    "lan-stays-on-the-lan": (TO_PRINTER, Path(
        "sent", rule=32764, table="main", dev="eth0", wire=(LAPTOP, PRINTER, 631), sink="home", sink_iif="eth0",
        absent_from=("vpn",), outcome="refused")),
    # The tunnel's own packets carry 51820: 32765 does not match them, main does.
    "encrypted-packets-use-the-uplink": (ENCRYPTED_TO_ENDPOINT, Path(
        "sent", rule=32766, table="main", dev="eth0", gateway=HOME_ROUTER, wire=(LAPTOP, ENDPOINT, 51820),
        sink="home", sink_iif="eth0", absent_from=("vpn",), outcome="sent")),
    # preraw drops packets for the tunnel address that arrive elsewhere
    # (without it the laptop's RST would answer: "refused").
    "tunnel-address-from-the-lan-dropped": (LAN_TO_TUNNEL_ADDRESS, Path("dropped", outcome="timeout")),
}

BROKEN = {
    ("suppress-rule-deleted", "lan-stays-on-the-lan"): (TO_PRINTER, Path(
        "sent", rule=32765, table="51820", dev="wg0", wire=(TUNNEL_ADDRESS, PRINTER, 631), sink="vpn",
        sink_iif="wg0", absent_from=("home",), outcome="timeout")),
    ("tunnel-rule-deleted", "internet-through-the-tunnel"): (TO_INTERNET, Path(
        "sent", rule=32766, table="main", dev="eth0", gateway=HOME_ROUTER, wire=(LAPTOP, "8.8.8.8", 53),
        sink="home", sink_iif="eth0", absent_from=("vpn",), outcome="sent")),
    # ... while the bypass still works: the tunnel's own packets leave by the uplink as before
    # (what WR030 watches is intact; the leak is the unmarked traffic, WR029's unused table).
    ("tunnel-rule-deleted", "encrypted-packets-use-the-uplink"): HEALTHY["encrypted-packets-use-the-uplink"],
    ("rules-removed-by-networkd", "internet-through-the-tunnel"): (TO_INTERNET, Path(
        "sent", rule=32766, table="main", dev="eth0", gateway=HOME_ROUTER, wire=(LAPTOP, "8.8.8.8", 53),
        sink="home", sink_iif="eth0", absent_from=("vpn",), outcome="sent")),
}

# Flow → why-route's defect, for the flows it gets wrong today (a strict xfail: a fix flips it).
WHY_ROUTE_DEFECTS = {
}


globals().update(path_tests(HEALTHY, BROKEN, WHY_ROUTE_DEFECTS))


def test_check_finds_no_error_on_the_healthy_laptop(tool_lab, capsys):
    assert errors(check(capsys, tool_lab("healthy").ns("laptop"))) == []


CHECK_EXPECTATIONS = {
    # Table 51820 (all unmarked traffic) lacks the connected LAN.
    "suppress-rule-deleted": ("51820", "192.168.1.0/24"),
    # Table 51820 still routes everything into wg0, but no rule uses it: the Internet leaks out eth0.
    "rules-removed-by-networkd": ("51820", "leaks past it, out eth0 via 192.168.1.1"),
    # The same leak; the suppress rule left behind shows which rule is missing, and the exact fix.
    "tunnel-rule-deleted": ("table 51820", "leaks past it, out eth0 via 192.168.1.1",
                            f"`not fwmark {FWMARK} lookup {FWMARK}`", "that rule is missing",
                            f"ip -4 rule add not fwmark {FWMARK} table {FWMARK} priority 32765"),
}


@pytest.mark.parametrize("state", CHECK_EXPECTATIONS)
def test_check_reports_the_breakage(tool_lab, capsys, state):
    assert findings_naming(check(capsys, tool_lab(state).ns("laptop")), *CHECK_EXPECTATIONS[state])


def test_the_tunnel_rule_is_reported_as_missing_and_its_fix_repairs_the_leak(tool_lab, capsys):
    lab = tool_lab("tunnel-rule-deleted")
    report = check(capsys, lab.ns("laptop"))
    (finding,) = findings_naming(report, "that rule is missing")
    # The marked packets still leave by main (WR030's concern, the bypass, is intact): the unmarked leak.
    assert finding["id"] == "WR029" and not [f for f in report["findings"] if f["id"] == "WR030"]
    (fix,) = finding["fix"]["commands"]
    lab.sh("laptop", fix)
    try:
        flow, path = HEALTHY["internet-through-the-tunnel"]
        assert kernel_mismatches(lab, flow, path) == []
        assert not [f for f in check(capsys, lab.ns("laptop"))["findings"] if f["id"] == "WR029"]
    finally:
        lab.sh("laptop", BREAKAGES["tunnel-rule-deleted"])
