"""A pure simulation of the Linux FIB decision over a HostState.

What `ip route get` answers, computed offline: the policy-rule walk
(fib_rules_lookup), longest-prefix match in each table (fib_table_lookup /
check_leaf), and the input and output paths around it (ip_route_input_slow with
fib_validate_source, ip_route_output_key_hash_rcu with source selection).
The kernel is the judge: tests/sim/test_fib_differential.py compares this
module with the kernel on random configurations; docs/fib.md lists what is
modelled, the kernel functions behind each step and the known limits.

Public API (queries are tracer.flow.RouteQuery): RuleStep, FibResult, lookup_rules, route_input,
route_output, route, FibIndex (the per-HostState lookup index).
"""

from __future__ import annotations

import socket
from bisect import bisect_left
from dataclasses import dataclass, field, replace
from heapq import merge
from typing import NamedTuple

from tracer.flow import RouteQuery
from tracer.model import (
    SCOPE_HOST,
    SCOPE_LINK,
    SCOPE_UNIVERSE,
    TABLE_DEFAULT,
    TABLE_LOCAL,
    TABLE_MAIN,
    HostState,
    Link,
    Nexthop,
    Route,
    Rule,
)
from tracer.vocab import AF_INET, AF_INET6, PORT_PROTOCOLS, addr_int, bits, int_addr

__all__ = ["RuleStep", "FibResult", "FibIndex", "lookup_rules", "route_input",
           "route_output", "route", "index_for", "longest_match"]

LOOPBACK = "lo"
# Kernel errno per route type (fib_props[] in net/ipv4/fib_semantics.c); EAGAIN = throw.
ROUTE_TYPE_ERRORS = {"blackhole": "EINVAL", "unreachable": "EHOSTUNREACH", "prohibit": "EACCES",
                     "throw": "EAGAIN", "nat": "EINVAL", "xresolve": "EINVAL"}
# fib4_rule_action / fib6_rule_action.
RULE_ACTION_ERRORS = {"blackhole": "EINVAL", "unreachable": "ENETUNREACH", "prohibit": "EACCES"}
# Legacy TOS bits a route or rule tos is compared on (IPTOS_RT_MASK, fib_dscp_masked_match).
TOS_MATCH_MASK = 0x1C
IPPROTO_IGMP = 2
ALL_HOSTS = 0xE0000001  # 224.0.0.1
# Above this many rules of a family a walk visits only the rules the index says
# can match, and the trace says how many it skipped.
FULL_TRACE_MAX_RULES = 2000
HASH_POLICIES = {0: "L3", 1: "L4", 2: "L3 or inner L3", 3: "custom fields"}
# Kernel defaults of the conf keys whose default is not 0.
_CONF_DEFAULTS = {"send_redirects": 1, "accept_redirects": 1}
# How `ip route` names scopes (SCOPE_NAMES says "global" where ip prints nothing).
SCOPE_WORDS = {SCOPE_LINK: "link", SCOPE_HOST: "host", 200: "site"}


@dataclass(frozen=True)
class RuleStep:
    rule: Rule
    text: str
    matched: bool
    reason: str | None
    result: str


@dataclass(frozen=True)
class FibResult:
    family: int
    steps: tuple[RuleStep, ...] = ()
    rule: Rule | None = None
    table: int | None = None
    route: Route | None = None
    nexthop: Nexthop | None = None
    nexthops: tuple[Nexthop, ...] = ()
    multipath_note: str | None = None
    gateway: str | None = None
    dev: str | None = None
    prefsrc: str | None = None
    type: str | None = None
    error: str | None = None
    error_reason: str | None = None
    notes: tuple[str, ...] = ()
    # A received packet this decision drops: the kernel's name for it (enum skb_drop_reason, as
    # skb:kfree_skb reports it since 6.13). None for a socket's lookup (no packet) or success.
    drop_reason: str | None = None


# --- addresses ----------------------------------------------------------------

_MASKS = {fam: [((1 << bits) - 1) ^ ((1 << (bits - n)) - 1) for n in range(bits + 1)]
          for fam, bits in ((AF_INET, 32), (AF_INET6, 128))}


def _v4_multicast(a: int) -> bool:
    return a >> 28 == 0xE


def _v4_lbcast(a: int) -> bool:
    return a == 0xFFFFFFFF


def _v4_zeronet(a: int) -> bool:
    return a >> 24 == 0


def _v4_loopback(a: int) -> bool:
    return a >> 24 == 127


def _v4_local_multicast(a: int) -> bool:
    return a >> 8 == 0xE00000


# --- the index ------------------------------------------------------------------

class _Table:
    """One table: {prefix length: {network: [routes in kernel alias order]}}, and its
    routes as the state lists them (all, and the defaults) for the rules engine."""

    __slots__ = ("lengths", "by_len", "routes", "defaults")

    def __init__(self):
        self.by_len: dict[int, dict[int, list[Route]]] = {}
        self.lengths: tuple[int, ...] = ()
        self.routes: list[Route] = []
        self.defaults: list[Route] = []  # dst_len 0, any source prefix

    def finish(self):
        for nets in self.by_len.values():
            for routes in nets.values():
                if len(routes) > 1:
                    # fib_find_alias order: tos descending, then priority ascending.
                    routes.sort(key=lambda r: (-r.tos, r.metric))
        self.lengths = tuple(sorted(self.by_len, reverse=True))


class _Rule:
    """A rule with its selectors parsed to ints once (fib_nl2rule)."""

    __slots__ = ("rule", "index", "src", "src_mask", "dst", "dst_mask", "target", "_text")

    def __init__(self, rule: Rule, index: int):
        masks = _MASKS[rule.family]
        self.rule = rule
        self.index = index
        self.src_mask = masks[rule.src_len] if rule.src and rule.src_len else 0
        self.src = addr_int(rule.family, rule.src) & self.src_mask if self.src_mask else 0
        self.dst_mask = masks[rule.dst_len] if rule.dst and rule.dst_len else 0
        self.dst = addr_int(rule.family, rule.dst) & self.dst_mask if self.dst_mask else 0
        self.target: int | None = None  # goto: index of the target rule
        self._text: str | None = None


