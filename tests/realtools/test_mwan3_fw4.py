# ruff: noqa: E501 -- fw4's ruleset is quoted line for line, and some of its lines are long
"""OpenWrt with mwan3 2.12.2 balancing over two uplinks, and fw4 as the firewall.

mwan3 (openwrt/packages net/mwan3, PKG_VERSION 2.12.2), as its scripts write
it for this /etc/config/mwan3 (IPv4 only):

    config globals 'globals'          option mmx_mask '0x3F00'
    config interface 'wan'            option enabled '1'; option family 'ipv4'
    config interface 'wanb'           option enabled '1'; option family 'ipv4'
    config member 'wan_m1_w3'         option interface 'wan';  metric 1, weight 3
    config member 'wanb_m1_w3'        option interface 'wanb'; metric 1, weight 3
    config policy 'balanced'          list use_member 'wan_m1_w3'; list use_member 'wanb_m1_w3'
    config rule 'default_rule_v4'     option dest_ip '0.0.0.0/0'; option use_policy 'balanced'; family 'ipv4'

  files/lib/mwan3/common.sh mwan3_init, mwan3_id2mask: interface ids by config
    order (wan 1, wanb 2), marks 0x100 and 0x200, default 0x3f00,
    blackhole 0x3d00 and unreachable 0x3e00;
  files/lib/mwan3/mwan3.sh: mwan3_set_general_rules (2061 blackhole, 2062
    unreachable), mwan3_create_iface_rules (1000+id iif, 2000+id fwmark lookup,
    3000+id fwmark unreachable), mwan3_create_iface_route (table id: main's
    routes of the interface's device, of no mwan3 device, and its own default),
    mwan3_set_connected_ipv4 (the ipset from `ip route` and table 0),
    mwan3_set_general_iptables (mwan3_hook from mangle PREROUTING and OUTPUT),
    mwan3_create_iface_iptables (mwan3_iface_in_*), mwan3_set_policy (the first
    member appended, the next inserted with `-m statistic --mode random
    --probability` weight/total = 0.500), mwan3_set_user_iptables_rule.
  mwan3 uses `iptables`, which is iptables-nft on OpenWrt 22.03 and later.

fw4 (openwrt/firewall4 at b6e5157, 2025-03-17): the ruleset
root/usr/share/firewall4/templates/ruleset.uc renders, as its
tests/01_configuration/01_ruleset expects for the stock /etc/config/firewall,
with the zones of this router: lan (br-lan), wan (networks wan, wan6, wanb:
devices eth1 and eth2; masq, mtu_fix), forwarding lan → wan; no flow
offloading, no conntrack helpers.
"""


from tests.realtools.realtools_lab import (
    Flow,
    Path,
    check,
    errors,
    explain_flow,
    findings_naming,
    outcomes,
    path_tests,
)

TOPOLOGY = "openwrt"

LAPTOP, WAN_ADDRESS, WANB_ADDRESS, WAN_GATEWAY, WANB_GATEWAY = (
    "192.168.1.100", "10.0.1.2", "10.0.2.2", "10.0.1.1", "10.0.2.1")
UPLINKS = {"wan": ("eth1", 1, WAN_GATEWAY, "10.0.1.0/24", WAN_ADDRESS),
           "wanb": ("eth2", 2, WANB_GATEWAY, "10.0.2.0/24", WANB_ADDRESS)}

MWAN3_RULES = """\
ip rule add pref 2061 fwmark 0x3d00/0x3f00 blackhole
ip rule add pref 2062 fwmark 0x3e00/0x3f00 unreachable
ip rule add pref 1001 iif eth1 lookup 1
ip rule add pref 2001 fwmark 0x100/0x3f00 lookup 1
ip rule add pref 3001 fwmark 0x100/0x3f00 unreachable
ip rule add pref 1002 iif eth2 lookup 2
ip rule add pref 2002 fwmark 0x200/0x3f00 lookup 2
ip rule add pref 3002 fwmark 0x200/0x3f00 unreachable
"""

MWAN3_ROUTES = """\
ip route add table 1 default via 10.0.1.1 dev eth1 proto static metric 10
ip route add table 1 10.0.1.0/24 dev eth1 proto kernel scope link src 10.0.1.2
ip route add table 1 192.168.1.0/24 dev br-lan proto kernel scope link src 192.168.1.1
ip route add table 2 default via 10.0.2.1 dev eth2 proto static metric 20
ip route add table 2 10.0.2.0/24 dev eth2 proto kernel scope link src 10.0.2.2
ip route add table 2 192.168.1.0/24 dev br-lan proto kernel scope link src 192.168.1.1
"""

