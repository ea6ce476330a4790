"""Explain one flow: the one walk of a packet through hooks, routing and NAT, from a HostState.

Pure: no kernel access here (the live cross-check lives in tracer/app.py).
Every consumer — the explanation itself, the rules engine, lint, verify —
takes its path from `explain()`; a check that needs another packet of the
same flow (a reply, an established packet) asks the same walk with a
`PacketVariant`. The order follows the kernel's packet path:

    forwarded/local-in:  prerouting hook → route_input → forward|input → postrouting
    local-out:           route_output → output hook → (re-route if mark/dst changed) → postrouting

An existing conntrack entry for the flow replaces the NAT rules by its mapping,
as the kernel does for every packet after the first.
"""

from __future__ import annotations

import dataclasses
import ipaddress
from dataclasses import dataclass

from tracer.errors import FlowError
from tracer.flow import Flow, RouteQuery
from tracer.model import SCOPE_UNIVERSE, ConntrackEntry, HostState
from tracer.sim import fib
from tracer.sim.explanation import (
    NETFILTER_DROP,
    Choice,
    EgressStep,
    Explanation,
    HookStep,
    IifInference,
    NatStep,
    RerouteStep,
    RoutingStep,
    Step,
)
from tracer.sim.netfilter import AddressInfo, NatRewrite, PacketView, Reroute, Ruleset, load_ruleset, traverse
from tracer.vocab import (
    AF_INET,
    AF_INET6,
    ICMP_PROTOCOLS,
    PORT_PROTOCOLS,
    TCP,
    UDP,
    addr_int,
    nf_family,
    protocol_name,
)

TCP_SYN, TCP_SYN_ACK = 0x02, 0x12


@dataclass(frozen=True)
class PacketVariant:
    """Which packet of the flow to walk, when not the one the user's flow implies.

    The default (None fields) is the flow's next packet as the host would see it
    now: established when a conntrack entry matches, else new; a TCP SYN, an ICMP
    echo request; length unknown. `conntrack=False` ignores existing entries
    (the rules' own answer for a new connection)."""

    ct_state: str | None = None  # "new" | "established"
    length: int | None = None
    conntrack: bool = True
    reply: bool = False  # the answer to the flow (SYN/ACK, echo reply), not the flow's own packet
    # A forwarded packet's walk ends after the forward hook (postrouting, NAT and egress left out):
    # for a check that asks only where the packet is routed and whether forward accepts it.
    through_forward_only: bool = False
    # A later packet of a connection whose entry is not read (later_packet_of): the ct mark its
    # first packet left there, the source address its NAT gave, and the device a MASQUERADE bound
    # it to (nf_nat_oif_changed drops its packets leaving by another one).
    ct_mark: int = 0
    snat_to: str | None = None
    masquerade_dev: str | None = None


# ----------------------------------------------------------------- host facts

def address_info(state: HostState, gateway_of=lambda oif: None) -> AddressInfo:
    """What the netfilter walk needs from the host.
    `gateway_of(oif)`: the nexthop the routing decision chose on oif, if known."""
    broadcast = state.derived(_broadcast_addresses)

    def primary(ifname: str, fam: int):
        return [a for a in state.addresses_of(ifname, fam) if not a.secondary and a.scope == SCOPE_UNIVERSE]

    def masquerade_source(oif, dst):
        # MASQUERADE: inet_select_addr(oif, nexthop, universe) — the simulator's
        # source selection towards the gateway the decision chose, else dst.
        if not oif:
            return None
        nexthop = gateway_of(oif) or dst
        if ":" in dst:
            return fib.ipv6_select_source(state, oif, nexthop)
        return fib.select_source(state, oif, addr_int(AF_INET, nexthop), SCOPE_UNIVERSE)

    def address_type(addr):
        ip = ipaddress.ip_address(addr)
        if is_local(state, addr) or ip.is_loopback:
            return "local"
        if ip.is_multicast:
            return "multicast"
        if addr in broadcast or addr == "255.255.255.255":
            return "broadcast"
        return "unicast"

    def interface_address(ifname, family):
        found = primary(ifname, AF_INET if family == "ip" else 6)
        return found[0].local if found else None

    def interface_kind(ifname):
        link = state.link(ifname)
        return link.kind if link else None

    return AddressInfo(masquerade_source, address_type, interface_address, interface_kind)


def _compiled_ruleset(state: HostState) -> Ruleset:
    return load_ruleset(state.netfilter or {})


