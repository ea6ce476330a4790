"""Netfilter model and pure evaluator: a packet's walk through one hook.

`load_ruleset(raw)` turns the collector's plain dict (tracer.collect.netfilter)
into an immutable `Ruleset`; `traverse(ruleset, hook, packet, addresses=…)`
walks every base chain that sees the packet at that hook, in kernel order,
and returns a `HookTraversal`. Nothing here touches the kernel.

Semantics (the kernel is the judge; see docs/netfilter.md):
- base chains run by priority; equal priorities: the chain registered last
  runs first (nf_hook_entries_grow); legacy x_tables are assumed registered
  before any nft chain;
- accept ends the current base chain only, drop/reject/queue end the hook;
- nat-type chains run inside the NAT core hook (-100 for prerouting/output,
  100 for input/postrouting), ordered among themselves by priority, only for
  the first packet of a connection and only while conntrack is on for the
  packet's family (some loaded rule or object uses it: nf_ct_netns_get); the
  first chain that sets up a mapping ends the lookup (nf_nat_inet_fn);
- chains below conntrack (-200) at prerouting/output see no conntrack entry:
  `ct state` reads "invalid", ct mark/direction matches fail — except for a
  packet looped back through lo, which keeps the entry it left with;
- at output, a route chain or NAT that changed a routing key re-routes the
  packet there and then (ip_route_me_harder, the `reroute` callback).
"""

from __future__ import annotations

import bisect
import dataclasses
import ipaddress
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType

from tracer.sim.nft_expr import (
    ASK_THE_COMPILER,
    AddrEqCond,
    Scope,
    compile_nft_rule,
    leading_address_key,
    nft_text_index,
    xt_target_from_text,
)
from tracer.sim.nft_ipt import (
    BUILTIN,
    LEGACY_PRIORITY,
    IpSets,
    compile_saved_chain_rules,
    parse_ipset_save,
    parse_save,
)
from tracer.sim.nft_model import (
    HOOKS,
    NAT_CORE_PRIORITY,
    PRIO_CONNTRACK,
    Chain,
    Cond,
    EvalState,
    Miss,
    NatSpec,
    Rule,
    Stmt,
    Unknown,
    Verdict,
)

__all__ = [
    "AddressInfo", "PacketView", "RuleVisit", "ChainVisit", "NatRewrite", "HookTraversal", "Reroute",
    "Ruleset", "NatRule", "MssClamp", "FragNeededDrop", "load_ruleset", "traverse",
    "hooks_for_origin", "HOOKS", "ORIGIN_HOOKS",
]

ORIGIN_HOOKS = MappingProxyType({
    "forwarded": ("prerouting", "forward", "postrouting"),
    "local-out": ("output", "postrouting"),
    "local-in": ("prerouting", "input"),
})
_TERMINAL = ("drop", "reject", "queue")
MAX_JUMP_DEPTH = 16  # NFT_JUMP_STACK_SIZE
# Chains longer than this are indexed by address: rules whose leading matches
# include `ip saddr/daddr == ADDRESS` are only evaluated for packets with that
# address. Shorter chains keep a reason for every rule.
INDEX_MIN_RULES = 64


def hooks_for_origin(origin: str) -> tuple[str, ...]:
    """The hooks a packet crosses: forwarded, local-out or local-in."""
    try:
        return ORIGIN_HOOKS[origin]
    except KeyError:
        raise ValueError(f"unknown origin {origin!r}: one of {', '.join(ORIGIN_HOOKS)}") from None


# ------------------------------------------------------------------ inputs

def _none2(a, b):
    return None


def _none1(a):
    return None


@dataclass(frozen=True)
class AddressInfo:
    """What the evaluator needs from the rest of the host model.

    masquerade_source(oif, dst) -> the source address the kernel would pick
        for MASQUERADE (inet_select_addr / route source towards dst);
    address_type(addr) -> "local" | "unicast" | "broadcast" | "multicast" | …
        (what `fib daddr type` / `-m addrtype` see), None if unknown;
    interface_address(ifname, family) -> first primary address (REDIRECT);
    interface_kind(ifname) -> link kind ("ppp", "veth", …) or None.
    """

    masquerade_source: Callable[[str | None, str], str | None] = _none2
    address_type: Callable[[str], str | None] = _none1
    interface_address: Callable[[str, str], str | None] = _none2
    interface_kind: Callable[[str], str | None] = _none1

    @classmethod
    def simple(cls, local: Iterable[str] = (), *, interfaces: Mapping[str, Iterable[str]] | None = None,
               masquerade: Mapping[str, str] | None = None) -> AddressInfo:
        """A convenience for tests and snapshots: `local` addresses; per-interface
        addresses (first = primary); `masquerade` maps oif -> source address."""
        interfaces = {k: list(v) for k, v in (interfaces or {}).items()}
        local_set = {str(ipaddress.ip_address(a)) for a in local}
        for addrs in interfaces.values():
            local_set.update(str(ipaddress.ip_address(a)) for a in addrs)
        masq = dict(masquerade or {})

        def address_type(a):
            ip = ipaddress.ip_address(a)
            if str(ip) in local_set or ip.is_loopback:
                return "local"
            if ip.is_multicast:
                return "multicast"
            if ip.version == 4 and str(ip) == "255.255.255.255":
                return "broadcast"
            return "unicast"

        def iface_addr(ifname, family):
            for a in interfaces.get(ifname, ()):
                if (ipaddress.ip_address(a).version == 4) == (family == "ip"):
                    return a
            return None

        def masquerade_source(oif, dst):
            if oif in masq:
                return masq[oif]
            fam = "ip" if ipaddress.ip_address(dst).version == 4 else "ip6"
            return iface_addr(oif, fam) if oif else None
        return cls(masquerade_source, address_type, iface_addr)


@dataclass(frozen=True)
class PacketView:
    """The packet as one hook sees it. Interfaces are names."""

    family: str  # "ip" | "ip6"
    src: str
    dst: str
    proto: int  # IPPROTO number
    sport: int | None = None
    dport: int | None = None
    iif: str | None = None
    oif: str | None = None
    mark: int = 0
    dscp: int = 0
    ct_state: str = "new"  # new | established | related | invalid | untracked
    length: int | None = None
    icmp_type: int | None = None
    icmp_code: int | None = None
    tcp_flags: int | None = None  # bit mask (fin 1, syn 2, rst 4, psh 8, ack 16 …)
    uid: int | None = None
    gid: int | None = None
    ct_mark: int = 0
    ct_direction: str = "original"
    iifkind: str | None = None
    oifkind: str | None = None
    nftrace: bool = False
    # The packet still carries the conntrack entry it got when it left: a locally generated
    # packet looped back through lo meets prerouting and input with that entry (also below
    # conntrack's priority) and its NAT bound at output/postrouting
    nat_bound: bool = False

    def __post_init__(self):
        if self.family not in ("ip", "ip6"):
            raise ValueError(f"family must be 'ip' or 'ip6', not {self.family!r}")


