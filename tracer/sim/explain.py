"""Explain one flow: the kernel's whole chain of decisions, computed from a HostState.

Pure: no kernel access here (the live cross-check lives in tracer/kernel_check.py).
The order follows the kernel's packet path:

    forwarded/local-in:  prerouting hook → route_input → forward|input → postrouting
    local-out:           route_output → output hook → (re-route if mark/dst changed) → postrouting

An existing conntrack entry for the flow replaces the NAT rules by its mapping,
as the kernel does for every packet after the first.
"""

from __future__ import annotations

import dataclasses
import ipaddress
from dataclasses import dataclass, field

from tracer.errors import UsageError
from tracer.model import AF_INET, AF_INET6, SCOPE_UNIVERSE, ConntrackEntry, HostState
from tracer.sim import fib
from tracer.sim.netfilter import AddressInfo, PacketView, load_ruleset, traverse
from tracer.sim.nft_model import IPPROTO, IPPROTO_NAMES, PORT_PROTOS

# --proto names are nft's (IPPROTO); the ports need a protocol that has them.
PROTOCOL_NAMES = IPPROTO_NAMES


@dataclass(frozen=True)
class Flow:
    """What the user asked about. src None: a locally generated flow, source selected."""

    dst: str
    src: str | None = None
    iif: str | None = None
    oif: str | None = None
    proto: int = 0
    sport: int | None = None
    dport: int | None = None
    mark: int = 0
    tos: int = 0
    uid: int | None = None

    @property
    def family(self) -> int:
        return AF_INET6 if ":" in self.dst else AF_INET

    def to_dict(self) -> dict:
        return {"src": self.src, "dst": self.dst, "iif": self.iif, "oif": self.oif,
                "proto": PROTOCOL_NAMES.get(self.proto, self.proto) if self.proto else None,
                "sport": self.sport, "dport": self.dport, "mark": self.mark, "tos": self.tos,
                "uid": self.uid}


def parse_protocol(text: str | None) -> int:
    if text is None or text == "":
        return 0
    if text.isdigit() and 0 <= int(text) <= 255:
        return int(text)
    number = IPPROTO.get(text.lower(), 256)
    if number <= 255:
        return number
    raise UsageError(f"unknown protocol {text!r}: use tcp, udp, icmp, sctp or a number 0-255") from None


def parse_number(text: str | int | None, what: str, maximum: int) -> int | None:
    if text is None or isinstance(text, int):
        return text
    try:
        value = int(text, 0)
    except ValueError:
        raise UsageError(f"invalid {what} {text!r}: expected a number") from None
    if not 0 <= value <= maximum:
        raise UsageError(f"invalid {what} {text!r}: out of range 0-{maximum}")
    return value


def make_flow(dst: str, src: str | None = None, *, iif=None, oif=None, proto=None, sport=None,
              dport=None, mark=None, tos=None, uid=None) -> Flow:
    """Validate user input into a Flow; every problem is one UsageError line."""
    addresses = []
    for label, text in (("destination", dst), ("source", src)):
        if text is None:
            continue
        try:
            addresses.append(ipaddress.ip_address(text))
        except ValueError:
            raise UsageError(f"invalid {label} address {text!r}") from None
    if len({a.version for a in addresses}) > 1:
        raise UsageError(f"source {src} and destination {dst} are of different IP versions")
    protocol = parse_protocol(proto)
    sport_n = parse_number(sport, "source port", 65535)
    dport_n = parse_number(dport, "destination port", 65535)
    if (sport_n is not None or dport_n is not None) and protocol and protocol not in PORT_PROTOS:
        raise UsageError(f"ports need --proto tcp, udp or sctp, not {PROTOCOL_NAMES.get(protocol, protocol)}")
    if (sport_n is not None or dport_n is not None) and not protocol:
        protocol = 6
    return Flow(dst=str(addresses[0]), src=str(addresses[1]) if src is not None else None,
                iif=iif, oif=oif, proto=protocol, sport=sport_n, dport=dport_n,
                mark=parse_number(mark, "mark", 0xFFFFFFFF) or 0,
                tos=parse_number(tos, "tos/dsfield", 255) or 0,
                uid=parse_number(uid, "uid", 0xFFFFFFFF))


# ----------------------------------------------------------------- results