def ruleset_of(state: HostState) -> Ruleset:
    """The state's compiled ruleset, built once (compiling 10,000 rules costs); empty
    when the state holds no netfilter dump."""
    return state.derived(_compiled_ruleset)


def _local_addresses(state: HostState) -> frozenset[str]:
    return frozenset(a.local for a in state.addresses)


def _broadcast_addresses(state: HostState) -> frozenset[str]:
    return frozenset(r.dst for r in state.routes if r.type == "broadcast")


def is_local(state: HostState, addr: str) -> bool:
    return addr in state.derived(_local_addresses)


def _bridged_note(state: HostState, flow: Flow) -> str | None:
    """What the walk does not show for a flow between two hosts of the bridge it enters on:
    the bridge forwards such a frame itself (never routed), and only bridge netfilter
    (br_netfilter) lets iptables and conntrack see it."""
    link = state.link(flow.iif)
    if link is None or link.kind != "bridge" or not flow.src or flow.family != AF_INET or is_local(state, flow.dst):
        return None
    src, dst = ipaddress.ip_address(flow.src), ipaddress.ip_address(flow.dst)
    for address in state.addresses_of(flow.iif):
        subnet = ipaddress.ip_network(f"{address.local}/{address.prefixlen}", strict=False)
        if src in subnet and dst in subnet:
            break
    else:
        return None
    calls = state.bridge_calls_iptables(flow.iif)
    seen = {True: "bridge netfilter passes it through iptables' prerouting, forward and postrouting hooks",
            False: "bridged IPv4 skips iptables here (br_netfilter "
                   + ("off: net.bridge.bridge-nf-call-iptables = 0)" if state.br_netfilter else "not loaded)")
                   + ": no netfilter hook, conntrack or NAT sees it",
            None: "whether iptables sees it depends on bridge netfilter (net.bridge.bridge-nf-call-iptables), "
                  "which this state does not record"}[calls]
    return (f"{flow.src} and {flow.dst} are both on {flow.iif}'s subnet {subnet}: the bridge forwards a frame "
            f"between them itself, it is not routed as shown; {seen}")


def find_conntrack(state: HostState, flow: Flow) -> ConntrackEntry | None:
    """The entry whose original direction is this flow (ports only when given). A flow
    asked without a protocol matches none: an ICMP echo entry says nothing of TCP."""
    if not flow.proto:
        return None
    for entry in state.conntrack:
        if entry.orig_src != flow.src or entry.orig_dst != flow.dst or entry.proto != flow.proto:
            continue
        if flow.sport is not None and entry.orig_sport != flow.sport:
            continue
        if flow.dport is not None and entry.orig_dport != flow.dport:
            continue
        return entry
    return None


def _conntrack_rewrite(entry: ConntrackEntry, field: str) -> NatRewrite | None:
    """The rewrite of `field` that the entry's reply tuple implies, if any."""
    if field == "dst" and (entry.reply_src != entry.orig_dst or entry.reply_sport != entry.orig_dport):
        return NatRewrite("dnat", "dst", entry.orig_dst, entry.reply_src, f"conntrack: {entry.text}", "", "", None,
                          source="conntrack", from_port=entry.orig_dport,
                          to_port=entry.reply_sport if entry.reply_sport != entry.orig_dport else None)
    if field == "src" and (entry.reply_dst != entry.orig_src or entry.reply_dport != entry.orig_sport):
        return NatRewrite("snat", "src", entry.orig_src, entry.reply_dst, f"conntrack: {entry.text}", "", "", None,
                          source="conntrack", from_port=entry.orig_sport,
                          to_port=entry.reply_dport if entry.reply_dport != entry.orig_sport else None)
    return None


def _as_the_rules_make_it(entry: ConntrackEntry, field: str,
                          rules: Explanation) -> tuple[NatRewrite | None, str | None]:
    """The entry's rewrite of `field`, named as the rule that makes it (a MASQUERADE
    entry stays "masquerade"), and a note when today's rules would map a new
    connection otherwise (the entry predates them)."""
    kept = _conntrack_rewrite(entry, field)
    made = next((step.rewrite for step in rules.nat if step.rewrite.field == field), None)
    original = entry.orig_src if field == "src" else entry.orig_dst
    if (made.to if made else original) == (kept.to if kept else original):
        if kept is not None and made is not None:
            kept = dataclasses.replace(kept, type=made.type, rule=f"{kept.rule} (set up by {made.rule})",
                                       table=made.table, chain=made.chain, handle=made.handle, family=made.family)
        return kept, None
    entry_map = f"maps {field} {original} to {kept.to}" if kept else f"keeps {field} {original} unchanged"
    rules_map = f"map it to {made.to} ({made.rule})" if made else "leave it unchanged"
    return kept, (f"the conntrack entry {entry_map}, but the current rules would {rules_map} for a new "
                  f"connection: the entry predates them and applies until it expires or is deleted")