# mwan3_set_connected_ipset, _custom_ipset, _dynamic_ipset, then (on ifup)
# mwan3_set_connected_ipv4, with mwan3.sh's IPv4_REGEX.
MWAN3_IPSETS = r"""
ipset -! create mwan3_connected_ipv4 hash:net
ipset -! create mwan3_custom_ipv4 hash:net
ipset -! create mwan3_dynamic_ipv4 list:set
IPv4_REGEX="((25[0-5]|2[0-4][0-9]|[01]?[0-9][0-9]?)\.){3}(25[0-5]|2[0-4][0-9]|[01]?[0-9][0-9]?)"
for network in $( { ip -4 route | awk '{print $1}'; ip -4 route list table 0 | awk '{print $2}'; } \
                  | grep -E "$IPv4_REGEX"); do
    ipset -! add mwan3_connected_ipv4 "$network"
done
ipset add mwan3_connected_ipv4 224.0.0.0/3
"""


def _iface_in(name: str, device: str, mark: str) -> list[str]:
    return [*(f"-A mwan3_iface_in_{name} -i {device} -m set --match-set mwan3_{kind}_ipv4 src -m mark --mark "
              f"0x0/0x3f00 -m comment --comment default -j MARK --set-xmark 0x3f00/0x3f00"
              for kind in ("custom", "connected", "dynamic")),
            f"-A mwan3_iface_in_{name} -i {device} -m mark --mark 0x0/0x3f00 -m comment --comment {name} "
            f"-j MARK --set-xmark {mark}/0x3f00"]


MWAN3_MANGLE = "\n".join([
    "*mangle", ":PREROUTING ACCEPT [0:0]", ":INPUT ACCEPT [0:0]", ":FORWARD ACCEPT [0:0]", ":OUTPUT ACCEPT [0:0]",
    ":POSTROUTING ACCEPT [0:0]",
    *(f":{chain} - [0:0]" for chain in (
        "mwan3_connected_ipv4", "mwan3_custom_ipv4", "mwan3_dynamic_ipv4", "mwan3_hook", "mwan3_iface_in_wan",
        "mwan3_iface_in_wanb", "mwan3_ifaces_in", "mwan3_policy_balanced", "mwan3_rules")),
    "-A PREROUTING -j mwan3_hook",
    "-A OUTPUT -j mwan3_hook",
    *(f"-A mwan3_{kind}_ipv4 -m set --match-set mwan3_{kind}_ipv4 dst -j MARK --set-xmark 0x3f00/0x3f00"
      for kind in ("connected", "custom", "dynamic")),
    "-A mwan3_hook -m mark --mark 0x0/0x3f00 -j CONNMARK --restore-mark --nfmask 0x3f00 --ctmask 0x3f00",
    "-A mwan3_hook -m mark --mark 0x0/0x3f00 -j mwan3_ifaces_in",
    *(f"-A mwan3_hook -m mark --mark 0x0/0x3f00 -j mwan3_{kind}_ipv4" for kind in ("custom", "connected", "dynamic")),
    "-A mwan3_hook -m mark --mark 0x0/0x3f00 -j mwan3_rules",
    "-A mwan3_hook -j CONNMARK --save-mark --nfmask 0x3f00 --ctmask 0x3f00",
    *(f"-A mwan3_hook -m mark ! --mark 0x3f00/0x3f00 -j mwan3_{kind}_ipv4"
      for kind in ("custom", "connected", "dynamic")),
    *_iface_in("wan", "eth1", "0x100"),
    *_iface_in("wanb", "eth2", "0x200"),
    "-A mwan3_ifaces_in -m mark --mark 0x0/0x3f00 -j mwan3_iface_in_wan",
    "-A mwan3_ifaces_in -m mark --mark 0x0/0x3f00 -j mwan3_iface_in_wanb",
    '-A mwan3_policy_balanced -m mark --mark 0x0/0x3f00 -m statistic --mode random --probability 0.500 '
    '-m comment --comment "wanb 3 6" -j MARK --set-xmark 0x200/0x3f00',
    '-A mwan3_policy_balanced -m mark --mark 0x0/0x3f00 -m comment --comment "wan 3 3" '
    "-j MARK --set-xmark 0x100/0x3f00",
    "-A mwan3_rules -d 0.0.0.0/0 -m mark --mark 0x0/0x3f00 -j mwan3_policy_balanced",
    "COMMIT", ""])


