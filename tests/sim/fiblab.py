"""Random routing configurations built in a throwaway network namespace.

Each `Config` is a set of sysctls and a list of `ip` commands drawn from a
seeded random.Random. `Config.topology` turns one into a tracer.lab topology:
one node, `router`, whose interfaces (three veth pairs with both ends inside
it, a bridge) and sysctls are topology data, and whose addresses, routes and
rules are its variant's `ip -force -batch` script. They stay `ip` commands
because the topology format has no key for most of them (blackhole, multipath,
tos and local routes, ip rules, interface groups, a link set down after the
routes) and because the kernel's rejections belong to the test: a variant
records a failing command where the base network would abort the build.
`NamespaceLab` builds it with tracer.lab.builder (namespace `<prefix>-router`,
nothing in the root namespace) and removes it. Flows are drawn from the same
small address universe, so rules, routes and addresses overlap often.
"""

from __future__ import annotations

import os
import random
import shutil
from dataclasses import dataclass, field

from tests.lab.lab_helpers import new_prefix
from tracer.flow import RouteQuery
from tracer.lab import builder
from tracer.lab import topology as topo
from tracer.vocab import AF_INET

NODE = "router"
TABLES = (100, 101, 102, 103)  # 103 never gets routes: rules pointing at it fall through
VETH_PAIRS = (("va0", "vb0"), ("va1", "vb1"), ("va2", "vb2"))
BRIDGE = "br0"
VETH_ENDS = tuple(end for pair in VETH_PAIRS for end in pair)
IFNAMES = (*VETH_ENDS, BRIDGE)
# Not `forwarding`: conf.all.forwarding is net.ipv4.ip_forward, drawn on its own;
# writing either sets all, default and every device.
CONF_KEYS = ("rp_filter", "src_valid_mark", "accept_local", "route_localnet", "ignore_routes_with_linkdown")


def can_run() -> str | None:
    if os.geteuid() != 0:
        return "not root: network namespaces need root"
    if shutil.which("ip") is None:
        return "ip (iproute2) not installed"
    return None


@dataclass
class Config:
    seed: int
    links: list[str] = field(default_factory=list)       # ip addr / ip link commands on the interfaces
    sysctls: dict[str, str] = field(default_factory=dict)  # sysctl name → value
    routes: list[str] = field(default_factory=list)
    after: list[str] = field(default_factory=list)        # links set down after the routes
    rules: list[str] = field(default_factory=list)
    subnets: list[tuple[str, str, int]] = field(default_factory=list)  # (ifname, address, prefixlen)

    def topology(self) -> str:
        """This configuration as a topology file (what NamespaceLab.build builds)."""
        lines = [f"# tests/sim/fiblab.py, config seed {self.seed}. Rebuild: why-route lab up THIS-FILE",
                 'name = "fiblab"', "", f"[nodes.{NODE}.sysctl]"]
        lines += [f'"{key}" = "{value}"' for key, value in self.sysctls.items()]
        for name in VETH_ENDS:
            lines += ["", f"[nodes.{NODE}.interfaces.{name}]"]
        lines += ["", f"[nodes.{NODE}.interfaces.{BRIDGE}]", 'kind = "bridge"']
        for a, b in VETH_PAIRS:
            lines += ["", "[[links]]", f'ends = ["{NODE}:{a}", "{NODE}:{b}"]']
        batch = "\n".join(self.links + self.routes + self.after + self.rules)
        lines += ["", "[variants.random.run]", f"{NODE} = ['''", f"ip -force -batch - <<'EOF'\n{batch}\nEOF", "''']"]
        return "\n".join(lines) + "\n"


def _host(rng: random.Random, net: str, plen: int) -> str:
    a, b, c, _ = (int(x) for x in net.split("."))
    if plen >= 24:
        return f"{a}.{b}.{c}.{rng.randint(1, 254)}"
    return f"{a}.{b}.{rng.randint(0, 3)}.{rng.randint(1, 254)}"


NETS = [f"10.{a}.{b}.0" for a in range(3) for b in range(3)] + ["192.168.1.0", "172.16.0.0"]


def random_prefix(rng: random.Random) -> str:
    plen = rng.choice((0, 8, 12, 16, 20, 24, 24, 24, 28, 32))
    net = rng.choice(NETS)
    if plen == 0:
        return "default"
    addr = _host(rng, net, 24) if plen == 32 else net
    a, b, c, d = (int(x) for x in addr.split("."))
    value = (a << 24 | b << 16 | c << 8 | d) & ((0xFFFFFFFF << (32 - plen)) & 0xFFFFFFFF)
    return f"{value >> 24}.{value >> 16 & 255}.{value >> 8 & 255}.{value & 255}/{plen}"