def infer_iif(state: HostState, flow: Flow) -> IifInference:
    """The interface a forwarded packet from SRC arrives on: the route back to SRC."""
    back = fib.route(state, RouteQuery(family=flow.family, dst=flow.src, mark=flow.mark))
    if back.error or not back.dev:
        raise FlowError("iif", f"cannot tell where packets from {flow.src} come in: no route back to "
                               f"{flow.src} ({back.error or 'no device'}); give {{iif}}")
    table = state.table_name(back.table) if back.table is not None else None
    return IifInference(back.dev, flow.src, back.gateway, table)


# ------------------------------------------------------------------- walk

class _Walk:
    """Carries the packet along the path; every step is appended in order."""

    def __init__(self, state: HostState, flow: Flow, variant: PacketVariant, inferred: IifInference | None,
                 picks: tuple[int, ...]):
        self.state = state
        self.flow = flow
        self.inferred = inferred
        self.picks = picks  # the option taken at each fork, in order (0 past the end)
        self.choices: list[Choice] = []
        self.forks: list[int] = []  # the number of options at each fork met
        self.variant = variant
        # Without a netfilter dump nothing is known of the hooks: none is shown.
        self.ruleset = ruleset_of(state) if state.netfilter else None
        self.steps: list[Step] = []
        self.rerouted: list[tuple[RerouteStep, RoutingStep]] = []  # during the output hook
        self.last_hook: HookStep | None = None
        self.rules_answer: Explanation | None = None
        self.notes: list[str] = []
        self.conntrack = find_conntrack(state, flow) if flow.src and variant.conntrack else None
        self.addresses = address_info(state, self._gateway_on)

    def _last_decision(self) -> fib.FibResult | None:
        for step in reversed(self.steps):
            if isinstance(step, RoutingStep):
                return step.result
        return None

    def _gateway_on(self, oif: str) -> str | None:
        decision = self._last_decision()
        return decision.gateway if decision and decision.dev == oif else None

    def route(self, stage: str, packet: PacketView | None = None, **query) -> fib.FibResult:
        step = self._decide(stage, packet, **query)
        self.steps.append(step)
        return step.result

    def _decide(self, stage: str, packet: PacketView | None = None, **query) -> RoutingStep:
        ports = packet if packet is not None else self.flow
        query.setdefault("tos", self.flow.tos)
        q = RouteQuery(family=self.flow.family, proto=self.flow.proto, sport=ports.sport, dport=ports.dport, **query)
        result = fib.route(self.state, q)
        if result.nexthop is None and len(result.nexthops) > 1 and not result.error:
            result = self._pick_nexthop(q, result)
        return RoutingStep(stage, q, result)

    def reroute(self, keys: Reroute) -> str | None:
        """ip_route_me_harder, called by the output hook's walk where the kernel calls it: routed
        with the keys of that moment; the steps follow the hook's (see `hook`)."""
        flow = self.flow
        packet = PacketView(nf_family(flow.family), keys.src, keys.dst, flow.proto, keys.sport, keys.dport)
        step = self._decide("re-route after output", packet, dst=keys.dst, src=keys.src, oif=flow.oif,
                            mark=keys.mark, uid=flow.uid, tos=keys.dscp << 2 | flow.tos & 3)
        self.rerouted.append((RerouteStep(keys.mark, keys.dst, keys.reason, keys.src), step))
        self.notes.append(f"re-routed after {keys.reason}")
        return step.result.error

    def _option(self) -> int:
        """The option this walk takes at the next fork (the first one past its picks)."""
        return self.picks[len(self.forks)] if len(self.forks) < len(self.picks) else 0

    def _choose(self, what: str, shares: tuple[float, ...], labels: tuple[str, ...]) -> int:
        """A random pick in netfilter (`-m statistic`, `numgen`) forks the path: the option this
        walk takes. An option of share 1 is no fork."""
        live = [i for i, share in enumerate(shares) if share > 0]
        if len(live) == 1:
            return live[0]
        index = live[self._option()]
        self.forks.append(len(live))
        self.choices.append(Choice("random", live.index(index), len(live), shares[index], f"{what} {labels[index]}"))
        return index

    def _pick_nexthop(self, query: RouteQuery, result: fib.FibResult) -> fib.FibResult:
        """A multipath route forks the path: this walk follows one nexthop (weighted by the kernel's hash)."""
        hops = result.nexthops
        index = self._option()
        self.forks.append(len(hops))
        total = sum(h.weight for h in hops)
        hop = hops[index]
        via = f"via {hop.gateway} " if hop.gateway else ""
        self.choices.append(Choice("multipath", index, len(hops), hop.weight / total,
                                   f"nexthop {via}dev {hop.dev}, weight {hop.weight} of {total}"))
        return fib.choose_nexthop(self.state, query, result, hop)

    def hook(self, name: str, packet: PacketView) -> PacketView:
        """Run one netfilter hook; returns the packet as it leaves the hook."""
        if self.ruleset is None:
            return packet
        traversal = traverse(self.ruleset, name, packet, addresses=self.addresses, choose=self._choose,
                             reroute=self.reroute if name == "output" else None)
        self.last_hook = HookStep(traversal)
        self.steps.append(self.last_hook)
        for reroute_step, routing_step in self.rerouted:  # the kernel's re-routes inside the hook, in order
            self.steps += (reroute_step, routing_step)
        self.rerouted.clear()
        off = self.ruleset.conntrack_off.get(packet.family)
        if off and any(visit.skipped == off for visit in traversal.chains):
            self._conntrack_maybe_on(packet.family)
        self.steps.extend(NatStep(name, rewrite) for rewrite in traversal.nat)
        return traversal.packet

    def _conntrack_maybe_on(self, family: str) -> None:
        """No rule turns conntrack on, yet the snapshot holds entries of this family: something
        the state does not show may have turned it on (or a rule since removed did)."""
        entries = sum((":" in e.orig_src) == (family == "ip6") for e in self.state.conntrack)
        held = f"{entries} {'entry' if entries == 1 else 'entries'}"
        note = (f"no loaded rule uses conntrack, yet conntrack holds {held} of this family: something "
                "outside the ruleset (tc's ct action, Open vSwitch, IPVS) may have it on, or a rule since "
                "removed did; if it is on, the nat chains shown as not run do run")
        if entries and note not in self.notes:
            self.notes.append(note)

    def conntrack_nat(self, hook: str, field: str) -> NatRewrite | None:
        """The entry's mapping of `field`, compared with what the rules alone give a new connection."""
        if self.rules_answer is None:
            # the same outcome (same forks taken), without the entry
            self.rules_answer = _explain_one(self.state, self.flow, dataclasses.replace(self.variant, conntrack=False),
                                             tuple(c.index for c in self.choices))[0]
        rewrite, disagreement = _as_the_rules_make_it(self.conntrack, field, self.rules_answer)
        if disagreement:
            self.notes.append(disagreement)
        if rewrite is not None:
            self.steps.append(NatStep(hook, rewrite))
        return rewrite

    def dropped_in(self) -> HookStep | None:
        """The hook just run, if it dropped the packet."""
        return self.last_hook if self.last_hook is not None and self.last_hook.dropped else None

    def packet(self, src: str, dst: str, mark: int, *, iif=None, oif=None) -> PacketView:
        link = self.state.link
        proto = self.flow.proto
        ct_state = self.variant.ct_state or ("established" if self.conntrack else "new")
        family = self.flow.family
        return PacketView(
            family=nf_family(family), src=src, dst=dst, proto=proto, sport=self.flow.sport,
            dport=self.flow.dport, iif=iif, oif=oif, mark=mark, dscp=self.flow.tos >> 2,
            ct_state=ct_state, uid=self.flow.uid if not iif else None,
            iifkind=link(iif).kind if iif and link(iif) else None,
            oifkind=link(oif).kind if oif and link(oif) else None,
            icmp_type=_icmp_echo(family, not self.variant.reply) if proto in ICMP_PROTOCOLS else None,
            icmp_code=0 if proto in ICMP_PROTOCOLS else None,
            tcp_flags=_tcp_flags(self.variant, self.conntrack) if proto == TCP else None,
            length=self.variant.length,
            # the entry's ct mark: what CONNMARK --restore-mark (mwan3's uplink pinning) reads
            ct_mark=self.conntrack.mark if self.conntrack else self.variant.ct_mark,
        )

    def with_oif(self, packet: PacketView, oif: str | None) -> PacketView:
        link = self.state.link(oif)
        # PacketView's fields are all init fields: built directly, twice as fast as replace()
        return PacketView(**{**packet.__dict__, "oif": oif, "oifkind": link.kind if link else None})