def fw4_ruleset(wanb_zone: bool = False) -> str:
    """fw4's table. `wanb_zone`: wanb moved into a zone of its own, created without masquerading."""
    wan = '"eth1"' if wanb_zone else '{ "eth1", "eth2" }'
    wanb = {
        "input": '\t\tiifname "eth2" jump input_wanb comment "!fw4: Handle wanb IPv4/IPv6 input traffic"\n',
        "forward": '\t\tiifname "eth2" jump forward_wanb comment "!fw4: Handle wanb IPv4/IPv6 forward traffic"\n',
        "output": '\t\toifname "eth2" jump output_wanb comment "!fw4: Handle wanb IPv4/IPv6 output traffic"\n',
        "forward_lan": '\t\tjump accept_to_wanb comment "!fw4: Accept lan to wanb forwarding"\n',
        "chains": """
	chain input_wanb {
		jump reject_from_wanb
	}

	chain output_wanb {
		jump accept_to_wanb
	}

	chain forward_wanb {
		jump reject_to_wanb
	}

	chain accept_to_wanb {
		oifname "eth2" counter accept comment "!fw4: accept wanb IPv4/IPv6 traffic"
	}

	chain reject_from_wanb {
		iifname "eth2" counter jump handle_reject comment "!fw4: reject wanb IPv4/IPv6 traffic"
	}

	chain reject_to_wanb {
		oifname "eth2" counter jump handle_reject comment "!fw4: reject wanb IPv4/IPv6 traffic"
	}
"""} if wanb_zone else {}
    return f"""\
table inet fw4
flush table inet fw4

table inet fw4 {{
	define lan_devices = {{ "br-lan" }}
	define lan_subnets = {{ 192.168.1.0/24 }}

	define wan_devices = {wan}
	define wan_subnets = {{ 10.0.1.0/24{"" if wanb_zone else ", 10.0.2.0/24"} }}

	chain input {{
		type filter hook input priority filter; policy drop;

		iif "lo" accept comment "!fw4: Accept traffic from loopback"

		ct state vmap {{ established : accept, related : accept }} comment "!fw4: Handle inbound flows"
		tcp flags & (fin | syn | rst | ack) == syn jump syn_flood comment "!fw4: Rate limit TCP syn packets"
		iifname "br-lan" jump input_lan comment "!fw4: Handle lan IPv4/IPv6 input traffic"
		iifname {wan} jump input_wan comment "!fw4: Handle wan IPv4/IPv6 input traffic"
{wanb.get("input", "")}		jump handle_reject
	}}

	chain forward {{
		type filter hook forward priority filter; policy drop;

		ct state vmap {{ established : accept, related : accept }} comment "!fw4: Handle forwarded flows"
		iifname "br-lan" jump forward_lan comment "!fw4: Handle lan IPv4/IPv6 forward traffic"
		iifname {wan} jump forward_wan comment "!fw4: Handle wan IPv4/IPv6 forward traffic"
{wanb.get("forward", "")}		jump handle_reject
	}}

	chain output {{
		type filter hook output priority filter; policy accept;

		oif "lo" accept comment "!fw4: Accept traffic towards loopback"

		ct state vmap {{ established : accept, related : accept }} comment "!fw4: Handle outbound flows"
		oifname "br-lan" jump output_lan comment "!fw4: Handle lan IPv4/IPv6 output traffic"
		oifname {wan} jump output_wan comment "!fw4: Handle wan IPv4/IPv6 output traffic"
{wanb.get("output", "")}	}}

	chain prerouting {{
		type filter hook prerouting priority filter; policy accept;
	}}

	chain handle_reject {{
		meta l4proto tcp reject with tcp reset comment "!fw4: Reject TCP traffic"
		reject with icmpx type port-unreachable comment "!fw4: Reject any other traffic"
	}}

	chain syn_flood {{
		limit rate 25/second burst 50 packets return comment "!fw4: Accept SYN packets below rate-limit"
		drop comment "!fw4: Drop excess packets"
	}}

	chain input_lan {{
		jump accept_from_lan
	}}

	chain output_lan {{
		jump accept_to_lan
	}}

	chain forward_lan {{
		jump accept_to_wan comment "!fw4: Accept lan to wan forwarding"
{wanb.get("forward_lan", "")}		jump accept_to_lan
	}}

	chain accept_from_lan {{
		iifname "br-lan" counter accept comment "!fw4: accept lan IPv4/IPv6 traffic"
	}}

	chain accept_to_lan {{
		oifname "br-lan" counter accept comment "!fw4: accept lan IPv4/IPv6 traffic"
	}}

	chain input_wan {{
		meta nfproto ipv4 udp dport 68 counter accept comment "!fw4: Allow-DHCP-Renew"
		meta nfproto ipv4 icmp type 8 counter accept comment "!fw4: Allow-Ping"
		meta nfproto ipv4 meta l4proto igmp counter accept comment "!fw4: Allow-IGMP"
		ip6 saddr fc00::/6 ip6 daddr fc00::/6 udp dport 546 counter accept comment "!fw4: Allow-DHCPv6"
		ip6 saddr fe80::/10 icmpv6 type . icmpv6 code {{ 130 . 0, 131 . 0, 132 . 0, 143 . 0 }} counter accept comment "!fw4: Allow-MLD"
		meta nfproto ipv6 icmpv6 type {{ 128, 129, 1, 3, 133, 134 }} limit rate 1000/second counter accept comment "!fw4: Allow-ICMPv6-Input"
		meta nfproto ipv6 icmpv6 type . icmpv6 code {{ 2 . 0, 4 . 0, 4 . 1, 135 . 0, 136 . 0 }} limit rate 1000/second counter accept comment "!fw4: Allow-ICMPv6-Input"
		jump reject_from_wan
	}}

	chain output_wan {{
		jump accept_to_wan
	}}

	chain forward_wan {{
		meta nfproto ipv6 icmpv6 type {{ 128, 129, 1, 3 }} limit rate 1000/second counter accept comment "!fw4: Allow-ICMPv6-Forward"
		meta nfproto ipv6 icmpv6 type . icmpv6 code {{ 2 . 0, 4 . 0, 4 . 1 }} limit rate 1000/second counter accept comment "!fw4: Allow-ICMPv6-Forward"
		meta l4proto esp counter jump accept_to_lan comment "!fw4: Allow-IPSec-ESP"
		udp dport 500 counter jump accept_to_lan comment "!fw4: Allow-ISAKMP"
		jump reject_to_wan
	}}

	chain accept_to_wan {{
		meta nfproto ipv4 oifname {wan} ct state invalid counter drop comment "!fw4: Prevent NAT leakage"
		oifname {wan} counter accept comment "!fw4: accept wan IPv4/IPv6 traffic"
	}}

	chain reject_from_wan {{
		iifname {wan} counter jump handle_reject comment "!fw4: reject wan IPv4/IPv6 traffic"
	}}

	chain reject_to_wan {{
		oifname {wan} counter jump handle_reject comment "!fw4: reject wan IPv4/IPv6 traffic"
	}}
{wanb.get("chains", "")}
	chain dstnat {{
		type nat hook prerouting priority dstnat; policy accept;
	}}

	chain srcnat {{
		type nat hook postrouting priority srcnat; policy accept;
		oifname {wan} jump srcnat_wan comment "!fw4: Handle wan IPv4/IPv6 srcnat traffic"
	}}

	chain srcnat_wan {{
		meta nfproto ipv4 masquerade comment "!fw4: Masquerade IPv4 wan traffic"
	}}

	chain raw_prerouting {{
		type filter hook prerouting priority raw; policy accept;
	}}

	chain raw_output {{
		type filter hook output priority raw; policy accept;
	}}

	chain mangle_prerouting {{
		type filter hook prerouting priority mangle; policy accept;
	}}

	chain mangle_postrouting {{
		type filter hook postrouting priority mangle; policy accept;
		oifname {wan} tcp flags syn / syn,fin,rst tcp option maxseg size set rt mtu comment "!fw4: Zone wan IPv4/IPv6 egress MTU fixing"
	}}

	chain mangle_input {{
		type filter hook input priority mangle; policy accept;
	}}

	chain mangle_output {{
		type route hook output priority mangle; policy accept;
	}}

	chain mangle_forward {{
		type filter hook forward priority mangle; policy accept;
		iifname {wan} tcp flags syn / syn,fin,rst tcp option maxseg size set rt mtu comment "!fw4: Zone wan IPv4/IPv6 ingress MTU fixing"
	}}
}}
"""