class FibIndex:
    """Per-HostState lookup structures, built lazily and cached on the state."""

    def __init__(self, state: HostState):
        self.state = state
        self._tables: dict[tuple[int, int], _Table] | None = None
        self._rules: dict[int, list[_Rule]] = {}
        self._rule_index: dict[int, tuple] = {}
        self._local_addrs: dict[int, dict[int, str]] = {}
        self._custom_local: bool | None = None
        self.merged = self._default_rules_only()
        self.gateways_used: dict[tuple[Route, Nexthop], str | None] = {}  # see _gateway_used
        self._dissects: dict[int, bool] = {}

    # tables
    def tables(self) -> dict[tuple[int, int], _Table]:
        if self._tables is None:
            tables: dict[tuple[int, int], _Table] = {}
            masks4, masks6 = _MASKS[AF_INET], _MASKS[AF_INET6]
            aton, pton, from_bytes = socket.inet_aton, socket.inet_pton, int.from_bytes
            custom_local = False
            for r in self.state.routes:  # the one pass over every route
                if r.family == AF_INET:
                    net = from_bytes(aton(r.dst), "big") & masks4[r.dst_len]
                else:
                    net = from_bytes(pton(socket.AF_INET6, r.dst), "big") & masks6[r.dst_len]
                key = (r.family, r.table)
                table = tables.get(key)
                if table is None:
                    table = tables[key] = _Table()
                table.routes.append(r)
                if r.type == "local" and r.protocol != "kernel" and r.family == AF_INET:
                    custom_local = True
                length = r.dst_len
                if not length:
                    table.defaults.append(r)
                nets = table.by_len.get(length)
                if nets is None:
                    nets = table.by_len[length] = {}
                bucket = nets.get(net)
                if bucket is None:
                    nets[net] = [r]
                else:
                    bucket.append(r)
            for table in tables.values():
                table.finish()
            self._tables = tables
            self._custom_local = custom_local
        return self._tables

    def table(self, family: int, table: int) -> _Table | None:
        return self.tables().get((family, table))

    def input_dissects(self, family: int) -> bool:
        """fib4/fib6_rules_early_flow_dissect: a received packet's protocol and ports reach the
        rules only while a rule selects on them, and rules with `iif lo` do not count
        (fib_rule_requires_fldissect: only local traffic, whose socket gives them, meets those)."""
        found = self._dissects.get(family)
        if found is None:
            found = self._dissects[family] = any(
                r.family == family and r.iif != LOOPBACK and (r.ipproto or r.sport or r.dport)
                for r in self.state.rules)
        return found

    # rules
    def rules(self, family: int) -> list[_Rule]:
        parsed = self._rules.get(family)
        if parsed is None:
            ordered = sorted((r for r in self.state.rules if r.family == family), key=lambda r: r.priority)
            parsed = [_Rule(rule, i) for i, rule in enumerate(ordered)]
            first_with_priority: dict[int, int] = {}
            for p in parsed:
                first_with_priority.setdefault(p.rule.priority, p.index)
            for p in parsed:
                if p.rule.action == "goto" and p.rule.goto is not None:
                    # The goto target is the first rule with exactly that priority
                    # (fib_nl_newrule resolves ctarget so; fib_nl_delrule moves it to
                    # the next rule of the same priority).
                    p.target = first_with_priority.get(p.rule.goto)
            self._rules[family] = parsed
        return parsed

    def candidate_rules(self, family: int, flow: _Flow) -> list[int]:
        """Indexes of the rules that can match `flow`, in order: non-inverted rules
        are bucketed by their from prefix, else to prefix, else fwmark, else iif."""
        index = self._rule_index.get(family)
        if index is None:
            index = self._rule_index[family] = self._build_rule_index(family)
        always, by_src, by_dst, by_mark, by_iif = index
        lists = [always]
        for mask, nets in by_src:
            hit = nets.get(flow.src & mask)
            if hit:
                lists.append(hit)
        for mask, nets in by_dst:
            hit = nets.get(flow.dst & mask)
            if hit:
                lists.append(hit)
        for mask, marks in by_mark:
            hit = marks.get(flow.mark & mask)
            if hit:
                lists.append(hit)
        hit = by_iif.get(flow.iif)
        if hit:
            lists.append(hit)
        if len(lists) == 1:
            return always
        return list(merge(*lists))

    def _build_rule_index(self, family: int) -> tuple:
        always: list[int] = []
        by_src: dict[int, dict[int, list[int]]] = {}
        by_dst: dict[int, dict[int, list[int]]] = {}
        by_mark: dict[int, dict[int, list[int]]] = {}
        by_iif: dict[str, list[int]] = {}
        for p in self.rules(family):
            r = p.rule
            if r.invert:
                always.append(p.index)
            elif p.src_mask:
                by_src.setdefault(p.src_mask, {}).setdefault(p.src, []).append(p.index)
            elif p.dst_mask:
                by_dst.setdefault(p.dst_mask, {}).setdefault(p.dst, []).append(p.index)
            elif r.fwmask:
                by_mark.setdefault(r.fwmask, {}).setdefault(r.fwmark & r.fwmask, []).append(p.index)
            elif r.iif:
                by_iif.setdefault(r.iif, []).append(p.index)
            else:
                always.append(p.index)
        return always, list(by_src.items()), list(by_dst.items()), list(by_mark.items()), by_iif

    def _default_rules_only(self) -> bool:
        """True while IPv4 has only its three default rules: the kernel then keeps
        local and main in one trie and skips the rule walk (fib_lookup in
        include/net/ip_fib.h, fib_unmerge). A rule added and deleted again leaves
        the kernel unmerged; a snapshot cannot show that."""
        rules = sorted((r for r in self.state.rules if r.family == AF_INET), key=lambda r: r.priority)
        wanted = ((0, TABLE_LOCAL), (32766, TABLE_MAIN), (32767, TABLE_DEFAULT))
        if len(rules) != 3:
            return False
        plain = Rule(family=AF_INET, priority=0)
        for rule, (prio, table) in zip(rules, wanted, strict=True):  # three of each, checked above
            if (rule.priority, rule.action, rule.table) != (prio, "lookup", table):
                return False
            if any(getattr(rule, f) != getattr(plain, f) for f in _SELECTOR_FIELDS):
                return False
        return True

    # addresses
    def local_address(self, family: int, value: int) -> str | None:
        """The interface holding this address (inet_lookup_ifaddr_rcu), or None.
        On several devices the kernel finds the one configured last; the dump
        order (by ifindex) stands in for that."""
        addrs = self._local_addrs.get(family)
        if addrs is None:
            addrs = {}
            for a in self.state.addresses:
                if a.family == family:
                    addrs[addr_int(family, a.local)] = a.ifname
            self._local_addrs[family] = addrs
        return addrs.get(value)

    def has_custom_local_routes(self) -> bool:
        """fib_has_custom_local_routes: a local route not added by the kernel itself."""
        self.tables()  # its pass over the routes notes them
        return self._custom_local


_SELECTOR_FIELDS = ("src", "src_len", "dst", "dst_len", "iif", "oif", "fwmark", "fwmask", "tos", "ipproto",
                    "sport", "dport", "uidrange", "invert", "goto", "suppress_prefixlength",
                    "suppress_ifgroup", "l3mdev")


def index_for(state: HostState) -> FibIndex:
    return state.derived(FibIndex)


# --- flows and sysctls ------------------------------------------------------------

@dataclass
class _Flow:
    """struct flowi4/flowi6 as the lookup sees it."""

    family: int
    dst: int
    src: int
    iif: str  # "lo" for locally generated
    oif: str | None
    mark: int
    tos: int
    proto: int
    sport: int
    dport: int
    uid: int
    min_scope: int = SCOPE_UNIVERSE  # flowi4_scope: routes of a narrower scope are skipped


def _conf(state: HostState, family: int, ifname: str, key: str) -> int:
    base = "net.ipv4.conf" if family == AF_INET else "net.ipv6.conf"
    raw = state.sysctls.get(f"{base}.{ifname}.{key}")
    if raw is None or raw == "":
        return _CONF_DEFAULTS.get(key, 0)
    return int(raw)


def conf_or(state: HostState, ifname: str, key: str) -> int:
    """IN_DEV_ORCONF: the effective IPv4 devconf — the device's value or the `all`
    value (max for rp_filter). The rules engine asks this too."""
    return max(_conf(state, AF_INET, "all", key), _conf(state, AF_INET, ifname, key))


def _forwarding(state: HostState, family: int, ifname: str) -> bool:
    """IN_DEV_FORWARD: the input device's own forwarding switch."""
    base = "net.ipv4.conf" if family == AF_INET else "net.ipv6.conf"
    for key in (f"{base}.{ifname}.forwarding", f"{base}.all.forwarding"):
        if key in state.sysctls:
            return state.sysctl(key) not in ("0", "")
    if family == AF_INET:
        return state.sysctl("net.ipv4.ip_forward") not in ("0", "")
    return False