def later_packet_of(first: Explanation, length: int | None = None) -> PacketVariant:
    """A later packet of the connection whose first packet `first` explains: established, with the
    ct mark the first packet's chains left in the connection (CONNMARK --save-mark, ct mark set)."""
    hooks = first.hook_steps
    ct_mark = hooks[-1].traversal.packet.ct_mark if hooks else 0
    snat = [s.rewrite for s in first.nat if s.rewrite.field == "src"]
    masquerade_dev = first.egress.dev if first.egress and any(r.type == "masquerade" for r in snat) else None
    return PacketVariant(ct_state="established", length=length, conntrack=False, ct_mark=ct_mark,
                         snat_to=snat[-1].to if snat else None, masquerade_dev=masquerade_dev)


def _icmp_echo(family: int, request: bool) -> int:
    if family == AF_INET:
        return 8 if request else 0
    return 128 if request else 129


def _tcp_flags(variant: PacketVariant, conntrack: ConntrackEntry | None) -> int | None:
    """A SYN for a new connection, a SYN/ACK for a reply asked about; unknown for a
    packet of an existing connection (any segment can be next)."""
    if variant.reply:
        return TCP_SYN_ACK
    if variant.ct_state == "new" or conntrack is None:
        return TCP_SYN
    return None


def _check_interfaces(state: HostState, flow: Flow) -> None:
    for field, name in (("iif", flow.iif), ("oif", flow.oif)):
        if name and state.link(name) is None:
            known = ", ".join(sorted(link.name for link in state.links)) or "none"
            raise FlowError(field, f"unknown interface {name!r} for {{{field}}} (interfaces: {known})")