BREAKAGES = {
    # wanb put in a zone of its own (LuCI's "new zone", Masquerading left
    # unticked) with a lan → wanb forwarding: allowed out, never NATed.
    "wanb-zone-without-masq",
}


def install(lab, state):
    lab.nft("router", fw4_ruleset(wanb_zone=state == "wanb-zone-without-masq"))
    lab.sh("router", MWAN3_RULES + MWAN3_ROUTES + MWAN3_IPSETS)
    lab.iptables_restore("router", MWAN3_MANGLE)


TO_WANB_GATEWAY = Flow("router", WANB_GATEWAY, "tcp", 80, 45001, src=LAPTOP, iif="br-lan", sender="laptop")
WAN_TO_ROUTER = Flow("router", WANB_ADDRESS, "tcp", 22, 45002, src=WANB_GATEWAY, iif="eth2", sender="isp2")

HEALTHY = {
    # A destination in mwan3_connected_ipv4 gets the default mark 0x3f00: no
    # policy, main decides; fw4 forwards lan → wan and masquerades to eth2's address.
    "lan-to-a-connected-uplink-subnet": (TO_WANB_GATEWAY, Path(
        "forwarded", rule=32766, table="main", dev="eth2", wire=(WANB_ADDRESS, WANB_GATEWAY, 80),
        nat=(("masquerade", "src", WANB_ADDRESS),), sink="isp2", sink_iif="eth0", outcome="refused")),
    # mwan3_iface_in_wanb marks it 0x200; the router itself is the
    # destination; fw4's input_wan rejects it with a TCP reset.
    "wan-to-the-router-rejected": (WAN_TO_ROUTER, Path("dropped", outcome="refused")),
}

