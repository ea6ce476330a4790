"""From events to flows: the kernel's decisions for one flow's first packet, and how they compare
with why-route's own explanation of that flow on the state collected when the trace started.

A flow is complete when its first packet has left (postrouting, after the chains), was delivered
(input, after the chains) or was dropped; then it waits a little (`reply_wait`) for a reply.
The deciding ip rule is not in any event (the fib tracepoint carries the table, not the rule): it
is derived from the rule list with the simulator's rule walk, matched against the tables the
kernel looked up, in order — the last table looked up decides.
"""

from __future__ import annotations

import dataclasses
import errno
import functools
import json
import time
from dataclasses import dataclass, field

from tracer.flow import Flow
from tracer.model import TABLE_LOCAL, HostState
from tracer.sim import fib
from tracer.sim.explain import explain, later_packet_of
from tracer.sim.explanation import NETFILTER_DROP
from tracer.trace.events import (
    ConntrackEvent,
    DropEvent,
    Event,
    FibEvent,
    FlowId,
    FlowRecord,
    HookEvent,
    IcmpErrorEvent,
    LaterDropEvent,
    PathChangeEvent,
    ReplyDropEvent,
    ReplyEvent,
)
from tracer.vocab import protocol_name

PORTED = (6, 17, 132)
ICMP_PROTOCOLS = (1, 58)  # their echo id is the flow's sport
LOOPBACK = "lo"  # the input interface of a socket's route lookup
IPS_SEEN_REPLY = 1 << 1
COMPARE_LAG_SECONDS = 2.0  # a flow described later than this after it completed is not compared
# Before 6.13 the input route returned errnos: of its martian drops only rp_filter had a reason.
MARTIAN_DROP_REASONS = ("IP_INVALID_SOURCE", "IP_LOCAL_SOURCE", "IP_INVALID_DEST", "IP_LOCALNET")
NAMED_MARTIANS_SINCE = (6, 13)


@dataclass
class TracedFlow:
    id: FlowId
    hooks: list[HookEvent] = field(default_factory=list)
    lookups: list[FibEvent] = field(default_factory=list)
    drop: DropEvent | None = None
    reply: bool = False
    reply_at: float | None = None  # monotonic time the first reply was read
    reply_drop: ReplyDropEvent | None = None
    icmp_errors: list[IcmpErrorEvent] = field(default_factory=list)
    path_change: PathChangeEvent | None = None  # a later packet left by another device
    later_drop: LaterDropEvent | None = None  # a later packet was dropped
    conntrack: list[ConntrackEvent] = field(default_factory=list)
    complete_at: float | None = None  # monotonic time the first packet left / was dropped, as read
    complete_ts: int | None = None  # the same, as the kernel stamped it (CLOCK_MONOTONIC ns)
    rules: list = field(default_factory=list)  # NftRuleEvent (--rules), matched by the assembler
    recorded: bool = False  # its FlowRecord was added
    # (hook, position) → the first of `hooks` there: describe() asks a dozen times a flow
    _at: dict = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        for event in self.hooks:
            self._at.setdefault((event.hook, event.position), event)

    def add(self, event: Event, now: float, hooks_traced: bool = False) -> None:
        """`hooks_traced`: the netfilter probe runs, so the flow is complete when its hook events say
        so (its conntrack events may be read before them); otherwise when conntrack confirmed it."""
        if isinstance(event, FlowRecord):
            if self.recorded:  # read from the ring and again from the map as the trace ended
                return
            self.recorded = True
            for part in (*event.hooks, *event.lookups, *((event.drop,) if event.drop else ())):
                self.add(part, now, hooks_traced)
            self._place_chain_drop()
        elif isinstance(event, HookEvent):
            self._append_hook(event)
            if event.position == "last" and event.hook in ("postrouting", "input"):
                self._complete(event, now)
        elif isinstance(event, FibEvent):
            self.lookups.append(event)
        elif isinstance(event, DropEvent):
            self.drop = event
            self._complete(event, now)
        elif isinstance(event, ReplyEvent):
            self._replied(now)
        elif isinstance(event, ReplyDropEvent):
            self.reply_drop = self.reply_drop or event
            if event.icmp is None:  # conntrack named it a reply: one came, though the router dropped it
                self._replied(now)
        elif isinstance(event, IcmpErrorEvent):
            self.icmp_errors.append(event)
        elif isinstance(event, PathChangeEvent):
            self.path_change = self.path_change or event
        elif isinstance(event, LaterDropEvent):
            self.later_drop = self.later_drop or event
        elif isinstance(event, ConntrackEvent):
            self.conntrack.append(event)
            if event.status & IPS_SEEN_REPLY:
                self._replied(now)
            if not hooks_traced and event.type == "new":  # without the netfilter probe: confirmed = left
                self._complete(event, now)

    def _place_chain_drop(self) -> None:
        """A drop by a chain of input, forward or postrouting (which have no first-position program):
        after a hook's last position, NETFILTER_DROP was the next hook's chains — input when the
        routing decision delivers locally (table local found it), else forward; postrouting after
        forward or output. The packet entering them is the one the last position left."""
        if self.drop is None or self.drop.reason != NETFILTER_DROP or not self.hooks:
            return
        last = self.hooks[-1]
        if last.position != "last":
            return
        decision = _decision_lookups(self)
        local = bool(decision) and decision[-1].table_id == TABLE_LOCAL and decision[-1].err == 0
        following = {"prerouting": ("input" if local else "forward") if decision else None,
                     "forward": "postrouting", "output": "postrouting"}.get(last.hook)
        if following and not self.hook(following, "first"):
            self._append_hook(dataclasses.replace(last, hook=following, position="first"))

    def _append_hook(self, event: HookEvent) -> None:
        self.hooks.append(event)
        self._at.setdefault((event.hook, event.position), event)

    def _replied(self, now: float) -> None:
        if not self.reply:
            self.reply, self.reply_at = True, now

    def _complete(self, event: Event, now: float) -> None:
        if self.complete_at is None:
            self.complete_at, self.complete_ts = now, event.ts

    @property
    def original(self) -> bool:
        """A flow of its own, not the reply direction of one (whose packets, where conntrack does not
        name them as replies, show hook events without conntrack tuples, and perhaps the lookups of
        the socket that answered)."""
        return (any(h.ct_orig is not None for h in self.hooks) or self.drop is not None or bool(self.conntrack)
                or any(e.iif != LOOPBACK for e in self.lookups))  # a socket's lookups: a reply's too

    def hook(self, name: str, position: str) -> HookEvent | None:
        return self._at.get((name, position))


