"""Rulesets as the tools that manage routers write them, mapped onto the
netfilter lab (tests/netfilter/nflab.py: r0 faces the client, r1 the server).

Regular (user-defined) chains reached from nat base chains, as Docker,
kube-proxy, Tailscale, the CNI bridge plugin and OpenWrt's fw4 write them
(from their public sources); `ipt` is "iptables-nft" or "iptables-legacy".
Each builder returns lab steps (command lines, or ("nft", script)).

    sudo .venv/bin/python -m tests.netfilter.nftools    # regenerates fixtures/tools_*.json
"""

from __future__ import annotations

import json
import pathlib
import re
import sys

from tests.netfilter import nflab
from tests.netfilter.nflab import CLIENT4, ROUTER_OUT4, SERVER4
from tracer.collect.netfilter import collect_netfilter


def docker_iptables(ipt: str, bridge: str, subnet: str, container: str) -> list:
    """Docker ≥ 28 (libnetwork bridge driver, iptables): a published port
    host:8080 -> container:80 on a network whose bridge is `bridge`."""
    return [
        "ipset create docker-ext-bridges-v4 hash:net",
        f"ipset add docker-ext-bridges-v4 {subnet}",
        f"{ipt} -t nat -N DOCKER",
        f"{ipt} -t nat -A PREROUTING -m addrtype --dst-type LOCAL -j DOCKER",
        f"{ipt} -t nat -A OUTPUT ! -d 127.0.0.0/8 -m addrtype --dst-type LOCAL -j DOCKER",
        f"{ipt} -t nat -A POSTROUTING -s {subnet} ! -o {bridge} -j MASQUERADE",
        f"{ipt} -t nat -A DOCKER -i {bridge} -j RETURN",
        f"{ipt} -t nat -A DOCKER ! -i {bridge} -p tcp -m tcp --dport 8080 -j DNAT --to-destination {container}:80",
        f"{ipt} -N DOCKER",
        f"{ipt} -N DOCKER-ISOLATION-STAGE-1",
        f"{ipt} -N DOCKER-ISOLATION-STAGE-2",
        f"{ipt} -N DOCKER-USER",
        f"{ipt} -A FORWARD -j DOCKER-USER",
        f"{ipt} -A FORWARD -m set --match-set docker-ext-bridges-v4 dst -m conntrack --ctstate RELATED,ESTABLISHED"
        " -j ACCEPT",
        f"{ipt} -A FORWARD -j DOCKER-ISOLATION-STAGE-1",
        f"{ipt} -A FORWARD -m set --match-set docker-ext-bridges-v4 dst -j DOCKER",
        f"{ipt} -A FORWARD -i {bridge} ! -o {bridge} -j ACCEPT",
        f"{ipt} -A FORWARD -i {bridge} -o {bridge} -j ACCEPT",
        f"{ipt} -A DOCKER -d {container}/32 ! -i {bridge} -o {bridge} -p tcp -m tcp --dport 80 -j ACCEPT",
        f"{ipt} -A DOCKER ! -i {bridge} -o {bridge} -j DROP",
        f"{ipt} -A DOCKER-ISOLATION-STAGE-1 -i {bridge} ! -o {bridge} -j DOCKER-ISOLATION-STAGE-2",
        f"{ipt} -A DOCKER-ISOLATION-STAGE-2 -o {bridge} -j DROP",
        f"{ipt} -A DOCKER-USER -j RETURN",
    ]