def random_config(seed: int, with_rules: bool = True) -> Config:
    rng = random.Random(seed)
    cfg = Config(seed=seed)
    for key in ("all", "default"):
        for knob in CONF_KEYS:
            cfg.sysctls[f"net.ipv4.conf.{key}.{knob}"] = "0"
    cfg.sysctls["net.ipv4.conf.all.rp_filter"] = str(rng.choice((0, 0, 1, 2)))
    cfg.sysctls["net.ipv4.conf.all.src_valid_mark"] = str(rng.choice((0, 0, 1)))
    cfg.sysctls["net.ipv4.conf.all.accept_local"] = str(rng.choice((0, 0, 0, 1)))
    cfg.sysctls["net.ipv4.conf.all.ignore_routes_with_linkdown"] = str(rng.choice((0, 1)))
    used_nets = rng.sample(NETS, 7)
    for name, net in zip(IFNAMES, used_nets, strict=True):
        plen = rng.choice((16, 24, 24, 24))
        addr = _host(rng, net, 24)
        cfg.links.append(f"addr add {addr}/{plen} dev {name}")
        cfg.subnets.append((name, addr, plen))
        if rng.random() < 0.3:
            extra = _host(rng, rng.choice(NETS), 24)
            cfg.links.append(f"addr add {extra}/{rng.choice((24, 32))} dev {name}")
            cfg.subnets.append((name, extra, 24))
        if rng.random() < 0.2:
            cfg.links.append(f"link set {name} group {rng.choice((5, 6))}")
    cfg.sysctls["net.ipv4.ip_forward"] = str(rng.choice((1, 1, 1, 0)))
    for name in IFNAMES:
        conf = f"net.ipv4.conf.{name}"
        cfg.sysctls[f"{conf}.forwarding"] = str(rng.choice((1, 1, 1, 0)))
        cfg.sysctls[f"{conf}.rp_filter"] = str(rng.choice((0, 0, 1, 2)))
        if rng.random() < 0.2:
            cfg.sysctls[f"{conf}.src_valid_mark"] = "1"
        if rng.random() < 0.15:
            cfg.sysctls[f"{conf}.accept_local"] = "1"
        if rng.random() < 0.1:
            cfg.sysctls[f"{conf}.route_localnet"] = "1"
        if rng.random() < 0.2:
            cfg.sysctls[f"{conf}.ignore_routes_with_linkdown"] = "1"

    def nexthop() -> str:
        name, addr, plen = rng.choice(cfg.subnets)
        if rng.random() < 0.3:
            return f"dev {name}"
        return f"via {_host(rng, addr, max(plen, 24))} dev {name}"

    local_addrs = [addr for _n, addr, _p in cfg.subnets]
    for _ in range(rng.randint(15, 35)):
        table = rng.choice(("main", "main", "100", "101", "102", "253" if rng.random() < 0.2 else "main"))
        prefix = random_prefix(rng)
        kind = rng.choices(("unicast", "multipath", "blackhole", "unreachable", "prohibit", "throw",
                            "local", "broadcast"), (50, 8, 5, 5, 5, 8, 3, 2))[0]
        opts = []
        if rng.random() < 0.3:
            opts.append(f"metric {rng.choice((5, 10, 100))}")
        if rng.random() < 0.1:
            opts.append(f"tos {rng.choice(('0x10', '0x08', '0x04'))}")
        head = f"{prefix} table {table} {' '.join(opts)}"
        if kind == "unicast":
            body = f"{head} {nexthop()}"
            if rng.random() < 0.2:
                body += f" src {rng.choice(local_addrs)}"
        elif kind == "multipath":
            body = f"{head} nexthop {nexthop()} nexthop {nexthop()}"
        elif kind in ("local", "broadcast"):
            body = f"{kind} {head} dev {rng.choice(IFNAMES)}"
        else:
            body = f"{kind} {head}"
        cfg.routes.append(f"route add {body}")
    # A nexthop's gateway scope is fixed when its route is added: local and
    # broadcast routes go first so that the snapshot shows what that check saw.
    cfg.routes.sort(key=lambda c: not c.startswith(("route add local", "route add broadcast")))
    for name in rng.sample(IFNAMES, rng.choice((0, 1, 1, 2))):
        cfg.after.append(f"link set {name} down")
    if with_rules:
        cfg.rules = _random_rules(rng, cfg)
    return cfg