# A path that forks more than this is explained by its first outcomes only (and says so).
MAX_OUTCOMES = 16


def explain(state: HostState, flow: Flow, variant: PacketVariant = PacketVariant()) -> Explanation:
    """The flow's path; where it forks (multipath nexthops, random matches, a protocol the
    user did not give but an ip rule selects on), the first outcome, with the others as
    alternatives."""
    outcomes: list[Explanation] = []
    complete = True
    for assumption, asked in _assumed_protocols(state, flow):
        found: list[Explanation] = []
        complete = _outcomes(state, asked, variant, (), found) and complete
        outcomes.extend(dataclasses.replace(o, choices=(assumption, *o.choices)) if assumption else o for o in found)
    if all(o.share is not None for o in outcomes):  # the likeliest outcome first
        outcomes.sort(key=lambda o: -o.share)
    main = outcomes[0]
    unasked = _unasked_selectors(state, main.flow)
    if unasked:
        main = dataclasses.replace(main, notes=(*main.notes, *unasked))
    if len(outcomes) == 1:
        return main
    notes = main.notes
    if not complete:
        notes = (*notes, f"the path forks into more than {MAX_OUTCOMES} outcomes: the first {MAX_OUTCOMES} are shown")
    return dataclasses.replace(main, alternatives=tuple(outcomes[1:]), notes=notes)


def _rule_selectors(state: HostState) -> dict[tuple[int, str], tuple[int, ...]]:
    """(family, field) → the priorities of the ip rules that select on that flow field
    (built once per state: a batch asks thousands of flows of 10,000 rules)."""
    found: dict[tuple[int, str], list[int]] = {}
    for r in state.rules:
        for field, value in (("sport", r.sport), ("dport", r.dport), ("uid", r.uidrange), ("tos", r.tos),
                             ("proto", r.ipproto)):
            if value:
                found.setdefault((r.family, field), []).append(r.priority if field != "proto" else r.ipproto)
    return {key: tuple(values) for key, values in found.items()}


def _unasked_selectors(state: HostState, flow: Flow) -> list[str]:
    """What ip rules select on that the flow left out, and the value the answer assumed
    (the one `ip route get` assumes too)."""
    selectors = state.derived(_rule_selectors)
    notes = []
    for field, assumed in (("sport", "no source port"), ("dport", "no destination port"),
                           ("uid", "uid 0 (root, as `ip route get` run by root)"), ("tos", "tos 0")):
        given = getattr(flow, field)
        if given or (given is not None and field != "tos") or (field == "uid" and flow.iif) or (
                field in ("sport", "dport") and flow.proto and flow.proto not in PORT_PROTOCOLS):
            continue
        chosen = [str(p) for p in selectors.get((flow.family, field), ())]
        if chosen:
            shown = ", ".join(chosen[:5]) + (f" and {len(chosen) - 5} more" if len(chosen) > 5 else "")
            notes.append(f"ip rule {shown} select{'s' if len(chosen) == 1 else ''} on {field}, which "
                         f"the flow does not give: the answer is for {assumed}; ask with that field to see its effect")
    return notes