def docker_nft(bridge: str, subnet: str, container: str) -> list:
    """Docker's nftables backend (table ip docker-bridges): verdict maps jump to
    per-bridge regular chains; nat-prerouting-and-output holds the DNAT."""
    return [("nft", f"""
    table ip docker-bridges {{
      map filter-forward-in-jumps {{ type ifname : verdict;
        elements = {{ "docker0" : jump filter-forward-in__docker0, "{bridge}" : jump filter-forward-in__{bridge} }} }}
      map filter-forward-out-jumps {{ type ifname : verdict;
        elements = {{ "docker0" : jump filter-forward-out__docker0, "{bridge}" : jump filter-forward-out__{bridge} }} }}
      map nat-postrouting-in-jumps {{ type ifname : verdict;
        elements = {{ "docker0" : jump nat-postrouting-in__docker0, "{bridge}" : jump nat-postrouting-in__{bridge} }} }}
      map nat-postrouting-out-jumps {{ type ifname : verdict;
        elements = {{ "docker0" : jump nat-postrouting-out__docker0,
                      "{bridge}" : jump nat-postrouting-out__{bridge} }} }}
      chain filter-FORWARD {{ type filter hook forward priority filter; policy accept;
        oifname vmap @filter-forward-in-jumps
        iifname vmap @filter-forward-out-jumps
      }}
      chain nat-OUTPUT {{ type nat hook output priority -100; policy accept;
        ip daddr != 127.0.0.0/8 fib daddr type local counter jump nat-prerouting-and-output
      }}
      chain nat-POSTROUTING {{ type nat hook postrouting priority srcnat; policy accept;
        iifname vmap @nat-postrouting-out-jumps
        oifname vmap @nat-postrouting-in-jumps
      }}
      chain nat-PREROUTING {{ type nat hook prerouting priority dstnat; policy accept;
        fib daddr type local counter jump nat-prerouting-and-output
      }}
      chain nat-prerouting-and-output {{
        iifname != "{bridge}" tcp dport 8080 counter dnat to {container}:80 comment "DNAT"
      }}
      chain raw-PREROUTING {{ type filter hook prerouting priority raw; policy accept;
        ip daddr {container} iifname != "{bridge}" counter drop comment "DROP DIRECT ACCESS"
      }}
      chain filter-forward-in__docker0 {{
        ct state established,related counter accept
        iifname "docker0" counter accept comment "ICC"
        counter drop comment "UNPUBLISHED PORT DROP"
      }}
      chain filter-forward-out__docker0 {{
        ct state established,related counter accept
        counter accept comment "OUTGOING"
      }}
      chain nat-postrouting-in__docker0 {{
      }}
      chain nat-postrouting-out__docker0 {{
        oifname != "docker0" ip saddr 172.17.0.0/16 counter masquerade comment "MASQUERADE"
      }}
      chain filter-forward-in__{bridge} {{
        ct state established,related counter accept
        iifname "{bridge}" counter accept comment "ICC"
        ip daddr {container} tcp dport 80 counter accept
        counter drop comment "UNPUBLISHED PORT DROP"
      }}
      chain filter-forward-out__{bridge} {{
        ct state established,related counter accept
        counter accept comment "OUTGOING"
      }}
      chain nat-postrouting-in__{bridge} {{
      }}
      chain nat-postrouting-out__{bridge} {{
        oifname != "{bridge}" ip saddr {subnet} counter masquerade comment "MASQUERADE"
      }}
    }}""")]


KUBE_SERVICE, KUBE_ENDPOINT = "203.0.113.10", SERVER4