def _errname(err: int) -> str:
    return "ok" if err == 0 else errno.errorcode.get(-err, str(err))


def _decision_lookups(flow: TracedFlow) -> list[FibEvent]:
    """The lookups of the routing decision (not source validation): those sharing the last
    decision lookup's CPU and flowi."""
    decisive = [e for e in flow.lookups if not e.reverse]
    if not decisive:
        return []
    last = decisive[-1]
    return [e for e in decisive if e.cpu == last.cpu and e.flowi == last.flowi]


def deciding_rule(state: HostState, query, tables: list[int], went_on: bool = False):
    """The rule whose lookup is the kernel's last table lookup, and the walk that led there.

    The simulator's rule walk lists the rules that match, in order; each consumes the kernel's next
    lookup when it names the same table (a rule whose table does not exist yields no lookup). When
    the kernel went on past the rule where the simulation stops (the host changed since the start),
    the walk resumes after that rule. `went_on`: the last lookup found nothing (EAGAIN), so a rule
    after it whose action needs no table (unreachable, blackhole, prohibit) decided, if one
    matches. Returns (rule, text, walk) — (None, None, walk) when no rule accounts for the lookups."""
    walk: list[dict] = []
    if not tables:
        return None, None, walk
    existing = {route.table for route in state.routes if route.family == query.family}
    i = 0
    rules = state.rules
    last_lookup = None  # (rule, text, its walk entry) of the kernel's last lookup, when it went on
    for _attempt in range(8):
        result = fib.lookup_rules(dataclasses.replace(state, rules=rules), query, full_trace=True)
        last = None
        for step in result.steps:
            rule, last = step.rule, step.rule
            if not step.matched:
                continue
            if rule.action in fib.RULE_ACTION_ERRORS and i == len(tables) and went_on:
                walk.append({"priority": rule.priority, "table": None, "result": f"decided: {rule.action}"})
                return rule, step.text, walk
            if rule.action != "lookup":
                continue
            name = state.table_names.get(rule.table, str(rule.table))
            if i < len(tables) and tables[i] == rule.table:
                decided = i == len(tables) - 1
                walk.append({"priority": rule.priority, "table": name,
                             "result": "decided" if decided and not went_on else "looked up, went on"})
                if decided and not went_on:
                    return rule, step.text, walk
                if decided:
                    last_lookup = (rule, step.text, walk[-1])
                i += 1
            else:
                walk.append({"priority": rule.priority, "table": name,
                             "result": "no such table: no lookup" if rule.table not in existing
                             else "not looked up by the kernel"})
        if last is None:
            break
        rules = tuple(r for r in rules if r.family != query.family or r.priority > last.priority)
    if last_lookup:  # nothing after it decided: its lookup's answer (no route) stands
        rule, text, entry = last_lookup
        entry["result"] = "decided"
        return rule, text, walk
    return None, None, walk


