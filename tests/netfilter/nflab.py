"""A throwaway three-namespace lab for the netfilter tests, and the rulesets
shared by the kernel tests and tests/netfilter/fixtures/make_fixtures.py.

    client (c0 192.0.2.2) --- (r0 192.0.2.1) router (r1 198.51.100.1) --- (s0 198.51.100.2) server

The trio is a tracer.lab topology (`topology`), built by tracer.lab.builder
under a fresh prefix (`n` and four hex digits): namespaces <prefix>-client,
<prefix>-router and <prefix>-server, veth pairs created directly inside them,
so nothing touches the root namespace or a real interface. Documentation
prefixes (RFC 5737 / RFC 3849) only, and traffic only between these namespaces.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import time

from tests.lab.lab_helpers import new_prefix
from tracer.lab import builder
from tracer.lab import topology as topo

CLIENT4, ROUTER_IN4, ROUTER_OUT4, SERVER4 = "192.0.2.2", "192.0.2.1", "198.51.100.1", "198.51.100.2"
CLIENT6, ROUTER_IN6, ROUTER_OUT6, SERVER6 = "2001:db8:1::2", "2001:db8:1::1", "2001:db8:2::1", "2001:db8:2::2"


def can_run() -> str | None:
    """None when kernel tests can run here, else the reason to skip."""
    if os.geteuid() != 0:
        return "not root: network namespaces need root"
    for tool in ("ip", "nft"):
        if shutil.which(tool) is None:
            return f"{tool} not installed"
    return None


def topology(ipv6: bool = False) -> topo.Topology:
    """The trio; IPv6 is off unless `ipv6`, and then addressed and routed like IPv4,
    without duplicate address detection (an address is usable at once)."""
    def end(address4: str, address6: str) -> dict:
        return {"addresses": [f"{address4}/24", *([f"{address6}/64"] if ipv6 else [])]}

    def default_via(gateway4: str, gateway6: str) -> list[dict]:
        return [{"to": "default", "via": gateway4}, *([{"to": "default", "via": gateway6}] if ipv6 else [])]

    return topo.from_dict({
        "name": "nflab",
        "sysctl": {f"net.ipv6.conf.{scope}.{knob}": value for scope in ("all", "default")
                   for knob, value in (("disable_ipv6", int(not ipv6)), ("accept_dad", 0))},
        "nodes": {
            "client": {"interfaces": {"c0": end(CLIENT4, CLIENT6)}, "routes": default_via(ROUTER_IN4, ROUTER_IN6)},
            "router": {"forwarding": True, "sysctl": {"net.ipv6.conf.all.forwarding": 1} if ipv6 else {},
                       "interfaces": {"r0": end(ROUTER_IN4, ROUTER_IN6), "r1": end(ROUTER_OUT4, ROUTER_OUT6)}},
            "server": {"interfaces": {"s0": end(SERVER4, SERVER6)}, "routes": default_via(ROUTER_OUT4, ROUTER_OUT6)},
        },
        "links": [{"ends": ["client:c0", "router:r0"]}, {"ends": ["server:s0", "router:r1"]}],
    }, source=__file__)


class Lab:
    def __init__(self, ipv6: bool = False):
        self.prefix = new_prefix("n")
        self.c, self.r, self.s = (builder.namespace(self.prefix, node) for node in ("client", "router", "server"))
        self.ipv6 = ipv6
        self.built = False

    # -- lifecycle
    def up(self) -> Lab:
        self.built = True  # from here on down() removes whatever up() made
        builder.up(topology(self.ipv6), prefix=self.prefix)
        # resolve neighbours both ways before any rule is loaded (IPv6 ND is slow on a first packet)
        self.ex(["ping", "-c1", "-W2", SERVER4], ns=self.c, check=False)
        if self.ipv6:
            self.ex(["ping", "-6", "-c1", "-W2", SERVER6], ns=self.c, check=False)
        # the server counts what arrives and never answers (so only the probe crosses the router)
        self.nft(self.s, """
            table inet sink {
              chain in { type filter hook input priority 0; policy accept;
                meta l4proto { udp, tcp, icmp } counter
              }
              chain out { type filter hook output priority 0; policy drop;
                icmpv6 type { nd-neighbor-solicit, nd-neighbor-advert } accept
              }
            }""")
        return self

    def down(self):
        if self.built:
            builder.down(self.prefix)
            self.built = False

    def __enter__(self):
        try:
            return self.up()
        except BaseException:
            self.down()
            raise

    def __exit__(self, *exc):
        self.down()

    # -- helpers
    def ex(self, argv, ns=None, *, input: str | None = None, check: bool = True) -> str:
        """argv's stdout, run in namespace `ns` (default the router); nothing once the lab is down."""
        if isinstance(argv, str):
            argv = shlex.split(argv)
        if not self.built:
            return ""
        return builder.run_in(ns or self.r, argv, input=input, check=check).stdout

    def nft(self, ns: str, script: str):
        builder.run_in(ns, ["nft", "-f", "-"], input=script)

    def load(self, steps: list):
        """Apply a ruleset (see RULESETS) in the router."""
        for step in steps:
            if isinstance(step, tuple) and step[0] == "nft":
                self.nft(self.r, step[1])
            else:
                self.ex(step)

    def flush_conntrack(self):
        self.ex(["conntrack", "-F"], check=False)

    def send_udp(self, dst: str, dport: int, sport: int, payload: bytes = b"x", ns: str | None = None):
        fam = "AF_INET6" if ":" in dst else "AF_INET"
        code = (f"import socket;s=socket.socket(socket.{fam},socket.SOCK_DGRAM);"
                f"s.bind(('',{sport}));s.sendto({payload!r},({dst!r},{dport}));s.close()")
        self.ex(["python3", "-c", code], ns=ns or self.c)
        time.sleep(0.15)

    def send_syn(self, dst: str, dport: int, sport: int, ns: str | None = None):
        """One TCP SYN (the socket is closed before any retransmission)."""
        fam = "AF_INET6" if ":" in dst else "AF_INET"
        code = (f"import socket,time;s=socket.socket(socket.{fam},socket.SOCK_STREAM);"
                f"s.bind(('',{sport}));s.setblocking(False);s.connect_ex(({dst!r},{dport}));"
                "time.sleep(0.3);s.close()")
        self.ex(["python3", "-c", code], ns=ns or self.c)

    def server_received(self) -> int:
        data = json.loads(self.ex(["nft", "-j", "list", "chain", "inet", "sink", "in"], ns=self.s))
        for o in data["nftables"]:
            r = o.get("rule")
            if r:
                for x in r["expr"]:
                    if "counter" in x:
                        return x["counter"]["packets"]
        return 0

    def conntrack(self) -> list[str]:
        out = self.ex(["conntrack", "-L", "-o", "extended"], check=False)
        return [ln for ln in out.splitlines() if ln.strip()]