# ----------------------------------------------------------------- results

@dataclass(frozen=True)
class RuleVisit:
    chain: str
    depth: int  # 0 = the base chain; +1 per jump/goto
    handle: int | None  # nft handle, iptables rule number; None for an implicit return
    text: str
    matched: bool | None
    reason: str | None = None
    action: str | None = None
    verdict: str | None = None
    counters: dict | None = None
    nft_handle: int | None = None  # for iptables-nft rules: the nft handle



class _LazyWhy:
    """A non-matching rule's reason, formatted only when read (most never are)."""

    __slots__ = ("cond", "snap")

    def __init__(self, cond: Cond, snap: _Snap):
        self.cond, self.snap = cond, snap

    def text(self) -> str:
        return self.cond.why(self.snap.st) if self.cond.why else self.cond.text


def _get_reason(self) -> str | None:
    r = self.__dict__["_reason"]
    if isinstance(r, _LazyWhy):
        r = r.text()
        self.__dict__["_reason"] = r
    return r


def _set_reason(self, value) -> None:
    self.__dict__["_reason"] = value


# `reason` stays a dataclass field (constructor, asdict, ==) but is resolved on read.
RuleVisit.reason = property(_get_reason, _set_reason)


@dataclass(frozen=True)
class ChainVisit:
    family: str
    table: str
    chain: str
    hook: str
    priority: int
    type: str
    policy: str | None
    source: str
    steps: tuple[RuleVisit, ...] = ()
    verdict: str | None = None  # accept | drop | reject | queue | None (not run)
    verdict_from: str | None = None  # "rule" | "policy" | None
    skipped: str | None = None  # why the chain did not run for this packet
    # rules not evaluated because their address match cannot hold for this
    # packet (chains longer than INDEX_MIN_RULES are indexed by address)
    skipped_rules: int = 0


@dataclass(frozen=True)
class NatRewrite:
    type: str  # snat | masquerade | dnat | redirect
    field: str  # "src" | "dst"
    from_: str
    to: str | None
    rule: str
    table: str
    chain: str
    handle: int | None
    family: str = ""
    source: str = ""
    from_port: int | None = None
    to_port: int | None = None
    note: str | None = None


@dataclass(frozen=True)
class Reroute:
    """One ip_route_me_harder at the output hook: what triggered it, and the routing keys
    of that moment (a later chain's change is not routed unless it triggers one itself)."""

    reason: str  # "ip t out_route (type route): mark 0x0 -> 0x1" | "NAT (ip t out_nat): destination …"
    src: str
    dst: str
    mark: int
    dscp: int
    sport: int | None = None
    dport: int | None = None


@dataclass(frozen=True)
class HookTraversal:
    hook: str
    packet_in: PacketView
    chains: tuple[ChainVisit, ...]
    verdict: str  # accept | drop | reject | queue
    packet: PacketView  # after the hook (marks, NAT)
    nat: tuple[NatRewrite, ...] = ()
    uncertain: bool = False
    uncertain_reasons: tuple[str, ...] = ()
    mss_clamp: tuple[str, ...] = ()  # TCPMSS actions executed (rule texts)
    decided_by: str | None = None  # "family table chain handle" of the terminal rule/policy
    # Output hook only: the kernel routes the packet again after this hook
    # (ip_route_me_harder) because a `type route` chain — iptables' mangle OUTPUT
    # is one — changed its mark, addresses or dscp, or NAT changed its destination.
    # A mark set by a `type filter` chain does not re-route. For an established
    # connection the caller must also check its conntrack entry: the mapping there
    # re-routes every packet, and nat chains do not run for it.
    reroute_needed: bool = False
    reroute_reasons: tuple[str, ...] = ()  # what triggered it, e.g. "ip mangle OUTPUT (type route): mark 0x0 -> 0x1"
    # every re-route, in the kernel's order, with the keys it routed by; the last one (if the
    # `reroute` callback let them all succeed) is where the packet goes
    reroutes: tuple[Reroute, ...] = ()


# ---------------------------------------------------------------- queries

@dataclass(frozen=True)
class RuleRef:
    """Where a rule lives, for the query results below."""

    family: str
    table: str
    chain: str
    source: str
    hooks: tuple[str, ...]  # hooks from which the chain is reachable
    handle: int | None
    text: str


@dataclass(frozen=True)
class NatRule(RuleRef):
    type: str = ""
    addr: str | None = None
    port: str | None = None
    conditions: tuple[str, ...] = ()


@dataclass(frozen=True)
class MssClamp(RuleRef):
    mss: str | None = None
    conditions: tuple[str, ...] = ()


@dataclass(frozen=True)
class FragNeededDrop:
    family: str
    table: str
    chain: str
    source: str
    handle: int | None  # None: the chain policy
    text: str
    certain: bool  # False: depends on a match the model cannot evaluate


# ----------------------------------------------------------------- ruleset