def _seen_rule(state: HostState, family: int, lookup: FibEvent, derived) -> dict:
    """The rule the kernel named on the deciding lookup (the rule probe), as the rule list at trace
    start has it; `derived` (what the rule list and the tables looked up gave) is kept if it differs."""
    rule = next((r for r in state.rules if r.family == family and r.priority == lookup.rule
                 and r.action == "lookup" and r.table == lookup.table_id), None)
    doc = {"priority": lookup.rule, "text": fib.rule_text(state, rule) if rule else None, "source": "kernel"}
    if rule is None:
        doc["note"] = "not in the rule list at trace start"
    if derived is None or derived.priority != lookup.rule:
        doc["derived_priority"] = derived.priority if derived else None
    return doc


def _nat(flow: TracedFlow) -> list[dict]:
    """The NAT mapping from the conntrack tuples as the packet left (or as last seen)."""
    tuples = [(h.ct_orig, h.ct_reply) for h in flow.hooks if h.ct_orig is not None]
    tuples += [(c.orig, c.reply) for c in flow.conntrack]
    if not tuples:
        return []
    orig, reply = tuples[-1]
    found = []
    if reply.dst != orig.src or (flow.id.proto in PORTED and reply.dport != orig.sport):
        found.append({"type": "snat", "field": "src", "from": orig.src, "to": reply.dst,
                      "from_port": orig.sport if flow.id.proto in PORTED else None,
                      "to_port": reply.dport if flow.id.proto in PORTED else None})
    if reply.src != orig.dst or (flow.id.proto in PORTED and reply.sport != orig.dport):
        found.append({"type": "dnat", "field": "dst", "from": orig.dst, "to": reply.src,
                      "from_port": orig.dport if flow.id.proto in PORTED else None,
                      "to_port": reply.sport if flow.id.proto in PORTED else None})
    return found


def route_text(state: HostState, family: int, table: int, dst: str) -> str | None:
    """The route of `table` that answers for `dst`, as `ip route` prints it (None: none does)."""
    route = fib.longest_match(state, family, table, dst)
    return fib.route_text(state, route) if route else None


def _origin(flow: TracedFlow, state: HostState) -> str:
    names = {h.hook for h in flow.hooks}
    pre = flow.hook("prerouting", "first")
    port = state.link(pre.iif) if pre and pre.iif else None
    if "forward" in names and not flow.lookups and port is not None and port.master:
        return "bridged"  # br_netfilter runs the IPv4 hooks for frames a bridge forwards: no routing
    if "forward" in names:
        return "forwarded"
    if "output" in names and "prerouting" not in names:
        return "local-out"
    if "input" in names:
        return "local-in"
    return "forwarded" if flow.lookups else "unknown"


def _verdict(flow: TracedFlow, origin: str) -> str:
    if flow.drop is not None:
        return "dropped"
    if flow.hook("postrouting", "last"):
        return {"forwarded": "forwarded", "bridged": "bridged"}.get(origin, "sent")
    if flow.hook("input", "last"):
        return "delivered-locally"
    if not flow.hooks and any(c.type == "new" for c in flow.conntrack):
        return "confirmed"  # conntrack only: the first packet passed every hook (which way, unknown)
    return "unknown"


def _hooks(flow: TracedFlow) -> list[dict]:
    crossed = []
    for name in ("prerouting", "input", "forward", "output", "postrouting"):
        first, last = flow.hook(name, "first"), flow.hook(name, "last")
        if not first and not last:
            continue
        if last:
            verdict = "accept"
        elif flow.drop is not None:
            verdict = "drop"
        else:
            verdict = "unknown"
        entry = {"hook": name, "verdict": verdict}
        if flow.rules:
            entry["rules"] = _rules_at(flow, name)
        seen = last or first
        entry["mark"] = seen.mark
        if first and last and first.mark != last.mark:
            entry["mark_from"] = first.mark
        crossed.append(entry)
    return crossed