def _ignore_linkdown(state: HostState, family: int, ifname: str | None) -> bool:
    if not ifname:
        return False
    return bool(max(_conf(state, family, "all", "ignore_routes_with_linkdown"),
                    _conf(state, family, ifname, "ignore_routes_with_linkdown")))


# --- rule text and matching --------------------------------------------------------

def _prefix_text(family: int, addr: str | None, plen: int) -> str:
    if not addr or not plen:
        return "all"
    return addr if plen == bits(family) else f"{addr}/{plen}"


def _range_text(r: tuple[int, int]) -> str:
    return str(r[0]) if r[0] == r[1] else f"{r[0]}-{r[1]}"


def rule_text(state: HostState, rule: Rule) -> str:
    """The rule as `ip rule show` prints it."""
    parts = [f"{rule.priority}:"]
    if rule.invert:
        parts.append("not")
    parts.append(f"from {_prefix_text(rule.family, rule.src, rule.src_len)}")
    if rule.dst and rule.dst_len:
        parts.append(f"to {_prefix_text(rule.family, rule.dst, rule.dst_len)}")
    if rule.tos:
        parts.append(f"tos {rule.tos:#x}")
    if rule.fwmark or rule.fwmask:
        parts.append(f"fwmark {rule.fwmark:#x}" + ("" if rule.fwmask == 0xFFFFFFFF else f"/{rule.fwmask:#x}"))
    if rule.iif:
        parts.append(f"iif {rule.iif}" + ("" if state.link(rule.iif) else " [detached]"))
    if rule.oif:
        parts.append(f"oif {rule.oif}" + ("" if state.link(rule.oif) else " [detached]"))
    if rule.l3mdev:
        parts.append("lookup [l3mdev-table]")
    if rule.uidrange:
        parts.append(f"uidrange {rule.uidrange[0]}-{rule.uidrange[1]}")
    if rule.ipproto:
        parts.append(f"ipproto {rule.ipproto}")
    if rule.sport:
        parts.append(f"sport {_range_text(rule.sport)}")
    if rule.dport:
        parts.append(f"dport {_range_text(rule.dport)}")
    if rule.action == "lookup":
        if not rule.l3mdev:
            parts.append(f"lookup {state.table_name(rule.table)}")
    elif rule.action == "goto":
        parts.append(f"goto {rule.goto}")
    else:
        parts.append(rule.action)
    if rule.suppress_prefixlength >= 0:
        parts.append(f"suppress_prefixlength {rule.suppress_prefixlength}")
    if rule.suppress_ifgroup >= 0:
        parts.append(f"suppress_ifgroup {rule.suppress_ifgroup}")
    return " ".join(parts)


def longest_match(state: HostState, family: int, table: int, dst: str) -> Route | None:
    """The route of `table` with the longest prefix covering `dst`, the first alias in kernel order
    (what answered a lookup the kernel reports by table and destination)."""
    tb = index_for(state).table(family, table)
    if tb is None:
        return None
    address, masks = addr_int(family, dst), _MASKS[family]
    for plen in tb.lengths:
        routes = tb.by_len[plen].get(address & masks[plen])
        if routes:
            return routes[0]
    return None


def route_text(state: HostState, route: Route) -> str:
    """The route as `ip route show table X` prints it."""
    words = [] if route.type == "unicast" else [route.type]
    words.append(route.prefix)
    if route.tos:
        words += ["tos", f"0x{route.tos:02x}"]
    if len(route.nexthops) == 1:
        hop = route.nexthops[0]
        if hop.gateway:
            words += ["via", hop.gateway]
        if hop.dev:
            words += ["dev", hop.dev]
    if route.table != TABLE_MAIN:
        words += ["table", state.table_name(route.table)]
    if route.protocol not in ("boot", "unspec"):
        words += ["proto", route.protocol]
    if route.scope != SCOPE_UNIVERSE and route.type == "unicast":
        words += ["scope", SCOPE_WORDS.get(route.scope, str(route.scope))]
    if route.prefsrc:
        words += ["src", route.prefsrc]
    if route.metric:
        words += ["metric", str(route.metric)]
    for hop in route.nexthops if len(route.nexthops) > 1 else ():
        words += ["nexthop", *(["via", hop.gateway] if hop.gateway else []), "dev", str(hop.dev),
                  "weight", str(hop.weight)]
    return " ".join(words)


def _mismatch(state: HostState, p: _Rule, flow: _Flow) -> str | None:
    """Why the rule's selectors do not match the flow, or None when they all do
    (fib_rule_match, then fib4_rule_match / fib6_rule_match)."""
    r = p.rule
    fam = flow.family
    if r.iif:
        if state.link(r.iif) is None:
            return f"iif {r.iif} does not exist"
        if r.iif != flow.iif:
            return f"iif {r.iif} is not the input interface {flow.iif}"
    if r.oif:
        if state.link(r.oif) is None:
            return f"oif {r.oif} does not exist"
        if r.oif != flow.oif:
            return f"oif {r.oif} is not the output interface {flow.oif or '(none given)'}"
    if (r.fwmark ^ flow.mark) & r.fwmask:
        return f"fwmark {r.fwmark:#x}/{r.fwmask:#x} does not match mark {flow.mark:#x}"
    if r.l3mdev:
        return "l3mdev (VRF) rules are not modelled"
    if r.uidrange and not r.uidrange[0] <= flow.uid <= r.uidrange[1]:
        return f"uidrange {r.uidrange[0]}-{r.uidrange[1]} does not contain uid {flow.uid}"
    if p.src_mask and (flow.src & p.src_mask) != p.src:
        return (f"from {_prefix_text(fam, r.src, r.src_len)} does not contain "
                f"{int_addr(fam, flow.src)}")
    if p.dst_mask and (flow.dst & p.dst_mask) != p.dst:
        return f"to {_prefix_text(fam, r.dst, r.dst_len)} does not contain {int_addr(fam, flow.dst)}"
    if r.tos and r.tos != flow.tos & (TOS_MATCH_MASK if fam == AF_INET else 0xFC):
        return f"tos {r.tos:#x} does not match the packet's tos {flow.tos:#x}"
    if r.ipproto and r.ipproto != flow.proto:
        return f"ipproto {r.ipproto} is not the packet's protocol {flow.proto}"
    if r.sport and r.sport[0] and not r.sport[0] <= flow.sport <= r.sport[1]:
        return f"sport {_range_text(r.sport)} does not contain {flow.sport}"
    if r.dport and r.dport[0] and not r.dport[0] <= flow.dport <= r.dport[1]:
        return f"dport {_range_text(r.dport)} does not contain {flow.dport}"
    return None


# --- table lookup --------------------------------------------------------------------

@dataclass
class _TableHit:
    """What fib_table_lookup returned for one table."""

    error: str | None  # None: a route was found; "EAGAIN": no route or throw
    reason: str
    route: Route | None = None
    prefixlen: int = 0
    table: int = 0
    nexthops: tuple[Nexthop, ...] = ()


def _good_nexthops(state: HostState, route: Route, flow: _Flow, ignore_linkstate: bool = False) -> list[Nexthop]:
    """fib_lookup_good_nhc: not dead, not linkdown when the device ignores such
    routes, and on the requested output interface when one is given."""
    good = []
    for nh in route.nexthops:
        if nh.dead:
            continue
        if nh.linkdown and not ignore_linkstate and _ignore_linkdown(state, flow.family, nh.dev):
            continue
        if flow.oif and nh.dev != flow.oif:
            continue
        good.append(nh)
    return good