@dataclass(frozen=True)
class Ruleset:
    chains: Mapping[tuple[str, str, str, str], Chain]
    hook_chains: Mapping[tuple[str, str], tuple[tuple[Chain, ...], ...]]  # (pf, hook) -> slots
    warnings: tuple[str, ...] = ()
    reachable: Mapping[tuple[str, str, str, str], tuple[str, ...]] = field(default_factory=dict)
    # chain key -> _ChainIndex, for chains longer than INDEX_MIN_RULES
    indexes: Mapping[tuple[str, str, str, str], _ChainIndex] = field(default_factory=dict)
    # "ip" | "ip6" -> why conntrack is off for that family in the namespace (no loaded rule
    # or object uses it), so that no nat chain runs; a family absent here has conntrack on
    conntrack_off: Mapping[str, str] = field(default_factory=dict)

    # -- inventory
    def sources(self) -> dict[str, list[str]]:
        """{"nft": ["inet filter", …], "iptables-nft": [...], "iptables-legacy": [...]}"""
        out: dict[str, set] = {"nft": set(), "iptables-nft": set(), "iptables-legacy": set()}
        for c in self.chains.values():
            out.setdefault(c.source, set()).add(f"{c.family} {c.table}")
        return {k: sorted(v) for k, v in out.items()}

    @property
    def families(self) -> frozenset[str]:
        return frozenset(c.family for c in self.chains.values())

    def legacy_and_nft_both_loaded(self) -> bool:
        """iptables-legacy tables next to nftables (or iptables-nft) ones: both run."""
        s = self.sources()
        return bool(s["iptables-legacy"]) and bool(s["nft"] or s["iptables-nft"])

    def chain(self, source: str, family: str, table: str, name: str) -> Chain | None:
        return self.chains.get((source, family, table, name))

    def base_chains(self, pf: str, hook: str) -> list[Chain]:
        return [c for slot in self.hook_chains.get((pf, hook), ()) for c in slot]

    def _rules_with(self, kind: str):
        for c in self.chains.values():
            for r in c.rules:
                for it in r.items:
                    if isinstance(it, Stmt) and it.kind == kind:
                        yield c, r, it

    def nat_rules(self) -> list[NatRule]:
        out = []
        for c, r, st in self._rules_with("nat"):
            out.append(NatRule(c.family, c.table, c.name, c.source, self.reachable.get(c.key, ()),
                               r.id, r.text, st.nat.type, st.nat.addr, st.nat.port,
                               tuple(x.text for x in r.conds)))
        return out

    def mss_clamps(self, oif: str | None = None) -> list[MssClamp]:
        """TCPMSS / `tcp option maxseg size set` rules; with `oif`, only those whose
        output-interface matches (if any) accept that interface."""
        out = []
        for c, r, st in self._rules_with("tcpmss"):
            if oif is not None and _oif_conds_reject(r, oif):
                continue
            out.append(MssClamp(c.family, c.table, c.name, c.source, self.reachable.get(c.key, ()),
                                r.id, r.text, st.mss, tuple(x.text for x in r.conds)))
        return out

    def has_mss_clamp(self, oif: str | None = None) -> bool:
        return any(set(m.hooks) & {"forward", "postrouting", "output"} for m in self.mss_clamps(oif))

    def icmp_frag_needed_drops(self, family: str = "ip") -> list[FragNeededDrop]:
        """Rules (or policies) in forward that could drop ICMP frag-needed /
        ICMPv6 packet-too-big (a PMTU black hole)."""
        st = _probe_state(family)
        out: list[FragNeededDrop] = []
        for slot in self.hook_chains.get((family, "forward"), ()):
            for chain in slot:
                if chain.type == "nat":
                    continue
                st.ct_attached = True
                probe: list = []
                visit = _run_chain(self, chain, "forward", st, AddressInfo(), [], [], [], probe)
                out.extend(probe)
                if visit.verdict in _TERMINAL and visit.verdict_from == "policy":
                    out.append(FragNeededDrop(chain.family, chain.table, chain.name, chain.source, None,
                                              f"policy {chain.policy}", not probe or all(p.certain for p in probe)))
                if visit.verdict in _TERMINAL:
                    return out
        return out


def _oif_conds_reject(rule: Rule, oif: str) -> bool:
    st = _probe_state("ip")
    st.oif = oif
    for c in rule.conds:
        if c.field in ("meta oifname", "meta oif", "meta oifname") or c.field.endswith("oifname"):
            if c.fn(st) is False:
                return True
    return False


def _probe_state(family: str) -> EvalState:
    st = EvalState()
    st.family = family
    st.src = st.dst = st.src_i = st.dst_i = None
    st.proto = 1 if family == "ip" else 58
    st.icmp_type = 3 if family == "ip" else 2
    st.icmp_code = 4 if family == "ip" else 0
    st.sport = st.dport = st.iif = st.oif = None
    st.iifkind = st.oifkind = None
    st.mark = st.ct_mark = 0
    st.dscp = None
    st.ct_state = "related"
    st.ct_direction = None
    st.length = st.tcp_flags = st.uid = st.gid = None
    st.nftrace = False
    st.untracked = False
    st.hook = "forward"
    st.ct_attached = True
    st.addresses = None
    st.probe = True
    st.choose = None  # a random pick cannot be evaluated for "could this drop ICMP?"
    st.nat_bound = False
    return st


# ------------------------------------------------------------------- load

def _chain_type(table: str, hook: str) -> str:
    if table == "nat":
        return "nat"
    if table == "mangle" and hook == "output":
        return "route"
    return "filter"


def load_ruleset(raw: dict) -> Ruleset:
    """Build the immutable model from the collector's dict (the snapshot's "netfilter")."""
    warnings: list[str] = []
    chains: dict[tuple, Chain] = {}
    nft = (raw or {}).get("nft") or {}
    objs = ((nft.get("ruleset") or {}).get("nftables")) or []
    texts = nft_text_index(nft.get("text"))
    saves = {fam: parse_save(((raw.get("iptables_nft") or {}).get(fam) or {}).get("save"))
             for fam in ("ip", "ip6")}
    ipsets = _ipsets(raw)

    tables: dict[tuple[str, str], int] = {}
    sets: dict[tuple[str, str], dict] = {}
    nft_chains: list[dict] = []
    rules: dict[tuple[str, str, str], list[dict]] = {}
    for o in objs:
        if not isinstance(o, dict) or not o:
            continue
        k, v = next(iter(o.items()))
        if k == "table":
            tables[(v["family"], v["name"])] = v.get("handle", 0)
        elif k in ("set", "map"):
            sets.setdefault((v["family"], v["table"]), {})[v["name"]] = v
        elif k == "chain":
            nft_chains.append(v)
        elif k == "rule":
            rules.setdefault((v["family"], v["table"], v["chain"]), []).append(v)

    xt_tables = {(r[0], r[1]) for r, lst in rules.items()
                 if any("xt" in x for rj in lst for x in rj.get("expr") or [] if isinstance(x, dict))}

    for cj in nft_chains:
        fam, tname, name = cj["family"], cj["table"], cj["name"]
        if fam not in ("ip", "ip6", "inet"):
            continue  # arp, bridge, netdev: not on the inet hooks
        scope = Scope(sets.get((fam, tname), {}))
        rjs = rules.get((fam, tname, name), [])
        saved_table = saves.get(fam, {}).get(tname) if fam in ("ip", "ip6") else None
        source = "nft"
        compiled: tuple[Rule, ...] | None = None
        if saved_table is not None and name in saved_table:
            source = "iptables-nft"
            sc = saved_table[name]
            if len(sc.rules) == len(rjs):
                by_chain = compile_saved_chain_rules({n: saved_table[n] for n in saved_table}, fam, ipsets)
                compiled = tuple(dataclasses.replace(r, nft_handle=rj.get("handle"),
                                                     counters=r.counters or _nft_counter(rj))
                                 for r, rj in zip(by_chain[name], rjs, strict=False))
            else:
                warnings.append(f"{fam} {tname} {name}: iptables-nft-save shows {len(sc.rules)} rules, "
                                f"nft {len(rjs)}; evaluating nft's view")
        elif (fam, tname) in xt_tables and not _save_ok(raw, fam):
            source = "iptables-nft"
        if compiled is None and len(rjs) > INDEX_MIN_RULES:
            compiled = LazyRules(rjs, lambda rj, scope=scope, fam=fam: _compile_nft(rj, scope, fam, texts))
        elif compiled is None:
            compiled = tuple(_compile_nft(rj, scope, fam, texts) for rj in rjs)
        prio = cj.get("prio")
        if isinstance(prio, dict):
            prio = None
        chains[(source, fam, tname, name)] = Chain(
            fam, tname, name, source, compiled, cj.get("hook"), prio, cj.get("type"),
            cj.get("policy", "accept") if cj.get("hook") else None,
            tables.get((fam, tname), 0), cj.get("handle", 0))

    legacy = {fam: parse_save(((raw.get("iptables_legacy") or {}).get(fam) or {}).get("save")) for fam in ("ip", "ip6")}
    for fam, leg in legacy.items():
        for tname, tchains in leg.items():
            compiled_by = compile_saved_chain_rules(tchains, fam, ipsets)
            for i, (cname, sc) in enumerate(tchains.items()):
                hook = BUILTIN.get(cname)
                prio = LEGACY_PRIORITY.get(tname, {}).get(hook) if hook else None
                if hook and prio is None:
                    hook = None
                chains[("iptables-legacy", fam, tname, cname)] = Chain(
                    fam, tname, cname, "iptables-legacy", compiled_by[cname], hook, prio,
                    _chain_type(tname, hook) if hook else None,
                    (sc.policy or "ACCEPT").lower() if hook else None, 0, i)

    return Ruleset(MappingProxyType(chains), MappingProxyType(_hook_slots(chains)),
                   tuple(warnings), MappingProxyType(_reachability(chains)),
                   MappingProxyType(build_indexes(chains)),
                   _ConntrackOff(objs, texts, legacy) if not _a_dump_failed(raw) else MappingProxyType({}))