@dataclass(frozen=True)
class Decision:
    """One routing decision (there can be two: before and after a hook re-routes)."""

    result: fib.FibResult
    query: fib.FibQuery
    stage: str  # "routing" | "re-route after output" …

    def to_dict(self, state: HostState) -> dict:
        r = self.result
        route = r.route
        return {
            "stage": self.stage,
            "rule": {"priority": r.rule.priority, "text": _rule_text(r)} if r.rule else None,
            "table_id": r.table,
            "table": state.table_name(r.table) if r.table is not None else None,
            "route": {"dst": route.prefix, "type": route.type, "metric": route.metric,
                      "protocol": route.protocol, "scope": route.scope, "tos": route.tos,
                      "text": route_text(route, state)} if route else None,
            "type": r.type,
            "gateway": r.gateway,
            "dev": r.dev,
            "prefsrc": r.prefsrc,
            "nexthops": [{"gateway": n.gateway, "dev": n.dev, "weight": n.weight} for n in r.nexthops],
            "multipath": r.multipath_note,
            "error": r.error,
            "error_reason": r.error_reason,
            "notes": list(r.notes),
        }


@dataclass(frozen=True)
class Explanation:
    flow: Flow
    origin: str  # forwarded | local-out | local-in
    iif_inferred: str | None  # why the input interface was chosen, when the user gave none
    decisions: tuple[Decision, ...]
    hooks: tuple  # HookTraversal, in path order
    nat: tuple[dict, ...]
    conntrack: ConntrackEntry | None
    egress: dict | None
    verdict: str
    verdict_reason: str
    state: HostState = field(repr=False, compare=False)
    kernel: dict | None = None
    findings: tuple = ()
    notes: tuple[str, ...] = ()

    @property
    def decision(self) -> Decision | None:
        return self.decisions[-1] if self.decisions else None

    def with_kernel(self, kernel: dict) -> "Explanation":
        return dataclasses.replace(self, kernel=kernel)

    def with_findings(self, findings) -> "Explanation":
        return dataclasses.replace(self, findings=tuple(findings))

    def to_dict(self) -> dict:
        final = self.decision.to_dict(self.state) if self.decision else None
        return {
            "flow": self.flow.to_dict(),
            "origin": self.origin,
            "iif_inferred": self.iif_inferred,
            "rules": [{"priority": s.rule.priority, "text": s.text, "matched": s.matched,
                       "reason": s.reason, "result": s.result}
                      for s in (self.decision.result.steps if self.decision else ())],
            "decision": final,
            "reroutes": [d.to_dict(self.state) for d in self.decisions[:-1]],
            "netfilter": [_compact_hook(h) for h in self.hooks],
            "nat": list(self.nat),
            "conntrack": _conntrack_dict(self.conntrack),
            "egress": self.egress,
            "verdict": self.verdict,
            "verdict_reason": self.verdict_reason,
            "kernel": self.kernel,
            "findings": [f.to_dict() for f in self.findings],
            "notes": list(self.notes),
        }


# Chains longer than this list only the rules that matched or could not be
# evaluated; the others are counted in "omitted" (10,000 non-matching rules are noise).
MAX_LISTED_STEPS = 200


def _compact_hook(traversal) -> dict:
    chains, omitted = [], []
    for chain in traversal.chains:
        kept = chain.steps
        if len(kept) > MAX_LISTED_STEPS:
            kept = tuple(step for step in kept if step.matched is not False)
        omitted.append(len(chain.steps) - len(kept))
        chains.append(dataclasses.replace(chain, steps=kept))
    doc = dataclasses.replace(traversal, chains=tuple(chains)).to_dict()
    for chain, count in zip(doc["chains"], omitted):
        chain["omitted"] = count
    return doc


def _conntrack_dict(entry: ConntrackEntry | None) -> dict | None:
    if entry is None:
        return None
    return {"text": entry.text, "proto": entry.proto, "state": entry.state,
            "original": {"src": entry.orig_src, "dst": entry.orig_dst,
                         "sport": entry.orig_sport, "dport": entry.orig_dport},
            "reply": {"src": entry.reply_src, "dst": entry.reply_dst,
                      "sport": entry.reply_sport, "dport": entry.reply_dport}}


def _rule_text(result: fib.FibResult) -> str:
    for step in result.steps:
        if step.rule is result.rule:
            return step.text
    return str(result.rule.priority)