def _route_candidates(ix: FibIndex, tables: list[int], flow: _Flow):
    """(prefixlen, table, route) in kernel order over one trie made of `tables`
    (one table, or local+main while they are merged: aliases of the same prefix
    sort by table id descending, fib_find_alias)."""
    fam = flow.family
    masks = _MASKS[fam]
    loaded = [(t, ix.table(fam, t)) for t in tables]
    loaded = [(t, tb) for t, tb in loaded if tb is not None]
    if len(loaded) == 1:
        tid, tb = loaded[0]
        for plen in tb.lengths:
            routes = tb.by_len[plen].get(flow.dst & masks[plen])
            if routes:
                for r in routes:
                    yield plen, tid, r
        return
    lengths = sorted({plen for _t, tb in loaded for plen in tb.lengths}, reverse=True)
    for plen in lengths:
        for tid, tb in loaded:
            nets = tb.by_len.get(plen)
            routes = nets.get(flow.dst & masks[plen]) if nets else None
            if routes:
                for r in routes:
                    yield plen, tid, r


def _table_lookup(ix: FibIndex, tables: list[int], flow: _Flow, ignore_linkstate: bool = False) -> _TableHit:
    """fib_table_lookup + check_leaf (IPv4) / fib6_table_lookup (IPv6, simplified)."""
    state = ix.state
    fam = flow.family
    if all(ix.table(fam, t) is None for t in tables):
        name = "+".join(state.table_name(t) for t in tables)
        return _TableHit("EAGAIN", f"table {name} ({'+'.join(map(str, tables))}) is empty")
    tos = flow.tos & TOS_MATCH_MASK
    skipped: list[str] = []
    for plen, tid, r in _route_candidates(ix, tables, flow):
        if fam == AF_INET and r.tos and r.tos != tos:
            continue
        if r.scope < flow.min_scope:
            continue
        if fam == AF_INET6 and r.src and r.src_len:
            if (flow.src & _MASKS[fam][r.src_len]) != addr_int(fam, r.src) & _MASKS[fam][r.src_len]:
                continue
        err = ROUTE_TYPE_ERRORS.get(r.type)
        if err:
            # Error routes end the lookup before any nexthop check; throw (EAGAIN)
            # sends the rule walk on to the next rule.
            return _TableHit(err, f"route {r.type} {r.prefix}", r, plen, tid)
        if not r.nexthops:
            return _TableHit(None, f"route {r.prefix}", r, plen, tid)
        good = _good_nexthops(state, r, flow, ignore_linkstate)
        if good:
            return _TableHit(None, f"route {r.prefix}", r, plen, tid, tuple(good))
        skipped.append(f"{r.prefix} (no usable nexthop{' via ' + flow.oif if flow.oif else ''})")
    name = "+".join(state.table_name(t) for t in tables)
    why = f"no route in table {name} matches {int_addr(fam, flow.dst)}"
    if skipped:
        why += "; skipped " + ", ".join(skipped)
    return _TableHit("EAGAIN", why)


# --- the rule walk -------------------------------------------------------------------

@dataclass
class _Lookup:
    """fib_lookup's outcome."""

    steps: list[RuleStep] = field(default_factory=list)
    rule: Rule | None = None
    hit: _TableHit | None = None
    error: str | None = None
    reason: str | None = None
    notes: list[str] = field(default_factory=list)


def _step(ix: FibIndex, p: _Rule, matched: bool, reason: str | None, result: str) -> RuleStep:
    if p._text is None:
        p._text = rule_text(ix.state, p.rule)
    return RuleStep(p.rule, p._text, matched, reason, result)


def _suppressed(ix: FibIndex, rule: Rule, hit: _TableHit) -> str | None:
    """fib4_rule_suppress / fib6_rule_suppress, applied only to successful lookups."""
    if hit.prefixlen <= rule.suppress_prefixlength:
        return f"suppressed: prefix length {hit.prefixlen} <= {rule.suppress_prefixlength}"
    if rule.suppress_ifgroup != -1 and hit.route and hit.route.nexthops:
        link = ix.state.link(hit.route.nexthops[0].dev)
        if link and link.group == rule.suppress_ifgroup:
            return f"suppressed: device {link.name} is in interface group {rule.suppress_ifgroup}"
    return None


def _fib_lookup(ix: FibIndex, flow: _Flow, full_trace: bool | None = None, record: bool = True) -> _Lookup:
    if flow.family == AF_INET and ix.merged:
        return _merged_lookup(ix, flow)
    rules = ix.rules(flow.family)
    if full_trace is None:
        full_trace = len(rules) <= FULL_TRACE_MAX_RULES
    if full_trace:
        return _walk_rules(ix, flow, rules, list(range(len(rules))), True, record)
    order = ix.candidate_rules(flow.family, flow)
    out = _walk_rules(ix, flow, rules, order, False, record)
    if record and len(order) < len(rules):
        out.notes.append(f"{len(rules) - len(order)} of {len(rules)} rules left out of the steps: "
                         "their from/to/fwmark/iif selectors cannot match this flow")
    return out


def _walk_rules(ix: FibIndex, flow: _Flow, rules: list[_Rule], order: list[int], full_trace: bool,
                record: bool = True) -> _Lookup:
    """fib_rules_lookup over the rules at `order` (all of them, or the index's candidates);
    `record`: list each rule's step (an answer nobody reads step by step, such as the reverse
    lookup of the source check, skips them)."""
    out = _Lookup()
    pos = 0
    while pos < len(order):
        p = rules[order[pos]]
        pos += 1
        r = p.rule
        why = _mismatch(ix.state, p, flow)
        matched = (why is None) != r.invert
        if not matched:
            if record:
                out.steps.append(_step(ix, p, False, why or "not: all selectors match, inverted", "no match"))
            continue
        reason = "not: " + why if r.invert else None
        if r.action == "goto":
            if p.target is None:
                if record:
                    out.steps.append(_step(ix, p, True, f"no rule with priority {r.goto} (unresolved goto)",
                                           "fell through: goto target missing"))
                continue
            if record:
                out.steps.append(_step(ix, p, True, reason, f"goto {r.goto}"))
            pos = bisect_left(order, p.target) if not full_trace else p.target
            continue
        if r.action == "nop":
            if record:
                out.steps.append(_step(ix, p, True, reason, "nop"))
            continue
        if r.action in RULE_ACTION_ERRORS:
            err = RULE_ACTION_ERRORS[r.action]
            if record:
                out.steps.append(_step(ix, p, True, reason, f"{r.action} → {err}"))
            out.rule, out.error, out.reason = r, err, f"rule {r.priority}: {r.action}"
            return out
        if r.action != "lookup":
            if record:
                out.steps.append(_step(ix, p, True, f"action {r.action} is not modelled", "fell through"))
            continue
        hit = _table_lookup(ix, [r.table], flow)
        if hit.error == "EAGAIN":
            if record:
                out.steps.append(_step(ix, p, True, hit.reason, f"fell through: {hit.reason}"))
            continue
        if hit.error is None:
            suppressed = _suppressed(ix, r, hit)
            if suppressed:
                if record:
                    out.steps.append(_step(ix, p, True, suppressed, f"fell through: {suppressed}"))
                continue
            if record:
                out.steps.append(_step(ix, p, True, reason, "lookup: route found"))
        else:
            if record:
                out.steps.append(_step(ix, p, True, hit.reason, f"lookup: {hit.reason} → {hit.error}"))
            out.error, out.reason = hit.error, f"{hit.reason} in table {ix.state.table_name(hit.table)}"
        out.rule, out.hit = r, hit
        return out
    out.error, out.reason = "ENETUNREACH", "no rule's lookup found a route (end of the rule list)"
    return out