def _rules_at(flow: TracedFlow, hook: str) -> list[dict]:
    """The nft rules the first traced packet crossed at this hook, each once, in order."""
    seen, found = set(), []
    for event in flow.rules:
        key = (event.table, event.chain, event.handle, event.text)
        if event.hook != hook or key in seen:
            continue
        seen.add(key)
        found.append({"table": event.table, "chain": event.chain, "handle": event.handle, "rule": event.text,
                      "verdict": event.verdict})
    return found


class Describer:
    """describe() for the flows of one trace, with what repeats from flow to flow remembered: the
    rule derivation (which depends on the ports only when an ip rule matches ports), and how far
    behind the kernel the comparison with the simulation may run before it is left out."""

    def __init__(self, state: HostState, compare_lag: float | None = COMPARE_LAG_SECONDS):
        self.state = state
        self.compare_lag = compare_lag
        self.not_compared = 0
        self._rules: dict = {}
        self._rules_use_ports = {family: any(r.family == family and (r.sport or r.dport) for r in state.rules)
                                 for family in (4, 6)}
        self._simulated: dict = {}
        self._routes: dict = {}
        self._ports_matter = ports_may_matter(state)
        self._tracked = {(entry.proto, entry.orig_src, entry.orig_dst) for entry in state.conntrack}

    def _sim_key(self, doc: dict) -> tuple:
        """What the simulation of this flow reads (sim_flow); the ports only when they may matter."""
        f = doc["flow"]
        ports = self._ports_matter or (f["proto"], f["src"], f["dst"]) in self._tracked
        return (doc["origin"] == "local-out", f["src"], f["dst"], f["iif"], f["proto"], f["mark"],
                (f["sport"], f["dport"]) if ports else None)

    def sim(self, doc: dict, in_time: bool) -> dict | None:
        """`sim` for the flow: from the explanation of a flow whose simulation reads the same inputs if
        there was one; otherwise a new explanation if `in_time`, else None (not compared, counted)."""
        key = self._sim_key(doc)
        simulated = self._simulated.get(key)
        if simulated is None:
            if not in_time:
                self.not_compared += 1
                return None
            if len(self._simulated) >= 4096:
                self._simulated.clear()
            simulated = self._simulated[key] = simulate(self.state, doc)
        return compare(doc, self.state, simulated)

    def route_text(self, family: int, table: int, dst: str) -> str | None:
        key = (family, table, dst)
        text = self._routes.get(key, False)
        if text is False:
            if len(self._routes) >= 65536:
                self._routes.clear()
            text = self._routes[key] = route_text(self.state, family, table, dst)
        return text

    def deciding_rule(self, query, tables: list[int], went_on: bool = False):
        # (describe's query: these fields, the others left at their defaults)
        ports = (query.sport, query.dport) if self._rules_use_ports.get(query.family) else None
        key = (query.family, query.dst, query.src, query.iif, query.mark, query.proto, ports, tuple(tables), went_on)
        found = self._rules.get(key)
        if found is None:
            found = self._rules[key] = deciding_rule(self.state, query, tables, went_on)
        rule, text, walk = found
        return rule, text, [dict(step) for step in walk]

    def __call__(self, flow: TracedFlow, reply_wait: float) -> dict:
        """The flow's document; compared unless it is described more than `compare_lag` seconds
        later than it could have been (its first packet's fate, then its reply or `reply_wait`)."""
        in_time = self.compare_lag is None or flow.complete_ts is None or (
            time.monotonic() - flow.complete_ts / 1e9 - (0 if flow.reply else reply_wait) <= self.compare_lag)
        return describe(flow, self.state, self, in_time)