# ------------------------------------------------------- conntrack users

# Conntrack's hooks are registered per namespace and L3 family, on demand: nf_ct_netns_get(),
# called when a rule or object that needs conntrack is loaded. A nat chain alone does not
# call it (nor does `notrack` / `-j CT --notrack`), and without conntrack nf_nat_inet_fn finds
# no entry on the packet and accepts: the nat chains never run. Checked in the wire lab
# (tests/sim/test_nf_cases.py).
_CT_STATEMENTS = frozenset({"snat", "dnat", "masquerade", "redirect", "ct helper", "ct timeout", "ct expectation",
                            "ct count", "flow", "synproxy"})
_CT_OBJECTS = frozenset({"ct helper", "ct timeout", "ct expectation"})
_CT_XT_MATCHES = frozenset({"conntrack", "state", "connmark", "connlimit", "connbytes", "helper", "connlabel",
                            "cluster"})
_CT_XT_TARGETS = frozenset({"CONNMARK", "CT", "DNAT", "SNAT", "MASQUERADE", "REDIRECT", "NETMAP", "CONNSECMARK",
                            "SYNPROXY", "CLUSTERIP"})
# the L3 families whose conntrack a table's users turn on (nf_ct_netns_get: inet and bridge take both)
_CT_FAMILIES = {"ip": ("ip",), "ip6": ("ip6",), "inet": ("ip", "ip6"), "bridge": ("ip", "ip6")}


def _uses_conntrack(expr, notrack_text: bool) -> bool:
    """Whether an nft JSON expression tree holds a conntrack user (a ct expression, a NAT
    statement, an xt match/target that takes conntrack). `notrack_text`: nft prints the rule's
    xt CT target as `notrack` (iptables' -j CT --notrack, no user). Walked with a stack, not
    recursion: every rule of the ruleset is read (10,000 rules take a tenth of a second)."""
    todo = [expr]
    while todo:
        node = todo.pop()
        if type(node) is list:
            todo.extend(node)
            continue
        if type(node) is not dict:
            continue
        for key, value in node.items():
            if key == "ct" or key in _CT_STATEMENTS:
                return True
            if key == "xt" and type(value) is dict:
                name = value.get("name")
                if value.get("type") == "match" and name in _CT_XT_MATCHES:
                    return True
                if value.get("type") == "target" and name in _CT_XT_TARGETS and not (name == "CT" and notrack_text):
                    return True
            elif type(value) is dict or type(value) is list:
                todo.append(value)
    return False


def _legacy_rule_uses_conntrack(tokens: list[str]) -> bool:
    for opt, value in zip(tokens, tokens[1:], strict=False):
        if opt == "-m" and value in _CT_XT_MATCHES:
            return True
        if opt == "-j" and value in _CT_XT_TARGETS and not (value == "CT" and "--notrack" in tokens):
            return True
    return False


def _conntrack_on(family: str, objs: list, texts: dict, legacy: dict) -> bool:
    """Whether some loaded rule or object turns on conntrack for the L3 family ("ip", "ip6").
    Conntrack objects and nat chains' rules (NAT statements are users) are read first: the
    answer is then usually found before the other rules (10,000 filter rules) are read."""
    nat_chains = {(v.get("family"), v.get("table"), v.get("name")) for o in objs if isinstance(o, dict)
                  for kind, v in o.items() if kind == "chain" and isinstance(v, dict) and v.get("type") == "nat"}

    def users(o) -> bool:
        if not isinstance(o, dict) or not o:
            return False
        kind, v = next(iter(o.items()))
        if not isinstance(v, dict) or family not in _CT_FAMILIES.get(v.get("family"), ()):
            return False
        if kind in _CT_OBJECTS:
            return True
        if kind != "rule":
            return False
        text = texts.get((v["family"], v.get("table"), v.get("chain"), v.get("handle"))) or ""
        return _uses_conntrack(v.get("expr") or [], text.endswith("notrack"))

    def in_nat_chain(o) -> bool:
        v = next(iter(o.values())) if isinstance(o, dict) and o else None
        return isinstance(v, dict) and ((v.get("family"), v.get("table"), v.get("chain")) in nat_chains
                                        or next(iter(o)) in _CT_OBJECTS)

    likely = [o for o in objs if in_nat_chain(o)]
    if any(users(o) for o in likely) or any(users(o) for o in objs if not in_nat_chain(o)):
        return True
    return any(_legacy_rule_uses_conntrack(r.tokens) for chains in legacy.get(family, {}).values()
               for chain in chains.values() for r in chain.rules)


class _ConntrackOff(Mapping):
    """Ruleset.conntrack_off: per L3 family without a conntrack user, why its nat chains do not
    run. Worked out for a family when first asked (an IPv4 flow never reads every rule for
    IPv6's users). Not built when a dump failed: rules are unknown, and nat chains are taken
    to run."""

    _NAMES = {"ip": "IPv4", "ip6": "IPv6"}

    def __init__(self, objs: list, texts: dict, legacy: dict):
        self._sources = (objs, texts, legacy)
        self._reasons: dict[str, str | None] = {}

    def _reason(self, family: str) -> str | None:
        if family not in self._reasons:
            self._reasons[family] = None if _conntrack_on(family, *self._sources) else (
                f"not run: conntrack is off for {self._NAMES[family]} in this namespace (no loaded rule or "
                "object uses it: a NAT rule, a ct match, -m conntrack/state/connmark …), and a nat chain needs "
                "the packet's conntrack entry (nf_nat_inet_fn); anything outside the ruleset that turns it on "
                "(tc's ct action, Open vSwitch, IPVS) is not in the collected state")
        return self._reasons[family]

    def __getitem__(self, family: str) -> str:
        reason = self._reason(family) if family in self._NAMES else None
        if reason is None:
            raise KeyError(family)
        return reason

    def __iter__(self):
        return (family for family in self._NAMES if self._reason(family) is not None)

    def __len__(self) -> int:
        return sum(1 for _ in self)