def _merged_lookup(ix: FibIndex, flow: _Flow) -> _Lookup:
    """The fast path while only the default rules exist: main (holding local too),
    then the default table if it exists and main had no route (fib_lookup in
    include/net/ip_fib.h). An error route in main (prohibit, …) is final."""
    out = _Lookup()
    rules = {p.rule.priority: p for p in ix.rules(AF_INET)}
    out.notes.append("only the default rules exist: the kernel keeps local and main in one trie "
                     "and reports local routes as table main")
    out.steps.append(_step(ix, rules[0], True, "merged with main until the first custom rule",
                           "merged into main"))
    hit = _table_lookup(ix, [TABLE_LOCAL, TABLE_MAIN], flow)
    if hit.route is not None:
        hit.table = TABLE_MAIN
    chosen = rules[32766]
    if hit.error == "EAGAIN" and ix.table(AF_INET, TABLE_DEFAULT) is not None:
        out.steps.append(_step(ix, chosen, True, hit.reason, f"fell through: {hit.reason}"))
        hit = _table_lookup(ix, [TABLE_DEFAULT], flow)
        chosen = rules[32767]
    if hit.error == "EAGAIN":
        out.steps.append(_step(ix, chosen, True, hit.reason, f"fell through: {hit.reason}"))
        out.error, out.reason = "ENETUNREACH", "no route in main or default"
        return out
    result = "lookup: route found" if hit.error is None else f"lookup: {hit.reason} → {hit.error}"
    out.steps.append(_step(ix, chosen, True, None if hit.error is None else hit.reason, result))
    out.rule, out.hit = chosen.rule, hit
    if hit.error:
        out.error, out.reason = hit.error, hit.reason
    return out


# --- results ---------------------------------------------------------------------------

def _multipath_note(state: HostState, family: int, count: int) -> str:
    key = "net.ipv4.fib_multipath_hash_policy" if family == AF_INET else "net.ipv6.fib_multipath_hash_policy"
    policy = int(state.sysctl(key, "0") or 0)
    return (f"hash-dependent (fib_multipath_hash_policy={policy}, {HASH_POLICIES.get(policy, '?')}): "
            f"one of {count} nexthops, chosen by the flow hash")


def _result(ix: FibIndex, flow: _Flow, lk: _Lookup, **extra) -> FibResult:
    hit = lk.hit
    fields = dict(family=flow.family, steps=tuple(lk.steps), rule=lk.rule, notes=tuple(lk.notes))
    if hit is not None and hit.route is not None:
        nexthops = hit.nexthops
        fields.update(table=hit.table, route=hit.route, type=hit.route.type, nexthops=nexthops)
        if len(nexthops) == 1:
            fields.update(nexthop=nexthops[0], gateway=_gateway_used(ix, hit.route, nexthops[0]), dev=nexthops[0].dev)
        elif len(nexthops) > 1:
            fields["multipath_note"] = _multipath_note(ix.state, flow.family, len(nexthops))
        if hit.route.prefsrc:
            fields["prefsrc"] = hit.route.prefsrc
    if lk.error:
        fields.update(error=lk.error, error_reason=lk.reason)
    fields.update(extra)
    return FibResult(**fields)


def _gateway_used(ix: FibIndex, route: Route, nh: Nexthop) -> str | None:
    """The gateway a packet is sent to. When the route was added,
    fib_check_nh_v4_gw gave the nexthop the scope of the route that reached the
    gateway (looked up with scope >= link on the nexthop's device: the route's
    own table unless main, then the rules); rt_set_nexthop uses the gateway
    only if that scope is link, so a gateway reached through a local
    (host-scope) route is not used. The rules of that moment are unknown: the
    default ones (local, main, default) stand in for them."""
    if not nh.gateway or nh.onlink or ":" in nh.gateway:
        return nh.gateway
    # The answer depends on the route and nexthop only: asked once per state (a batch asks it
    # for every flow that leaves by the same route).
    key = (route, nh)
    if key not in ix.gateways_used:
        ix.gateways_used[key] = _gateway_reached_on_link(ix, route, nh)
    return ix.gateways_used[key]


def _gateway_reached_on_link(ix: FibIndex, route: Route, nh: Nexthop) -> str | None:
    flow = _Flow(AF_INET, addr_int(AF_INET, nh.gateway), 0, LOOPBACK, nh.dev, 0, 0, 0, 0, 0, 0,
                 min_scope=max(route.scope + 1, SCOPE_LINK))
    tables = ([route.table] if route.table != TABLE_MAIN else []) + [TABLE_LOCAL, TABLE_MAIN, TABLE_DEFAULT]
    for table in tables:
        hit = _table_lookup(ix, [table], flow, ignore_linkstate=True)
        if hit.error != "EAGAIN":
            break
    if hit.route is None or hit.route.scope != SCOPE_LINK:
        return None
    return nh.gateway


def _flow(state: HostState, q: RouteQuery, *, iif: str, oif: str | None, uid: int, ports: bool,
          received: bool = False) -> _Flow:
    """The lookup's flow. `received`: a packet's input route, whose protocol and ports the
    kernel reads from the packet only while some rule needs them (below: 0)."""
    fam = q.family
    proto = q.proto
    if received and not index_for(state).input_dissects(fam):
        proto, ports = 0, False
    return _Flow(
        family=fam, dst=addr_int(fam, q.dst), src=addr_int(fam, q.src) if q.src else 0,
        iif=iif, oif=oif, mark=q.mark, tos=q.tos, proto=proto,
        sport=(q.sport or 0) if ports else 0, dport=(q.dport or 0) if ports else 0, uid=uid,
    )


def lookup_rules(state: HostState, query: RouteQuery, *, full_trace: bool | None = None) -> FibResult:
    """fib_lookup alone: the rule walk and the table lookups, no path checks.

    `full_trace`: True lists every rule in the steps, False only those the rule
    index cannot rule out; default: every rule up to FULL_TRACE_MAX_RULES."""
    ix = index_for(state)
    flow = _flow(state, query, iif=query.iif or LOOPBACK, oif=query.oif,
                 uid=0 if query.iif else (query.uid or 0), ports=True, received=bool(query.iif))
    return _result(ix, flow, _fib_lookup(ix, flow, full_trace))


# --- source selection (IPv4) ------------------------------------------------------------------

def _ifa_match(state: HostState, a, dst: int) -> bool:
    net = addr_int(AF_INET, a.network_address)
    mask = _MASKS[AF_INET][a.prefixlen]
    return (dst & mask) == (net & mask)


def _vrf_slave(state: HostState, link: Link | None) -> bool:
    master = state.link(link.master) if link and link.master else None
    return bool(master and master.l3mdev_master)


def select_source(state: HostState, dev: str | None, dst: int, scope: int) -> str | None:
    """inet_select_addr: a primary address of `dev` within `scope`, preferring one
    whose subnet holds `dst`; else any non-link-scope address of another device
    (loopback first, VRF slaves excluded)."""
    link = state.link(dev)
    if link is not None:
        localnet_scope = SCOPE_LINK if conf_or(state, link.name, "route_localnet") else SCOPE_HOST
        chosen = None
        for a in state.addresses_of(link.name, AF_INET):
            if a.secondary or min(a.scope, localnet_scope) > scope:
                continue
            if not dst or _ifa_match(state, a, dst):
                return a.local
            chosen = chosen or a.local
        if chosen:
            return chosen
    for other in sorted(state.links, key=lambda lk: lk.index):
        if _vrf_slave(state, other):
            continue
        for a in state.addresses_of(other.name, AF_INET):
            if not a.secondary and a.scope != SCOPE_LINK and a.scope <= scope:
                return a.local
    return None


