"""The LARTC recipe for two providers: "Linux Advanced Routing & Traffic Control
HOWTO" (tldp.org/HOWTO/Adv-Routing-HOWTO, lartc.rpdb.multiple-links.html),
4.2.1 Split access (with reader Rod Roark's additional table entries) and
4.2.2 Load balancing, with $IF1/$IP1/$P1 = eth1/198.51.100.2/198.51.100.1,
$IF2/$IP2/$P2 = eth2/203.0.113.2/203.0.113.1, $IF0/$P0_NET = eth0/192.168.0.0/24,
and T1/T2 named in rt_tables as the HOWTO says.

The local network is masqueraded to each provider (the last two lines): the
HOWTO's basic setup "will work … for the local network, if it is masqueraded"
and leaves those lines to the reader. Two of its lines are left out: `ip route add $P1_NET dev $IF1 src $IP1` and
the same for $P2_NET in main, which a kernel of today already holds (proto
kernel, src the interface's address) once the address is configured, so the
commands only fail with "File exists".
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

TOPOLOGY = "lartc"

IP1, P1, IP2, P2, REMOTE = "198.51.100.2", "198.51.100.1", "203.0.113.2", "203.0.113.1", "192.0.2.77"

SPLIT_ACCESS = f"""\
echo '201 T1' >> /etc/iproute2/rt_tables
echo '202 T2' >> /etc/iproute2/rt_tables
ip route add 198.51.100.0/24 dev eth1 src {IP1} table T1
ip route add default via {P1} table T1
ip route add 203.0.113.0/24 dev eth2 src {IP2} table T2
ip route add default via {P2} table T2
ip route add default via {P1}
ip rule add from {IP1} table T1
ip rule add from {IP2} table T2
ip route add 192.168.0.0/24 dev eth0 table T1
ip route add 203.0.113.0/24 dev eth2 table T1
ip route add 127.0.0.0/8 dev lo table T1
ip route add 192.168.0.0/24 dev eth0 table T2
ip route add 198.51.100.0/24 dev eth1 table T2
ip route add 127.0.0.0/8 dev lo table T2
iptables -t nat -A POSTROUTING -s 192.168.0.0/24 -o eth1 -j MASQUERADE
iptables -t nat -A POSTROUTING -s 192.168.0.0/24 -o eth2 -j MASQUERADE
"""

# 4.2.2, in place of the single default route of 4.2.1.
LOAD_BALANCING = f"""\
ip route del default via {P1}
ip route add default scope global nexthop via {P1} dev eth1 weight 1 nexthop via {P2} dev eth2 weight 1
"""


def install(lab, state):
    if state == "ip2-rule-missing":
        # The recipe typed without its last rule: the most common mistake with it.
        lab.sh("router", SPLIT_ACCESS.replace(f"ip rule add from {IP2} table T2\n", ""))
        return
    lab.sh("router", SPLIT_ACCESS)
    if state == "load-balanced":
        lab.sh("router", LOAD_BALANCING)


FROM_IP2 = Flow("router", REMOTE, "udp", 5353, 46001, src=IP2)
DEFAULT_SOURCE = Flow("router", REMOTE, "udp", 5353, 46002)
INCOMING_ON_IF2 = Flow("router", IP2, "tcp", 22, 46003, src=REMOTE, iif="eth2", sender="isp2")

HEALTHY = {
    # "all answers to traffic coming in on a particular interface get answered
    # from that interface": traffic from $IP2 follows T2.
    "traffic-from-ip2-leaves-by-if2": (FROM_IP2, Path(
        "sent", rule=32764, table="T2", dev="eth2", gateway=P2, wire=(IP2, REMOTE, 5353), sink="isp2",
        sink_iif="eth0", absent_from=("isp1",), outcome="sent")),
    # Without a source, main's default via $P1, from $IP1.
    "default-traffic-leaves-by-if1": (DEFAULT_SOURCE, Path(
        "sent", rule=32766, table="main", dev="eth1", gateway=P1, wire=(IP1, REMOTE, 5353), sink="isp1",
        sink_iif="eth0", absent_from=("isp2",), outcome="sent")),
    # A connection to $IP2 from the Internet: delivered, and its RST goes back by $IF2.
    "connection-to-ip2-is-answered": (INCOMING_ON_IF2, Path(
        "delivered-locally", dev="lo", table="local", absent_from=("isp1",), outcome="refused")),
}

BROKEN = {
    # Main's default route: $IP2's packets leave by provider 1, which drops
    # them as spoofed (here: they arrive at isp1).
    ("ip2-rule-missing", "traffic-from-ip2-leaves-by-if2"): (FROM_IP2, Path(
        "sent", rule=32766, table="main", dev="eth1", gateway=P1, wire=(IP2, REMOTE, 5353), sink="isp1",
        sink_iif="eth0", absent_from=("isp2",), outcome="sent")),
    ("ip2-rule-missing", "connection-to-ip2-is-answered"): (INCOMING_ON_IF2, Path(
        "delivered-locally", dev="lo", table="local", outcome="timeout")),
}

# Flow → why-route's defect, for the flows it gets wrong today (a strict xfail: a fix flips it).
WHY_ROUTE_DEFECTS = {
}


globals().update(path_tests(HEALTHY, BROKEN, WHY_ROUTE_DEFECTS))


def test_the_broken_reply_leaves_by_the_wrong_provider(tool_lab):
    lab = tool_lab("ip2-rule-missing")
    lab.clear_sinks()
    lab.tcp_connect("isp2", IP2, 22, src=REMOTE, sport=46004)
    assert [(a.src, a.sport) for a in lab.arrivals("isp1") if a.dport == 46004] == [(IP2, 22)]


# ---------------------------------------------------------------- 4.2.2 load balancing

DESTINATIONS = [f"198.18.0.{host}" for host in range(1, 25)]


def test_the_kernel_spreads_destinations_over_both_providers(tool_lab):
    lab = tool_lab("load-balanced")
    lab.clear_sinks()
    lab.udp_sends("router", [(dst, 53, 46100) for dst in DESTINATIONS])
    seen = {isp: {(a.src, a.dst) for a in lab.arrivals(isp) if a.sport == 46100} for isp in ("isp1", "isp2")}
    # Each destination went one way, from that provider's address; with 24
    # destinations hashed over two equal nexthops, both get some (odds 2 × 2^-24).
    assert {src for src, _ in seen["isp1"]} == {IP1} and {src for src, _ in seen["isp2"]} == {IP2}, seen
    assert sorted(dst for _, dst in seen["isp1"] | seen["isp2"]) == sorted(DESTINATIONS), seen


def test_why_route_gives_both_providers_as_the_hash_may_pick_either(tool_lab, capsys):
    doc = explain_flow(capsys, tool_lab("load-balanced"), Flow("router", "198.18.0.1", "udp", 53, 46100))
    assert outcomes(doc, "dev", "src") == {("eth1", IP1): 0.5, ("eth2", IP2): 0.5}


def test_check_finds_no_error_with_split_access(tool_lab, capsys):
    assert errors(check(capsys, tool_lab("healthy").ns("router"))) == []


def test_check_finds_no_error_with_load_balancing(tool_lab, capsys):
    assert errors(check(capsys, tool_lab("load-balanced").ns("router"))) == []


def test_check_reports_the_missing_rule_for_ip2(tool_lab, capsys):
    # T2, meant for $IP2, is no longer used by any rule.
    assert findings_naming(check(capsys, tool_lab("ip2-rule-missing").ns("router")), "T2")
