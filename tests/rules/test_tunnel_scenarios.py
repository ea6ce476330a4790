"""Issue 9's rules against the real kernel: tunnel daemons' rules as the tools
write them, a realistic breakage, real packets showing it, the finding, and
the finding's own fix repairing the traffic (and the finding gone).

* WR030 — Tailscale (wgengine/router/osrouter/router_linux.go, v1.102: rules
  5210–5270, table 52 of a client using an exit node without LAN access:
  the peer, MagicDNS, the default and its own LAN, ipn/ipnlocal/local.go;
  bypass mark 0x80000/0xff0000) with 5210 deleted: the
  daemon's marked packets end at 5250's unreachable; with 5250 gone too,
  they loop into tailscale0.
* WR031 — wg-quick (wireguard-tools src/wg-quick/linux.bash, add_default for
  AllowedIPs = 0.0.0.0/0, and its nft table wg-quick-wg0) with `table main
  suppress_prefixlength 0` deleted: the LAN printer is routed into wg0.
* WR032 — the seed router with a second uplink in a policy table (marked
  traffic → table fast → ppp0) but MASQUERADE only on the first uplink.
* WR008, WR020 — their fixes (delete a duplicate rule; replace a bad SNAT
  where it stands) proven the same way.

The tunnel devices stand in as same-named point-to-point veth pairs
(topologies/tunnels.toml). Root only; every lab removed, nothing left behind.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.lab.lab_helpers import (
    install_observers,
    leftovers,
    missing_requirements,
    new_prefix,
    observe,
    ping_from_macbook,
)
from tracer.checks import engine
from tracer.collect.live import collect_state
from tracer.lab import builder
from tracer.lab import topology as topo

pytestmark = pytest.mark.skipif(missing_requirements() is not None, reason=missing_requirements() or "")

TOPOLOGY = Path(__file__).resolve().parent / "topologies" / "tunnels.toml"
PRINTER, ENDPOINT, INTERNET = "192.168.1.20", "203.0.113.1", "8.8.8.8"

# Every TCP/UDP packet that arrives at a node, by input interface (before conntrack and NAT).
SINK = """
table ip wrsink {
    set seen { type ipv4_addr . ipv4_addr . inet_service; flags dynamic; size 1024; }
    chain arrive {
        type filter hook prerouting priority -400; policy accept;
        meta l4proto { tcp, udp } add @seen { ip saddr . ip daddr . th dport }
    }
}
"""

TAILSCALE_RULES = """\
sysctl -q -w net.ipv4.conf.all.src_valid_mark=1
ip rule add pref 5210 fwmark 0x80000/0xff0000 table main
ip rule add pref 5230 fwmark 0x80000/0xff0000 table default
ip rule add pref 5250 fwmark 0x80000/0xff0000 type unreachable
ip rule add pref 5270 table 52
ip route add 100.101.102.1 dev tailscale0 table 52
ip route add 100.100.100.100 dev tailscale0 table 52
ip route add 0.0.0.0/0 dev tailscale0 table 52
ip route add 192.168.1.0/24 dev tailscale0 table 52
"""

WG_QUICK_RULES = """\
ip -4 rule add not fwmark 51820 table 51820
ip -4 rule add table main suppress_prefixlength 0
ip -4 route add 0.0.0.0/0 dev wg0 table 51820
sysctl -q net.ipv4.conf.all.src_valid_mark=1
"""

WG_QUICK_NFT = """\
add table ip wg-quick-wg0
add chain ip wg-quick-wg0 preraw { type filter hook prerouting priority -300; }
add chain ip wg-quick-wg0 premangle { type filter hook prerouting priority -150; }
add chain ip wg-quick-wg0 postmangle { type filter hook postrouting priority -150; }
add rule ip wg-quick-wg0 preraw iifname != "wg0" ip daddr 10.0.0.2 fib saddr type != local drop
add rule ip wg-quick-wg0 postmangle meta l4proto udp mark 51820 ct mark set mark
add rule ip wg-quick-wg0 premangle meta l4proto udp meta mark set ct mark
"""

_UDP_SEND = """
import errno, socket, sys
dst, dport, mark = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
try:
    if mark:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, mark)
    s.sendto(b"why-route", (dst, dport))
    print("sent")
except OSError as exc:
    print(errno.errorcode.get(exc.errno, str(exc)))
"""

_TCP_CONNECT = """
import errno, socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
s.settimeout(1.0)
try:
    s.connect((sys.argv[1], int(sys.argv[2])))
    print("connected")
except socket.timeout:
    print("timeout")
except ConnectionRefusedError:
    print("refused")
except OSError as exc:
    print(errno.errorcode.get(exc.errno, str(exc)))