def ipv6_select_source(state: HostState, dev: str | None, dst: str) -> str | None:
    """An approximation of ipv6_dev_get_saddr: of `dev`'s global addresses, the one
    sharing the longest prefix with `dst` (RFC 6724 rule 8 only)."""
    candidates = [a for a in state.addresses_of(dev, AF_INET6) if a.scope == SCOPE_UNIVERSE] if dev else []
    if not candidates:
        return None
    target = addr_int(AF_INET6, dst)
    return max(candidates, key=lambda a: 128 - (addr_int(AF_INET6, a.local) ^ target).bit_length()).local


def _route_source(state: HostState, route: Route, nh: Nexthop | None) -> str | None:
    """fib_result_prefsrc: the route's prefsrc, else inet_select_addr on the
    nexthop device towards its gateway within the route's scope."""
    if route.prefsrc:
        return route.prefsrc
    if nh is None:
        return None
    gw = addr_int(AF_INET, nh.gateway) if nh.gateway and ":" not in nh.gateway else 0
    return select_source(state, nh.dev, gw, route.scope)


# --- the input path ------------------------------------------------------------------------------

class Rejected(NamedTuple):
    """Why fib_validate_source refuses a packet's source, and the drop reason it returns."""

    why: str
    drop_reason: str


def _validate_source(ix: FibIndex, flow: _Flow, dst_for_reverse: int, oif: str | None) -> Rejected | None:
    """fib_validate_source: None when the source is acceptable, else why not.

    The reverse lookup swaps the addresses, runs with iif = the forward route's
    output device (lo for local delivery), the mark only with src_valid_mark."""
    state = ix.state
    dev = flow.iif
    rpf = conf_or(state, dev, "rp_filter")
    accept_local = conf_or(state, dev, "accept_local")
    if not rpf and (dev != oif or not conf_or(state, dev, "send_redirects")):
        if accept_local:
            return None
        if not (ix.has_custom_local_routes() or not ix.merged):
            owner = ix.local_address(AF_INET, flow.src)
            return (Rejected(f"source {int_addr(AF_INET, flow.src)} is a local address (of {owner})",
                             "IP_LOCAL_SOURCE") if owner else None)
    reverse = _Flow(family=AF_INET, dst=flow.src, src=dst_for_reverse, iif=oif or LOOPBACK, oif=None,
                    mark=flow.mark if conf_or(state, dev, "src_valid_mark") else 0, tos=flow.tos,
                    proto=flow.proto, sport=flow.dport, dport=flow.sport, uid=0)
    src_text = int_addr(AF_INET, flow.src)
    lk = _fib_lookup(ix, reverse, full_trace=False, record=False)
    mode = {1: "1 (strict)", 2: "2 (loose)"}.get(rpf, str(rpf))
    if lk.error or lk.hit is None or lk.hit.route is None:
        return Rejected(f"rp_filter={mode}: no route back to {src_text}", "IP_RPFILTER") if rpf else None
    route = lk.hit.route
    if route.type != "unicast":
        if route.type != "local":
            return Rejected(f"reverse route to {src_text} is {route.type}", "IP_INVALID_SOURCE")
        if not accept_local:
            return Rejected(f"source {src_text} is a local address (accept_local=0)", "IP_LOCAL_SOURCE")
    uses_dev = any(nh.dev == dev for nh in route.nexthops) or (route.type == "local" and dev == LOOPBACK)
    if uses_dev:
        return None
    if not state.addresses_of(dev, AF_INET):
        return Rejected(f"rp_filter={mode}: {dev} has no IPv4 address", "IP_RPFILTER") if rpf else None
    if rpf == 1:
        via = ", ".join(sorted({nh.dev for nh in route.nexthops if nh.dev})) or "?"
        return Rejected(f"rp_filter={mode}: reverse route to {src_text} leaves via {via}, not {dev}", "IP_RPFILTER")
    return None


def _ip_error_drop_reason(err: str, forwarding: bool) -> str:
    """ip_error, where a failed input route sends the packet: only a missing route, or an
    unreachable one with forwarding off, has a reason of its own."""
    if err == "ENETUNREACH":
        return "IP_INNOROUTES"
    if err == "EHOSTUNREACH" and not forwarding:
        return "IP_INADDRERRORS"
    return "NOT_SPECIFIED"


# ip6_pkt_discard and ip6_pkt_prohibit (ip6_pkt_drop) count every failure as no route; a
# blackhole route's dst_discard gives no reason.
_IP6_DROP_REASONS = {"ENETUNREACH": "IP_INNOROUTES", "EHOSTUNREACH": "IP_INNOROUTES", "EACCES": "IP_INNOROUTES",
                     "EINVAL": "NOT_SPECIFIED"}


def route_input(state: HostState, query: RouteQuery) -> FibResult:
    """ip_route_input_slow (IPv4); IPv6: the rule walk and table lookup only."""
    ix = index_for(state)
    fam = query.family
    dev = query.iif or LOOPBACK
    if state.link(dev) is None:
        return FibResult(family=fam, error="ENODEV", error_reason=f"no interface {dev}")
    ports = query.proto in PORT_PROTOCOLS
    flow = _flow(state, query, iif=dev, oif=None, uid=0, ports=ports, received=True)
    if fam == AF_INET6:
        lk = _fib_lookup(ix, flow)
        return _result(ix, flow, lk, drop_reason=_IP6_DROP_REASONS.get(lk.error) if lk.error else None)

    def fail(err: str, why: str, drop_reason: str, *notes: str) -> FibResult:
        return FibResult(family=fam, error=err, error_reason=why, notes=notes, drop_reason=drop_reason)

    src, dst = flow.src, flow.dst
    src_text, dst_text = int_addr(fam, src), query.dst
    route_get_note = ("a dropped packet: `ip route get` reports EINVAL for every drop reason "
                      "since kernel 6.13 (earlier: EXDEV for rp_filter)")
    if _v4_multicast(dst):
        return _multicast_input(ix, flow, route_get_note)
    if _v4_multicast(src) or _v4_lbcast(src):
        return fail("EINVAL", f"martian source {src_text} (multicast/broadcast)", "IP_INVALID_SOURCE", route_get_note)
    if _v4_lbcast(dst) or (src == 0 and dst == 0):
        return _broadcast_input(ix, flow, None)
    if _v4_zeronet(src):
        return fail("EINVAL", f"martian source {src_text} (0.0.0.0/8)", "IP_INVALID_SOURCE", route_get_note)
    if _v4_zeronet(dst):
        return fail("EINVAL", f"martian destination {dst_text} (0.0.0.0/8)", "IP_INVALID_DEST", route_get_note)
    if _v4_loopback(dst):
        if not conf_or(state, dev, "route_localnet"):
            return fail("EINVAL", f"martian destination {dst_text} (127/8, route_localnet=0 on {dev})",
                        "IP_LOCALNET", route_get_note)
    elif _v4_loopback(src) and not conf_or(state, dev, "route_localnet"):
        return fail("EINVAL", f"martian source {src_text} (127/8, route_localnet=0 on {dev})", "IP_LOCALNET",
                    route_get_note)

    lk = _fib_lookup(ix, flow)
    forwarding = _forwarding(state, fam, dev)
    if lk.error:
        if not forwarding:
            return _result(ix, flow, lk, error="EHOSTUNREACH", error_reason=f"{lk.reason}; forwarding is off on {dev}",
                           drop_reason=_ip_error_drop_reason("EHOSTUNREACH", forwarding))
        return _result(ix, flow, lk, drop_reason=_ip_error_drop_reason(lk.error, forwarding))
    hit = lk.hit
    rtype = hit.route.type
    if rtype == "broadcast":
        if _conf(state, fam, "all", "bc_forwarding") and _conf(state, fam, dev, "bc_forwarding"):
            return _forward(ix, flow, lk)
        return _broadcast_input(ix, flow, lk)
    if rtype == "local":
        rejected = _validate_source(ix, flow, dst, None)
        if rejected:
            return _result(ix, flow, lk, error="EINVAL", error_reason=rejected.why, drop_reason=rejected.drop_reason,
                           notes=(*lk.notes, route_get_note))
        return _result(ix, flow, lk, dev=LOOPBACK, gateway=None,
                       notes=(*lk.notes, f"delivered locally (route local {hit.route.prefix})"))
    if not forwarding:
        return _result(ix, flow, lk, error="EHOSTUNREACH", error_reason=f"forwarding is off on {dev}",
                       drop_reason=_ip_error_drop_reason("EHOSTUNREACH", forwarding))
    if rtype != "unicast":
        return _result(ix, flow, lk, error="EINVAL", error_reason=f"martian destination: route type {rtype}",
                       drop_reason="IP_INVALID_DEST", notes=(*lk.notes, route_get_note))
    return _forward(ix, flow, lk)