def _assumed_protocols(state: HostState, flow: Flow) -> list[tuple[Choice | None, Flow]]:
    """The flow as asked; or, when it names no protocol but an ip rule selects one, the flow
    as `ip route get` takes it (UDP) and with the other protocol the rules tell apart."""
    if flow.proto:
        return [(None, flow)]
    selected = sorted(set(state.derived(_rule_selectors).get((flow.family, "proto"), ())))
    if not selected:
        return [(None, flow)]
    other = TCP if UDP in selected else selected[0]
    rules = ", ".join(protocol_name(p) for p in selected)
    return [(Choice("assumed", 0, 2, None, f"protocol udp (none given: `ip route get` assumes udp; "
                                           f"ip rules select {rules})"), dataclasses.replace(flow, proto=UDP)),
            (Choice("assumed", 1, 2, None, f"protocol {protocol_name(other)}"), dataclasses.replace(flow, proto=other))]


def _outcomes(state: HostState, flow: Flow, variant: PacketVariant, picks: tuple[int, ...],
              found: list[Explanation]) -> bool:
    """Depth first: the walk with `picks`, then every other option at each later fork.
    False when MAX_OUTCOMES cut the enumeration short."""
    outcome, forks = _explain_one(state, flow, variant, picks)
    found.append(outcome)
    taken = tuple(c.index for c in outcome.choices)
    for depth in range(len(picks), len(forks)):
        for option in range(1, forks[depth]):
            if len(found) >= MAX_OUTCOMES:
                return False
            if not _outcomes(state, flow, variant, (*taken[:depth], option), found):
                return False
    return True


def _explain_one(state: HostState, flow: Flow, variant: PacketVariant,
                 picks: tuple[int, ...]) -> tuple[Explanation, list[int]]:
    _check_interfaces(state, flow)
    inferred = None
    if flow.src and flow.iif is None and not is_local(state, flow.src):
        inferred = infer_iif(state, flow)
        flow = dataclasses.replace(flow, iif=inferred.iif)
    walk = _Walk(state, flow, variant, inferred, picks)
    if flow.family == AF_INET6 and state.sysctl("net.ipv6.conf.all.disable_ipv6") == "1":
        walk.notes.append("IPv6 is disabled on this host (net.ipv6.conf.all.disable_ipv6=1): it has no IPv6 "
                          "addresses or routes, and sends or forwards no IPv6 packet")
    if not flow.proto and variant.conntrack and flow.src:
        protocols = sorted({protocol_name(e.proto) for e in state.conntrack
                            if e.orig_src == flow.src and e.orig_dst == flow.dst})
        if protocols:
            walk.notes.append(f"conntrack holds {'/'.join(protocols)} entries for {flow.src} → {flow.dst}: "
                              "ask with the protocol to see their mapping applied")
    if flow.iif and flow.iif != "lo":
        bridged = _bridged_note(state, flow)
        if bridged:
            walk.notes.append(bridged)
        return _explain_input(walk), walk.forks
    return _explain_output(walk), walk.forks


def _explain_input(walk: _Walk) -> Explanation:
    flow = walk.flow
    if walk.conntrack:
        walk.notes.append("an existing conntrack entry matches this flow: its NAT mapping applies, not the NAT rules")
    packet = walk.hook("prerouting", walk.packet(flow.src, flow.dst, flow.mark, iif=flow.iif))
    if walk.dropped_in():
        return _dropped(walk, "forwarded")
    if walk.conntrack:
        walk.conntrack_nat("prerouting", "dst")
        packet = dataclasses.replace(packet, dst=walk.conntrack.reply_src,
                                     dport=_reply_port(walk.conntrack.reply_sport, packet.dport))
    if packet.mark != flow.mark:
        walk.notes.append(f"prerouting set the mark to {packet.mark:#x} before the routing decision")
    result = walk.route("routing", packet, dst=packet.dst, src=flow.src, iif=flow.iif, mark=packet.mark)
    if result.error:
        return _routing_failed(walk, "forwarded", result)
    if result.type == "local":
        walk.hook("input", packet)
        if walk.dropped_in():
            return _dropped(walk, "local-in")
        return _finish(walk, "local-in", "delivered-locally", f"{packet.dst} is an address of this host")
    if result.type not in ("unicast", None):
        return _finish(walk, "forwarded", result.type, f"route type {result.type}")
    packet = walk.hook("forward", walk.with_oif(packet, result.dev))
    if walk.dropped_in():
        return _dropped(walk, "forwarded")
    if walk.variant.through_forward_only:
        return _finish(walk, "forwarded", "forwarded", "walked through the forward hook only (asked so)")
    return _postrouting(walk, "forwarded", packet)