def route_text(route, state: HostState) -> str:
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
    if route.table not in (254,):
        words += ["table", state.table_name(route.table)]
    if route.protocol not in ("boot", "unspec"):
        words += ["proto", route.protocol]
    if route.scope != SCOPE_UNIVERSE and route.type == "unicast":
        words += ["scope", {253: "link", 254: "host", 200: "site"}.get(route.scope, str(route.scope))]
    if route.prefsrc:
        words += ["src", route.prefsrc]
    if route.metric:
        words += ["metric", str(route.metric)]
    for hop in route.nexthops if len(route.nexthops) > 1 else ():
        words += ["nexthop"] + (["via", hop.gateway] if hop.gateway else []) + ["dev", str(hop.dev), "weight", str(hop.weight)]
    return " ".join(words)


# -------------------------------------------------------------- addresses

def address_info(state: HostState, gateway_of=lambda oif: None) -> AddressInfo:
    """What the netfilter walk needs from the host (shared with the rules engine).
    `gateway_of(oif)`: the nexthop the routing decision chose on oif, if known."""
    broadcast = state.cached("broadcast", lambda: {r.dst for r in state.routes if r.type == "broadcast"})

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
        return fib.select_source(state, oif, fib.addr_int(AF_INET, nexthop), SCOPE_UNIVERSE)

    def address_type(addr):
        ip = ipaddress.ip_address(addr)
        if _is_local(state, addr) or ip.is_loopback:
            return "local"
        if ip.is_multicast:
            return "multicast"
        if addr in broadcast or addr == "255.255.255.255":
            return "broadcast"
        return "unicast"

    def interface_address(ifname, nf_family):
        found = primary(ifname, AF_INET if nf_family == "ip" else AF_INET6)
        return found[0].local if found else None

    def interface_kind(ifname):
        link = state.link(ifname)
        return link.kind if link else None

    return AddressInfo(masquerade_source, address_type, interface_address, interface_kind)


def _is_local(state: HostState, addr: str) -> bool:
    return addr in state.cached("local_addresses", lambda: frozenset(a.local for a in state.addresses))


# -------------------------------------------------------------- conntrack

def find_conntrack(state: HostState, flow: Flow) -> ConntrackEntry | None:
    """The entry whose original direction is this flow (ports only when given)."""
    for entry in state.conntrack:
        if entry.orig_src != flow.src or entry.orig_dst != flow.dst:
            continue
        if flow.proto and entry.proto != flow.proto:
            continue
        if flow.sport is not None and entry.orig_sport != flow.sport:
            continue
        if flow.dport is not None and entry.orig_dport != flow.dport:
            continue
        return entry
    return None


def _conntrack_nat(entry: ConntrackEntry) -> list[dict]:
    rewrites = []
    if entry.reply_src != entry.orig_dst:
        rewrites.append({"type": "dnat", "field": "dst", "from": entry.orig_dst, "to": entry.reply_src,
                         "rule": f"conntrack: {entry.text}", "hook": "prerouting", "source": "conntrack"})
    if entry.reply_dst != entry.orig_src:
        rewrites.append({"type": "snat", "field": "src", "from": entry.orig_src, "to": entry.reply_dst,
                         "rule": f"conntrack: {entry.text}", "hook": "postrouting", "source": "conntrack"})
    return rewrites


# ------------------------------------------------------------------- walk

class _Walk:
    """Carries the packet along the path; every step appends to the lists."""

    def __init__(self, state: HostState, flow: Flow):
        self.state = state
        self.flow = flow
        self.family = flow.family
        self.nf_family = "ip" if self.family == AF_INET else "ip6"
        self.ruleset = state.cached("ruleset", lambda: load_ruleset(state.netfilter)) if state.netfilter else None
        self.decisions: list[Decision] = []
        self.hooks: list = []
        self.nat: list[dict] = []
        self.notes: list[str] = []
        self.conntrack = find_conntrack(state, flow) if flow.src else None
        self.addresses = address_info(state, self._gateway_on)

    def _gateway_on(self, oif: str) -> str | None:
        decision = self.decisions[-1].result if self.decisions else None
        return decision.gateway if decision and decision.dev == oif else None

    def route(self, stage: str, **query) -> fib.FibResult:
        q = fib.FibQuery(family=self.family, tos=self.flow.tos, proto=self.flow.proto,
                         sport=self.flow.sport, dport=self.flow.dport, **query)
        result = fib.route(self.state, q)
        self.decisions.append(Decision(result, q, stage))
        return result

    def hook(self, name: str, packet: PacketView) -> PacketView:
        """Run one netfilter hook; returns the packet as it leaves the hook."""
        if self.ruleset is None:
            return packet
        traversal = traverse(self.ruleset, name, packet, addresses=self.addresses)
        self.hooks.append(traversal)
        for rewrite in traversal.nat:
            entry = rewrite.to_dict()
            entry["hook"] = name
            self.nat.append(entry)
        return traversal.packet

    def dropped_at(self) -> str | None:
        last = self.hooks[-1] if self.hooks else None
        return last.hook if last and last.verdict in ("drop", "reject", "queue") else None

    def packet(self, src: str, dst: str, mark: int, *, iif=None, oif=None) -> PacketView:
        link = self.state.link
        return PacketView(
            family=self.nf_family, src=src, dst=dst, proto=self.flow.proto, sport=self.flow.sport,
            dport=self.flow.dport, iif=iif, oif=oif, mark=mark, dscp=self.flow.tos >> 2,
            ct_state="established" if self.conntrack else "new", uid=self.flow.uid if not iif else None,
            iifkind=link(iif).kind if iif and link(iif) else None,
            oifkind=link(oif).kind if oif and link(oif) else None,
            icmp_type=(8 if self.family == AF_INET else 128) if self.flow.proto in (1, 58) else None,
            icmp_code=0 if self.flow.proto in (1, 58) else None,
            tcp_flags=0x02 if self.flow.proto == 6 and not self.conntrack else None,
        )