def kube_proxy(ipt: str, endpoints: tuple[str, ...] = (KUBE_ENDPOINT,)) -> list:
    """kube-proxy, iptables mode (pkg/proxy/iptables/proxier.go): service
    203.0.113.10:80/tcp -> endpoints:5000, cluster CIDR 198.51.100.0/24."""
    svc, comment = "KUBE-SVC-ABCDEFGHIJKLMNOP", '-m comment --comment "default/web:http cluster IP"'
    steps = [f"{ipt} -t nat -N {c}" for c in ("KUBE-SERVICES", "KUBE-POSTROUTING", "KUBE-MARK-MASQ",
                                             "KUBE-NODEPORTS", svc)]
    steps += [
        f'{ipt} -t nat -A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES',
        f'{ipt} -t nat -A OUTPUT -m comment --comment "kubernetes service portals" -j KUBE-SERVICES',
        f'{ipt} -t nat -A POSTROUTING -m comment --comment "kubernetes postrouting rules" -j KUBE-POSTROUTING',
        f"{ipt} -t nat -A KUBE-MARK-MASQ -j MARK --or-mark 0x4000",
        f"{ipt} -t nat -A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN",
        f"{ipt} -t nat -A KUBE-POSTROUTING -j MARK --xor-mark 0x4000",
        f'{ipt} -t nat -A KUBE-POSTROUTING -m comment --comment "kubernetes service traffic requiring SNAT"'
        " -j MASQUERADE --random-fully",
        f"{ipt} -t nat -A KUBE-SERVICES -d {KUBE_SERVICE}/32 -p tcp {comment} -m tcp --dport 80 -j {svc}",
        f'{ipt} -t nat -A KUBE-SERVICES -m comment --comment "kubernetes service nodeports; NOTE: this must be'
        ' the last rule in this chain" -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS',
        f"{ipt} -t nat -A {svc} ! -s 198.51.100.0/24 -d {KUBE_SERVICE}/32 -p tcp {comment} -m tcp --dport 80"
        " -j KUBE-MARK-MASQ",
    ]
    for i, ep in enumerate(endpoints):
        sep = f"KUBE-SEP-{i:016d}"
        left = len(endpoints) - i
        pick = f" -m statistic --mode random --probability {1 / left:.11f}" if left > 1 else ""
        steps += [
            f"{ipt} -t nat -N {sep}",
            f'{ipt} -t nat -A {svc} -m comment --comment "default/web:http -> {ep}:5000"{pick} -j {sep}',
            f'{ipt} -t nat -A {sep} -s {ep}/32 -m comment --comment "default/web:http" -j KUBE-MARK-MASQ',
            f'{ipt} -t nat -A {sep} -p tcp -m comment --comment "default/web:http" -m tcp'
            f" -j DNAT --to-destination {ep}:5000",
        ]
    steps += [
        f"{ipt} -N KUBE-FORWARD",
        f'{ipt} -A FORWARD -m comment --comment "kubernetes forwarding rules" -j KUBE-FORWARD',
        f"{ipt} -A KUBE-FORWARD -m conntrack --ctstate INVALID -j DROP",
        f'{ipt} -A KUBE-FORWARD -m comment --comment "kubernetes forwarding rules" -m mark --mark 0x4000/0x4000'
        " -j ACCEPT",
    ]
    return steps


def tailscale(ipt: str, tailscale0: str = "r0") -> list:
    """Tailscale's linuxfw iptables runner: ts-forward marks packets from
    tailscale0, ts-postrouting masquerades the marked ones."""
    return [
        f"{ipt} -N ts-forward",
        f"{ipt} -A FORWARD -j ts-forward",
        f"{ipt} -A ts-forward -i {tailscale0} -j MARK --set-xmark 0x40000/0xff0000",
        f"{ipt} -A ts-forward -m mark --mark 0x40000/0xff0000 -j ACCEPT",
        f"{ipt} -A ts-forward -s 100.64.0.0/10 -o {tailscale0} -j DROP",
        f"{ipt} -A ts-forward -o {tailscale0} -j ACCEPT",
        f"{ipt} -t nat -N ts-postrouting",
        f"{ipt} -t nat -A POSTROUTING -j ts-postrouting",
        f"{ipt} -t nat -A ts-postrouting -m mark --mark 0x40000/0xff0000 -j MASQUERADE",
    ]