def _reply_port(port: int | None, default: int | None) -> int | None:
    return port if port is not None else default


def _explain_output(walk: _Walk) -> Explanation:
    flow = walk.flow
    result = walk.route("routing", dst=flow.dst, src=flow.src, oif=flow.oif, mark=flow.mark, uid=flow.uid)
    if result.error:
        return _routing_failed(walk, "local-out", result)
    src = flow.src or result.prefsrc
    if src is None:
        return _finish(walk, "local-out", "unreachable", "no source address to send from")
    if flow.src is None and flow.proto in (TCP, UDP):
        result = _connect_lookup(walk, result, src)
        if result.error:
            return _routing_failed(walk, "local-out", result)
    if walk.conntrack is None and walk.variant.conntrack:
        walk.conntrack = find_conntrack(walk.state, dataclasses.replace(flow, src=src))
    # ip_route_me_harder runs inside the hook (walk.reroute), after each route chain or NAT
    # that changed a routing key; a mark set in a filter chain does not re-route
    packet = walk.hook("output", walk.packet(src, flow.dst, flow.mark, oif=result.dev))
    result = walk._last_decision()
    if result.error:  # a re-route found no route: the packet is dropped there (NF_DROP_ERR)
        return _routing_failed(walk, "local-out", result, in_hook=True)
    if walk.dropped_in():
        return _dropped(walk, "local-out")
    if walk.conntrack:
        walk.conntrack_nat("output", "dst")
        before = packet.dst
        packet = dataclasses.replace(packet, dst=walk.conntrack.reply_src,
                                     dport=_reply_port(walk.conntrack.reply_sport, packet.dport))
        if packet.dst != before:  # nf_nat_ipv4_local_fn: the entry's mapping changes the destination address
            walk.reroute(Reroute(f"the conntrack entry's NAT: destination {before} -> {packet.dst}", src, packet.dst,
                                 packet.mark, packet.dscp, packet.sport, packet.dport))
            walk.steps.extend(walk.rerouted.pop())
            result = walk._last_decision()
            if result.error:
                return _routing_failed(walk, "local-out", result, in_hook=True)
    if result.type == "local":
        return _looped_back(walk, walk.with_oif(packet, "lo"))
    return _postrouting(walk, "local-out", walk.with_oif(packet, result.dev))


def _connect_lookup(walk: _Walk, first: fib.FibResult, src: str) -> fib.FibResult:
    """connect() without a bound source (ip_route_connect) looks the route up again with the
    source the first lookup selected: a `from` rule can then send the SYN elsewhere than
    `ip route get DST` says. Unconnected UDP (sendto) keeps the first answer."""
    flow = walk.flow
    query = RouteQuery(family=flow.family, dst=flow.dst, src=src, oif=flow.oif, mark=flow.mark, tos=flow.tos,
                       proto=flow.proto, sport=flow.sport, dport=flow.dport, uid=flow.uid)
    again = fib.route(walk.state, query)
    same = (again.error, again.table, again.dev, again.gateway) == (first.error, first.table, first.dev, first.gateway)
    if same:
        return first
    via = f" via {again.gateway}" if again.gateway else ""
    where = f"error {again.error}" if again.error else f"dev {again.dev}{via}"
    if flow.proto == UDP:
        walk.notes.append(f"this is unconnected UDP (sendto): a connect()ed UDP socket looks the route up again "
                          f"with source {src} and goes {where} (table {walk.state.table_name(again.table)})"
                          if not again.error else f"this is unconnected UDP (sendto): a connect()ed UDP socket "
                          f"looks the route up again with source {src} and fails ({again.error})")
        return first
    walk.notes.append(f"TCP connect() looks the route up again with the source it selected ({src}): "
                      f"the SYN goes {where}, not where `ip route get {flow.dst}` says")
    return walk.route("connect() with the selected source", dst=flow.dst, src=src, oif=flow.oif, mark=flow.mark,
                      uid=flow.uid)