def _multicast_input(ix: FibIndex, flow: _Flow, route_get_note: str) -> FibResult:
    """ip_route_input_rcu for a multicast destination: accepted only for a group
    the device joined, then ip_mc_validate_source. Only the all-hosts group
    224.0.0.1 is known here (every up device joins it in ip_mc_up); other
    memberships and multicast routing are not in the HostState."""
    state = ix.state
    dev = flow.iif
    link = state.link(dev)
    dst_text, src_text = int_addr(AF_INET, flow.dst), int_addr(AF_INET, flow.src)

    def fail(why: str, drop_reason: str = "NOT_SPECIFIED") -> FibResult:
        return FibResult(family=AF_INET, error="EINVAL", error_reason=why, notes=(route_get_note,),
                         drop_reason=drop_reason)

    if flow.dst != ALL_HOSTS or not link.up:
        return fail(f"multicast {dst_text}: no known membership on {dev} (only 224.0.0.1 on up "
                    "devices is modelled)")
    if _v4_multicast(flow.src) or _v4_lbcast(flow.src):
        return fail(f"martian source {src_text} (multicast/broadcast)", "IP_INVALID_SOURCE")
    if _v4_loopback(flow.src) and not conf_or(state, dev, "route_localnet"):
        return fail(f"martian source {src_text} (127/8, route_localnet=0 on {dev})", "IP_LOCALNET")
    if _v4_zeronet(flow.src):
        if not _v4_local_multicast(flow.dst) and flow.proto != IPPROTO_IGMP:
            return fail(f"martian source {src_text} (0.0.0.0/8)", "IP_INVALID_SOURCE")
    else:
        rejected = _validate_source(ix, flow, 0, None)
        if rejected:
            return fail(*rejected)
    return FibResult(family=AF_INET, type="multicast", dev=LOOPBACK,
                     notes=(f"multicast {dst_text}: delivered locally ({dev} is a member)",))


def _broadcast_input(ix: FibIndex, flow: _Flow, lk: _Lookup | None) -> FibResult:
    """brd_input: checked against the source (reverse lookup towards 0.0.0.0)."""
    if flow.src:
        rejected = _validate_source(ix, flow, 0, None)
        if rejected:
            return FibResult(family=AF_INET, steps=tuple(lk.steps) if lk else (), error="EINVAL",
                             error_reason=rejected.why, drop_reason=rejected.drop_reason)
    if lk is None:
        return FibResult(family=AF_INET, type="broadcast", dev=LOOPBACK,
                         notes=("limited broadcast: delivered locally without a route lookup",))
    return _result(ix, flow, lk, type="broadcast", dev=LOOPBACK, gateway=None, nexthop=None,
                   notes=(*lk.notes, "broadcast: delivered locally"))


def _forward(ix: FibIndex, flow: _Flow, lk: _Lookup) -> FibResult:
    """__mkroute_input: source validated against the chosen nexthop's device."""
    nexthops = lk.hit.nexthops or (None,)
    outcomes = {_validate_source(ix, flow, flow.dst, nh.dev if nh else None) for nh in nexthops}
    notes = list(lk.notes)
    if len(outcomes) > 1:
        notes.append("the source check depends on which multipath nexthop the hash picks")
    rejected = sorted(outcomes, key=lambda w: w is not None)[0] if len(outcomes) > 1 else outcomes.pop()
    if rejected:
        return _result(ix, flow, lk, error="EINVAL", error_reason=rejected.why, drop_reason=rejected.drop_reason,
                       notes=(*notes, "a dropped packet: `ip route get` reports EINVAL for every drop "
                              "reason since kernel 6.13 (earlier: EXDEV for rp_filter)"))
    return _result(ix, flow, lk, prefsrc=None, notes=tuple(notes))


# --- the output path --------------------------------------------------------------------------------