# ------------------------------------------------------------------ rulesets
# Each is a list of steps run in the router: a command line, or ("nft", script).

RULESETS: dict[str, list] = {
    # accept in one base chain does not stop the next one; drop ends the hook
    "multi_base": [("nft", """
        table inet first {
          chain fw { type filter hook forward priority -10; policy accept;
            ip saddr 192.0.2.0/24 counter accept
          }
        }
        table ip second {
          chain fw { type filter hook forward priority 0; policy accept;
            udp dport 5001 counter drop
            counter
          }
        }
        table ip third {
          chain fw { type filter hook forward priority 10; policy drop;
            meta l4proto udp udp dport 5000 counter accept
          }
        }""")],
    "jumps": [("nft", """
        table inet j {
          chain fw { type filter hook forward priority 0; policy accept;
            ip saddr 192.0.2.0/24 counter jump a
            counter goto b
            counter drop
          }
          chain a {
            udp dport 5002 counter return
            counter jump c
            counter
          }
          chain b {
            udp dport 5001 counter drop
            counter
          }
          chain c {
            counter
          }
        }""")],
    "marks": [("nft", """
        table inet m {
          map srcmark { type ipv4_addr : mark; flags interval; elements = { 192.0.2.0/25 : 0x15 } }
          chain prer { type filter hook prerouting priority mangle; policy accept;
            meta mark set ip saddr map @srcmark counter
            ct mark set meta mark counter
          }
          chain fw { type filter hook forward priority filter; policy drop;
            meta mark and 0xf == 0x4 counter accept
            meta mark and 0xf != 0x5 counter drop
            ct mark 0x15 counter jump ok
          }
          chain ok {
            iifname "r*" oifname { "r1", "x9" } counter accept
          }
        }""")],
    "nat_chains": [("nft", """
        table ip natA {
          chain prer { type nat hook prerouting priority dstnat; policy accept;
            ip daddr 198.51.100.99 udp dport 7000 counter dnat to 198.51.100.2:5000
          }
          chain postr { type nat hook postrouting priority 90; policy accept;
            ip daddr 203.0.113.0/24 counter snat to 198.51.100.66
            oifname "r1" counter masquerade
          }
        }
        table inet natB {
          chain prer { type nat hook prerouting priority -90; policy accept;
            counter dnat ip to 198.51.100.3
          }
          chain postr { type nat hook postrouting priority srcnat; policy accept;
            counter snat ip to 198.51.100.77
          }
        }""")],
    "iptables_nft": [
        "iptables-nft -t mangle -A PREROUTING -i r0 -m conntrack --ctstate NEW -j MARK --set-mark 0x7/0xff",
        "iptables-nft -t mangle -A FORWARD -p tcp -m tcp --tcp-flags SYN,RST SYN -j TCPMSS --clamp-mss-to-pmtu",
        "iptables-nft -N CHECKS",
        "iptables-nft -A FORWARD -p tcp -m multiport --dports 80,8000:8100 -j CHECKS",
        "iptables-nft -A CHECKS -m mark ! --mark 0x7/0xff -j DROP",
        "iptables-nft -A CHECKS -m iprange --src-range 192.0.2.1-192.0.2.9 -j LOG --log-prefix wr",
        "iptables-nft -A CHECKS -m addrtype --dst-type LOCAL -j DROP",
        "iptables-nft -A CHECKS -j ACCEPT",
        "iptables-nft -A FORWARD -j DROP",
        "iptables-nft -t nat -A POSTROUTING -o r1 -p tcp --dport 8080 -j SNAT --to-source 198.51.100.50",
        "iptables-nft -t nat -A POSTROUTING -o r1 -j MASQUERADE",
    ],
    # legacy first (registered earlier -> runs after nft at the same priority)
    "legacy_and_nft": [
        "iptables-legacy -A FORWARD -s 192.0.2.2 -p udp --dport 5001 -j DROP",
        "iptables-legacy -A FORWARD -s 192.0.2.2 -j ACCEPT",
        ("nft", """
        table inet f {
          chain fw { type filter hook forward priority 0; policy accept;
            ip saddr 192.0.2.2 counter accept
          }
        }"""),
    ],
    "unknown_expr": [("nft", """
        table inet u {
          chain fw { type filter hook forward priority 0; policy accept;
            meta cpu 99 counter drop
            fib saddr . iif oif missing counter drop
            udp dport 5000 counter accept
          }
        }""")],
    "ipv6": [
        "ip6tables-nft -A FORWARD -s 2001:db8:1::/64 -p udp --dport 5001 -j DROP",
        ("nft", """
        table inet v6 {
          chain fw { type filter hook forward priority 10; policy drop;
            ip6 saddr 2001:db8:1::/64 ip6 daddr 2001:db8:2::/64 meta l4proto udp counter accept
          }
        }"""),
    ],
}