def _random_rules(rng: random.Random, cfg: Config) -> list[str]:
    rules = []
    prios = sorted(rng.sample(range(100, 32000, 50), rng.randint(3, 14)))
    prios += rng.sample(prios, min(2, len(prios)))  # some shared priorities
    marks = (0x1, 0x2, 0x10, 0x100)
    for prio in prios:
        sel = []
        if rng.random() < 0.15:
            sel.append("not")
        if rng.random() < 0.4:
            sel.append(f"from {random_prefix(rng).replace('default', '0.0.0.0/0')}")
        if rng.random() < 0.3:
            sel.append(f"to {random_prefix(rng).replace('default', '0.0.0.0/0')}")
        if rng.random() < 0.2:
            sel.append(f"iif {rng.choice(IFNAMES + ('lo', 'ghost0'))}")
        if rng.random() < 0.15:
            sel.append(f"oif {rng.choice(IFNAMES + ('ghost1',))}")
        if rng.random() < 0.2:
            sel.append(f"fwmark {rng.choice(marks):#x}" + rng.choice(("", "/0xff", "/0x10")))
        if rng.random() < 0.1:
            sel.append(f"tos {rng.choice(('0x10', '0x08'))}")
        if rng.random() < 0.15:
            sel.append(f"ipproto {rng.choice(('tcp', 'udp', 'icmp'))}")
        if rng.random() < 0.1:
            lo = rng.choice((22, 53, 80, 1000))
            sel.append(f"{rng.choice(('sport', 'dport'))} {lo}-{lo + rng.choice((0, 10, 1000))}")
        if rng.random() < 0.1:
            lo = rng.choice((0, 1000))
            sel.append(f"uidrange {lo}-{lo + rng.choice((0, 500))}")
        action = rng.choices(("lookup", "goto", "nop", "blackhole", "unreachable", "prohibit"),
                             (70, 10, 4, 4, 4, 4))[0]
        if action == "lookup":
            tail = f"lookup {rng.choice(('100', '101', '102', '103', 'main', 'local', '253'))}"
            if rng.random() < 0.2:
                tail += f" suppress_prefixlength {rng.choice((0, 8, 16, 24))}"
            elif rng.random() < 0.1:
                tail += f" suppress_ifgroup {rng.choice((5, 6))}"
        elif action == "goto":
            later = [p for p in prios if p > prio] + [prio + 7]  # +7: usually a missing target
            tail = f"goto {rng.choice(later)}"
        else:
            tail = action
        rules.append(f"rule add pref {prio} {' '.join(sel)} {tail}")
    return rules


def random_flow(rng: random.Random, cfg: Config, ifnames: list[str]) -> RouteQuery:
    addrs = [a for _n, a, _p in cfg.subnets]

    def address() -> str:
        roll = rng.random()
        if roll < 0.3:
            return rng.choice(addrs)
        if roll < 0.85:
            return _host(rng, rng.choice(NETS), 24)
        return rng.choice(("127.0.0.1", "8.8.8.8", "255.255.255.255", "0.0.0.0", "10.0.0.255",
                           "127.0.0.9", "224.0.0.1", "10.1.2.255"))

    proto = rng.choice((0, 0, 1, 6, 17))
    sport = rng.choice((22, 53, 80, 1005, 40000)) if proto in (6, 17) else None
    dport = rng.choice((22, 53, 80, 1005, 40000)) if proto in (6, 17) else None
    mark = rng.choice((0, 0, 0x1, 0x2, 0x10, 0x100, 0x1ff))
    tos = rng.choice((0, 0, 0, 0x10, 0x08, 0x04, 0x14))
    if rng.random() < 0.5:
        return RouteQuery(family=AF_INET, dst=address(), src=address(), iif=rng.choice(ifnames),
                        mark=mark, tos=tos, proto=proto, sport=sport, dport=dport)
    src = rng.choice(addrs) if rng.random() < 0.25 else (address() if rng.random() < 0.1 else None)
    oif = rng.choice(ifnames) if rng.random() < 0.2 else None
    uid = rng.choice((None, None, 0, 1000, 1200, 4000))
    dst = address()
    if dst == "0.0.0.0":
        dst = "8.8.4.4"  # RTA_DST 0 is "no destination" to inet_rtm_getroute
    return RouteQuery(family=AF_INET, dst=dst, src=src, oif=oif, mark=mark, tos=tos, proto=proto,
                    sport=sport, dport=dport, uid=uid)


class NamespaceLab:
    """A fresh lab (prefix `s` and four hex digits) for one Config; its namespace is `name`.
    delete() always removes it."""

    def __init__(self):
        self.prefix = new_prefix("s")
        self.name = builder.namespace(self.prefix, NODE)

    def build(self, cfg: Config) -> None:
        builder.up(topo.parse(cfg.topology(), f"fiblab config {cfg.seed}"), prefix=self.prefix)

    def delete(self) -> None:
        builder.down(self.prefix)
