"""A small router lab for probe tests: a client, a router with two uplinks, two "internets".

    client 10.0.1.2 ── r-lan 10.0.1.1 [router] r-wan1 10.0.2.1 ── wan1 10.0.2.2 (+ 198.51.100.7)
                                              r-wan2 10.0.3.1 ── wan2 10.0.3.2 (+ 198.51.100.7)

Both internets hold 198.51.100.7 (the far end every flow is sent to) and record, in nft sets,
what arrives for it: (source, destination port) for TCP/UDP, the source for pings. The client
records what arrives for it too (DNAT cases). Real traffic is sent with the real tools from the
client (or an internet), and the router's state is collected for the probe before any traffic, so
that no conntrack entry of the real traffic is part of it.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
from dataclasses import dataclass

from tracer import netns

FAR = "198.51.100.7"
FAR6 = "2001:db8:ff::7"
NODES = ("router", "client", "wan1", "wan2")
OBSERVER = """
table ip wrseen {
    set ports { type ipv4_addr . ipv4_addr . inet_service; }
    set pings { type ipv4_addr . ipv4_addr; }
    chain arriving {
        type filter hook prerouting priority -300; policy accept;
        ip daddr != 10.0.0.0/8 ip daddr != 198.51.100.7 return
        meta l4proto { tcp, udp } add @ports { ip saddr . ip daddr . th dport }
        icmp type echo-request add @pings { ip saddr . ip daddr }
    }
}
table ip6 wrseen {
    set ports { type ipv6_addr . ipv6_addr . inet_service; }
    set pings { type ipv6_addr . ipv6_addr; }
    chain arriving {
        type filter hook prerouting priority -300; policy accept;
        ip6 daddr != 2001:db8::/32 return
        meta l4proto { tcp, udp } add @ports { ip6 saddr . ip6 daddr . th dport }
        icmpv6 type echo-request add @pings { ip6 saddr . ip6 daddr }
    }
}
"""


@dataclass(frozen=True)
class Seen:
    node: str
    src: str
    dst: str
    dport: int | None


class MiniLab:
    def __init__(self):
        self.prefix = f"wrpl{secrets.token_hex(2)}{os.getpid() % 1000}"

    def ns(self, node: str) -> str:
        return f"{self.prefix}-{node}"

    def run(self, node: str, command: str, *, check: bool = True) -> subprocess.CompletedProcess:
        return subprocess.run(["ip", "netns", "exec", self.ns(node), "sh", "-c", command], capture_output=True,
                              text=True, check=check, timeout=30)

    def up(self) -> MiniLab:
        for node in NODES:
            subprocess.run(["ip", "netns", "add", self.ns(node)], check=True)
            # link-local addresses usable at once (a router collected while DAD runs has none yet)
            self.run(node, "sysctl -qw net.ipv6.conf.default.accept_dad=0")
        links = [("r-lan", "client", "10.0.1.1", "10.0.1.2"), ("r-wan1", "wan1", "10.0.2.1", "10.0.2.2"),
                 ("r-wan2", "wan2", "10.0.3.1", "10.0.3.2")]
        for rdev, node, raddr, addr in links:
            subprocess.run(["ip", "-n", self.ns("router"), "link", "add", rdev, "type", "veth", "peer", "name",
                            "eth0", "netns", self.ns(node)], check=True)
            net6 = f"2001:db8:{raddr.split('.')[2]}::"
            self.run("router", f"ip addr add {raddr}/24 dev {rdev} && ip addr add {net6}1/64 dev {rdev} nodad && "
                               f"ip link set {rdev} up")
            self.run(node, f"ip addr add {addr}/24 dev eth0 && ip addr add {net6}2/64 dev eth0 nodad && "
                           f"ip link set eth0 up && ip link set lo up && ip route add default via {raddr} && "
                           f"ip -6 route add default via {net6}1")
        for node in ("wan1", "wan2"):
            self.run(node, f"ip addr add {FAR}/32 dev lo && ip addr add {FAR6}/128 dev lo")
        self.run("router", "ip link set lo up && sysctl -qw net.ipv4.ip_forward=1 net.ipv6.conf.all.forwarding=1 && "
                           "ip route add default via 10.0.2.2 dev r-wan1 && "
                           "ip route add default via 10.0.3.2 dev r-wan2 table 102 && "
                           "ip -6 route add default via 2001:db8:2::2 dev r-wan1")
        for node in ("client", "wan1", "wan2"):
            self.run(node, "nft -f -  <<'EOF'\n" + OBSERVER + "\nEOF")
        return self

    def down(self) -> None:
        for node in NODES:
            netns.delete(self.ns(node))

    def configure(self, *commands: str) -> None:
        for command in commands:
            self.run("router", command)

    def seen(self) -> list[Seen]:
        """What arrived at the internets and the client for the far end (or for the client)."""
        found = []
        for node in ("client", "wan1", "wan2"):
            doc = json.loads(self.run(node, "nft -j list table ip wrseen").stdout)["nftables"]
            doc += json.loads(self.run(node, "nft -j list table ip6 wrseen").stdout)["nftables"]
            for item in doc:
                if "set" not in item:
                    continue
                for elem in item["set"].get("elem", []):
                    values = elem["concat"]
                    dport = values[2] if len(values) > 2 else None
                    found.append(Seen(node, values[0], values[1], dport))
        return found

    def forget(self) -> None:
        for node in ("client", "wan1", "wan2"):
            self.run(node, "nft flush set ip wrseen ports && nft flush set ip wrseen pings && "
                           "nft flush set ip6 wrseen ports && nft flush set ip6 wrseen pings")
        self.run("router", "conntrack -F", check=False)

    # real traffic, from a node: a ping, a UDP datagram, a TCP SYN
    def send(self, node: str, proto: str, dst: str = FAR, dport: int | None = None, *, uid: int | None = None,
             mark: int | None = None) -> None:
        family = 10 if ":" in dst else 2
        if proto == "icmp":
            code = f"import subprocess; subprocess.run(['ping', '-n', '-c1', '-W1', '{dst}'])"
        elif proto == "udp":
            code = f"import socket; s = socket.socket({family}, 2); s.sendto(b'x', ('{dst}', {dport}))"
        else:
            code = (f"import socket; s = socket.socket({family}); s.settimeout(0.5)\n"
                    f"try: s.connect(('{dst}', {dport}))\nexcept OSError: pass")
        if mark is not None:
            code = code.replace("s = socket.socket(2, 2);", f"s = socket.socket(2, 2); s.setsockopt(1, 36, {mark});")
        prefix = f"setpriv --reuid={uid} --regid={uid} --clear-groups " if uid is not None else ""
        self.run(node, f"{prefix}/usr/bin/python3 -c \"{code}\"", check=False)
