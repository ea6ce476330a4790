"""Random netfilter rulesets and flows for the wire lab (tests/sim/nfwire.py).

`random_config(seed)` draws, from one seeded random.Random, the router's whole ruleset —
native nft tables (ip and inet), iptables-nft tables, and rules for the iptables-legacy
tables when the lab has them — and the probes sent through it. Every construct is one
the kernel accepts at the hook and chain type it is placed in (the generator knows, per
chain, which hook and type reach it), so a config always loads. The address, port and mark
universe is small and shared by rules and probes, so rules, NAT targets and flows collide
often: a DNAT target is matched again in forward and postrouting, a mark set in prerouting
selects an ip rule, a port range catches the NAT'd port.

Each construct belongs to a feature (FEATURES). `DISABLED` lists the features the generator
leaves out, with the defect that keeps them out; the lead removes an entry once the
defect is fixed, and the differential test then exercises the feature again.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from tests.sim.nfwire import CLIENT_SIDE, EGRESS, IPT_BUILTINS, PROTO_NAMES, ROUTER_ADDRESSES, IptTables, Probe, Ruleset
from tracer.vocab import ICMP, TCP, UDP

FEATURES = {
    "nft": "native nftables tables, families ip and inet",
    "iptables-nft": "iptables-nft tables (raw, mangle, nat, filter), loaded with iptables-nft-restore",
    "iptables-legacy": "rules in the iptables-legacy tables (in the second half of the configs, when they exist)",
    "load-order": "iptables-nft tables loaded before the native ones (equal priorities: registration order decides)",
    "regular-chains": "user-defined chains reached by jump and goto, nested, with return",
    "vmap": "nft verdict maps (accept, drop, jump, goto by address or port)",
    "anonymous-sets": "nft anonymous sets of addresses, ports, interface names",
    "named-sets": "nft named sets of addresses and ports",
    "interface-names": "iifname / oifname (also at hooks without that device), iif / oif, iptables -i / -o",
    "ifindex-without-device": "iif / oif (by index) at a hook without that device: iif at output and postrouting "
                              "(a local packet has none), oif at prerouting and input",
    "marks": "meta mark / MARK set and matched anywhere",
    "maps": "nft maps: the mark set from an address map, dnat to an address map",
    "tcp-flags": "tcp flags / --syn / --tcp-flags (probes are SYNs)",
    "addrtype": "-m addrtype --src-type / --dst-type LOCAL",
    "iprange": "-m iprange --src-range / --dst-range",
    "mark-routing": "marks set in prerouting or output, which select ip rules (fwmark 0x1/0x3, 0x2/0x3)",
    "output-several-reroutes": "marks set at output by filter chains or by several chains, or next to an output "
                               "dnat; a table of route, nat and route output chains that each change a routing key",
    "ct-mark": "ct mark set from the mark, and the mark restored from it",
    "ct-state": "ct state / -m conntrack --ctstate / -m state (also below conntrack's priority)",
    "notrack": "notrack / CT --notrack in raw-priority chains",
    "lo-keeps-conntrack": "ct matches, ct mark and notrack in prerouting chains below conntrack's priority (-200), "
                          "which a packet looped back through lo crosses with the entry it got at output",
    "fib": "fib daddr type local",
    "jhash": "jhash with a seed over addresses and ports: matched, and as the mark set (which selects a route)",
    "reject": "reject / REJECT",
    "policy-drop": "base chains with policy drop",
    "route-chain": "nft type route output chains",
    "dnat": "dnat / DNAT in prerouting and output",
    "redirect": "redirect / REDIRECT in prerouting and output",
    "snat": "snat / SNAT in postrouting and input",
    "masquerade": "masquerade / MASQUERADE in postrouting",
    "dnat-port": "dnat / redirect to a port (also port only: dnat to :8080)",
    "snat-port": "snat / masquerade to a port",
    "snat-port-range": "snat / masquerade to a port range that the probe's source port is outside of",
    "nat-random": "snat / masquerade with random or fully-random (the kernel picks the source port)",
    "nat-in-regular-chain": "NAT statements and targets in regular chains jumped to from nat base chains",
    "nat-input": "snat in nat input chains (locally delivered probes)",
    "nat-output": "dnat / redirect in nat output chains (local-out probes)",
    "nat-chains-without-conntrack": "nft nat chains in a ruleset without any conntrack user (no NAT rule, no ct "
                                    "match): the kernel then never runs them",
    "local-out": "probes sent by the router itself (raw socket bound to one of its addresses)",
    "local-out-to-self": "local-out probes to the router's own addresses, or sent there by an output dnat / redirect "
                         "(the packet loops back through lo: postrouting, prerouting, input)",
}

# feature -> why the generator leaves it out (the defect, as test_nf_cases.py shows it)
DISABLED: dict[str, str] = {}

ENABLED = frozenset(FEATURES) - set(DISABLED)
# Features whose rules make the kernel track connections in the namespace (nf_ct_netns_get): a
# NAT statement or target, a ct expression, -m conntrack. Without one, nat chains never run.
CONNTRACK_USERS = frozenset({"dnat", "redirect", "snat", "masquerade", "ct-state", "ct-mark"})

CLIENT_SOURCES = ("10.0.0.2", "10.0.0.3", "192.168.7.7")
ROUTER_OWN = tuple(a.split("/")[0] for addrs in ROUTER_ADDRESSES.values() for a in addrs)
DESTINATIONS = ("10.1.0.9", "10.2.0.9", "10.3.0.9", "172.16.2.9", "203.0.113.5", "203.0.113.200", "8.8.8.8",
                "198.51.100.7", "10.0.0.9", "10.0.0.1", "10.1.0.1", "172.16.2.1")
# Disjoint, so that any subset is a valid nft set or verdict map (no overlapping intervals).
ADDRESS_ELEMENTS = ("10.0.0.2", "10.0.0.3", "192.168.0.0/16", "10.0.0.1", "10.1.0.0/24", "10.2.0.9", "10.3.0.9",
                    "203.0.113.0/25", "8.8.8.8", "172.16.2.0/24")
ADDRESS_MATCHES = (*ADDRESS_ELEMENTS, "10.0.0.0/24", "10.0.0.0/8", "203.0.113.5", "10.1.0.1", "10.1.0.9")
DPORTS = (22, 53, 80, 443, 8080)
PORT_MATCHES = ("22", "53", "80", "8080", "5353", "20-100", "443-8080", "2000-2002", "1-1024")
SPORT_BANDS = ((20000, 24999), (25000, 29999))
MARKS = (0x1, 0x2, 0x3)
DNAT_TO = ("10.2.0.9", "10.3.0.9", "203.0.113.5", "10.0.0.1", "10.1.0.9", "198.51.100.7", "10.0.0.9")
SNAT_TO = ("10.1.0.1", "10.2.0.50", "192.0.2.1", "10.0.0.1", "172.16.2.1")
NAT_PORTS = ("80", "8080", "53", "5353", "2000-2002")  # 8080 and 5353 select ip rules
SNAT_PORTS = ("80", "8080", "53")
SNAT_PORT_RANGE = "2000-2002"  # probes' source ports are in SPORT_BANDS: always outside
INTERFACES = (CLIENT_SIDE, *EGRESS)

PROBES_PER_CONFIG = 30
LOCAL_OUT_SHARE = 0.2

NFT_HOOKS = {"filter": ("prerouting", "input", "forward", "output", "postrouting"),
             "nat": ("prerouting", "input", "output", "postrouting"), "route": ("output",)}
NFT_PRIORITIES = {"filter": (-300, -150, -100, 0, 0, 10, 100, 300), "nat": (-150, -100, -100, 0, 100, 100, 150),
                  "route": (-300, -150, 0)}
IPT_HOOK = {"PREROUTING": "prerouting", "INPUT": "input", "FORWARD": "forward", "OUTPUT": "output",
            "POSTROUTING": "postrouting"}
PRIO_CONNTRACK = -200
PRIO_SRCNAT = 100
IPT_PRIORITY = {"raw": -300, "mangle": -150, "nat": -100, "filter": 0}
HAS_IIF = ("prerouting", "input", "forward")  # at postrouting only forwarded packets have one
HAS_OIF = ("forward", "output", "postrouting")


@dataclass
class Config(Ruleset):
    """A drawn ruleset (with `legacy_tables`, rules for the legacy tables may be drawn), its probes,
    and the features it used."""

    seed: int = 0
    probes: list[Probe] = field(default_factory=list)
    features: set[str] = field(default_factory=set)
    nft_nat_chains: int = 0  # nft nat base chains (their drops and marks matter; iptables' nat chains have none)

    @property
    def name(self) -> str:
        """What WHYROUTE_NF_CONFIG takes to replay this config: its seed, and whether the lab had legacy tables."""
        return f"{self.seed}:legacy" if self.legacy_tables else str(self.seed)


@dataclass(frozen=True)
class Context:
    """Where a rule sits: the hook and type of the base chain that reaches its chain."""

    tool: str  # nft | iptables-nft | iptables-legacy
    family: str  # ip | inet (nft), ip (iptables)
    hook: str
    type: str  # filter | nat | route
    table: str
    chain: str  # the base chain, e.g. "nft t0 c1", "iptables-nft mangle OUTPUT"
    priority: int
    regular: bool = False
    named_sets: tuple[str, ...] = ()


def random_config(seed: int, *, legacy_tables: bool, enabled: frozenset[str] = ENABLED) -> Config:
    return _Generator(random.Random(seed), seed, legacy_tables, enabled).config()


def config_named(name: str, enabled: frozenset[str] = ENABLED) -> Config:
    """The config whose `name` this is (drawn with the same features enabled)."""
    seed, _, legacy = name.partition(":")
    return random_config(int(seed), legacy_tables=legacy == "legacy", enabled=enabled)


class _Generator:
    def __init__(self, rng: random.Random, seed: int, legacy_tables: bool, enabled: frozenset[str]):
        self.rng = rng
        self.cfg = Config(legacy_tables=legacy_tables, seed=seed)
        # A conntrack-free config: nat chains, but no rule that turns conntrack on (no NAT, no ct
        # match), so that the kernel never runs them; recorded at the end if it drew nat chains.
        self.conntrack_free = "nat-chains-without-conntrack" in enabled and rng.random() < 0.1
        self.enabled = enabled - CONNTRACK_USERS if self.conntrack_free else enabled
        # what changes routing keys at output, for the record of output-several-reroutes
        self.output_mark_chains: set[str] = set()  # output chains that do
        self.output_nat = False

    def on(self, feature: str, probability: float = 1.0) -> bool:
        """Whether to use `feature` here (enabled, and drawn with `probability`); records its use."""
        if feature not in self.enabled or self.rng.random() >= probability:
            return False
        self.cfg.features.add(feature)
        return True

    def config(self) -> Config:
        rng = self.rng
        if self.on("nft", 0.85):
            self.cfg.nft = "".join(self.nft_table(i) for i in range(rng.choice((1, 1, 2))))
            if self.on("output-several-reroutes", 0.2):
                self.cfg.nft += self.output_rerouting_table()
        if self.on("iptables-nft", 0.6):
            self.cfg.iptables_nft = self.ipt_tables("iptables-nft")
        if self.cfg.legacy_tables and self.on("iptables-legacy", 0.4):
            self.cfg.iptables_legacy = self.ipt_tables("iptables-legacy")
        self.cfg.nft_first = not (self.cfg.nft and self.cfg.iptables_nft and self.on("load-order", 0.5))
        self.cfg.probes = self.probes()
        if self.cfg.nft_nat_chains and not self.cfg.features & CONNTRACK_USERS:
            self.cfg.features.add("nat-chains-without-conntrack")
        return self.cfg

    # ------------------------------------------------------------ nft
    def nft_table(self, index: int) -> str:
        rng = self.rng
        family = rng.choice(("ip", "inet"))
        name = f"t{index}"
        lines = [f"table {family} {name} {{"]
        named = []
        if self.on("named-sets", 0.5):
            elements = rng.sample(ADDRESS_ELEMENTS, rng.randint(1, 4))
            lines.append(f"  set addrs {{ type ipv4_addr; flags interval; elements = {{ {', '.join(elements)} }} }}")
            ports = rng.sample(DPORTS, rng.randint(1, 3))
            lines.append(f"  set ports {{ type inet_service; elements = {{ {', '.join(map(str, ports))} }} }}")
            named = ["addrs", "ports"]
        for c in range(rng.choice((1, 2, 2, 3))):
            chain_type = rng.choices(("filter", "nat", "route"), (5, 4 if self._nat_chains_drawn() else 0,
                                                                  1 if "route-chain" in self.enabled else 0))[0]
            if chain_type == "route":
                self.cfg.features.add("route-chain")
            self.cfg.nft_nat_chains += chain_type == "nat"
            hook = rng.choice(NFT_HOOKS[chain_type])
            priority = rng.choice(NFT_PRIORITIES[chain_type])
            context = Context("nft", family, hook, chain_type, name, f"nft {name} c{c}", priority, False, tuple(named))
            lines += self.nft_chains(f"c{c}", context)
        lines.append("}")
        return "\n".join(lines) + "\n"

    def output_rerouting_table(self) -> str:
        """A table whose output chains change routing keys one after another — a route chain's
        mark, a nat chain's dnat, a later route chain's mark — so that a local packet is routed
        again after each (ip_route_me_harder, with the keys of that moment)."""
        rng = self.rng
        chains = (("route", rng.choice((-300, -150))), ("nat", -100), ("route", rng.choice((0, 10))))
        lines = ["table ip rr {"]
        for c, (kind, priority) in enumerate(chains):
            context = Context("nft", "ip", "output", kind, "rr", f"nft rr c{c}", priority)
            self.cfg.nft_nat_chains += kind == "nat"
            match = self.nft_match(context, None) if rng.random() < 0.5 else ""
            if kind == "nat":
                action = self.nft_nat(context, None)
            else:
                self.mark_set(context)
                action = f"meta mark set {self.mark():#x}"
            lines += [f"  chain c{c} {{", f"    type {kind} hook output priority {priority}; policy accept;",
                      f"    {' '.join(filter(None, (match, action)))}", "  }"]
        lines.append("}")
        return "\n".join(lines) + "\n"

    def _nat_chains_drawn(self) -> bool:
        """Nat chains are drawn where NAT is enabled, and in a conntrack-free config (to be left out)."""
        return self.conntrack_free or bool({"dnat", "redirect", "snat", "masquerade"} & self.enabled)

    def nft_chains(self, name: str, context: Context) -> list[str]:
        """A base chain and the regular chains only it reaches (each may jump to later ones)."""
        rng = self.rng
        regular = [f"{name}_{i}" for i in range(rng.choice((1, 2))) if self.on("regular-chains", 0.5)]
        policy = "drop" if self.on("policy-drop", 0.1) else "accept"
        lines = [f"  chain {name} {{",
                 f"    type {context.type} hook {context.hook} priority {context.priority}; policy {policy};"]
        lines += [f"    {self.nft_rule(context, regular)}" for _ in range(rng.randint(1, 4))]
        lines.append("  }")
        for i, sub in enumerate(regular):
            inner = Context(**{**context.__dict__, "regular": True})
            lines += [f"  chain {sub} {{"]
            lines += [f"    {self.nft_rule(inner, regular[i + 1:])}" for _ in range(rng.randint(1, 3))]
            lines.append("  }")
        return lines

    def nft_rule(self, context: Context, targets: list[str]) -> str:
        rng = self.rng
        proto = rng.choice((None, None, TCP, UDP, ICMP))
        parts = []
        if proto and rng.random() < 0.5:
            parts.append(rng.choice(("meta l4proto", "ip protocol")) + f" {PROTO_NAMES[proto]}")
        # NAT rules get fewer matches: a mapping that applies is worth more than one that never does
        for _ in range(rng.choice((0, 1, 1, 2) if context.type == "nat" else (0, 1, 1, 2, 2, 3))):
            parts.append(self.nft_match(context, proto))
        if rng.random() < 0.3:
            parts.append("counter")
        statements = self.nft_statements(context)
        parts += statements
        ending = self.nft_ending(context, proto, targets, dropping=not statements)
        if ending:
            parts.append(ending)
        return " ".join(p for p in parts if p) or "counter"

    def nft_addresses(self, context: Context, field: str) -> str:
        rng = self.rng
        roll = rng.random()
        if roll < 0.15 and "addrs" in context.named_sets:
            self.cfg.features.add("named-sets")
            return f"{field} {'!= ' if rng.random() < 0.2 else ''}@addrs"
        if roll < 0.35 and self.on("anonymous-sets"):
            return f"{field} {{ {', '.join(rng.sample(ADDRESS_ELEMENTS, rng.randint(2, 4)))} }}"
        return f"{field} {'!= ' if rng.random() < 0.2 else ''}{rng.choice(ADDRESS_MATCHES)}"

    def nft_match(self, context: Context, proto: int | None) -> str:
        rng = self.rng
        kinds = ["saddr", "daddr", "daddr", "l4"]
        if proto in (TCP, UDP):
            kinds += ["dport", "dport"] + ["sport"] * (not _after_source_nat(context))
        if proto == TCP and "tcp-flags" in self.enabled:
            kinds.append("flags")
        if proto == ICMP:
            kinds.append("icmp")
        kinds += ["concat"] * ("anonymous-sets" in self.enabled)
        kinds += ["ifname"] * ("interface-names" in self.enabled) + ["mark"] * ("marks" in self.enabled)
        kinds += ["ct"] * ("ct-state" in self.enabled) + ["ctmark"] * ("ct-mark" in self.enabled)
        kinds += ["fib"] * ("fib" in self.enabled) + ["jhash"] * ("jhash" in self.enabled)
        kind = rng.choice(kinds)
        name = PROTO_NAMES.get(proto)
        if kind in ("saddr", "daddr"):
            return self.nft_addresses(context, f"ip {kind}")
        if kind == "l4":
            if proto is None and self.on("anonymous-sets"):
                # `th` reads the ports of whichever of the two it is
                port = f" th dport {rng.choice(PORT_MATCHES)}" if rng.random() < 0.5 else ""
                return "meta l4proto { tcp, udp }" + port
            return ""
        if kind == "flags":
            self.cfg.features.add("tcp-flags")
            return rng.choice(("tcp flags syn", "tcp flags & (syn|ack) == syn", "tcp flags & (syn|rst) == syn",
                               "tcp flags ack", "tcp flags & (fin|syn|rst|ack) != syn"))
        if kind == "concat":
            self.cfg.features.add("anonymous-sets")
            # the addresses and ports NAT leads to, so that later hooks match them too
            if proto in (TCP, UDP):
                pairs = [f"{rng.choice(DNAT_TO)} . {rng.choice((*DPORTS, 5353))}" for _ in range(2)]
                return f"ip daddr . {PROTO_NAMES[proto]} dport {{ {', '.join(dict.fromkeys(pairs))} }}"
            pairs = [f"{rng.choice(CLIENT_SOURCES + ROUTER_OWN)} . {rng.choice(DNAT_TO)}" for _ in range(2)]
            return f"ip saddr . ip daddr {{ {', '.join(dict.fromkeys(pairs))} }}"
        if kind == "dport":
            if "ports" in context.named_sets and rng.random() < 0.2:
                return f"{name} dport @ports"
            if rng.random() < 0.2 and self.on("anonymous-sets"):
                return f"{name} dport {{ {', '.join(map(str, rng.sample(DPORTS, rng.randint(2, 3))))} }}"
            return f"{name} dport {'!= ' if rng.random() < 0.15 else ''}{rng.choice(PORT_MATCHES)}"
        if kind == "sport":
            low, high = rng.choice(SPORT_BANDS)
            return f"{name} sport {'!= ' if rng.random() < 0.3 else ''}{low}-{high}"
        if kind == "icmp":
            return "icmp type echo-request"
        if kind == "ifname":
            self.cfg.features.add("interface-names")
            which = rng.choice(("iifname", "oifname"))
            roll = rng.random()
            if roll < 0.2 and self.on("anonymous-sets"):
                names = ", ".join(f'"{name}"' for name in rng.sample(INTERFACES, 2))
                return f"{which} {{ {names} }}"
            by_index = which[:3]
            if roll < 0.3 and self.may_match_index(context, by_index):  # the device as it is now
                return f'{by_index} {"!= " if rng.random() < 0.25 else ""}"{rng.choice(INTERFACES)}"'
            value = '"r*"' if roll < 0.45 else f'"{rng.choice(INTERFACES)}"'
            return f"{which} {'!= ' if rng.random() < 0.25 else ''}{value}"
        if kind == "mark":
            self.cfg.features.add("marks")
            return rng.choice((f"meta mark {rng.choice(MARKS):#x}", f"meta mark and 0x3 == {rng.choice(MARKS):#x}",
                               "meta mark != 0x0"))
        if kind == "ct":
            self.uses_conntrack(context, "ct-state")
            return rng.choice(("ct state new", "ct state new", "ct state established,related", "ct state invalid",
                               "ct state untracked"))
        if kind == "ctmark":
            self.uses_conntrack(context, "ct-mark")
            return f"ct mark {rng.choice(MARKS):#x}"
        if kind == "jhash":
            return f"{self.jhash(proto, 2)} == {rng.choice((0, 1))}"
        self.cfg.features.add("fib")
        return rng.choice(("fib daddr type local", "fib daddr type != local"))

    def jhash(self, proto: int | None, mod: int, offset: int = 0) -> str:
        """`jhash KEY mod N seed S [offset K]` over addresses and (for TCP/UDP) the destination
        port: what later hooks see of them is known (a source port after source NAT may not be)."""
        self.cfg.features.add("jhash")
        keys = ["ip saddr", "ip daddr", "ip saddr . ip daddr"]
        if proto in (TCP, UDP):
            keys += [f"{PROTO_NAMES[proto]} dport", f"ip daddr . {PROTO_NAMES[proto]} dport"]
        seed = self.rng.choice((0x0, 0x1, 0x5A5A, 0xDEADBEEF))
        return f"jhash {self.rng.choice(keys)} mod {mod} seed {seed:#x}" + (f" offset {offset}" if offset else "")

    def may_match_index(self, context: Context, key: str) -> bool:
        """iif / oif at a hook without that device only with ifindex-without-device."""
        if context.hook in (HAS_IIF if key == "iif" else HAS_OIF):
            return True
        if "ifindex-without-device" not in self.enabled:
            return False
        self.cfg.features.add("ifindex-without-device")
        return True

    def nft_statements(self, context: Context) -> list[str]:
        rng = self.rng
        out = []
        # marks where they select a route (prerouting, output) more often than elsewhere
        if self.on("marks", 0.5 if context.hook in ("prerouting", "output") else 0.2):
            self.mark_set(context)
            if self.on("maps", 0.2):
                keys = rng.sample(CLIENT_SOURCES + ROUTER_OWN, 3)
                out.append(f"meta mark set ip saddr map {{ {', '.join(f'{k} : {self.mark():#x}' for k in keys)} }}")
            elif "jhash" in self.enabled and rng.random() < 0.15:
                out.append(f"meta mark set {self.jhash(None, 3, offset=1)}")  # 0x1 … 0x3
            else:
                out.append(rng.choice((f"meta mark set {self.mark():#x}", f"meta mark set {self.mark():#x}",
                                       "meta mark set mark or 0x2", "meta mark set mark and 0xfffffffc")))
        if self.on("ct-mark", 0.1):
            self.uses_conntrack(context, "ct-mark")
            if rng.random() < 0.5:
                self.mark_set(context)
                out.append("meta mark set ct mark")
            else:
                out.append("ct mark set meta mark")
        if context.hook in ("prerouting", "output") and self.on("notrack", 0.05):
            self.uses_conntrack(context, "notrack")
            out.append("notrack")
        return out

    def uses_conntrack(self, context: Context, feature: str) -> None:
        self.cfg.features.add(feature)
        if _below_conntrack(context):
            self.cfg.features.add("lo-keeps-conntrack")

    def mark(self) -> int:
        """A mark to set: 0x1 (table 100) more often, as 0x2 also comes from `or 0x2`."""
        return self.rng.choice((0x1, 0x1, 0x2, 0x3))

    def mark_set(self, context: Context) -> None:
        if context.hook in ("prerouting", "output"):
            self.cfg.features.add("mark-routing")
        if context.hook == "output":
            self.output_mark_chains.add(context.chain)
            if context.type != "route" or len(self.output_mark_chains) > 1 or self.output_nat:
                self.cfg.features.add("output-several-reroutes")

    def nft_ending(self, context: Context, proto: int | None, targets: list[str], dropping: bool) -> str:
        """The rule's verdict or NAT statement; rarely a drop after a statement (a mark that
        selects a route is worth more on a packet that goes on)."""
        rng = self.rng
        choices = {"": 3, "accept": 3, "drop": 2 if dropping else 0.3, "continue": 1}
        if context.regular:
            choices["return"] = 2
        if targets:
            choices["jump"] = choices["goto"] = 4 if context.type == "nat" else 2
        if context.hook != "postrouting" and context.type == "filter" and "reject" in self.enabled:
            choices["reject"] = 1 if dropping else 0.2
        if "vmap" in self.enabled:
            choices["vmap"] = 1
        if context.type == "nat" and (not context.regular or "nat-in-regular-chain" in self.enabled):
            choices["nat"] = 9
        kind = rng.choices(list(choices), list(choices.values()))[0]
        if kind in ("jump", "goto"):
            return f"{kind} {rng.choice(targets)}"
        if kind == "reject":
            self.cfg.features.add("reject")
        if kind == "vmap":
            return self.nft_vmap(proto, targets)
        if kind == "nat":
            return self.nft_nat(context, proto)
        return kind

    def nft_vmap(self, proto: int | None, targets: list[str]) -> str:
        rng = self.rng
        verdicts = ["accept", "drop", *(f"{k} {t}" for t in targets for k in ("jump", "goto"))]
        self.cfg.features.add("vmap")
        if proto in (TCP, UDP) and rng.random() < 0.5:
            keys = rng.sample(("22", "53", "80", "8080", "2000-2002", "440-450"), rng.randint(1, 3))
            field = f"{PROTO_NAMES[proto]} dport"
        else:
            keys = rng.sample(ADDRESS_ELEMENTS, rng.randint(1, 3))
            field = rng.choice(("ip saddr", "ip daddr"))
        return f"{field} vmap {{ {', '.join(f'{k} : {rng.choice(verdicts)}' for k in keys)} }}"

    def nft_nat(self, context: Context, proto: int | None) -> str:
        rng = self.rng
        family = "ip " if context.family == "inet" else ""
        kind = self.nat_kind(context)
        if kind is None:
            return "accept"
        if context.regular:
            self.cfg.features.add("nat-in-regular-chain")
        ports = proto in (TCP, UDP)
        if kind == "dnat":
            if ports and self.on("dnat-port", 0.5):
                port = rng.choice(NAT_PORTS)
                if rng.random() < 0.3:
                    return f"{PROTO_NAMES[proto]} dport != 0 dnat to :{port}"
                return f"meta l4proto {PROTO_NAMES[proto]} dnat {family}to {self.dnat_target(context)}:{port}"
            if self.on("maps", 0.2):
                keys = rng.sample(CLIENT_SOURCES + ROUTER_OWN, 3)
                targets = ", ".join(f"{k} : {self.dnat_target(context)}" for k in keys)
                return f"dnat {family}to ip saddr map {{ {targets} }}"
            return f"dnat {family}to {self.dnat_target(context)}"
        if kind == "redirect":
            if ports and self.on("dnat-port", 0.6):
                return f"meta l4proto {PROTO_NAMES[proto]} redirect to :{rng.choice(NAT_PORTS)}"
            return "redirect"
        flags = f" {rng.choice(('random', 'fully-random'))}" if self.on("nat-random", 0.15) else ""
        port = self.snat_port() if ports else None
        guard = 'oifname != "lo" ' if self.kernel_picks_port(context, flags, port) else ""
        if kind == "snat":
            if port:
                return f"meta l4proto {PROTO_NAMES[proto]} {guard}snat {family}to {rng.choice(SNAT_TO)}:{port}{flags}"
            return f"{guard}snat {family}to {rng.choice(SNAT_TO)}{flags}"
        if port:
            return f"meta l4proto {PROTO_NAMES[proto]} {guard}masquerade to :{port}{flags}"
        return f"{guard}masquerade{flags}"

    @staticmethod
    def kernel_picks_port(context: Context, flags: str, port: str | None) -> bool:
        """Whether the source port is the kernel's random pick at postrouting: such a rule gets an
        `oifname != "lo"` guard, because on the loopback path prerouting and input could match
        the unknowable port and make the explanation rightly uncertain."""
        return context.hook == "postrouting" and bool(flags or port == SNAT_PORT_RANGE)

    def snat_port(self, range_allowed: bool = True) -> str | None:
        """The port of a source NAT, if it gets one: a single port, or (enabled) a range."""
        if not self.on("snat-port", 0.5):
            return None
        return SNAT_PORT_RANGE if range_allowed and self.on("snat-port-range", 0.4) else self.rng.choice(SNAT_PORTS)

    def dnat_target(self, context: Context) -> str:
        """A DNAT address; at output one of the router's own only with local-out-to-self."""
        looped = context.hook == "output"
        targets = [t for t in DNAT_TO if not looped or t not in ROUTER_OWN or "local-out-to-self" in self.enabled]
        target = self.rng.choice(targets)
        if looped and target in ROUTER_OWN:
            self.cfg.features.add("local-out-to-self")
        return target

    def nat_kind(self, context: Context) -> str | None:
        """A NAT statement valid at this hook, among the enabled ones; None if there is none.
        Redirect at output sends the packet to the router itself (local-out-to-self)."""
        hook = context.hook
        to_self = ("redirect",) if "local-out-to-self" in self.enabled else ()
        kinds = {"prerouting": ("dnat", "redirect"), "output": ("dnat", *to_self),
                 "postrouting": ("snat", "masquerade"), "input": ("snat",)}[hook]
        hook_feature = {"input": "nat-input", "output": "nat-output"}.get(hook)
        if hook_feature and hook_feature not in self.enabled:
            return None
        kinds = [k for k in kinds if k in self.enabled]
        if not kinds:
            return None
        if hook_feature:
            self.cfg.features.add(hook_feature)
        kind = self.rng.choice(kinds)
        self.cfg.features.add(kind)
        if hook == "output":
            self.output_nat = True
            if self.output_mark_chains:
                self.cfg.features.add("output-several-reroutes")
            if kind == "redirect":
                self.cfg.features.add("local-out-to-self")
        return kind

    # ------------------------------------------------------------ iptables
    def ipt_tables(self, tool: str) -> IptTables:
        rng = self.rng
        tables: IptTables = {}
        names = [t for t in IPT_BUILTINS if t != "nat" or self._nat_chains_drawn()]
        for table in rng.sample(names, rng.randint(1, len(names))):
            chains: dict[str, tuple[str | None, list[str]]] = {}
            for builtin in rng.sample(IPT_BUILTINS[table], rng.randint(1, len(IPT_BUILTINS[table]))):
                context = Context(tool, "ip", IPT_HOOK[builtin], _ipt_type(table, builtin), table,
                                  f"{tool} {table} {builtin}", IPT_PRIORITY[table])
                regular = [f"{builtin[:3]}_{i}" for i in range(rng.choice((1, 2))) if self.on("regular-chains", 0.5)]
                policy = "DROP" if table == "filter" and self.on("policy-drop", 0.1) else "ACCEPT"
                chains[builtin] = (policy, [self.ipt_rule(context, regular) for _ in range(rng.randint(1, 4))])
                for i, sub in enumerate(regular):
                    inner = Context(**{**context.__dict__, "regular": True})
                    chains[sub] = (None, [self.ipt_rule(inner, regular[i + 1:]) for _ in range(rng.randint(1, 3))])
            tables[table] = chains
        return tables

    def ipt_rule(self, context: Context, targets: list[str]) -> str:
        rng = self.rng
        proto = rng.choice((None, None, TCP, UDP, ICMP))
        parts = []
        if proto:
            parts.append(f"-p {PROTO_NAMES[proto]}")
        used: set[str] = set()  # iptables takes each option once per rule
        for _ in range(rng.choice((0, 1, 1, 2) if context.type == "nat" else (0, 1, 1, 2, 2))):
            parts.append(self.ipt_match(context, proto, used))
        parts.append(self.ipt_target(context, proto, targets, "-o" in used))
        return " ".join(p for p in parts if p)

    def ipt_match(self, context: Context, proto: int | None, used: set[str]) -> str:
        rng = self.rng
        kinds = ["-s", "-d", "-d"]
        if proto in (TCP, UDP):
            kinds += ["--dport", "--dport", "--sport", "multiport"]
        if proto == TCP and "tcp-flags" in self.enabled:
            kinds.append("flags")
        if proto == ICMP:
            kinds.append("icmp")
        if "interface-names" in self.enabled:
            kinds += ["-i"] * (context.hook in HAS_IIF) + ["-o"] * (context.hook in HAS_OIF)
        kinds += ["mark"] * ("marks" in self.enabled) + ["addrtype"] * ("addrtype" in self.enabled)
        kinds += ["iprange"] * ("iprange" in self.enabled)
        kinds += ["ct"] * ("ct-state" in self.enabled) + ["connmark"] * ("ct-mark" in self.enabled)
        kinds = [k for k in kinds if k not in used]
        if not kinds:
            return ""
        kind = rng.choice(kinds)
        # after -m multiport, --dport and --sport would be multiport's options
        used.update({"multiport": ("--dport", "--sport", "multiport"), "--dport": ("--dport", "multiport"),
                     "--sport": ("--sport", "multiport")}.get(kind, (kind,)))
        negate = "! " if rng.random() < 0.2 else ""
        if kind in ("-s", "-d"):
            return f"{negate}{kind} {rng.choice(ADDRESS_MATCHES)}"
        if kind == "--dport":
            return f"{negate}--dport {rng.choice(PORT_MATCHES).replace('-', ':')}"
        if kind == "--sport":
            low, high = rng.choice(SPORT_BANDS)
            return f"{negate}--sport {low}:{high}"
        if kind == "multiport":
            return f"-m multiport {negate}--dports {','.join(map(str, rng.sample(DPORTS, rng.randint(2, 3))))}"
        if kind == "icmp":
            return "--icmp-type echo-request"
        if kind == "flags":
            self.cfg.features.add("tcp-flags")
            return rng.choice(("--syn", "! --syn", "--tcp-flags SYN,RST SYN", "--tcp-flags SYN,ACK ACK"))
        if kind == "addrtype":
            self.cfg.features.add("addrtype")
            return f"-m addrtype {negate}--{rng.choice(('src', 'dst', 'dst'))}-type LOCAL"
        if kind == "iprange":
            self.cfg.features.add("iprange")
            field, span = rng.choice((("src", "10.0.0.2-10.0.0.3"), ("src", "10.0.0.1-10.2.0.1"),
                                      ("dst", "10.1.0.1-10.1.0.9"), ("dst", "10.2.0.0-10.3.255.255")))
            return f"-m iprange {negate}--{field}-range {span}"
        if kind == "connmark":
            self.uses_conntrack(context, "ct-mark")
            return f"-m connmark {negate}--mark {rng.choice(MARKS):#x}/0x3"
        if kind in ("-i", "-o"):
            self.cfg.features.add("interface-names")
            return f"{negate}{kind} {rng.choice((*INTERFACES, 'r+'))}"
        if kind == "mark":
            self.cfg.features.add("marks")
            return f"-m mark {negate}--mark {rng.choice(MARKS):#x}/0x3"
        self.uses_conntrack(context, "ct-state")
        state = rng.choice(("NEW", "NEW", "ESTABLISHED,RELATED", "INVALID"))
        return f"-m state {negate}--state {state}" if rng.random() < 0.3 else f"-m conntrack {negate}--ctstate {state}"

    def ipt_target(self, context: Context, proto: int | None, targets: list[str], has_oif: bool) -> str:
        rng = self.rng
        choices = {"": 2, "ACCEPT": 3, "RETURN": 1 + 2 * context.regular}
        if context.table in ("filter", "mangle", "raw"):
            choices["DROP"] = 2
        if targets:
            choices["jump"] = choices["goto"] = 4 if context.type == "nat" else 2
        if context.table == "filter" and "reject" in self.enabled:
            choices["REJECT"] = 1
        if context.table == "mangle" and "marks" in self.enabled:
            choices["MARK"] = 4
        if context.table == "mangle" and "ct-mark" in self.enabled:
            choices["CONNMARK"] = 1
        if context.table == "raw" and "notrack" in self.enabled:
            choices["notrack"] = 1
        if context.table == "nat" and (not context.regular or "nat-in-regular-chain" in self.enabled):
            choices["nat"] = 9
        kind = rng.choices(list(choices), list(choices.values()))[0]
        if kind == "jump":
            return f"-j {rng.choice(targets)}"
        if kind == "goto":
            return f"-g {rng.choice(targets)}"
        if kind == "REJECT":
            self.cfg.features.add("reject")
        if kind == "MARK":
            self.cfg.features.add("marks")
            self.mark_set(context)
            return rng.choice((f"-j MARK --set-mark {self.mark():#x}", f"-j MARK --set-xmark {self.mark():#x}/0x3",
                               "-j MARK --or-mark 0x2"))
        if kind == "CONNMARK":
            self.uses_conntrack(context, "ct-mark")
            if rng.random() < 0.5:
                self.mark_set(context)
                return "-j CONNMARK --restore-mark"
            return "-j CONNMARK --save-mark"
        if kind == "notrack":
            self.uses_conntrack(context, "notrack")
            return "-j CT --notrack"
        if kind == "nat":
            return self.ipt_nat(context, proto, has_oif)
        return f"-j {kind}" if kind else ""

    def ipt_nat(self, context: Context, proto: int | None, has_oif: bool) -> str:
        rng = self.rng
        kind = self.nat_kind(context)
        if kind is None:
            return "-j ACCEPT"
        if context.regular:
            self.cfg.features.add("nat-in-regular-chain")
        ports = proto in (TCP, UDP)
        if kind == "dnat":
            if ports and self.on("dnat-port", 0.5):
                return f"-j DNAT --to-destination {self.dnat_target(context)}:{rng.choice(NAT_PORTS)}"
            return f"-j DNAT --to-destination {self.dnat_target(context)}"
        if kind == "redirect":
            if ports and self.on("dnat-port", 0.6):
                return f"-j REDIRECT --to-ports {rng.choice(NAT_PORTS)}"
            return "-j REDIRECT"
        # one -o per rule: with its own, a rule gets no `! -o lo` guard, so no port the kernel picks
        guardable = context.hook != "postrouting" or not has_oif
        flags = f" {rng.choice(('--random', '--random-fully'))}" if guardable and self.on("nat-random", 0.15) else ""
        port = self.snat_port(range_allowed=guardable) if ports else None
        guard = "! -o lo " if self.kernel_picks_port(context, flags, port) else ""
        if kind == "snat":
            if port:
                return f"{guard}-j SNAT --to-source {rng.choice(SNAT_TO)}:{port}{flags}"
            return f"{guard}-j SNAT --to-source {rng.choice(SNAT_TO)}{flags}"
        return f"{guard}-j MASQUERADE --to-ports {port}{flags}" if port else f"{guard}-j MASQUERADE{flags}"

    # ------------------------------------------------------------ probes
    def probes(self) -> list[Probe]:
        rng = self.rng
        out = []
        sports = {band: iter(range(band[0], band[1] + 1)) for band in SPORT_BANDS}
        for probe_id in range(1, PROBES_PER_CONFIG + 1):
            local = self.on("local-out", LOCAL_OUT_SHARE)
            proto = rng.choice((TCP, TCP, UDP, UDP, ICMP))
            src = rng.choice(ROUTER_OWN if local else CLIENT_SOURCES)
            to_self = not local or "local-out-to-self" in self.enabled
            dst = rng.choice([d for d in DESTINATIONS if to_self or d not in ROUTER_OWN])
            if local and dst in ROUTER_OWN:
                self.cfg.features.add("local-out-to-self")
            ports = (next(sports[rng.choice(SPORT_BANDS)]), rng.choice(DPORTS)) if proto != ICMP else (None, None)
            out.append(Probe(probe_id, "local-out" if local else "forwarded", proto, src, dst, *ports))
        return out


def _after_source_nat(context: Context) -> bool:
    """A postrouting chain that may run after source NAT, where the source port can be the
    kernel's random pick (random, fully-random, a port range): a match on it is rightly
    uncertain in the explanation, so none is drawn there."""
    return context.hook == "postrouting" and context.priority >= PRIO_SRCNAT


def _below_conntrack(context: Context) -> bool:
    return context.hook == "prerouting" and context.priority < PRIO_CONNTRACK


def _ipt_type(table: str, builtin: str) -> str:
    if table == "nat":
        return "nat"
    return "route" if table == "mangle" and builtin == "OUTPUT" else "filter"
