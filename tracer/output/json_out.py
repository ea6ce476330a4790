"""JSON output: the one emitter of every command's `--json` (the contract is docs/json.md).

Every document starts with `schema`, the contract's version; fields are only
ever added within a version. The typed results (explanations, findings, lint
and verify reports) are turned into plain data here and nowhere else.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import operator
from collections.abc import Callable

from tracer.checks.base import SEVERITIES, Finding
from tracer.flow import Flow, RouteAnswer
from tracer.lint import flows
from tracer.lint.run import OK as LINE_OK
from tracer.lint.run import LintReport
from tracer.lint.verify import Outcome
from tracer.model import ConntrackEntry, HostState
from tracer.sim import fib
from tracer.sim.explanation import (
    Choice,
    EgressStep,
    Explanation,
    HookStep,
    IifInference,
    KernelCheck,
    NatStep,
    RerouteStep,
    RoutingStep,
)
from tracer.sim.netfilter import ChainVisit, HookTraversal, NatRewrite, PacketView, RuleVisit
from tracer.vocab import protocol_name

JSON_SCHEMA_VERSION = 2
# Chains longer than this list only the rules that matched or could not be
# evaluated; the others are counted in "omitted" (10,000 non-matching rules are noise).
MAX_LISTED_STEPS = 200


def dumps(body: dict, *, pretty: bool = True) -> str:
    """One JSON document with its schema version first."""
    doc = {"schema": JSON_SCHEMA_VERSION, **body}
    if pretty:
        return json.dumps(doc, indent=2)
    return _compact(doc)


_compact = json.JSONEncoder(separators=(",", ":")).encode  # made once: a trace encodes a document a flow


def source_doc(kind: str, name: str | None, after: str | None = None) -> dict:
    """SOURCE, the one way every document names the state it read (docs/json.md): `kind` is
    snapshot, netns or host; `name` the file, the namespace or the hostname; `after` the script
    of a what-if (`--with`), else null."""
    return {"kind": kind, "name": name, "after": after}


def error(message: str, exit_status: int, **extra) -> str:
    """An error under --json: the same line as on stderr, and the exit status."""
    return dumps({"error": message, "exit_status": int(exit_status), **extra})


# ------------------------------------------------------------- explanations

def flow_doc(flow: Flow) -> dict:
    return {"src": flow.src, "dst": flow.dst, "iif": flow.iif, "oif": flow.oif,
            "proto": protocol_name(flow.proto) if flow.proto else None,
            "sport": flow.sport, "dport": flow.dport, "mark": flow.mark, "tos": flow.tos, "uid": flow.uid}


def iif_inferred_text(inferred: IifInference | None) -> str | None:
    if inferred is None:
        return None
    how = f"via {inferred.gateway} " if inferred.gateway else ""
    table = f", table {inferred.table}" if inferred.table else ""
    return (f"input interface {inferred.iif} inferred from the route back to {inferred.src} "
            f"({how}dev {inferred.iif}{table}); use --iif to override")


def decision_doc(step: RoutingStep, state: HostState) -> dict:
    r = step.result
    route = r.route
    return {
        "stage": step.stage,
        "rule": {"priority": r.rule.priority, "text": step.rule_text} if r.rule else None,
        "table_id": r.table,
        "table": state.table_name(r.table) if r.table is not None else None,
        "route": {"dst": route.prefix, "type": route.type, "metric": route.metric,
                  "protocol": route.protocol, "scope": route.scope, "tos": route.tos,
                  "text": fib.route_text(state, route)} if route else None,
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


@functools.cache
def _field_reader(cls) -> tuple[tuple[str, ...], Callable]:
    """A dataclass's field names and one getter of all their values (faster than asking
    dataclasses.fields for every object of a 10,000-query batch)."""
    names = tuple(f.name for f in dataclasses.fields(cls))
    get = operator.attrgetter(*names)
    return names, (get if len(names) > 1 else lambda obj: (get(obj),))


def _plain(obj) -> dict:
    """A flat dataclass as a dict of its fields."""
    names, values = _field_reader(type(obj))
    return dict(zip(names, values(obj), strict=True))


def packet_doc(packet: PacketView) -> dict:
    # PacketView's instance dict is its fields, in order, plain values (no lazy or cached
    # attributes): copied whole, the batch's most frequent document is built fastest
    return packet.__dict__.copy()


def rule_visit_doc(visit: RuleVisit) -> dict:
    return _plain(visit)


def chain_doc(chain: ChainVisit, steps: tuple[RuleVisit, ...] | None = None) -> dict:
    """A chain's walk; `steps`: the rule visits to list, when not all of them."""
    doc = _plain(chain)
    del doc["steps"]  # listed last
    doc["steps"] = [_plain(s) for s in (chain.steps if steps is None else steps)]
    return doc