def _a_dump_failed(raw: dict) -> bool:
    """nft's or iptables-legacy's dump failed: rules that may use conntrack are unknown."""
    legacy = raw.get("iptables_legacy") or {}
    dumps = (raw.get("nft"), legacy.get("ip"), legacy.get("ip6"))
    return any((entry or {}).get("status") == "error" for entry in dumps)


class LazyRules(Sequence):
    """A long nft chain's rules, each compiled the first time it is read. A walk through an
    indexed chain reads only the rules the packet's addresses may match, so one explanation
    of a flow through a 10,000-rule chain compiles a handful of rules, not all (half a second)."""

    __slots__ = ("_raw", "_compile", "_compiled")

    def __init__(self, raw: list[dict], compile_rule: Callable[[dict], Rule]):
        self._raw = raw
        self._compile = compile_rule
        self._compiled: list[Rule | None] = [None] * len(raw)

    def __len__(self) -> int:
        return len(self._raw)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return tuple(self[i] for i in range(*index.indices(len(self._raw))))
        rule = self._compiled[index]
        if rule is None:
            rule = self._compiled[index] = self._compile(self._raw[index])
        return rule

    def index_key(self, i: int) -> tuple[str, int] | None:
        """Rule i's address key for _ChainIndex, from its JSON when that tells."""
        key = leading_address_key(self._raw[i])
        return _index_key(self[i]) if key == ASK_THE_COMPILER else key

    def branching(self) -> list[Rule]:
        """The rules that can send the walk to another chain (jump, goto, vmap), compiled."""
        return [self[i] for i, rj in enumerate(self._raw)
                if any(isinstance(x, dict) and x.keys() & _BRANCHES for x in rj.get("expr") or ())]


_BRANCHES = frozenset({"jump", "goto", "vmap"})


def _index_key(rule: Rule) -> tuple[str, int] | None:
    """(attr, value) of the rule's first AddrEqCond among its leading matches, or None."""
    for it in rule.items:
        if not isinstance(it, Cond):
            return None
        if isinstance(it, AddrEqCond):
            return it.eq_attr, it.eq_value
    return None


class _ChainIndex:
    """Which rules of one chain can match a packet, by its addresses.

    A rule is bucketed under (attr, value) when one of its leading matches (the
    matches before its first statement or verdict) is an `AddrEqCond`: for any
    other address that match is false, so the rule cannot match. Every other
    rule is in `always`. Positions are rule indexes, ascending."""

    __slots__ = ("always", "src", "dst", "size")

    def __init__(self, rules: Sequence[Rule]):
        self.always: list[int] = []
        self.src: dict[int, list[int]] = {}
        self.dst: dict[int, list[int]] = {}
        self.size = len(rules)
        keys = (rules.index_key(i) if isinstance(rules, LazyRules) else _index_key(rules[i])
                for i in range(len(rules)))
        for i, key in enumerate(keys):
            if key is None:
                self.always.append(i)
            else:
                attr, value = key
                (self.src if attr == "src_i" else self.dst).setdefault(value, []).append(i)

    def next_candidate(self, idx: int, st: EvalState) -> int:
        """The first rule at or after `idx` that may match the packet (size if none)."""
        best = self.size
        for lst in (self.always, self.src.get(st.src_i), self.dst.get(st.dst_i)):
            if lst:
                j = bisect.bisect_left(lst, idx)
                if j < len(lst) and lst[j] < best:
                    best = lst[j]
        return best


def build_indexes(chains: Mapping, min_rules: int = INDEX_MIN_RULES) -> dict:
    """chain key -> _ChainIndex for every chain with more than `min_rules` rules."""
    return {k: _ChainIndex(c.rules) for k, c in chains.items() if len(c.rules) > min_rules}


def _ipsets(raw: dict) -> IpSets:
    """The ipsets `-m set` matches read (the collector's "ipset" key)."""
    entry = (raw or {}).get("ipset")
    if not entry:
        return parse_ipset_save(None, "ipset contents were not collected")
    if entry.get("status") != "ok":
        return parse_ipset_save(None, f"ipset contents unknown ({entry.get('status')}: {entry.get('error')})")
    return parse_ipset_save(entry.get("save") or "")


def _save_ok(raw: dict, fam: str) -> bool:
    return ((raw.get("iptables_nft") or {}).get(fam) or {}).get("status") == "ok"


def _nft_counter(rj: dict) -> dict | None:
    for x in rj.get("expr") or []:
        if isinstance(x, dict) and isinstance(x.get("counter"), dict):
            return {"packets": x["counter"].get("packets", 0), "bytes": x["counter"].get("bytes", 0)}
    return None


def _compile_nft(rj: dict, scope: Scope, fam: str, texts: dict) -> Rule:
    text = texts.get((fam, rj["table"], rj["chain"], rj.get("handle")))
    rule = compile_nft_rule(rj, scope, fam, text)
    if text and any(isinstance(x, dict) and x.get("xt", {}).get("type") == "target"
                    for x in rj.get("expr") or []):
        items = []
        for it, x in zip(rule.items, rj.get("expr") or [], strict=False):
            if isinstance(x, dict) and x.get("xt", {}).get("type") == "target":
                items.extend(xt_target_from_text(x["xt"]["name"], text))
            else:
                items.append(it)
        rule = dataclasses.replace(rule, items=tuple(items))
    return rule


def _hook_slots(chains: dict) -> dict:
    """(pf, hook) -> tuple of slots in kernel order; a slot is one chain, or the
    nat-type chains that run together inside the NAT core hook."""
    ranked = sorted((c for c in chains.values() if c.base), key=lambda c: c.registration)
    rank = {c.key: i for i, c in enumerate(ranked)}
    out = {}
    for pf in ("ip", "ip6"):
        # The NAT core hooks of a family (all four) are registered at once, with the family's
        # first nat chain at any hook (nf_nat_register_fn): that decides ties with them.
        nat_core = min((rank[c.key] for c in ranked if c.type == "nat" and c.family in (pf, "inet")
                        and c.hook in NAT_CORE_PRIORITY), default=None)
        for hook in HOOKS:
            mine = [c for c in ranked if c.hook == hook and c.family in (pf, "inet")
                    and c.priority is not None]
            nat = [c for c in mine if c.type == "nat" and hook in NAT_CORE_PRIORITY]
            other = [c for c in mine if c not in nat]
            slots = [((c.priority, -rank[c.key]), (c,)) for c in other]
            # one NAT core hook per L3 family; ip and inet nat chains share its
            # lookup list (nf_nat_inet_register_fn registers inet chains into the
            # ipv4 and ipv6 lists), ordered by their own priority
            if nat:
                group = sorted(nat, key=lambda c: (c.priority, -rank[c.key]))
                slots.append(((NAT_CORE_PRIORITY[hook], -nat_core), tuple(group)))
            slots.sort(key=lambda s: s[0])
            out[(pf, hook)] = tuple(s[1] for s in slots)
    return out