def describe(flow: TracedFlow, state: HostState, describer: Describer | None = None, compared: bool = True) -> dict:
    """The flow as `why-route trace --json` prints it (docs/trace.md)."""
    fid = flow.id
    origin = _origin(flow, state)
    pre = flow.hook("prerouting", "first") or flow.hook("prerouting", "last")
    iif = pre.iif if pre else (flow.drop.dev if flow.drop else None)
    ports = fid.proto in PORTED
    doc: dict = {
        "type": "flow",
        "flow": {"family": fid.family, "proto": fid.proto, "src": fid.src, "dst": fid.dst,
                 "sport": fid.sport if ports else None, "dport": fid.dport if ports else None,
                 "iif": iif, "mark": pre.mark if pre else 0},
        "origin": origin,
    }
    if fid.proto in ICMP_PROTOCOLS:
        doc["flow"]["icmp_id"] = fid.sport
    decision = _decision_lookups(flow)
    doc["tables_tried"] = [{"table_id": e.table_id, "table": state.table_names.get(e.table_id, str(e.table_id)),
                            "result": _errname(e.err), "rule": e.rule} for e in decision]
    routed = flow.hook("prerouting", "last")
    final = decision[-1] if decision else None
    rule = rule_text = None
    walk: list[dict] = []
    if final is not None:
        from tracer.flow import RouteQuery

        dst = routed.packet.dst if routed else fid.dst
        mark = routed.mark if routed else final.mark  # a socket's lookup: the socket's mark
        query = RouteQuery(family=fid.family, dst=dst, src=fid.src, iif=iif, mark=mark,
                           proto=fid.proto, sport=fid.sport if ports else None, dport=fid.dport if ports else None)
        derive = describer.deciding_rule if describer else functools.partial(deciding_rule, state)
        went_on = final.err == -errno.EAGAIN
        rule, rule_text, walk = derive(query, [e.table_id for e in decision], went_on)
        if rule is not None and rule.action != "lookup":
            final = None  # the rule itself refused the packet: no table decided
        elif final.rule is not None and not went_on:
            doc["rule"] = _seen_rule(state, fid.family, final, rule)
    if "rule" not in doc:
        doc["rule"] = {"priority": rule.priority, "text": rule_text, "source": "derived"} if rule else None
    doc["rules_matched"] = walk
    doc["table_id"] = final.table_id if final else None
    doc["table"] = state.table_names.get(final.table_id, str(final.table_id)) if final else None
    # The route that answered: a unicast one, or an unreachable/prohibit/blackhole one (not a miss).
    answered = final is not None and final.err != -errno.EAGAIN
    route_of = describer.route_text if describer else functools.partial(route_text, state)
    doc["route"] = route_of(fid.family, final.table_id, final.dst) if answered else None
    doc["route_error"] = _errname(final.err) if final and final.err else None
    doc["gateway"] = final.gateway if final else None
    doc["dev"] = final.dev if final else None
    doc["hooks"] = _hooks(flow)
    doc["nat"] = _nat(flow)
    out = flow.hook("postrouting", "last")
    doc["egress"] = ({"dev": out.oif, "src": out.packet.src, "dst": out.packet.dst,
                      "sport": out.packet.sport if ports else None, "dport": out.packet.dport if ports else None}
                     if out else None)
    doc["verdict"] = _verdict(flow, origin)
    doc["drop"] = ({"reason": flow.drop.reason, "location": f"{flow.drop.location:#x}",
                    "function": flow.drop.function, "dev": flow.drop.dev,
                    "after_hook": flow.hooks[-1].hook if flow.hooks else None} if flow.drop else None)
    doc["reply_seen"] = flow.reply
    doc["reply_drop"] = _reply_drop(flow.reply_drop, origin)
    doc["icmp_errors"] = [{"type": e.type, "code": e.code, "from": e.src, "hook": e.hook} for e in flow.icmp_errors]
    doc["path_change"] = _path_change(flow.path_change)
    doc["later_drop"] = _later_drop(flow.later_drop)
    sim = describer.sim(doc, compared) if describer else compare(doc, state) if compared else None
    lag = describer.compare_lag if describer else COMPARE_LAG_SECONDS
    doc["sim"] = sim or {
        "agrees": None, "differences": [], "verdict": None, "rule": None, "findings": [],
        "note": f"not compared: why-route fell more than {lag:g}"
                " s behind the kernel (too many new flows a second for the comparison, a millisecond or more each;"
                " --compare-lag)"}
    return doc


def _path_change(event: PathChangeEvent | None) -> dict | None:
    return None if event is None else {"dev": event.dev, "mark": event.mark}


def _later_drop(event: LaterDropEvent | None) -> dict | None:
    return None if event is None else {"reason": event.reason, "location": f"{event.location:#x}",
                                       "function": event.function, "dev": event.dev}


