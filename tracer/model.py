"""The immutable model of a host's network state.

Everything the simulation needs, whether it was read from the live kernel or
loaded from a snapshot file. Plain frozen dataclasses; addresses stay strings
(as `ip` prints them) and prefixes are (address, length) pairs so that a
million routes load quickly.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

from tracer.vocab import AF_INET

T = TypeVar("T")

# Well-known routing table ids (include/uapi/linux/rtnetlink.h).
TABLE_UNSPEC = 0
TABLE_DEFAULT = 253
TABLE_MAIN = 254
TABLE_LOCAL = 255
DEFAULT_TABLE_NAMES = {TABLE_DEFAULT: "default", TABLE_MAIN: "main", TABLE_LOCAL: "local"}

# Route scopes (rtm_scope).
SCOPE_UNIVERSE = 0
SCOPE_SITE = 200
SCOPE_LINK = 253
SCOPE_HOST = 254
SCOPE_NOWHERE = 255
SCOPE_NAMES = {0: "global", 200: "site", 253: "link", 254: "host", 255: "nowhere"}

LOOPBACK_IFINDEX = 1


@dataclass(frozen=True)
class Link:
    index: int
    name: str
    kind: str | None = None  # veth, bridge, ppp, vlan, … (None for plain devices)
    flags: tuple[str, ...] = ()  # UP, LOWER_UP, NOARP, POINTOPOINT, LOOPBACK, …
    mtu: int = 1500
    master: str | None = None
    mac: str | None = None
    operstate: str = "UNKNOWN"
    group: int = 0
    l3mdev_master: bool = False  # a VRF device
    # A bridge's own nf_call_iptables / nf_call_ip6tables / nf_call_arptables options
    # (`ip link set BR type bridge nf_call_iptables 1`): "iptables", "ip6tables", "arptables".
    nf_call: tuple[str, ...] = ()

    @property
    def up(self) -> bool:
        return "UP" in self.flags

    @property
    def noarp(self) -> bool:
        return "NOARP" in self.flags

    @property
    def pointopoint(self) -> bool:
        return "POINTOPOINT" in self.flags


@dataclass(frozen=True)
class Address:
    family: int
    ifname: str
    local: str  # IFA_LOCAL: this host's address
    prefixlen: int
    peer: str | None = None  # IFA_ADDRESS when it differs (point-to-point peer)
    scope: int = SCOPE_UNIVERSE
    secondary: bool = False

    @property
    def network_address(self) -> str:
        """The address the prefix applies to: the peer on a point-to-point address."""
        return self.peer or self.local


@dataclass(frozen=True)
class Rule:
    family: int
    priority: int
    action: str = "lookup"  # lookup, goto, nop, blackhole, unreachable, prohibit
    table: int = 0
    src: str | None = None
    src_len: int = 0
    dst: str | None = None
    dst_len: int = 0
    iif: str | None = None
    oif: str | None = None
    fwmark: int = 0
    fwmask: int = 0
    tos: int = 0
    ipproto: int = 0
    sport: tuple[int, int] | None = None
    dport: tuple[int, int] | None = None
    uidrange: tuple[int, int] | None = None
    invert: bool = False
    goto: int | None = None
    suppress_prefixlength: int = -1
    suppress_ifgroup: int = -1
    l3mdev: bool = False
    protocol: str | None = None


@dataclass(frozen=True)
class Nexthop:
    gateway: str | None
    dev: str | None
    weight: int = 1
    onlink: bool = False
    dead: bool = False
    linkdown: bool = False


@dataclass(frozen=True)
class Route:
    family: int
    table: int
    dst: str  # network address, "0.0.0.0" / "::" for default
    dst_len: int
    type: str = "unicast"  # unicast local broadcast anycast multicast blackhole unreachable prohibit throw nat
    tos: int = 0
    metric: int = 0
    protocol: str = "boot"
    scope: int = SCOPE_UNIVERSE
    prefsrc: str | None = None
    nexthops: tuple[Nexthop, ...] = ()
    src: str | None = None  # IPv6 source-specific routing
    src_len: int = 0

    @property
    def prefix(self) -> str:
        if self.dst_len == 0:
            return "default"
        full = 32 if self.family == AF_INET else 128
        return self.dst if self.dst_len == full else f"{self.dst}/{self.dst_len}"

    @property
    def gateway(self) -> str | None:
        return self.nexthops[0].gateway if len(self.nexthops) == 1 else None

    @property
    def dev(self) -> str | None:
        return self.nexthops[0].dev if len(self.nexthops) == 1 else None


@dataclass(frozen=True)
class Neighbour:
    ifname: str
    address: str
    lladdr: str | None
    state: str  # REACHABLE, STALE, FAILED, INCOMPLETE, PERMANENT, NOARP, …


@dataclass(frozen=True)
class ConntrackEntry:
    proto: int
    orig_src: str
    orig_dst: str
    reply_src: str
    reply_dst: str
    orig_sport: int | None = None
    orig_dport: int | None = None
    reply_sport: int | None = None
    reply_dport: int | None = None
    mark: int = 0
    state: str | None = None
    text: str = ""


@dataclass(frozen=True)
class Provenance:
    """Where and when the state was read."""

    hostname: str | None = None
    netns: str | None = None
    kernel: str | None = None
    taken_at: str | None = None
    replayed_in: str | None = None  # a lint/what-if state: the throwaway namespace it was read from
    comment: object = None  # free-form, from the snapshot file (fixtures record how they were made)


@dataclass(frozen=True)
class RtTablesEntry:
    """One line of an rt_tables file: duplicates are kept (`table_names` keeps the one `ip` shows)."""

    table: int
    name: str
    path: str


class Derived:
    """Values computed from one immutable HostState, each at most once: the FIB index,
    the compiled ruleset, the check context… so that thousands of queries share them.
    Keyed by the function that builds them (called with the state), never by a name."""

    __slots__ = ("_state", "_values")

    def __init__(self, state: HostState):
        self._state = state
        self._values: dict = {}

    def __call__(self, build: Callable[[HostState], T]) -> T:
        try:
            return self._values[build]
        except KeyError:
            value = self._values[build] = build(self._state)
            return value


def _links_by_name(state: HostState) -> dict[str, Link]:
    return {link.name: link for link in state.links}


@dataclass(frozen=True)
class HostState:
    """One network namespace's state: everything an explanation needs."""

    links: tuple[Link, ...] = ()
    addresses: tuple[Address, ...] = ()
    rules: tuple[Rule, ...] = ()
    routes: tuple[Route, ...] = ()
    table_names: dict[int, str] = field(default_factory=dict)
    neighbours: tuple[Neighbour, ...] = ()
    sysctls: dict[str, str] = field(default_factory=dict)
    netfilter: dict = field(default_factory=dict)  # raw, see tracer/collect/netfilter.py
    conntrack: tuple[ConntrackEntry, ...] = ()
    provenance: Provenance = Provenance()
    rt_tables_entries: tuple[RtTablesEntry, ...] = ()
    # IPv4 tables left out of a live dump (id → prefixes): their routes are asked per flow.
    partial_tables: dict[int, int] = field(default_factory=dict)
    warnings: tuple[str, ...] = ()  # what the collector could not read
    notes: tuple[str, ...] = ()  # said in every explanation of this state
    # Whether br_netfilter is loaded (its net.bridge.* sysctls exist in this namespace);
    # None: not known (a snapshot taken before why-route read it).
    br_netfilter: bool | None = None
    derived: Derived = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        object.__setattr__(self, "derived", Derived(self))

    def link(self, name: str | None) -> Link | None:
        return self.derived(_links_by_name).get(name) if name else None

    def table_name(self, table: int) -> str:
        return self.table_names.get(table) or DEFAULT_TABLE_NAMES.get(table) or str(table)

    def table_id(self, name_or_id: str) -> int | None:
        if name_or_id.isdigit():
            return int(name_or_id)
        for table, name in {**DEFAULT_TABLE_NAMES, **self.table_names}.items():
            if name == name_or_id:
                return table
        return None

    def sysctl(self, key: str, default: str = "0") -> str:
        return self.sysctls.get(key, default)

    def conf(self, family: int, ifname: str, key: str) -> int:
        """A per-interface conf value (net.ipv4.conf.<if>.<key>), as int."""
        base = "net.ipv4.conf" if family == AF_INET else "net.ipv6.conf"
        return int(self.sysctls.get(f"{base}.{ifname}.{key}", "0") or 0)

    def bridge_calls_iptables(self, bridge: str, tool: str = "iptables") -> bool | None:
        """Whether frames bridged by `bridge` go through `tool`'s hooks (br_netfilter's
        br_nf_pre_routing: the namespace's net.bridge.bridge-nf-call-<tool> or the bridge's
        own nf_call_<tool> option); None when the state does not say (an older snapshot)."""
        if self.br_netfilter is None:
            return None
        link = self.link(bridge)
        return self.br_netfilter and (self.sysctl(f"net.bridge.bridge-nf-call-{tool}") == "1"
                                      or (link is not None and tool in link.nf_call))

    def addresses_of(self, ifname: str, family: int = AF_INET) -> list[Address]:
        return [a for a in self.addresses if a.ifname == ifname and a.family == family]

    def replace(self, **changes) -> HostState:
        return dataclasses.replace(self, **changes)