def _reachability(chains: dict) -> dict:
    reach: dict[tuple, set] = {}
    for c in chains.values():
        if not c.base:
            continue
        todo = [c]
        seen = set()
        while todo:
            cur = todo.pop()
            if cur.key in seen:
                continue
            seen.add(cur.key)
            reach.setdefault(cur.key, set()).add(c.hook)
            for r in cur.rules.branching() if isinstance(cur.rules, LazyRules) else cur.rules:
                for it in r.items:
                    if not isinstance(it, Verdict) or it.kind not in ("jump", "goto", "vmap"):
                        continue
                    for target in it.targets if it.kind == "vmap" else (it.target,):
                        nxt = chains.get((cur.source, cur.family, cur.table, target))
                        if nxt is not None:
                            todo.append(nxt)
    return {k: tuple(h for h in HOOKS if h in v) for k, v in reach.items()}


# ---------------------------------------------------------------- evaluate

def _state(packet: PacketView, hook: str, addresses: AddressInfo) -> EvalState:
    st = EvalState()
    for name in ("family", "proto", "sport", "dport", "mark", "dscp", "ct_state", "ct_mark",
                 "ct_direction", "length", "icmp_type", "icmp_code", "tcp_flags", "uid", "gid",
                 "iifkind", "oifkind", "nftrace"):
        setattr(st, name, getattr(packet, name))
    st.set_src(packet.src)
    st.set_dst(packet.dst)
    # devices the hook has (nf_hook_state in/out); at postrouting `in` is the
    # skb's device, i.e. the input device of a forwarded packet (ip_output)
    st.iif = packet.iif if hook in ("prerouting", "input", "forward", "postrouting") else None
    st.oif = packet.oif if hook in ("forward", "output", "postrouting") else None
    if st.iif and st.iifkind is None:
        st.iifkind = addresses.interface_kind(st.iif)
    if st.oif and st.oifkind is None:
        st.oifkind = addresses.interface_kind(st.oif)
    st.untracked = packet.ct_state == "untracked"
    st.nat_bound = packet.nat_bound
    st.hook = hook
    st.ct_attached = True
    st.addresses = addresses
    st.probe = False
    return st


class _Snap:
    """The packet state that lazy reasons read. While `used` is false nobody
    refers to it; before the live state changes, a used snapshot is detached
    (copied) so the reasons still describe the packet the rule saw."""

    __slots__ = ("st", "used")

    def __init__(self, st: EvalState):
        self.st, self.used = st, False


class _Epoch:
    __slots__ = ("cur",)

    def __init__(self, st: EvalState):
        self.cur = _Snap(st)

    def before_change(self, st: EvalState) -> None:
        if self.cur.used:
            self.cur.st = _copy_state(self.cur.st)
            self.cur = _Snap(st)


_STATE_SLOTS = EvalState.__slots__


def _copy_state(st: EvalState) -> EvalState:
    new = EvalState()
    for name in _STATE_SLOTS:
        try:
            setattr(new, name, getattr(st, name))
        except AttributeError:
            pass
    return new


def traverse(ruleset: Ruleset, hook: str, packet: PacketView, *, addresses: AddressInfo | None = None,
             choose: Callable[[str, tuple[float, ...], tuple[str, ...]], int] | None = None,
             reroute: Callable[[Reroute], str | None] | None = None) -> HookTraversal:
    """Walk `packet` through every base chain at `hook` (pure).

    `choose(what, shares, labels)` decides a random pick (`-m statistic`, nft `numgen`):
    the index of the option this walk takes. Without it such a pick cannot be evaluated
    (None), and the walk says so.

    `reroute(keys)` routes the packet again at the output hook, at the moment the kernel
    does (ip_route_me_harder after a route chain or NAT changed a routing key): None when
    a route is found, else the error (e.g. "EINVAL"), which drops the packet there, as
    NF_DROP_ERR does: later chains do not run. Without it every re-route is only recorded."""
    if hook not in HOOKS:
        raise ValueError(f"unknown hook {hook!r}: one of {', '.join(HOOKS)}")
    slots = ruleset.hook_chains.get((packet.family, hook), ())
    if not slots:  # no chain at this hook: the packet passes unchanged
        return HookTraversal(hook, packet, (), "accept", packet, (), False, (), (), None, False, (), ())
    addresses = addresses or AddressInfo()
    st = _state(packet, hook, addresses)
    st.choose = choose
    epoch = _Epoch(st)
    visits: list[ChainVisit] = []
    nat: list[NatRewrite] = []
    reasons: list[str] = []
    mss: list[str] = []
    verdict = "accept"
    decided_by = None
    stopped = None
    mapped_by = None
    reroutes: list[Reroute] = []

    def route_again(why: str) -> None:
        nonlocal verdict, decided_by, stopped
        keys = Reroute(why, st.src, st.dst, st.mark, st.dscp, st.sport, st.dport)
        reroutes.append(keys)
        error = reroute(keys) if reroute is not None else None
        if error:
            verdict, decided_by = "drop", f"re-route after {why}: routing fails with {error}"
            stopped = f"not reached: the re-route after {why} failed ({error})"

    for slot in slots:
        if stopped:
            visits.extend(_skipped(c, hook, stopped) for c in slot)
            continue
        is_nat = slot[0].type == "nat" and hook in NAT_CORE_PRIORITY
        if is_nat:
            why = ruleset.conntrack_off.get(packet.family) or _nat_skip_reason(st)
            if why:
                visits.extend(_skipped(c, hook, why) for c in slot)
                continue
            dst_before = st.dst
            for c in slot:
                if mapped_by:
                    visits.append(_skipped(c, hook, f"not consulted: NAT mapping already set by {mapped_by}"))
                    continue
                epoch.before_change(st)
                st.ct_attached = True
                before = len(nat)
                v = _run_chain(ruleset, c, hook, st, addresses, nat, reasons, mss, None, epoch)
                visits.append(v)
                if v.verdict in _TERMINAL:
                    verdict, stopped = v.verdict, f"not reached: {v.verdict} in {c.family} {c.table} {c.name}"
                    decided_by = _decider(v)
                    break
                if len(nat) > before:
                    mapped_by = f"{c.family} {c.table} {c.name}"
            # nf_nat_ipv4_local_fn / nf_nat_ipv6_local_fn: re-route when the destination changed
            if hook == "output" and not stopped and st.dst != dst_before:
                route_again(f"NAT ({mapped_by}): destination {dst_before} -> {st.dst}")
            continue
        c = slot[0]
        epoch.before_change(st)
        # conntrack (-200) attaches the entry; a looped-back packet still has the one it left with
        st.ct_attached = st.nat_bound or not (hook in ("prerouting", "output") and c.priority < PRIO_CONNTRACK)
        routing_keys = _routing_keys(st) if hook == "output" and c.type == "route" else None
        v = _run_chain(ruleset, c, hook, st, addresses, nat, reasons, mss, None, epoch)
        visits.append(v)
        if v.verdict in _TERMINAL:
            verdict, stopped = v.verdict, f"not reached: {v.verdict} in {c.family} {c.table} {c.name}"
            decided_by = _decider(v)
        elif routing_keys is not None:  # nf_route_table_hook4/6, ipt_mangle_out: after an accept
            changed = _routing_key_changes(routing_keys, _routing_keys(st))
            if changed:
                route_again(f"{c.family} {c.table} {c.name} (type route): {changed}")
    ct_state = "untracked" if st.untracked else packet.ct_state
    after = packet
    if (st.src, st.dst, st.sport, st.dport, st.mark, st.ct_mark, st.dscp, st.nftrace, ct_state) != (
            packet.src, packet.dst, packet.sport, packet.dport, packet.mark, packet.ct_mark, packet.dscp,
            packet.nftrace, packet.ct_state):
        after = dataclasses.replace(
            packet, src=st.src, dst=st.dst, sport=st.sport, dport=st.dport, mark=st.mark,
            ct_mark=st.ct_mark, dscp=st.dscp, nftrace=st.nftrace, ct_state=ct_state)
    return HookTraversal(hook, packet, tuple(visits), verdict, after, tuple(nat), bool(reasons),
                         tuple(dict.fromkeys(reasons)), tuple(mss), decided_by,
                         bool(reroutes) and verdict == "accept", tuple(r.reason for r in reroutes), tuple(reroutes))