def rewrite_doc(n: NatRewrite) -> dict:
    doc = _plain(n)
    doc["from"] = doc.pop("from_")
    return doc


def traversal_doc(t: HookTraversal, chains: list[dict] | None = None) -> dict:
    """One hook's walk: its chains (or the given chain docs), the packet before and after,
    NAT, and whether it re-routes."""
    return {
        "hook": t.hook,
        "verdict": t.verdict,
        "decided_by": t.decided_by,
        "uncertain": t.uncertain,
        "uncertain_reasons": list(t.uncertain_reasons),
        "packet_in": packet_doc(t.packet_in),
        "packet": packet_doc(t.packet),
        "nat": [rewrite_doc(n) for n in t.nat],
        "mss_clamp": list(t.mss_clamp),
        "reroute_needed": t.reroute_needed,
        "reroute_reasons": list(t.reroute_reasons),
        "chains": [chain_doc(c) for c in t.chains] if chains is None else chains,
    }


def hook_doc(step: HookStep) -> dict:
    """The hook's traversal; chains of more than MAX_LISTED_STEPS rules keep only the
    rules that matched or could not be evaluated, and count the others in `omitted`."""
    chains = []
    for chain in step.traversal.chains:
        kept = chain.steps
        if len(kept) > MAX_LISTED_STEPS:
            kept = tuple(rule for rule in kept if rule.matched is not False)
        doc = chain_doc(chain, kept)
        doc["omitted"] = len(chain.steps) - len(kept)
        chains.append(doc)
    return traversal_doc(step.traversal, chains)


def nat_doc(step: NatStep) -> dict:
    return {**rewrite_doc(step.rewrite), "hook": step.hook}


def egress_doc(step: EgressStep) -> dict:
    return {"dev": step.dev, "src": step.src, "dst": step.dst, "nexthop": step.nexthop, "gateway": step.gateway,
            "mtu": step.mtu, "mark": step.mark, "sport": step.sport, "dport": step.dport}


def conntrack_doc(entry: ConntrackEntry | None) -> dict | None:
    if entry is None:
        return None
    return {"text": entry.text, "proto": entry.proto, "state": entry.state,
            "original": {"src": entry.orig_src, "dst": entry.orig_dst,
                         "sport": entry.orig_sport, "dport": entry.orig_dport},
            "reply": {"src": entry.reply_src, "dst": entry.reply_dst,
                      "sport": entry.reply_sport, "dport": entry.reply_dport}}


def answer_doc(answer: RouteAnswer) -> dict:
    doc = dataclasses.asdict(answer)
    doc["nexthops"] = [{"gateway": gateway, "dev": dev} for gateway, dev in answer.nexthops]
    return doc


def kernel_doc(kernel: KernelCheck | None) -> dict | None:
    if kernel is None:
        return None
    return {**answer_doc(kernel.final), "agrees": kernel.agrees, "differences": list(kernel.differences),
            "confirmed": list(kernel.confirmed), "assumed": list(kernel.assumed), "queries": len(kernel.answers)}