def _check_interfaces(state: HostState, flow: Flow) -> None:
    for option, name in (("--iif", flow.iif), ("--oif", flow.oif)):
        if name and state.link(name) is None:
            known = ", ".join(sorted(link.name for link in state.links)) or "none"
            raise UsageError(f"unknown interface {name!r} for {option} (interfaces: {known})")


def infer_iif(state: HostState, flow: Flow) -> tuple[str | None, str]:
    """The interface a forwarded packet from SRC arrives on: the route back to SRC."""
    back = fib.route(state, fib.FibQuery(family=flow.family, dst=flow.src, mark=flow.mark))
    if back.error or not back.dev:
        return None, f"no route back to {flow.src} ({back.error or 'no device'}); give --iif"
    how = f"via {back.gateway} " if back.gateway else ""
    table = state.table_name(back.table) if back.table is not None else "?"
    return back.dev, f"input interface {back.dev} inferred from the route back to {flow.src} ({how}dev {back.dev}, table {table}); use --iif to override"


def explain(state: HostState, flow: Flow) -> Explanation:
    _check_interfaces(state, flow)
    inferred = None
    if flow.src and flow.iif is None and not _is_local(state, flow.src):
        iif, inferred = infer_iif(state, flow)
        if iif is None:
            raise UsageError(f"cannot tell where packets from {flow.src} come in: {inferred}")
        flow = dataclasses.replace(flow, iif=iif)
    if flow.iif and flow.iif != "lo":
        return _explain_input(state, flow, inferred)
    return _explain_output(state, flow, inferred)


def _explain_input(state: HostState, flow: Flow, inferred: str | None) -> Explanation:
    walk = _Walk(state, flow)
    src, dst, mark = flow.src, flow.dst, flow.mark
    if walk.conntrack:
        walk.notes.append("an existing conntrack entry matches this flow: its NAT mapping applies, not the NAT rules")
    packet = walk.hook("prerouting", walk.packet(src, dst, mark, iif=flow.iif))
    if walk.dropped_at():
        return _finish(walk, "forwarded", inferred, "dropped", f"dropped in prerouting ({walk.hooks[-1].decided_by})")
    if walk.conntrack:
        walk.nat.extend(n for n in _conntrack_nat(walk.conntrack) if n["field"] == "dst")
        dst = walk.conntrack.reply_src
    else:
        dst = packet.dst
    mark = packet.mark
    if mark != flow.mark:
        walk.notes.append(f"prerouting set the mark to {mark:#x} before the routing decision")
    result = walk.route("routing", dst=dst, src=src, iif=flow.iif, mark=mark)
    if result.error:
        return _routing_failed(walk, "forwarded", inferred, result)
    if result.type == "local":
        packet = walk.hook("input", walk.packet(src, dst, mark, iif=flow.iif))
        if walk.dropped_at():
            return _finish(walk, "local-in", inferred, "dropped", f"dropped in input ({walk.hooks[-1].decided_by})")
        return _finish(walk, "local-in", inferred, "delivered-locally", f"{dst} is an address of this host")
    if result.type not in ("unicast", None):
        return _finish(walk, "forwarded", inferred, result.type, f"route type {result.type}")
    oif = result.dev
    packet = walk.hook("forward", walk.packet(src, dst, mark, iif=flow.iif, oif=oif))
    if walk.dropped_at():
        return _finish(walk, "forwarded", inferred, "dropped", f"dropped in forward ({walk.hooks[-1].decided_by})")
    return _postrouting(walk, "forwarded", inferred, packet, iif=flow.iif)