# What a route-type chain is watched for (nf_route_table_hook4/6, ipt_mangle_out,
# ip6t_mangle_out): a change of any of these makes the kernel route the packet again.
_ROUTING_KEYS = ("src", "dst", "mark", "dscp")


def _routing_keys(st: EvalState) -> tuple:
    return tuple(getattr(st, name) for name in _ROUTING_KEYS)


def _routing_key_changes(before: tuple, after: tuple) -> str:
    def show(name, value):
        return f"{value:#x}" if name == "mark" and isinstance(value, int) else str(value)
    return ", ".join(f"{name} {show(name, a)} -> {show(name, b)}"
                     for name, a, b in zip(_ROUTING_KEYS, before, after, strict=True) if a != b)


def _decider(v: ChainVisit) -> str:
    base = f"{v.family} {v.table} {v.chain}"
    if v.verdict_from == "policy":
        return f"{base} policy {v.policy}"
    last = next((s for s in reversed(v.steps) if s.verdict), None)
    if last is None:
        return base
    return f"{v.family} {v.table} {last.chain} {'rule' if v.source != 'nft' else 'handle'} {last.handle}"


def _nat_skip_reason(st: EvalState) -> str | None:
    if st.untracked:
        return "not consulted: packet is untracked (notrack)"
    if st.nat_bound:
        return "not consulted: this connection's NAT was set up when it left (a locally generated packet looped back)"
    s = st.ct_state
    if s in ("new", "related"):
        return None
    if s == "invalid":
        return "not consulted: no conntrack entry (invalid)"
    return f"not consulted: ct state {s} — only the first packet of a connection goes through nat chains"


def _skipped(c: Chain, hook: str, why: str) -> ChainVisit:
    return ChainVisit(c.family, c.table, c.name, hook, c.priority, c.type or "filter", c.policy,
                      c.source, (), None, None, why)


def _run_chain(rs: Ruleset, chain: Chain, hook: str, st: EvalState, addresses: AddressInfo,
               nat: list, reasons: list, mss: list, probe: list | None,
               epoch: _Epoch | None = None, use_index: bool = True) -> ChainVisit:
    steps: list[RuleVisit] = []
    stack: list[tuple[Chain, int, int]] = []
    cur, idx, depth = chain, 0, 0
    verdict = verdict_from = None
    if epoch is None:
        epoch = _Epoch(st)
    # the index needs the packet's addresses; the probe walk has none
    indexes = rs.indexes if use_index and probe is None else {}
    index = indexes.get(cur.key)
    skipped = 0
    budget = 1_000_000
    while budget:
        budget -= 1
        if index is not None and idx < index.size and st.src_i is not None and st.dst_i is not None:
            nxt = index.next_candidate(idx, st)
            skipped += nxt - idx
            idx = nxt
        if idx >= len(cur.rules):
            if stack:
                steps.append(RuleVisit(cur.name, depth, None, f"(end of chain {cur.name}: return)", True,
                                       None, None, "return"))
                cur, idx, depth = stack.pop()
                index = indexes.get(cur.key)
                continue
            verdict, verdict_from = (chain.policy or "accept"), "policy"
            break
        rule = cur.rules[idx]
        idx += 1
        matched, reason, actions, v = _eval_rule(rule, st, hook, addresses, cur, chain.type, nat, reasons, mss,
                                                 epoch)
        if matched is None and not st.probe:
            if isinstance(reason, _LazyWhy):
                reason = reason.text()
            reasons.append(f"{cur.family} {cur.table} {cur.name} #{rule.id}: {reason}")
        if probe is not None and matched is not False:
            pv = v if matched else _static_verdict(rule)
            if pv is not None and pv.kind in _TERMINAL:
                probe.append(FragNeededDrop(cur.family, cur.table, cur.name, cur.source, rule.id, rule.text,
                                            matched is True))
        steps.append(RuleVisit(cur.name, depth, rule.id, rule.text, matched, reason,
                               "; ".join(actions) or None, v.text if v is not None else None,
                               rule.counters, rule.nft_handle if rule.nft_handle != rule.id else None))
        if not matched or v is None or v.kind == "continue":
            continue
        if v.kind == "unknown":
            reasons.append(f"{cur.family} {cur.table} {cur.name} #{rule.id}: verdict {v.text} not modelled")
            continue
        if v.kind == "return":
            if stack:
                cur, idx, depth = stack.pop()
                index = indexes.get(cur.key)
                continue
            verdict, verdict_from = (chain.policy or "accept"), "policy"
            break
        if v.kind in ("jump", "goto"):
            target = rs.chains.get((cur.source, cur.family, cur.table, v.target))
            if target is None:
                reasons.append(f"{v.text}: chain {v.target} not found")
                continue
            if v.kind == "jump":
                if len(stack) >= MAX_JUMP_DEPTH:
                    reasons.append(f"{v.text}: jump stack deeper than {MAX_JUMP_DEPTH}")
                    continue
                stack.append((cur, idx, depth))
            cur, idx, depth = target, 0, depth + 1
            index = indexes.get(cur.key)
            continue
        verdict, verdict_from = v.kind, "rule"
        break
    return ChainVisit(chain.family, chain.table, chain.name, hook, chain.priority,
                      chain.type or "filter", chain.policy, chain.source, tuple(steps), verdict, verdict_from,
                      None, skipped)