def step_doc(step) -> dict:
    """One step of the path, in order: what an observer can check it against."""
    if isinstance(step, HookStep):
        t = step.traversal
        return {"type": "hook", "hook": t.hook, "verdict": t.verdict, "decided_by": t.decided_by,
                "mark": t.packet.mark, "src": t.packet.src, "dst": t.packet.dst}
    if isinstance(step, RoutingStep):
        r = step.result
        return {"type": "routing", "stage": step.stage, "rule": r.rule.priority if r.rule else None,
                "table_id": r.table, "route": r.route.prefix if r.route else None, "dev": r.dev,
                "gateway": r.gateway, "error": r.error}
    if isinstance(step, NatStep):
        n = step.rewrite
        return {"type": "nat", "hook": step.hook, "nat": n.type, "field": n.field, "from": n.from_, "to": n.to,
                "from_port": n.from_port, "to_port": n.to_port, "handle": n.handle,
                "by_conntrack": step.by_conntrack}
    if isinstance(step, RerouteStep):
        return {"type": "reroute", "mark": step.mark, "dst": step.dst, "reason": step.reason}
    if isinstance(step, EgressStep):
        return {"type": "egress", **egress_doc(step)}
    raise TypeError(f"not a step: {step!r}")


def explanation_doc(e: Explanation) -> dict:
    decision = e.decision
    return {
        "flow": flow_doc(e.flow),
        "origin": e.origin,
        "iif_inferred": iif_inferred_text(e.iif_inferred),
        "rules": [{"priority": s.rule.priority, "text": s.text, "matched": s.matched,
                   "reason": s.reason, "result": s.result}
                  for s in (decision.rules_walked if decision else ())],
        "decision": decision_doc(decision, e.state) if decision else None,
        "reroutes": [decision_doc(d, e.state) for d in e.decisions[:-1]],
        "netfilter": [hook_doc(h) for h in e.hook_steps],
        "nat": [nat_doc(n) for n in e.nat],
        "conntrack": conntrack_doc(e.conntrack),
        "egress": egress_doc(e.egress) if e.egress else None,
        "verdict": e.verdict,
        "verdict_reason": e.verdict_reason,
        "drop_reason": e.drop_reason,
        "kernel": kernel_doc(e.kernel),
        "findings": [finding_doc(f) for f in e.findings],
        "notes": list(e.notes),
        "steps": [step_doc(s) for s in e.steps],
        "share": e.share,
        "choices": [choice_doc(c) for c in e.choices],
        "alternatives": [outcome_doc(a) for a in e.alternatives],
    }


def choice_doc(c: Choice) -> dict:
    return {"kind": c.kind, "index": c.index, "options": c.options, "share": c.share, "text": c.text}


def outcome_doc(e: Explanation) -> dict:
    """Another possible outcome of a forking path: where it goes, how likely it is."""
    return {"share": e.share, "choices": [choice_doc(c) for c in e.choices], "verdict": e.verdict,
            "verdict_reason": e.verdict_reason, "drop_reason": e.drop_reason,
            "egress": egress_doc(e.egress) if e.egress else None, "nat": [nat_doc(n) for n in e.nat],
            "steps": [step_doc(s) for s in e.steps]}


def explanation(e: Explanation, *, pretty: bool = True, source: dict | None = None, probe=None) -> str:
    doc = explanation_doc(e)
    if probe is not None:
        doc["probe"] = probe_doc(probe)
    return dumps({"source": source, **doc} if source is not None else doc, pretty=pretty)


def probe_doc(p) -> dict:
    """`--probe`: a tracer.lint.probe.Probe — the real packet sent through a replica, and what became of it."""
    seen = p.observed
    left = seen is not None and seen.outcome == "left"
    return {
        "agrees": p.agrees,
        "packet": p.packet,
        "sent": flow_doc(p.flow),
        "observed": {"dev": seen.dev, "src": seen.src, "dst": seen.dst, "sport": seen.sport, "dport": seen.dport,
                     "nexthop": seen.nexthop} if left else None,
        "dropped": seen is not None and seen.outcome == "dropped",
        "delivered": seen is not None and seen.outcome == "delivered",
        "reason": seen.reason if seen is not None else None,
        "text": seen.text if seen is not None else "not probed",
        "outcome": p.outcome,
        "outcomes": p.outcomes,
        "took": p.took,
        "differences": list(p.differences),
        "cannot_reproduce": list(p.cannot_reproduce),
        "notes": list(p.notes),
        "seconds": round(p.seconds, 3),
    }