def cni_masquerade(ipt: str, container: str = CLIENT4, subnet: str = "192.0.2.0/24") -> list:
    """The CNI bridge plugin's ipMasq chain (plugins/pkg/ip/ipmasq_linux.go)."""
    chain, comment = "CNI-4f0b2a9e6d1c3b5a7e9f0d12", "-m comment --comment 'name: \"bridge\" id: \"abc\"'"
    return [
        f"{ipt} -t nat -N {chain}",
        f"{ipt} -t nat -A POSTROUTING -s {container}/32 {comment} -j {chain}",
        f"{ipt} -t nat -A {chain} -d {subnet} {comment} -j ACCEPT",
        f"{ipt} -t nat -A {chain} ! -d 224.0.0.0/4 {comment} -j MASQUERADE",
    ]


def fw4(wan: str, lan: str, to_wan: str = "jump") -> list:
    """OpenWrt fw4 (templates/ruleset.uc): in dstnat_wan a port forward
    wan:8022 -> server:22 and a redirect of DNS to the router's port 5353;
    masquerading in srcnat_wan (reached by `to_wan`: jump or goto); a NAT
    reflection rule in srcnat_lan."""
    return [("nft", f"""
    table inet fw4 {{
      chain dstnat {{ type nat hook prerouting priority dstnat; policy accept;
        iifname "{wan}" jump dstnat_wan comment "!fw4: Handle wan IPv4/IPv6 dstnat traffic"
      }}
      chain srcnat {{ type nat hook postrouting priority srcnat; policy accept;
        oifname "{wan}" {to_wan} srcnat_wan comment "!fw4: Handle wan IPv4/IPv6 srcnat traffic"
        oifname "{lan}" jump srcnat_lan comment "!fw4: Handle lan IPv4/IPv6 srcnat traffic"
      }}
      chain dstnat_wan {{
        meta nfproto ipv4 tcp dport 8022 counter dnat {SERVER4}:22 comment "!fw4: ssh"
        meta nfproto ipv4 udp dport 53 counter redirect to 5353 comment "!fw4: DNS to the router"
      }}
      chain srcnat_wan {{
        meta nfproto ipv4 masquerade comment "!fw4: Masquerade IPv4 wan traffic"
      }}
      chain srcnat_lan {{
        ip saddr {{ 198.51.100.0/24 }} ip daddr {SERVER4} tcp dport 22 snat {ROUTER_OUT4}
          comment "!fw4: ssh (reflection)"
      }}
      chain mangle_output {{ type route hook output priority mangle; policy accept;
      }}
    }}""")]


# Collected once into fixtures/<name>.json for the pure tests.
FIXTURE_RULESETS = {
    "tools_docker_iptables": docker_iptables("iptables-legacy", "r1", "198.51.100.0/24", SERVER4),
    "tools_docker_nft": docker_nft("r1", "198.51.100.0/24", SERVER4),
    "tools_kube_proxy": kube_proxy("iptables-nft", (KUBE_ENDPOINT, "198.51.100.3")),
    "tools_fw4": fw4("r0", "r1", to_wan="goto"),
}
_UNSTABLE = re.compile(r"^# (Generated|Completed) .*\n|(?<= initval )0x[0-9a-f]+", re.M)


def make_fixture(name: str) -> pathlib.Path:
    with nflab.Lab() as lab:
        lab.load(FIXTURE_RULESETS[name])
        raw = collect_netfilter(lab.r)
    raw["netns"] = "fixture"
    for entry in (*raw["iptables_nft"].values(), *raw["iptables_legacy"].values(), raw["ipset"]):
        if entry.get("save"):
            entry["save"] = _UNSTABLE.sub(lambda m: "0x0" if m.group(0).startswith("0x") else "", entry["save"])
    path = pathlib.Path(__file__).resolve().parent / "fixtures" / f"{name}.json"
    path.write_text(json.dumps(raw, indent=1, sort_keys=True) + "\n")
    return path


if __name__ == "__main__":
    why = nflab.can_run()
    if why:
        sys.exit(f"nftools: {why}")
    for fixture in sys.argv[1:] or list(FIXTURE_RULESETS):
        print(make_fixture(fixture))