def _static_verdict(rule: Rule) -> Verdict | None:
    for it in rule.items:
        if isinstance(it, Verdict):
            return it
        if isinstance(it, Stmt) and it.kind == "nat":
            return Verdict("accept")
    return None


def _eval_rule(rule: Rule, st: EvalState, hook: str, addresses: AddressInfo, chain: Chain, base_type: str | None,
               nat: list, reasons: list, mss: list, epoch: _Epoch):
    """(matched, reason, actions, verdict) for one rule of `chain`; applies its side
    effects. `base_type` is the type of the base chain the walk started in: a
    regular chain has the type and hook of the base chain that reached it.
    The reason of a failed match is a _LazyWhy (formatted when read)."""
    actions: list[str] = []
    pending: Cond | None = None
    for it in rule.items:
        if isinstance(it, Cond):
            r = it.fn(st)
            if r is False:
                snap = epoch.cur
                snap.used = True
                return False, _LazyWhy(it, snap), actions, None
            if r is None and pending is None:
                pending = it
            continue
        if pending is not None:
            continue  # after a match we cannot evaluate, effects are not applied
        if isinstance(it, Verdict):
            if it.kind == "vmap":
                r = it.lookup(st)
                if isinstance(r, Miss):
                    return False, r.why, actions, None
                if isinstance(r, Unknown):
                    return None, f"cannot evaluate {it.text}: {r.why}", actions, None
                return True, None, actions, r
            return True, None, actions, it
        # statements
        if it.kind == "counter":
            continue
        epoch.before_change(st)
        if it.kind == "nat":
            res = _apply_nat(it, rule, st, hook, addresses, chain, base_type)
            if isinstance(res, Miss):
                return False, res.why, actions, None
            if isinstance(res, Unknown):
                reasons.append(f"{chain.table} {chain.name} #{rule.id}: {res.why}")
                actions.append(f"{it.text} ({res.why})")
                return True, None, actions, Verdict("accept", None, "accept (nat)")
            nat.append(res)
            actions.append(f"{res.type}: {res.field} {res.from_} -> {res.to}")
            return True, None, actions, Verdict("accept", None, "accept (nat)")
        if it.kind == "notrack" and st.ct_attached:
            actions.append("notrack: no effect, " + ("the looped-back packet keeps the conntrack entry it left with"
                                                     if st.nat_bound else "conntrack already ran"))
            continue
        if it.kind == "tcpmss":
            mss.append(rule.text)
        r = it.apply(st) if it.apply else it.text
        if isinstance(r, Miss):
            return False, r.why, actions, None
        if isinstance(r, Unknown):
            reasons.append(f"{chain.table} {chain.name} #{rule.id}: {r.why}")
            actions.append(f"{it.text} ({r.why})")
            continue
        actions.append(str(r))
    if pending is not None:
        return None, pending.why(st) if pending.why else f"cannot evaluate {pending.text}", actions, None
    return True, None, actions, None


def _pick(spec: str | None, current):
    """First address of '1.2.3.4', '1.2.3.4-1.2.3.9' or '10.0.0.0/24'."""
    if spec is None:
        return None, None
    if "-" in spec:
        return spec.split("-")[0], "range: the kernel picks one address per connection"
    if "/" in spec:
        net = ipaddress.ip_network(spec, strict=False)
        return str(net.network_address), "prefix: the kernel picks one address per connection"
    return spec, None


def _port_after(spec: str | None, current: int | None, src_side: bool) -> int | None:
    """The port after NAT to `spec`: kept when in range; else the range's first port for a
    destination NAT, and (None) one the kernel picks at random in the range for a source NAT
    (nf_nat_l4proto_unique_tuple)."""
    if spec is None:
        return current
    a, _, b = str(spec).partition("-")
    lo, hi = int(a), int(b or a)
    if current is not None and lo <= current <= hi:
        return current
    return None if src_side and hi > lo else lo


def _apply_nat(it: Stmt, rule: Rule, st: EvalState, hook: str, addresses: AddressInfo, chain: Chain,
               base_type: str | None):
    spec: NatSpec = it.nat
    src_side = spec.field == "src"
    allowed = ("postrouting", "input") if src_side else ("prerouting", "output")
    if hook not in allowed:
        return Unknown(f"{spec.type} is not valid at {hook}")
    if base_type != "nat":
        return Unknown(f"{spec.type} outside a nat chain")
    note = None
    port_spec = spec.port
    if spec.type == "masquerade":
        to = addresses.masquerade_source(st.oif, st.dst)
        if to is None:
            return Unknown(f"masquerade: no source address known for {st.oif}")
    elif spec.type == "redirect":
        if hook == "output":
            to = "127.0.0.1" if st.family == "ip" else "::1"
        else:
            to = addresses.interface_address(st.iif, st.family) if st.iif else None
            if to is None:
                return Unknown(f"redirect: no address known on {st.iif}")
    elif spec.addr_fn is not None:
        r = spec.addr_fn(st)
        if isinstance(r, (Miss, Unknown)):
            return r
        if isinstance(r, tuple):
            to, port_spec = str(r[0]), str(r[1]) if len(r) > 1 else port_spec
        else:
            to = str(r)
    else:
        to, note = _pick(spec.addr, None)
        if to is None:
            to = st.src if src_side else st.dst  # port-only mapping
    try:
        if (ipaddress.ip_address(to).version == 4) != (st.family == "ip"):
            return Miss(f"{spec.type} to {to}: other address family")
    except ValueError:
        return Unknown(f"{spec.type}: cannot read address {to!r}")
    old, old_port = (st.src, st.sport) if src_side else (st.dst, st.dport)
    new_port = _port_after(port_spec, old_port, src_side) if old_port is not None else None
    if new_port is None and old_port is not None and not spec.random_port:
        note = "; ".join(filter(None, (note, f"port chosen at random in {port_spec} by the kernel")))
    if spec.random_port and old_port is not None:
        new_port = None
        note = "; ".join(filter(None, (note, "port chosen at random by the kernel (random / fully-random)")))
    if src_side:
        st.set_src(to)
        st.sport = new_port
    else:
        st.set_dst(to)
        st.dport = new_port
    return NatRewrite(spec.type, spec.field, old, to, rule.text, chain.table, chain.name, rule.id,
                      chain.family, chain.source, old_port, new_port, note)