def later_doc(event: PathChangeEvent | LaterDropEvent, first_dev: str | None) -> dict:
    """What a later packet of a flow already printed did: left by another device than the flow's
    first packet (`path_change`), or was dropped (`later_drop`)."""
    fid = event.flow
    ports = fid.proto in PORTED
    return {"type": "later",
            "flow": {"family": fid.family, "proto": fid.proto, "src": fid.src, "dst": fid.dst,
                     "sport": fid.sport if ports else None, "dport": fid.dport if ports else None},
            "first_dev": first_dev,
            "path_change": _path_change(event) if isinstance(event, PathChangeEvent) else None,
            "later_drop": _later_drop(event) if isinstance(event, LaterDropEvent) else None}


# A reply's path through the hooks, by its flow's origin: where it goes after prerouting's chains
# (a forwarded flow's replies are forwarded, a local flow's delivered), and after the others'.
_REPLY_NEXT = {"forward": "postrouting", "output": "postrouting"}
_REPLY_AFTER_PREROUTING = {"forwarded": "forward", "bridged": "forward", "local-out": "input"}


def _reply_drop_hook(event: ReplyDropEvent, origin: str) -> str | None:
    """The hook whose chains dropped the reply (NETFILTER_DROP): the one it was before the chains of,
    or the next on its way after the last position it passed."""
    if event.reason != NETFILTER_DROP or event.after_hook is None:
        return None
    if event.after_position == "first":
        return event.after_hook
    if event.after_hook == "prerouting":
        return _REPLY_AFTER_PREROUTING.get(origin)
    return _REPLY_NEXT.get(event.after_hook)


def _reply_drop(event: ReplyDropEvent | None, origin: str) -> dict | None:
    if event is None:
        return None
    found = {"reason": event.reason, "location": f"{event.location:#x}", "function": event.function, "dev": event.dev,
             "after_hook": event.after_hook, "after_position": event.after_position,
             "hook": _reply_drop_hook(event, origin), "icmp_error": None}
    if event.icmp:
        icmp_type, code, sender = event.icmp
        found["icmp_error"] = {"type": icmp_type, "code": code, "from": sender}
    return found


# What in a state could make two flows that differ only in their ports take different decisions in
# the simulation: port matches, hashes over them, chance and rate (limit, quota, numgen, statistic),
# user space (queue), sockets. Looked for as words anywhere in the netfilter state (nft JSON, iptables
# text): a mention of one, wherever it is, counts.
PORT_SENSITIVE_WORDS = ("port", "hash", "random", "numgen", "statistic", "limit", "quota", "queue", "meter",
                        "socket", "osf", "nth", "connlimit", "recent", "string", "u32", "bpf")


def ports_may_matter(state: HostState) -> bool:
    """Whether the simulation of a flow may read its ports: an ip rule with ports, a multipath route
    (its hash may include them), or a port-sensitive word in the netfilter state. False only when
    none of these is anywhere: then flows that differ only in their ports have the same explanation."""
    if any(rule.sport or rule.dport for rule in state.rules):
        return True
    if any(len(route.nexthops) > 1 for route in state.routes):
        return True
    text = json.dumps(state.netfilter).lower()
    return any(word in text for word in PORT_SENSITIVE_WORDS)


def sim_flow(doc: dict) -> Flow:
    f = doc["flow"]
    local_out = doc["origin"] == "local-out"
    return Flow(dst=f["dst"], src=f["src"], iif=None if local_out else f["iif"], proto=f["proto"],
                sport=f["sport"], dport=f["dport"], mark=f["mark"])


@dataclass(frozen=True)
class Simulated:
    """why-route's explanation of a flow and the rules engine's findings for it, or why there is none."""

    explanation: object | None
    findings: tuple[tuple[str, str, str], ...] = ()  # (id, severity, title)
    error: str | None = None


def simulate(state: HostState, doc: dict) -> Simulated:
    try:
        explanation = explain(state, sim_flow(doc))
    except Exception as error:  # noqa: BLE001 - a flow the simulator cannot take is reported, not fatal
        return Simulated(None, error=str(error))
    from tracer.checks.engine import flow_findings

    return Simulated(explanation, tuple((f.id, f.severity, f.title) for f in flow_findings(explanation)))