def _explain_output(state: HostState, flow: Flow, inferred: str | None) -> Explanation:
    walk = _Walk(state, flow)
    result = walk.route("routing", dst=flow.dst, src=flow.src, oif=flow.oif, mark=flow.mark, uid=flow.uid)
    if result.error:
        return _routing_failed(walk, "local-out", inferred, result)
    src = flow.src or result.prefsrc
    if src is None:
        return _finish(walk, "local-out", inferred, "unreachable", "no source address to send from")
    if walk.conntrack is None:
        walk.conntrack = find_conntrack(state, dataclasses.replace(flow, src=src))
    packet = walk.hook("output", walk.packet(src, flow.dst, flow.mark, oif=result.dev))
    if walk.dropped_at():
        return _finish(walk, "local-out", inferred, "dropped", f"dropped in output ({walk.hooks[-1].decided_by})")
    dst = walk.conntrack.reply_src if walk.conntrack else packet.dst
    if packet.mark != flow.mark or dst != flow.dst:
        # ip_route_me_harder: mangle/nat OUTPUT changed what routing keys on.
        walk.notes.append(f"output hook changed mark/destination (mark {packet.mark:#x}, dst {dst}): re-routed")
        result = walk.route("re-route after output", dst=dst, src=src, oif=flow.oif, mark=packet.mark, uid=flow.uid)
        if result.error:
            return _routing_failed(walk, "local-out", inferred, result)
    if result.type == "local":
        return _finish(walk, "local-out", inferred, "delivered-locally", f"{dst} is an address of this host")
    return _postrouting(walk, "local-out", inferred, dataclasses.replace(packet, dst=dst))


def _postrouting(walk: _Walk, origin: str, inferred, packet: PacketView, iif=None) -> Explanation:
    result = walk.decisions[-1].result
    oif = result.dev
    packet = walk.hook("postrouting", dataclasses.replace(packet, iif=iif, oif=oif,
                                                          oifkind=packet.oifkind))
    if walk.dropped_at():
        return _finish(walk, origin, inferred, "dropped", f"dropped in postrouting ({walk.hooks[-1].decided_by})")
    src = packet.src
    if walk.conntrack:
        snat = [n for n in _conntrack_nat(walk.conntrack) if n["field"] == "src"]
        walk.nat.extend(snat)
        src = snat[0]["to"] if snat else walk.conntrack.orig_src
    configured = result.route.gateway if result.route else None
    if configured and not result.gateway:
        walk.notes.append(f"the route's gateway {configured} is this host's own address: the kernel "
                          f"ignores it and sends on-link out of {oif}")
    link = walk.state.link(oif)
    egress = {"dev": oif, "src": src, "dst": packet.dst, "nexthop": result.gateway or packet.dst,
              "gateway": result.gateway, "mtu": link.mtu if link else None, "mark": packet.mark}
    verdict = "forwarded" if origin == "forwarded" else "sent"
    how = f"via {result.gateway}" if result.gateway else "directly (on-link)"
    return _finish(walk, origin, inferred, verdict, f"leaves {oif} {how}, source {src}", egress)


# What the user sees for each errno the routing decision can return.
_ERROR_VERDICTS = {"EINVAL": "blackholed", "EACCES": "prohibited", "EXDEV": "dropped-rp-filter",
                   "ENETUNREACH": "unreachable", "EHOSTUNREACH": "unreachable"}


def _routing_failed(walk: _Walk, origin: str, inferred, result: fib.FibResult) -> Explanation:
    reason = f"routing fails with {result.error}"
    if result.error_reason:
        reason += f": {result.error_reason}"
    return _finish(walk, origin, inferred, _ERROR_VERDICTS.get(result.error, "unreachable"), reason)


def _finish(walk: _Walk, origin: str, inferred, verdict: str, reason: str, egress=None) -> Explanation:
    return Explanation(flow=walk.flow, origin=origin, iif_inferred=inferred, decisions=tuple(walk.decisions),
                       hooks=tuple(walk.hooks), nat=tuple(walk.nat), conntrack=walk.conntrack,
                       egress=egress, verdict=verdict, verdict_reason=reason, state=walk.state,
                       notes=(*walk.state.meta.get("notes", ()), *walk.notes))