BROKEN = {
    # Leaves eth2 with the laptop's private address; isp2 cannot answer it.
    ("wanb-zone-without-masq", "lan-to-a-connected-uplink-subnet"): (TO_WANB_GATEWAY, Path(
        "forwarded", rule=32766, table="main", dev="eth2", wire=(LAPTOP, WANB_GATEWAY, 80), sink="isp2",
        sink_iif="eth0", outcome="timeout")),
}

# Flow → why-route's defect, for the flows it gets wrong today (a strict xfail: a fix flips it).
WHY_ROUTE_DEFECTS = {
}


globals().update(path_tests(HEALTHY, BROKEN, WHY_ROUTE_DEFECTS))


# ---------------------------------------------------------------- the balanced policy

BALANCED_SPORTS = range(45100, 45124)


def _balanced_sources(lab) -> dict[str, set[str]]:
    """Send one new flow per source port from the laptop to 8.8.8.8; the sources each ISP saw."""
    lab.clear_sinks()
    lab.udp_sends("laptop", [("8.8.8.8", 53, sport) for sport in BALANCED_SPORTS], src=LAPTOP)
    return {isp: {a.src for a in lab.arrivals(isp) if a.dst == "8.8.8.8"} for isp in ("isp1", "isp2")}


def test_the_kernel_balances_new_flows_over_both_uplinks_each_masqueraded(tool_lab):
    # 24 flows at p = 1/2 each: one uplink getting none has odds 2 × 2^-24.
    assert _balanced_sources(tool_lab("healthy")) == {"isp1": {WAN_ADDRESS}, "isp2": {WANB_ADDRESS}}


def test_without_masquerading_on_wanb_its_share_leaves_with_the_lan_address(tool_lab):
    assert _balanced_sources(tool_lab("wanb-zone-without-masq")) == {"isp1": {WAN_ADDRESS}, "isp2": {LAPTOP}}


def test_why_route_gives_both_uplinks_half_the_new_flows_each(tool_lab, capsys):
    # A source port no test has sent from: no conntrack entry pins the flow yet.
    flow = Flow("router", "8.8.8.8", "udp", 53, 45200, src=LAPTOP, iif="br-lan")
    doc = explain_flow(capsys, tool_lab("healthy"), flow)
    assert outcomes(doc, "dev", "src") == {("eth1", WAN_ADDRESS): 0.5, ("eth2", WANB_ADDRESS): 0.5}


def test_why_route_keeps_an_existing_flow_on_the_uplink_the_kernel_picked(tool_lab, capsys):
    # mwan3_hook saves the mark to conntrack and restores it: the flow's next
    # packets follow its first one.
    lab = tool_lab("healthy")
    lab.clear_sinks()
    lab.udp_send("laptop", "8.8.8.8", 53, src=LAPTOP, sport=45300)
    (picked,) = [(dev, address) for isp, dev, address in (("isp1", "eth1", WAN_ADDRESS), ("isp2", "eth2", WANB_ADDRESS))
                 if any(a.sport == 45300 for a in lab.arrivals(isp))]
    doc = explain_flow(capsys, lab, Flow("router", "8.8.8.8", "udp", 53, 45300, src=LAPTOP, iif="br-lan"))
    assert outcomes(doc, "dev", "src") == {picked: 1.0}


def test_check_finds_no_error_on_the_healthy_router(tool_lab, capsys):
    assert errors(check(capsys, tool_lab("healthy").ns("router"))) == []


def test_check_reports_the_uplink_left_out_of_masquerading(tool_lab, capsys):
    assert findings_naming(check(capsys, tool_lab("wanb-zone-without-masq").ns("router")), "eth2")