def compare(doc: dict, state: HostState, simulated: Simulated | None = None) -> dict:
    """`sim`: whether why-route's explanation of this flow (on the state at trace start) says what the
    kernel did, and every difference, one sentence each. `simulated`: that explanation, if made already."""
    if doc["origin"] == "bridged":
        return {"agrees": None, "differences": [], "verdict": None, "rule": None, "findings": [],
                "note": "bridged by br-netfilter, not routed: the simulation covers routed flows"}
    simulated = simulated or simulate(state, doc)
    if simulated.error is not None:
        return {"agrees": False, "differences": [f"the simulation could not explain this flow: {simulated.error}"]}
    explanation = simulated.explanation
    differences = []

    def differ(what: str, kernel, sim) -> None:
        if kernel != sim:
            differences.append(f"{what}: kernel {kernel if kernel is not None else 'none'}, "
                               f"simulation {sim if sim is not None else 'none'}")

    decision = explanation.decision
    if doc["tables_tried"]:
        differ("rule", (doc["rule"] or {}).get("priority"),
               decision.rule.priority if decision and decision.rule else None)
        differ("table", doc["table_id"], decision.table_id if decision else None)
        if doc["route_error"] is None:
            differ("device", doc["dev"], decision.dev if decision else None)
            # The FIB result's nexthop gateway, as configured (on a point-to-point device the kernel
            # then sends on-link; the simulation's `gateway` says so, its nexthop keeps the route's).
            nexthop = decision.result.nexthop if decision else None
            differ("gateway", doc["gateway"], nexthop.gateway if nexthop else None)
    kernel_snat = next((n["to"] for n in doc["nat"] if n["field"] == "src"), None)
    sim_snat = next((s.rewrite.to for s in explanation.nat if s.rewrite.field == "src"), None)
    kernel_dnat = next((n["to"] for n in doc["nat"] if n["field"] == "dst"), None)
    sim_dnat = next((s.rewrite.to for s in explanation.nat if s.rewrite.field == "dst"), None)
    if doc["verdict"] not in ("unknown",):
        differ("source NAT", kernel_snat, sim_snat)
        differ("destination NAT", kernel_dnat, sim_dnat)
    sim_verdict = explanation.verdict
    kernel_verdict = doc["verdict"]
    if kernel_verdict == "confirmed":
        if sim_verdict in ("dropped",):
            differences.append("verdict: kernel let the first packet through, simulation drops it")
    elif kernel_verdict != "unknown":
        # The kernel frees the packet in every one of these cases; the simulation says which.
        same = kernel_verdict == "dropped" and explanation.drop_reason is not None
        if not same:
            differ("verdict", kernel_verdict, sim_verdict)
        elif doc["drop"]:
            reason, expected = doc["drop"]["reason"], _expected_drop_reason(explanation)
            if reason != expected:
                differences.append(f"drop: kernel {reason}, simulation {expected}: {sim_verdict} "
                                   f"({explanation.verdict_reason})")
    if doc["egress"] and explanation.egress:
        differ("leaves via", doc["egress"]["dev"], explanation.egress.dev)
        differ("source on the wire", doc["egress"]["src"], explanation.egress.src)
    if doc.get("path_change") or doc.get("later_drop"):
        later = _later_packets(state, doc, explanation)
        if doc.get("path_change"):
            differ("later packets leave via", doc["path_change"]["dev"], later.egress.dev if later and later.egress
                   else None)
        elif later is None or later.drop_reason != doc["later_drop"]["reason"]:
            drop = doc["later_drop"]
            differences.append(f"later packets: kernel dropped one ({drop['reason']}"
                               f"{', in ' + drop['function'] if drop.get('function') else ''}, leaving "
                               f"{drop['dev']}), simulation: {later.verdict_reason if later else 'no explanation'}")
    nat_types = {s.rewrite.field: s.rewrite.type for s in explanation.nat}
    for entry in doc["nat"]:
        entry["rule_type"] = nat_types.get(entry["field"])  # snat | masquerade | dnat | redirect, per the ruleset
    return {"agrees": not differences, "differences": differences, "verdict": sim_verdict,
            "rule": decision.rule.priority if decision and decision.rule else None,
            "findings": [{"id": i, "severity": severity, "title": title} for i, severity, title in simulated.findings]}


def _later_packets(state: HostState, doc: dict, first):
    """The simulation's explanation of the flow's later (established) packets, `first` the
    explanation of its first packet; None when it has none."""
    try:
        return explain(state, sim_flow(doc), later_packet_of(first))
    except Exception:  # noqa: BLE001 - as in simulate(): a flow the simulator cannot take
        return None


def _expected_drop_reason(explanation) -> str:
    """The drop reason skb:kfree_skb gives on the traced host's kernel for the simulation's drop."""
    reason = explanation.drop_reason
    if reason in MARTIAN_DROP_REASONS and _release(explanation.state.provenance.kernel) < NAMED_MARTIANS_SINCE:
        return "NOT_SPECIFIED"
    return reason