"""


class TunnelLab:
    def __init__(self):
        self.prefix = new_prefix("r")
        self.state = builder.up(topo.load(TOPOLOGY), prefix=self.prefix)
        for node in ("home", "vpn"):
            self.run(node, ["nft", "-f", "-"], input=SINK)

    def run(self, node, argv, **kwargs):
        return self.state.run(node, argv, **kwargs)

    def sh(self, node, script):
        return self.run(node, ["sh", "-ec", script])

    def check(self, node="laptop"):
        return engine.run(collect_state(self.state.ns(node)))

    def apply(self, finding, node="laptop", only_first=False):
        for command in finding.fix[:1] if only_first else finding.fix:
            self.sh(node, command)

    def udp(self, dst, dport, mark=0):
        return self.run("laptop", ["python3", "-c", _UDP_SEND, dst, str(dport), str(mark)]).stdout.strip()

    def tcp(self, dst, dport):
        return self.run("laptop", ["python3", "-c", _TCP_CONNECT, dst, str(dport)]).stdout.strip()

    def seen(self, node, dport):
        """(src, dst) of the packets to `dport` that arrived at `node`; the sinks are emptied."""
        data = json.loads(self.run(node, ["nft", "-j", "list", "set", "ip", "wrsink", "seen"]).stdout)["nftables"]
        elems = next(item["set"] for item in data if "set" in item).get("elem", [])
        self.run(node, ["nft", "flush", "set", "ip", "wrsink", "seen"])
        return {(e["concat"][0], e["concat"][1]) for e in elems if e["concat"][2] == dport}


@pytest.fixture
def tunnel_lab():
    labs = []

    def up():
        labs.append(TunnelLab())
        return labs[-1]

    yield up
    for lab in labs:
        builder.down(lab.prefix)
        assert not leftovers(lab.prefix)


def by_id(found, rule_id):
    return [f for f in found if f.id == rule_id]


def errors(found):
    return [f for f in found if f.severity == "error"]


# ------------------------------------------------------------------ WR030

def test_wr030_tailscale_bypass_rule_deleted(tunnel_lab):
    lab = tunnel_lab()
    lab.sh("laptop", TAILSCALE_RULES)
    # Healthy: tailscaled's marked packets to its peer's endpoint leave by eth0; the rest goes into the tunnel.
    assert lab.udp(ENDPOINT, 41641, mark=0x80000) == "sent"
    assert lab.seen("home", 41641) == {("192.168.1.50", ENDPOINT)} and not lab.seen("vpn", 41641)
    assert lab.udp(INTERNET, 53) == "sent" and lab.seen("vpn", 53) == {("100.101.102.2", INTERNET)}
    healthy = lab.check()
    assert not by_id(healthy, "WR030") and not errors(healthy), [f.message for f in errors(healthy)]
    # A network manager deletes the rule it did not write: 5250 now refuses the daemon's packets.
    lab.sh("laptop", "ip rule del pref 5210")
    assert lab.udp(ENDPOINT, 41641, mark=0x80000) == "ENETUNREACH"
    assert not lab.seen("home", 41641)
    (found,) = by_id(lab.check(), "WR030")
    assert found.severity == "error" and "0x80000/0xff0000" in found.message and "5250" in found.message
    assert found.fix.kind == "steps"
    lab.apply(found)
    assert lab.udp(ENDPOINT, 41641, mark=0x80000) == "sent"
    assert lab.seen("home", 41641) == {("192.168.1.50", ENDPOINT)}
    assert not by_id(lab.check(), "WR030")


def test_wr030_tailscale_bypass_and_fallback_deleted_loop_into_the_tunnel(tunnel_lab):
    lab = tunnel_lab()
    lab.sh("laptop", TAILSCALE_RULES + "ip rule del pref 5210\nip rule del pref 5250\n")
    # The exit node's default in table 52 now takes the daemon's own packets: they loop into tailscale0.
    assert lab.udp(ENDPOINT, 41641, mark=0x80000) == "sent"
    assert lab.seen("vpn", 41641) and not lab.seen("home", 41641)
    (found,) = by_id(lab.check(), "WR030")
    assert "tailscale0" in found.message and "loop" in found.message and "5270" in found.message
    lab.apply(found)
    assert lab.udp(ENDPOINT, 41641, mark=0x80000) == "sent"
    assert lab.seen("home", 41641) == {("192.168.1.50", ENDPOINT)} and not lab.seen("vpn", 41641)
    assert not by_id(lab.check(), "WR030")


# ------------------------------------------------------------------ WR031

def test_wr031_wg_quick_suppress_rule_deleted(tunnel_lab):
    lab = tunnel_lab()
    lab.sh("laptop", WG_QUICK_RULES)
    lab.run("laptop", ["nft", "-f", "-"], input=WG_QUICK_NFT)
    # Healthy: the printer is on the LAN (its RST comes back), the Internet through the tunnel,
    # the encrypted packets (mark 51820) by eth0.
    assert lab.tcp(PRINTER, 631) == "refused" and lab.seen("home", 631) == {("192.168.1.50", PRINTER)}
    assert lab.udp(ENDPOINT, 51820, mark=51820) == "sent" and lab.seen("home", 51820)
    healthy = lab.check()
    assert not by_id(healthy, "WR031") and not by_id(healthy, "WR030") and not errors(healthy), \
        [f.message for f in errors(healthy)]
    lab.sh("laptop", "ip -4 rule del table main suppress_prefixlength 0")
    assert lab.tcp(PRINTER, 631) == "timeout"
    assert lab.seen("vpn", 631) and not lab.seen("home", 631)  # into wg0
    found = by_id(lab.check(), "WR031")
    lan = [f for f in found if f.objects["subnet"] == "192.168.1.0/24"]
    assert len(lan) == 1 and "wg0" in lan[0].message and "51820" in lan[0].message
    assert lan[0].fix.kind == "alternatives"
    assert lan[0].fix[0] == "ip rule add table main suppress_prefixlength 0 priority 32764"
    lab.apply(lan[0], only_first=True)  # one of the alternatives: wg-quick's own rule
    assert lab.tcp(PRINTER, 631) == "refused" and lab.seen("home", 631) == {("192.168.1.50", PRINTER)}
    assert lab.udp(INTERNET, 53) == "sent" and lab.seen("vpn", 53)  # the tunnel still carries the rest
    assert not by_id(lab.check(), "WR031")


def test_wr031_the_other_alternative_repairs_it_too(tunnel_lab):
    lab = tunnel_lab()
    lab.sh("laptop", WG_QUICK_RULES + "ip -4 rule del table main suppress_prefixlength 0\n")
    (lan,) = [f for f in by_id(lab.check(), "WR031") if f.objects["subnet"] == "192.168.1.0/24"]
    assert lan.fix[1] == "ip route add 192.168.1.0/24 dev eth0 src 192.168.1.50 table 51820"
    lab.sh("laptop", lan.fix[1])
    assert lab.tcp(PRINTER, 631) == "refused" and lab.seen("home", 631)
    assert not [f for f in by_id(lab.check(), "WR031") if f.objects["subnet"] == "192.168.1.0/24"]


# ------------------------------------------------------------------ seed lab: WR032, WR008, WR020

@pytest.fixture
def seed_lab():
    prefix = new_prefix()
    built = []

    def up(variant):
        built.append(builder.up(topology=None, variant=variant, prefix=prefix))
        install_observers(built[0])
        return built[0]

    yield up
    builder.down(prefix)
    assert not leftovers(prefix)


def seed_check(state):
    return engine.run(collect_state(state.ns("route")))


def sh(state, command, node="route", check=True):
    return state.run(node, ["sh", "-c", command], check=check)


def test_wr032_second_uplink_without_masquerade(seed_lab):
    state = seed_lab("slow")
    # A policy for ICMP by the fast uplink: marked in mangle, table fast. NAT stays on eth0.2 only.
    sh(state, "echo '7375 fast' >> /etc/iproute2/rt_tables"
              " && ip route add default via 123.150.232.1 dev ppp0 table fast"
              " && ip rule add fwmark 0x2 table fast"
              " && iptables -t mangle -A PREROUTING -i br-lan -p icmp -j MARK --set-mark 0x2")
    assert ping_from_macbook(state).returncode != 0
    seen = observe(state, "internet2")
    assert seen.sources == {"192.168.1.169"} and seen.replies == 0  # left ppp0 with the private source
    found = seed_check(state)
    assert not by_id(found, "WR019")  # the derived TCP flows use eth0.2 and are masqueraded
    (uplink,) = by_id(found, "WR032")
    assert uplink.severity == "error" and "ppp0" in uplink.message and "fwmark 0x2 lookup fast" in uplink.message
    state.run("route", ["conntrack", "-F"], check=False)
    for command in uplink.fix:
        sh(state, command)
    assert ping_from_macbook(state).returncode == 0
    assert "123.150.232.74" in observe(state, "internet2").sources
    assert not by_id(seed_check(state), "WR032")


def test_wr008_duplicate_rule_is_deleted_not_moved(seed_lab):
    state = seed_lab("ultimate")
    sh(state, "ip rule add from 192.168.1.169 lookup sunusroute priority 40000")
    found = by_id(seed_check(state), "WR008")
    (dup,) = [f for f in found if f.objects["rule"] == 40000]
    assert "duplicate" in dup.message and "32765" in dup.message
    assert dup.fix == ("ip rule del from 192.168.1.169 lookup sunusroute priority 40000",)
    for command in dup.fix:
        sh(state, command)
    rules = sh(state, "ip rule show").stdout
    assert "40000" not in rules and "32765:\tfrom 192.168.1.169 lookup sunusroute" in rules
    assert not by_id(seed_check(state), "WR008")
    assert ping_from_macbook(state).returncode == 0 and observe(state, "internet2").replies == 1


def test_wr008_a_fallback_after_a_table_with_throw_routes_is_not_shadowed(seed_lab):
    state = seed_lab("ultimate")
    # main throws 192.0.2.0/24 on to the later rules, where table sunusroute routes it by ppp0.
    sh(state, "ip route add throw 192.0.2.0/24 && ip rule add to 192.0.2.0/24 lookup sunusroute priority 40000")
    assert "dev ppp0" in sh(state, "ip route get 192.0.2.7").stdout  # rule 40000 does decide
    assert not [f for f in by_id(seed_check(state), "WR008") if f.objects["rule"] == 40000]


def test_wr020_fix_replaces_the_bad_snat_where_it_stands(seed_lab):
    state = seed_lab("ultimate-nosnat")
    sh(state, "iptables -t nat -A POSTROUTING -o ppp0 -j SNAT --to-source 10.10.149.4")
    assert ping_from_macbook(state).returncode != 0
    assert observe(state, "internet2").sources == {"10.10.149.4"}
    (bad,) = by_id(seed_check(state), "WR020")
    assert bad.fix == ("iptables -t nat -R POSTROUTING 2 -o ppp0 -j MASQUERADE",)
    for command in bad.fix:
        sh(state, command)
    state.run("route", ["conntrack", "-F"], check=False)
    assert ping_from_macbook(state).returncode == 0
    assert "123.150.232.74" in observe(state, "internet2").sources
    nat = sh(state, "iptables -t nat -S POSTROUTING").stdout
    assert "10.10.149.4" not in nat and nat.count("-o ppp0") == 1
    assert not by_id(seed_check(state), "WR020") and not by_id(seed_check(state), "WR019")


# ------------------------------------------------------------------ fw4 + mwan3: an uplink left out of the wan zone

def test_uplink_left_out_of_the_masquerading_zone_fw4_mwan3():
    """OpenWrt fw4 + mwan3 balancing (the real-tools corpus' lab, tests/realtools/test_mwan3_fw4.py):
    wanb in a zone of its own without masquerading. Half the new flows leave eth2 unNATed; the
    finding's fix (in fw4's own srcnat chain) makes every flow leave with its uplink's address."""
    mwan3 = pytest.importorskip("tests.realtools.test_mwan3_fw4")
    from tests.realtools.realtools_lab import ToolLab

    lab = ToolLab(mwan3.TOPOLOGY).up()
    try:
        mwan3.install(lab, "wanb-zone-without-masq")

        def sources():
            lab.clear_sinks()
            for sport in range(45300, 45324):  # 24 new flows, each balanced at p = 1/2
                lab.udp_send("laptop", "8.8.8.8", 53, src=mwan3.LAPTOP, sport=sport)
            return {isp: {a.src for a in lab.arrivals(isp) if a.dst == "8.8.8.8"} for isp in ("isp1", "isp2")}

        assert sources() == {"isp1": {mwan3.WAN_ADDRESS}, "isp2": {mwan3.LAPTOP}}
        found = engine.run(collect_state(lab.ns("router")))
        (uplink,) = [f for f in found if f.id in ("WR019", "WR032") and f.objects.get("dev") == "eth2"]
        assert uplink.severity == "error" and "10.0.2.2" in uplink.message
        assert not by_id(found, "WR022")  # the unNATed entries are what today's rules make for eth2
        assert uplink.fix == ('nft add rule inet fw4 srcnat oifname "eth2" snat ip to 10.0.2.2',)
        for command in uplink.fix:
            lab.sh("router", command)
        lab.run("router", ["conntrack", "-F"], check=False)
        assert sources() == {"isp1": {mwan3.WAN_ADDRESS}, "isp2": {mwan3.WANB_ADDRESS}}
        after = engine.run(collect_state(lab.ns("router")))
        assert not [f for f in after if f.id in ("WR019", "WR032")] and not errors(after)
        # 24 conntrack entries, masqueraded to one uplink or the other: none is stale (WR022)
        assert len(lab.run("router", ["conntrack", "-L", "-p", "udp"], check=False).stdout.splitlines()) >= 24
        assert not by_id(after, "WR022")
    finally:
        lab.down()