def route_output(state: HostState, query: RouteQuery) -> FibResult:
    """ip_route_output_key_hash_rcu (IPv4); IPv6: the rule walk and table lookup only."""
    ix = index_for(state)
    fam = query.family
    flow = _flow(state, query, iif=LOOPBACK, oif=query.oif, uid=query.uid or 0, ports=True)
    if fam == AF_INET6:
        res = _result(ix, flow, _fib_lookup(ix, flow))
        if query.src or res.error or res.prefsrc or not res.dev:
            return res
        source = ipv6_select_source(state, res.dev, query.dst)
        if source is None:
            return res
        return _replace(res, prefsrc=source, notes=(*res.notes, (
            f"IPv6 source {source}: approximated (longest matching prefix among {res.dev}'s global "
            "addresses); the kernel's full RFC 6724 selection is not simulated")))

    def fail(err: str, why: str) -> FibResult:
        return FibResult(family=fam, error=err, error_reason=why)

    src, dst = flow.src, flow.dst
    oif_link = state.link(query.oif) if query.oif else None
    if src:
        if _v4_multicast(src) or _v4_lbcast(src) or _v4_zeronet(src):
            return fail("EINVAL", f"source {query.src} cannot be used (multicast, broadcast or 0/8)")
        owner = _source_device(ix, src)
        if query.oif is None and (_v4_multicast(dst) or _v4_lbcast(dst)):
            if owner is None:
                return fail("ENETUNREACH", f"source {query.src} is not a local address")
            return _output_route(ix, flow, None, owner, None, query.src)
        if owner is None:
            return fail("ENETUNREACH", f"source {query.src} is not a local address")
    if query.oif:
        if oif_link is None:
            return fail("ENODEV", f"no interface {query.oif}")
        if not oif_link.up:
            return fail("ENETUNREACH", f"output interface {query.oif} is down")
        if _v4_local_multicast(dst) or _v4_lbcast(dst) or query.proto == IPPROTO_IGMP:
            source = query.src or select_source(state, query.oif, 0, SCOPE_LINK)
            return _output_route(ix, flow, None, query.oif, None, source)
        if not src:
            if _v4_multicast(dst):
                flow.src = addr_int(fam, select_source(state, query.oif, 0, SCOPE_UNIVERSE) or "0.0.0.0")
            elif not dst:
                flow.src = addr_int(fam, select_source(state, query.oif, 0, SCOPE_HOST) or "0.0.0.0")
    if not dst:
        local = int_addr(fam, flow.src) if flow.src else "127.0.0.1"
        return FibResult(family=fam, type="local", dev=LOOPBACK, prefsrc=local,
                         notes=(f"destination 0.0.0.0 means this host ({local})",))
    lk = _fib_lookup(ix, flow)
    if lk.error:
        if query.oif:
            # ip_route_output_key_hash_rcu: with an output interface a failed
            # lookup means "assume the destination is on link".
            source = int_addr(fam, flow.src) if flow.src else select_source(state, query.oif, 0, SCOPE_LINK)
            res = FibResult(family=fam, steps=tuple(lk.steps), type="unicast", dev=query.oif, prefsrc=source,
                            notes=(*lk.notes, f"no route ({lk.error}: {lk.reason}); with oif {query.oif} "
                                   "the kernel assumes the destination is on link"))
            return _output_checks(ix, res, flow)
        return _result(ix, flow, lk)
    hit = lk.hit
    route = hit.route
    if route.type == "local":
        source = int_addr(fam, flow.src) if flow.src else (route.prefsrc or query.dst)
        return _output_checks(ix, _result(ix, flow, lk, dev=LOOPBACK, gateway=None, prefsrc=source), flow)
    nexthops = hit.nexthops
    notes = list(lk.notes)
    if query.oif:
        # fib_select_path skips the multipath choice when oif is set: the first
        # nexthop on that device is used.
        nexthops = nexthops[:1]
    elif len(nexthops) == 1 and hit.prefixlen == 0 and route.type == "unicast" and \
            _default_alternatives(ix, hit, flow) > 1:
        notes.append("several default routes share this metric: the kernel may pick another by "
                     "neighbour reachability (fib_select_default)")
    if flow.src:
        source = int_addr(fam, flow.src)
    else:
        sources = {_route_source(state, route, nh) for nh in (nexthops or (None,))}
        source = next(iter(sources)) if len(sources) == 1 else None
        if len(sources) > 1:
            notes.append("the source address depends on which multipath nexthop the hash picks")
    lk.notes = notes
    res = _result(ix, flow, lk, prefsrc=source)
    if query.oif and nexthops:
        nh = nexthops[0]
        res = _replace(res, nexthop=nh, nexthops=nexthops, gateway=_gateway_used(ix, res.route, nh), dev=nh.dev,
                       multipath_note=None)
    return _output_checks(ix, res, flow)


def choose_nexthop(state: HostState, query: RouteQuery, result: FibResult, nh: Nexthop) -> FibResult:
    """The decision as it is when the multipath hash picks `nh`: its device and gateway,
    the source check against its device (forwarded) or the source it selects (local-out)."""
    ix = index_for(state)
    fam = query.family
    route = result.route
    notes = tuple(n for n in result.notes if "depends on which multipath nexthop" not in n)
    res = _replace(result, nexthop=nh, gateway=_gateway_used(ix, route, nh), dev=nh.dev, notes=notes)
    if query.iif:
        if fam != AF_INET:
            return res
        flow = _flow(state, query, iif=query.iif, oif=None, uid=0, ports=query.proto in PORT_PROTOCOLS,
                     received=True)
        rejected = _validate_source(ix, flow, flow.dst, nh.dev)
        return (_replace(res, error="EINVAL", error_reason=rejected.why, drop_reason=rejected.drop_reason)
                if rejected else res)
    if fam != AF_INET:
        return _replace(res, prefsrc=query.src or ipv6_select_source(state, nh.dev, query.dst))
    flow = _flow(state, query, iif=LOOPBACK, oif=query.oif, uid=query.uid or 0, ports=True)
    return _output_checks(ix, _replace(res, prefsrc=query.src or _route_source(state, route, nh)), flow)


def _default_alternatives(ix: FibIndex, hit: _TableHit, flow: _Flow) -> int:
    routes = ix.table(AF_INET, hit.table).by_len.get(0, {}).get(0, []) if ix.table(AF_INET, hit.table) else []
    tos = flow.tos & TOS_MATCH_MASK
    return sum(1 for r in routes if r.metric == hit.route.metric and (not r.tos or r.tos == tos)
               and r.type == "unicast")


def _source_device(ix: FibIndex, src: int) -> str | None:
    """__ip_dev_find: the device holding the address, else a local route for it
    in the local table (so 127.0.0.2 works)."""
    owner = ix.local_address(AF_INET, src)
    if owner:
        return owner
    flow = _Flow(AF_INET, src, 0, LOOPBACK, None, 0, 0, 0, 0, 0, 0)
    tables = [TABLE_LOCAL, TABLE_MAIN] if ix.merged else [TABLE_LOCAL]
    hit = _table_lookup(ix, tables, flow)
    if hit.error is None and hit.route is not None and hit.route.type == "local":
        return hit.route.nexthops[0].dev if hit.route.nexthops else LOOPBACK
    return None


def _output_route(ix: FibIndex, flow: _Flow, lk: _Lookup | None, dev: str, gateway: str | None,
                  source: str | None) -> FibResult:
    res = FibResult(family=AF_INET, steps=tuple(lk.steps) if lk else (), type="unicast", dev=dev,
                    gateway=gateway, prefsrc=source,
                    notes=("sent on the given interface without a route lookup",))
    return _output_checks(ix, res, flow)


def _output_checks(ix: FibIndex, res: FibResult, flow: _Flow) -> FibResult:
    """__mkroute_output: loopback sources stay on lo; the destination class sets
    the type (limited broadcast, multicast; 0/8 is refused)."""
    state = ix.state
    src = addr_int(AF_INET, res.prefsrc) if res.prefsrc else flow.src
    devs = [res.dev] if res.dev else [nh.dev for nh in res.nexthops if nh.dev]

    def keeps_loopback(dev: str) -> bool:
        link = state.link(dev)
        return bool(link and "LOOPBACK" in link.flags) or bool(conf_or(state, dev, "route_localnet"))

    if _v4_loopback(src) and devs:
        refused = [d for d in devs if not keeps_loopback(d)]
        if len(refused) == len(devs):
            return _replace(res, error="EINVAL",
                            error_reason=f"loopback source {int_addr(AF_INET, src)} cannot leave via "
                            f"{' or '.join(devs)}")
        if refused:
            res = _replace(res, notes=(*res.notes, "the loopback-source check depends on which multipath "
                                       f"nexthop the hash picks (refused via {', '.join(refused)})"))
    if _v4_lbcast(flow.dst):
        return _replace(res, type="broadcast", gateway=None)
    if _v4_multicast(flow.dst):
        gateway = None if res.route is None or res.route.dst_len < 4 else res.gateway
        return _replace(res, type="multicast", gateway=gateway)
    if _v4_zeronet(flow.dst):
        return _replace(res, error="EINVAL", error_reason="destination in 0.0.0.0/8")
    return res


def _replace(res: FibResult, **changes) -> FibResult:
    return replace(res, **changes)


def route(state: HostState, query: RouteQuery) -> FibResult:
    """The kernel's decision for the flow: input path with an iif, else output."""
    if query.iif:
        return route_input(state, query)
    return route_output(state, query)