# ------------------------------------------------------------------ findings

def finding_doc(f: Finding) -> dict:
    return {"id": f.id, "severity": f.severity, "title": f.title, "message": f.message,
            "fix": {"kind": f.fix.kind, "commands": list(f.fix)}}


def check(findings: list[Finding], *, source: dict, rules_run: list[str]) -> str:
    """`why-route check --json`."""
    return dumps({"source": source, "rules": rules_run,
                  "summary": {name: sum(1 for f in findings if f.severity == name) for name in SEVERITIES},
                  "findings": [finding_doc(f) for f in findings]})


# ---------------------------------------------------------------------- lint

def _flow_facts(explanation: Explanation) -> dict:
    return {**flows.facts(explanation), "text": flows.summary(explanation)}


def lint(report: LintReport, *, source: dict | None = None) -> str:
    """`why-route lint --json`; `source` (SOURCE) names the state the replay started from."""
    def after(f) -> dict:
        if f.after is not None:
            return _flow_facts(f.after)
        # The flow cannot even be asked after the script (its input interface is gone).
        facts = dict.fromkeys(flows.facts(f.before))
        return {**facts, "verdict": "unreachable", "error": f.after_reason, "text": f.after_summary}

    return dumps({
        "script": report.script, "source": source if source is not None else report.source,
        "warnings": [{"line": w.lineno, "text": w.text, "command": w.command, "destroys": w.destroys}
                     for w in report.warnings],
        "lines": [{"line": r.lineno, "last_line": r.last_line or r.lineno, "text": r.text, "command": r.command,
                   "status": r.status, "message": r.message, "why": r.why,
                   "fix": r.fix.splitlines() if r.fix else []} for r in report.lines],
        "summary": {"failed": len(report.failed), "not_checked": len(report.not_checked),
                    "ok": sum(r.status == LINE_OK for r in report.lines)},
        "flows": [{"src": f.src, "dst": f.dst, "changed": f.changed, "broken": f.broken,
                   "effect": f.effect if f.broken else None,
                   "before": _flow_facts(f.before), "after": after(f)} for f in report.flows],
        "new_findings": [finding_doc(f) for f in report.new_findings],
        "replay": {"namespace": report.namespace, "seconds": round(report.replay_seconds, 3),
                   "notes": report.notes},
        "seconds": round(report.seconds, 3),
    })


# ----------------------------------------------------------------------- lab

def lab_status(report: dict) -> str:
    """`why-route lab status --json`: the lab's record (its file's own `version` is not the schema)."""
    return dumps({k: v for k, v in report.items() if k != "version"})


# -------------------------------------------------------------------- verify

def verify_outcome_doc(o: Outcome) -> dict:
    e = o.expectation
    doc = {"expect": e.index, "title": e.title, "ok": o.ok, "mismatches": list(o.mismatches)}
    if o.explanation is not None:
        doc["actual"] = flows.facts(o.explanation)
    if o.findings:
        doc["findings"] = [finding_doc(f) for f in o.findings]
    return doc


def verify(outcomes: list[Outcome], *, expectations: str, source: dict, probes: list | None = None) -> str:
    """`why-route verify --json`; `probes` (`--probe`): one Probe or None per outcome."""
    held = sum(o.ok for o in outcomes)
    docs = [verify_outcome_doc(o) for o in outcomes]
    for doc, probe in zip(docs, probes or (), strict=False):
        if probe is not None:
            doc["probe"] = probe_doc(probe)
    return dumps({"expectations": expectations, "source": source, "ok": all(o.ok for o in outcomes),
                  "summary": {"ok": held, "failed": len(outcomes) - held},
                  "outcomes": docs})