def _looped_back(walk: _Walk, packet: PacketView) -> Explanation:
    """A local packet to a local address leaves by lo and comes back in (ip_output →
    loopback_xmit → ip_rcv): postrouting, then prerouting and input with iif lo. Its NAT
    is bound at output/postrouting, so the nat chains of prerouting and input do not run."""
    packet = walk.hook("postrouting", packet)
    if walk.dropped_in():
        return _dropped(walk, "local-out")
    back = dataclasses.replace(packet, iif="lo", oif=None, iifkind=None, oifkind=None, uid=None, nat_bound=True)
    back = walk.hook("prerouting", back)
    if walk.dropped_in():
        return _dropped(walk, "local-out")
    walk.hook("input", back)
    if walk.dropped_in():
        return _dropped(walk, "local-out")
    return _finish(walk, "local-out", "delivered-locally",
                   f"{back.dst} is an address of this host (looped back through lo)")


def _postrouting(walk: _Walk, origin: str, packet: PacketView) -> Explanation:
    result = walk._last_decision()
    oif = result.dev
    packet = walk.hook("postrouting", packet)
    if walk.dropped_in():
        return _dropped(walk, origin)
    src, sport = packet.src, packet.sport
    if walk.conntrack:
        snat = walk.conntrack_nat("postrouting", "src")
        src = snat.to if snat else walk.conntrack.orig_src
        sport = _reply_port(walk.conntrack.reply_dport, sport)
    elif walk.variant.ct_state == "established":  # a later packet of a connection: its first's NAT
        bound = walk.variant.masquerade_dev
        if bound and oif != bound:
            return _finish(walk, origin, "dropped", f"NAT drops it: the connection was masqueraded on {bound} and "
                           f"this packet leaves by {oif} (nf_nat_oif_changed; the connection ends)", NETFILTER_DROP)
        src = walk.variant.snat_to or src
    configured = result.route.gateway if result.route else None
    if configured and not result.gateway:
        walk.notes.append(f"the route's gateway {configured} is this host's own address: the kernel "
                          f"ignores it and sends on-link out of {oif}")
    link = walk.state.link(oif)
    walk.steps.append(EgressStep(dev=oif, src=src, dst=packet.dst, nexthop=result.gateway or packet.dst,
                                 gateway=result.gateway, mtu=link.mtu if link else None, mark=packet.mark,
                                 sport=sport, dport=packet.dport))
    verdict = "forwarded" if origin == "forwarded" else "sent"
    how = f"via {result.gateway}" if result.gateway else "directly (on-link)"
    return _finish(walk, origin, verdict, f"leaves {oif} {how}, source {src}")


def _dropped(walk: _Walk, origin: str) -> Explanation:
    hook = walk.dropped_in()
    # NF_QUEUE drops only when no program listens on the queue (nf_queue frees it without a reason)
    drop_reason = "NOT_SPECIFIED" if hook.verdict == "queue" else NETFILTER_DROP
    return _finish(walk, origin, "dropped", f"dropped in {hook.hook} ({hook.decided_by})", drop_reason)


# What the user sees for each errno the routing decision can return, unless the drop reason says more.
_ERROR_VERDICTS = {"EINVAL": "blackholed", "EACCES": "prohibited", "EXDEV": "dropped-rp-filter",
                   "ENETUNREACH": "unreachable", "EHOSTUNREACH": "unreachable"}
_DROP_REASON_VERDICTS = {"IP_RPFILTER": "dropped-rp-filter", "IP_INVALID_SOURCE": "dropped-martian",
                         "IP_LOCAL_SOURCE": "dropped-martian", "IP_INVALID_DEST": "dropped-martian",
                         "IP_LOCALNET": "dropped-martian"}


def _routing_failed(walk: _Walk, origin: str, result: fib.FibResult, *, in_hook: bool = False) -> Explanation:
    """A socket's failed lookup returns an error to it (there is no packet to drop); a re-route
    inside a netfilter hook drops the packet there (NF_DROP_ERR); a received packet's input route
    drops it with the routing's own reason."""
    reason = f"routing fails with {result.error}"
    if result.error_reason:
        reason += f": {result.error_reason}"
    if in_hook:
        drop_reason = NETFILTER_DROP
    else:
        drop_reason = None if origin == "local-out" else result.drop_reason
    verdict = _DROP_REASON_VERDICTS.get(drop_reason) or _ERROR_VERDICTS.get(result.error, "unreachable")
    return _finish(walk, origin, verdict, reason, drop_reason)


def _finish(walk: _Walk, origin: str, verdict: str, reason: str, drop_reason: str | None = None) -> Explanation:
    return Explanation(flow=walk.flow, origin=origin, iif_inferred=walk.inferred, steps=tuple(walk.steps),
                       conntrack=walk.conntrack, verdict=verdict, verdict_reason=reason, state=walk.state,
                       notes=(*walk.state.notes, *walk.notes), choices=tuple(walk.choices), drop_reason=drop_reason)
