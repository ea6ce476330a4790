"""Compiled rule pieces shared by the nft and iptables front ends, and the
mutable per-walk packet state they are evaluated against.

A rule, whatever tool wrote it, becomes a tuple of items evaluated in order:
`Cond` (a match: True / False / None = cannot evaluate), `Stmt` (a side
effect: mark, NAT, TCPMSS, log …) and `Verdict` (accept, drop, jump …).
That is how nf_tables itself runs a rule (expressions in order, a failing
match ends the rule), and an iptables rule is the special case "all matches,
then one target".
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from tracer.vocab import any_addr_int

# ---------------------------------------------------------------- constants

# ct state bits as nf_tables sees them (NF_CT_STATE_*_BIT).
CT_STATE_BITS = {"invalid": 1, "established": 2, "related": 4, "new": 8, "untracked": 64}
CT_DIR = {"original": 0, "reply": 1}

TCP_FLAGS = {"fin": 0x01, "syn": 0x02, "rst": 0x04, "psh": 0x08, "ack": 0x10,
             "urg": 0x20, "ecn": 0x40, "cwr": 0x80}

DSCP = {f"cs{i}": i * 8 for i in range(8)}
DSCP.update({"af11": 10, "af12": 12, "af13": 14, "af21": 18, "af22": 20, "af23": 22,
             "af31": 26, "af32": 28, "af33": 30, "af41": 34, "af42": 36, "af43": 38,
             "va": 44, "ef": 46, "le": 1, "be": 0})

ICMP_TYPES = {
    "echo-reply": 0, "destination-unreachable": 3, "source-quench": 4, "redirect": 5,
    "echo-request": 8, "router-advertisement": 9, "router-solicitation": 10,
    "time-exceeded": 11, "parameter-problem": 12, "timestamp-request": 13,
    "timestamp-reply": 14, "info-request": 15, "info-reply": 16,
    "address-mask-request": 17, "address-mask-reply": 18,
    # iptables spellings
    "ping": 8, "pong": 0, "fragmentation-needed": 3, "ttl-exceeded": 11,
}
ICMP_CODES = {
    "net-unreachable": 0, "host-unreachable": 1, "prot-unreachable": 2,
    "port-unreachable": 3, "frag-needed": 4, "net-prohibited": 9, "host-prohibited": 10,
    "admin-prohibited": 13,
}
# iptables --icmp-type names that also fix the code
ICMP_TYPE_CODES = {
    "network-unreachable": (3, 0), "host-unreachable": (3, 1), "protocol-unreachable": (3, 2),
    "port-unreachable": (3, 3), "fragmentation-needed": (3, 4), "source-route-failed": (3, 5),
    "network-prohibited": (3, 9), "host-prohibited": (3, 10), "communication-prohibited": (3, 13),
    "ttl-zero-during-transit": (11, 0), "ttl-zero-during-reassembly": (11, 1),
}
ICMPV6_TYPES = {
    "destination-unreachable": 1, "packet-too-big": 2, "time-exceeded": 3,
    "parameter-problem": 4, "echo-request": 128, "echo-reply": 129,
    "mld-listener-query": 130, "mld-listener-report": 131, "mld-listener-done": 132,
    "mld-listener-reduction": 132, "nd-router-solicit": 133, "nd-router-advert": 134,
    "nd-neighbor-solicit": 135, "nd-neighbor-advert": 136, "nd-redirect": 137,
    "router-renumbering": 138, "mld2-listener-report": 143,
    "router-solicitation": 133, "router-advertisement": 134,
    "neighbour-solicitation": 135, "neighbour-advertisement": 136,
    "neighbor-solicitation": 135, "neighbor-advertisement": 136,
    "ping": 128, "pong": 129, "ttl-exceeded": 3,
}
ICMPV6_CODES = {"no-route": 0, "admin-prohibited": 1, "addr-unreachable": 3,
                "port-unreachable": 4, "policy-fail": 5, "reject-route": 6}
FIB_TYPES = ("unspec", "unicast", "local", "broadcast", "anycast", "multicast",
             "blackhole", "unreachable", "prohibit", "throw", "nat", "xresolve")
NFPROTO = {"ipv4": 2, "ipv6": 10, "ip": 2, "ip6": 10, "inet": 1, "arp": 3, "bridge": 7}
ETHERTYPE = {"ip": 0x0800, "ip6": 0x86DD, "arp": 0x0806, "vlan": 0x8100}

# Base-chain priorities the kernel uses (include/uapi/linux/netfilter_ipv4.h).
PRIO_RAW, PRIO_CONNTRACK, PRIO_MANGLE = -300, -200, -150
PRIO_DSTNAT, PRIO_FILTER, PRIO_SECURITY, PRIO_SRCNAT = -100, 0, 50, 100
# Where the NAT core hook sits; nat-type chains run inside it (nf_nat_inet_fn).
NAT_CORE_PRIORITY = {"prerouting": PRIO_DSTNAT, "output": PRIO_DSTNAT,
                     "input": PRIO_SRCNAT, "postrouting": PRIO_SRCNAT}
HOOKS = ("prerouting", "input", "forward", "output", "postrouting")


# ------------------------------------------------------------ value markers

class Miss:
    """The packet has no such field here: the match fails (kernel NFT_BREAK)."""

    __slots__ = ("why",)

    def __init__(self, why: str):
        self.why = why


class Unknown:
    """The field exists but this model cannot know it: the match is None."""

    __slots__ = ("why",)

    def __init__(self, why: str):
        self.why = why


def int_addr(value: int, family: str) -> str:
    return str(ipaddress.IPv4Address(value) if family == "ip" else ipaddress.IPv6Address(value))


# ------------------------------------------------------------- eval state

class EvalState:
    """The packet while it walks one hook. Mutable; never leaves the evaluator."""

    __slots__ = ("family", "src", "dst", "src_i", "dst_i", "proto", "sport", "dport", "iif",
                 "oif", "iifkind", "oifkind", "mark", "dscp", "ct_state", "ct_mark",
                 "ct_direction", "length", "icmp_type", "icmp_code", "tcp_flags", "uid", "gid",
                 "nftrace", "untracked", "hook", "ct_attached", "addresses", "probe", "choose", "nat_bound")

    def set_src(self, src):
        self.src = src
        self.src_i = any_addr_int(src) if src is not None else None

    def set_dst(self, dst):
        self.dst = dst
        self.dst_i = any_addr_int(dst) if dst is not None else None

    def ct_state_now(self) -> str | Unknown:
        if self.untracked:
            return "untracked"
        if not self.ct_attached:
            return "invalid"  # before conntrack (-200) the skb has no ct: nft reads "invalid"
        if self.ct_state is None:
            return Unknown("ct state not given")
        return self.ct_state


# ------------------------------------------------------------ compiled parts

Getter = Callable[[EvalState], Any]


@dataclass(frozen=True, eq=False)
class Cond:
    """One match. `fn` returns True, False or None (cannot evaluate)."""

    text: str
    fn: Callable[[EvalState], bool | None]
    field: str = ""  # normalised key, e.g. "meta oifname", "ip saddr" (for queries)
    why: Callable[[EvalState], str] | None = None  # what the packet had, for reasons


@dataclass(frozen=True)
class NatSpec:
    type: str  # snat | dnat | masquerade | redirect
    addr: str | None = None  # "1.2.3.4", "1.2.3.4-1.2.3.9", or None
    port: str | None = None  # "8080" or "1000-2000"
    family: str | None = None
    addr_fn: Callable[[EvalState], Any] | None = None  # a map lookup computed per packet
    # random / fully-random (--random, --random-fully): the kernel picks the port
    # at random even when the original one is free (NF_NAT_RANGE_PROTO_RANDOM_ALL)
    random_port: bool = False

    @property
    def field(self) -> str:
        return "src" if self.type in ("snat", "masquerade") else "dst"


@dataclass(frozen=True, eq=False)
class Stmt:
    """A side effect. `apply` mutates the state and returns a short description
    of what it did, or an Unknown when it could not be computed."""

    kind: str  # mark | ctmark | dscp | nat | tcpmss | notrack | nftrace | log | counter | other | unknown
    text: str
    apply: Callable[[EvalState], Any] | None = None
    nat: NatSpec | None = None
    mss: str | None = None  # TCPMSS: "pmtu" or a number


@dataclass(frozen=True, eq=False)
class Verdict:
    kind: str  # accept drop reject queue continue return jump goto vmap unknown
    target: str | None = None
    text: str = ""
    lookup: Callable[[EvalState], Any] | None = None  # vmap: state -> Verdict | Miss | Unknown
    targets: tuple[str, ...] = ()  # vmap: the chains its elements jump or goto (reachability)


Item = Cond | Stmt | Verdict


@dataclass(frozen=True, eq=False)
class Rule:
    id: int | None  # nft handle, or iptables rule number
    text: str
    items: tuple[Item, ...]
    counters: dict | None = None
    nft_handle: int | None = None  # the nft handle of an iptables-nft rule

    @property
    def conds(self) -> tuple[Cond, ...]:
        return tuple(i for i in self.items if isinstance(i, Cond))

    @property
    def stmts(self) -> tuple[Stmt, ...]:
        return tuple(i for i in self.items if isinstance(i, Stmt))


@dataclass(frozen=True, eq=False)
class Chain:
    family: str  # ip | ip6 | inet
    table: str
    name: str
    source: str  # nft | iptables-nft | iptables-legacy
    rules: Sequence[Rule]  # a tuple, or LazyRules for long nft chains (netfilter.py)
    hook: str | None = None  # base chains only
    priority: int | None = None
    type: str | None = None  # filter | nat | route
    policy: str | None = None
    table_handle: int = 0
    handle: int = 0

    @property
    def base(self) -> bool:
        return self.hook is not None

    @property
    def key(self) -> tuple[str, str, str, str]:
        return (self.source, self.family, self.table, self.name)

    @property
    def registration(self) -> tuple[int, int]:
        # Higher = registered later. Legacy tables are assumed loaded first.
        if self.source == "iptables-legacy":
            return (-1, 0)
        return (self.table_handle, self.handle)


def flag_bits(value, table: dict[str, int]) -> int:
    """'syn' / ['syn','ack'] / 3 -> bit mask."""
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        if value in table:
            return table[value]
        return parse_int(value)
    if isinstance(value, (list, tuple)):
        out = 0
        for v in value:
            out |= flag_bits(v, table)
        return out
    raise ValueError(f"not a flag value: {value!r}")


def parse_int(value) -> int:
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int):
        return value
    text = str(value).strip()
    return int(text, 0)