RULESETS["postrouting_iif"] = [("nft", """
    table inet p {
      chain po { type filter hook postrouting priority 0; policy accept;
        iifname "r0" oifname "r1" counter
        iif "r0" counter
        iifname "r1" counter
      }
    }""")]

RULESETS["local_out"] = [("nft", """
    table inet lo_t {
      chain outc { type route hook output priority mangle; policy accept;
        udp dport 6000 counter meta mark set 0x9
      }
      chain postr { type filter hook postrouting priority 0; policy accept;
        meta mark 0x9 meta skuid 0 counter
      }
    }
    table ip lo_nat {
      chain outc { type nat hook output priority -100; policy accept;
        udp dport 6000 counter dnat to 198.51.100.2:5000
      }
      chain postr { type nat hook postrouting priority 100; policy accept;
        oifname "r1" counter snat to 198.51.100.1
      }
    }""")]

# Not run with traffic: a broad sample of syntax for the parser/evaluator unit tests.
RULESETS["kitchen_sink"] = [
    "iptables-legacy -t mangle -A PREROUTING -j CONNMARK --restore-mark",
    "iptables-legacy -A INPUT -p icmp --icmp-type echo-request -j ACCEPT",
    ("nft", """
    table inet filt {
      set allowed { type ipv4_addr; flags interval; elements = { 10.0.0.0/8, 192.168.1.1-192.168.1.50 } }
      set ports { type inet_service; elements = { 22, 443 } }
      map mm { type ipv4_addr : mark; elements = { 1.2.3.4 : 0x5 } }
      chain prec { type filter hook prerouting priority raw; policy accept;
        ct state invalid counter
        meta nftrace set 1
      }
      chain fwdc { type filter hook forward priority 0; policy drop;
        ct state established,related accept
        ip saddr @allowed tcp dport { 22, 80-90 } counter accept
        meta mark and 0xff == 0x1 jump subc
        iifname "eth*" oifname != "ppp0" goto subc
        ip daddr 1.2.3.0/24 meta mark set ip daddr map @mm
        tcp flags syn tcp option maxseg size set rt mtu
        ip dscp cs1 drop
        fib daddr type local drop
        ip saddr . tcp dport { 1.1.1.1 . 22 } accept
        icmp type destination-unreachable icmp code frag-needed drop
        ct mark 0x3 ct mark set meta mark
        udp dport 53 reject with icmp type port-unreachable
        tcp dport @ports meta skuid 1000 log prefix "x" counter
        ip daddr vmap { 9.9.9.9 : drop, 8.8.8.8 : jump subc }
        tcp flags & (syn|rst) == syn tcp option maxseg size set 1400
        ip6 saddr ::1 ip6 daddr fe80::/10 accept
        meta length 100-200 th dport != 7 accept
        limit rate 10/second accept
      }
      chain subc { counter; ip protocol tcp return; notrack; }
    }
    table ip nat {
      chain postc { type nat hook postrouting priority srcnat; oifname "ppp0" masquerade;
        oif "lo" meta l4proto tcp snat to 1.2.3.4:1000-2000; ip saddr 10.0.0.0/8 snat to 5.5.5.5; }
      chain prec { type nat hook prerouting priority dstnat; tcp dport 80 dnat to 10.0.0.2:8080;
        tcp dport 81 redirect to :3128; }
    }"""),
    "iptables-nft -t nat -A POSTROUTING -o ppp+ -s 10.0.0.0/8 -j MASQUERADE",
    "iptables-nft -t nat -A PREROUTING -p tcp --dport 8080 -j DNAT --to-destination 10.1.1.1:80",
    "iptables-nft -t mangle -A FORWARD -o ppp0 -p tcp --tcp-flags SYN,RST SYN -j TCPMSS --clamp-mss-to-pmtu",
    "iptables-nft -t mangle -A PREROUTING -j CONNMARK --restore-mark",
    "iptables-nft -t mangle -A POSTROUTING -m mark --mark 0x2 -j CONNMARK --save-mark",
    "iptables-nft -N MYCH",
    "iptables-nft -A FORWARD -p udp -m multiport --dports 53,100:200 -j MYCH",
    "iptables-nft -A FORWARD -p icmp --icmp-type fragmentation-needed -j DROP",
    "iptables-nft -A MYCH -m mark --mark 0x1/0xf -j RETURN",
    "iptables-nft -A MYCH -m addrtype --dst-type LOCAL -j DROP",
    "iptables-nft -A MYCH -m iprange --src-range 10.0.0.1-10.0.0.9 -j LOG --log-prefix hi",
    "iptables-nft -A MYCH ! -s 1.2.3.4 -p udp --dport 22 -m state --state NEW -j REJECT",
    "iptables-nft -N GOTOCH",
    "iptables-nft -A MYCH -g GOTOCH",
    "iptables-nft -I MYCH 5 -i eth+ -j GOTOCH",
    "iptables-nft -A GOTOCH -m comment --comment 'last stop' -j MARK --set-xmark 0x10/0x30",
]