def _release(kernel: str | None) -> tuple[int, int]:
    """(major, minor) of a release string such as 6.1.0-18-amd64; unknown: as new as can be."""
    parts = (kernel or "").split(".")
    try:
        return int(parts[0]), int(parts[1].split("-")[0])
    except (IndexError, ValueError):
        return (99, 0)


def _later_text(doc: dict) -> list[str]:
    parts = []
    if doc.get("path_change"):
        later = doc["path_change"]
        parts.append(f"LATER PACKETS out {later['dev']} (mark {later['mark']:#x})")
    if doc.get("later_drop"):
        drop = doc["later_drop"]
        where = f", in {drop['function']}" if drop.get("function") else ""
        parts.append(f"A LATER PACKET DROPPED {drop['reason']} (leaving {drop['dev']}{where})")
    return parts


def text_line(doc: dict) -> str:
    """One line per flow for the terminal (and one for a flow's later packets leaving elsewhere)."""
    f = doc["flow"]
    if doc["type"] == "later":
        ends = (f"{f['src']}:{f['sport']} → {f['dst']}:{f['dport']}" if f["sport"] is not None
                else f"{f['src']} → {f['dst']}")
        return "  ".join([f"{protocol_name(f['proto'])} {ends}", *_later_text(doc),
                          f"(its first packet out {doc['first_dev']})"])
    proto = protocol_name(f["proto"])
    ends = (f"{f['src']}:{f['sport']} → {f['dst']}:{f['dport']}" if f["sport"] is not None
            else f"{f['src']} → {f['dst']}")
    parts = [f"{proto} {ends}", f"iif {f['iif']}" if f["iif"] else "", f"[{doc['origin']}]"]
    if doc["tables_tried"]:
        tried = ", ".join(f"{t['table']} {t['result']}" for t in doc["tables_tried"])
        rule = (f"rule {doc['rule']['priority']}{' (kernel)' if doc['rule'].get('source') == 'kernel' else ''}"
                if doc["rule"] else "rule ?")
        table = f"table {doc['table']} ({doc['table_id']})" if doc["table_id"] is not None else "(no table)"
        parts.append(f"{rule} {table} [tried: {tried}]")
        skipped = [f"rule {r['priority']} → {r['table']}: {r['result']}" for r in doc.get("rules_matched", ())
                   if r["result"].startswith("no such table")]
        if skipped:
            parts.append(f"({'; '.join(skipped)})")
    if doc["route"]:
        parts.append(doc["route"])
    for n in doc["nat"]:
        parts.append(f"{(n.get('rule_type') or n['type']).upper()} {n['from']} → {n['to']}")
    if doc["egress"]:
        e = doc["egress"]
        parts.append(f"out {e['dev']} {e['src']} → {e['dst']}")
    if doc["drop"]:
        drop = doc["drop"]
        where = f"after {drop['after_hook']}" + (f", in {drop['function']}" if drop.get("function") else "")
        parts.append(f"DROPPED {drop['reason']} ({where})")
        for hook in doc["hooks"]:
            deciding = [r for r in hook.get("rules", ()) if r["verdict"] in ("drop", "reject")]
            if deciding:
                r = deciding[0]
                parts.append(f"by {r['table']} {r['chain']} #{r['handle']}: {r['rule']}")
    parts.append("reply seen" if doc["reply_seen"] else "no reply")
    for error in doc.get("icmp_errors", ()):
        parts.append(f"ICMP error type {error['type']} code {error['code']} from {error['from']}")
    parts.extend(_later_text(doc))
    if doc.get("reply_drop"):
        drop = doc["reply_drop"]
        what = "ICMP error" if drop["icmp_error"] else "reply"
        where = (f" in {drop['hook']}" if drop.get("hook") else
                 f" after {drop['after_hook']} ({drop['after_position']})" if drop.get("after_hook") else "")
        where += f" (in {drop['function']})" if drop.get("function") else ""
        parts.append(f"{what} DROPPED {drop['reason']}{where}")
    sim = doc["sim"]
    if sim["agrees"] is None:
        parts.append(f"sim: {sim.get('note', 'not compared')}")
    else:
        parts.append("sim: agrees" if sim["agrees"] else "sim: DIFFERS — " + "; ".join(sim["differences"]))
    return "  ".join(p for p in parts if p)
