"""The readable walk of one explanation, rendered from the typed Explanation."""

from __future__ import annotations

from tracer.model import HostState
from tracer.output.json_out import MAX_LISTED_STEPS, iif_inferred_text
from tracer.output.style import Style
from tracer.sim import fib
from tracer.sim.explanation import Explanation, HookStep, RoutingStep
from tracer.sim.netfilter import ChainVisit, HookTraversal
from tracer.vocab import protocol_name

_VERDICT_COLOURS = {"forwarded": "green", "sent": "green", "delivered-locally": "green"}


def _port(port: int | None) -> str:
    return str(port) if port is not None else "*"


def _endpoint(address: str | None, port: int | None) -> str:
    """address:port as tools print it ([v6]:port); the address alone without a port."""
    if port is None:
        return str(address)
    return f"[{address}]:{port}" if address and ":" in address else f"{address}:{port}"


def _flow_line(e: Explanation) -> str:
    flow = e.flow
    words = [f"{flow.src or '(this host)'} → {flow.dst}"]
    if flow.proto:
        ports = ""
        if flow.sport is not None or flow.dport is not None:
            ports = f" {_port(flow.sport)}→{_port(flow.dport)}"
        words.append(f"{protocol_name(flow.proto)}{ports}")
    for key in ("iif", "oif", "uid"):
        value = getattr(flow, key)
        if value is not None:
            words.append(f"{key} {value}")
    if flow.mark:
        words.append(f"mark {flow.mark:#x}")
    if flow.tos:
        words.append(f"tos {flow.tos:#04x}")
    return "  ".join(words)


# ✓ matched and decided, ↷ matched but the lookup fell through to the next rule, ✗ did not match
_DECIDED, _FELL_THROUGH, _NO_MATCH = "✓", "↷", "✗"


def _rules(decision: RoutingStep, s: Style) -> list[str]:
    walked = decision.rules_walked
    lines = [s(f"Policy routing (ip rule, in priority order: {_DECIDED} decided, {_FELL_THROUGH} matched but fell "
               f"through, {_NO_MATCH} no match)", "bold")]
    width = max((len(str(r.rule.priority)) for r in walked), default=1)
    for rule in walked:
        if not rule.matched:
            mark = s(_NO_MATCH, "dim")
        elif rule.rule is decision.rule:
            mark = s(_DECIDED, "green")
        else:
            mark = s(_FELL_THROUGH, "yellow")
        lines.append(f"  {mark} {rule.text}")
        detail = rule.reason if not rule.matched else rule.result
        if rule.matched and rule.reason:
            detail = f"{rule.result}: {rule.reason}" if rule.reason not in rule.result else rule.result
        if detail:
            lines.append(f"    {' ' * width}  {s(detail, 'dim' if not rule.matched else 'cyan')}")
    return lines


def _decision(d: RoutingStep, state: HostState, s: Style, heading: str) -> list[str]:
    r = d.result
    lines = [s(heading, "bold")]
    if r.rule:
        lines.append(f"  decided by rule {d.rule_text}")
    if r.route:
        table = state.table_name(r.table) if r.table is not None else None
        lines.append(f"  table {table} ({r.table}): {fib.route_text(state, r.route)}")
    if r.error:
        lines.append("  " + s(f"error {r.error}", "red") + (f": {r.error_reason}" if r.error_reason else ""))
    else:
        hop = f"gateway {r.gateway}" if r.gateway else "no gateway (destination on-link)"
        lines.append(f"  {hop}, device {r.dev}" + (f", source {r.prefsrc}" if r.prefsrc else ""))
    if r.multipath_note:
        hops = ", ".join(f"via {h.gateway} dev {h.dev} weight {h.weight}" for h in r.nexthops)
        lines.append(f"  multipath: {hops}")
        lines.append(f"  {r.multipath_note}")
    lines.extend(f"  note: {note}" for note in r.notes)
    return lines


def _chain_title(chain: ChainVisit) -> str:
    return f"{chain.family} {chain.table} {chain.chain} ({chain.source}, priority {chain.priority})"


def _chain(chain: ChainVisit, s: Style) -> list[str]:
    shown = [step for step in chain.steps if step.matched is not False]
    if not shown:
        ending = f"policy {chain.policy}" if chain.policy else "no verdict"
        return [f"    {_chain_title(chain)}: no rule matched ({len(chain.steps)} checked), {ending}"]
    how = "policy" if chain.verdict_from == "policy" else "rule"
    lines = [f"    {_chain_title(chain)}: {chain.verdict or 'continue'} by {how}"]
    if chain.skipped_rules:
        lines.append(f"      ({chain.skipped_rules:,} rules cannot match: they select other addresses)")
    if len(chain.steps) > MAX_LISTED_STEPS and len(shown) < len(chain.steps):
        lines.append(f"      ({len(chain.steps) - len(shown):,} non-matching rules not listed)")
    for step in shown:
        label = f"#{step.handle}" if step.handle is not None else "(end)"
        counters = f"  [{step.counters.get('packets', 0)} pkts]" if step.counters else ""
        status = s("?", "yellow") if step.matched is None else s("→", "cyan")
        lines.append(f"      {status} {label} {step.text}{counters}")
        if step.matched is None and step.reason:
            lines.append(f"        {s(step.reason, 'yellow')}")
    return lines


def _netfilter(hooks: list[HookTraversal], s: Style) -> list[str]:
    if not hooks:
        return []
    lines = [s("Netfilter", "bold")]
    for hook in hooks:
        colour = "green" if hook.verdict == "accept" else "red"
        lines.append(f"  {hook.hook}: {s(hook.verdict, colour)}"
                     + (f" (decided by {hook.decided_by})" if hook.decided_by else "")
                     + ("" if hook.chains else " (no chains at this hook)"))
        for chain in hook.chains:
            if not chain.skipped:
                lines.extend(_chain(chain, s))
        lines.extend("    " + s(f"uncertain: {reason}", "yellow") for reason in hook.uncertain_reasons)
        lines.extend(f"    MSS clamped by: {rule}" for rule in hook.mss_clamp)
    return lines


def _nat_misses(e: Explanation) -> list[str]:
    """Why no NAT rule applied: each NAT rule of a nat chain the packet crossed, and its failed match."""
    misses = []
    for hook in e.hooks:
        for chain in hook.chains:
            if chain.type != "nat":
                continue
            if chain.skipped:
                misses.append(f"{hook.hook}: {_chain_title(chain)} {chain.skipped}")
                continue
            misses.extend(f"{hook.hook}: #{step.handle} {step.text}: {step.reason}"
                          for step in chain.steps if step.matched is False and step.reason
                          and any(word in step.text.lower() for word in _NAT_WORDS))
    return misses


_NAT_WORDS = ("snat", "dnat", "masquerade", "redirect", "netmap")


def _nat(e: Explanation, s: Style) -> list[str]:
    if not e.nat and not e.conntrack:
        misses = _nat_misses(e)
        if not misses:
            return [s("NAT", "bold"), "  none: the packet keeps its addresses"]
        return [s("NAT", "bold"), "  none: the packet keeps its addresses; no NAT rule matched:",
                *(f"    {miss}" for miss in misses)]
    lines = [s("NAT", "bold")]
    if e.conntrack:
        lines.append(f"  existing conntrack entry (overrides the NAT rules): {e.conntrack.text}")
    for step in e.nat:
        n = step.rewrite
        before = _endpoint(n.from_, n.from_port if n.to_port is not None else None)
        after = _endpoint(n.to or n.from_, n.to_port)
        lines.append(f"  {n.type.upper()} {n.field} {before} → {after}  ({step.hook}: {n.rule})")
    return lines


def _outcomes(e: Explanation, s: Style) -> list[str]:
    if not e.alternatives:
        return []
    kinds = sorted({c.kind for o in e.outcomes for c in o.choices})
    lines = [s(f"Outcomes (the path forks: {', '.join(kinds)})", "bold")]
    for outcome in e.outcomes:
        took = "; ".join(c.text for c in outcome.choices)
        shown = "  (explained above)" if outcome is e else ""
        share = "  if" if outcome.share is None else f"{outcome.share:>4.0%}"
        eg = outcome.egress
        where = (f"leaves {eg.dev} as {_endpoint(eg.src, eg.sport)} → {_endpoint(eg.dst, eg.dport)}" if eg
                 else outcome.verdict_reason)
        lines.append(f"  {share}  {took}: {outcome.verdict} — {where}{shown}")
    return lines


def _kernel(e: Explanation, s: Style) -> list[str]:
    kernel = e.kernel
    if kernel is None:
        return []
    what = "the routing decision" if len(kernel.answers) == 1 else f"{len(kernel.answers)} routing decisions"
    if kernel.agrees:
        lines = [s("Kernel", "bold") + f": agrees on {what} — {kernel.final.text}"]
    else:
        lines = [s("Kernel: DISAGREES", "red", "bold") + f" on {what} — {kernel.final.text}"]
        lines.extend("  " + s(diff, "red") for diff in kernel.differences)
    if kernel.confirmed:
        lines.append(f"  confirmed: {', '.join(kernel.confirmed)}")
    lines.extend(f"  {s('assumed:', 'yellow')} {a}" for a in kernel.assumed)
    return lines


def _probe(probe, s: Style) -> list[str]:
    """`--probe`: what became of the real packet sent through a replica (tracer.lint.probe.Probe)."""
    if probe is None:
        return []
    seen = probe.observed
    if seen is None:
        return [s("Probe", "bold") + ": not probed — " + "; ".join(probe.cannot_reproduce)]
    took = ""
    if probe.outcomes > 1 and probe.outcome is not None:
        took = f" — took outcome {probe.outcome + 1} of {probe.outcomes}" + (f" ({probe.took})" if probe.took else "")
    if probe.agrees:
        lines = [s("Probe", "bold") + ": " + s("agrees", "green") + f" — {seen.text}{took}"]
    else:
        lines = [s("Probe: DISAGREES", "red", "bold") + f" — {seen.text}"]
        lines.extend("  " + s(diff, "red") for diff in probe.differences)
    lines.append(f"  sent: {probe.packet} ({probe.seconds:.2f} s, in a throwaway replica)")
    lines.extend(f"  note: {note}" for note in probe.notes)
    lines.extend(f"  {s('cannot reproduce:', 'yellow')} {what}" for what in probe.cannot_reproduce)
    return lines


def _findings(findings, s: Style) -> list[str]:
    if not findings:
        return []
    colours = {"error": "red", "warning": "yellow", "info": "cyan"}
    lines = [s("Findings", "bold")]
    for f in findings:
        lines.append(f"  {s(f.severity, colours.get(f.severity, 'bold'))} {f.id} {f.title}")
        lines.append(f"    {f.message}")
        for label, command in f.fix.lines():
            lines.append(f"    {label} {command}" if label and command else f"    {label}" if label
                         else f"      {command}")
    return lines


def render(e: Explanation, *, colour: bool = False, probe=None) -> str:
    s = Style(colour)
    state = e.state
    lines = [s("Flow", "bold") + f"  {_flow_line(e)}  [{e.origin}]"]
    if e.iif_inferred:
        lines.append(f"  {iif_inferred_text(e.iif_inferred)}")
    lines.extend(f"  note: {note}" for note in e.notes)
    # hooks before the first routing decision (prerouting), then those after it in path order
    first = next((i for i, step in enumerate(e.steps) if isinstance(step, RoutingStep)), len(e.steps))
    before = [step.traversal for step in e.steps[:first] if isinstance(step, HookStep)]
    after = [step.traversal for step in e.steps[first:] if isinstance(step, HookStep)]
    lines.extend(_netfilter(before, s))
    decisions = e.decisions
    if decisions and decisions[-1].rules_walked:
        lines.extend(_rules(decisions[-1], s))
    for earlier in decisions[:-1]:
        lines.extend(_decision(earlier, state, s, f"Route ({earlier.stage})"))
    if decisions:
        final = decisions[-1]
        lines.extend(_decision(final, state, s, "Route" if len(decisions) == 1 else f"Route ({final.stage})"))
    lines.extend(_netfilter(after, s))
    lines.extend(_nat(e, s))
    if e.egress:
        eg = e.egress
        lines.append(s("On the wire", "bold"))
        mtu = f", MTU {eg.mtu}" if eg.mtu else ""
        lines.append(f"  dev {eg.dev}: {_endpoint(eg.src, eg.sport)} → {_endpoint(eg.dst, eg.dport)}, "
                     f"next hop {eg.nexthop}{mtu}")
    lines.extend(_outcomes(e, s))
    forks = ""
    if e.alternatives:
        forks = f" (one of {len(e.outcomes)} outcomes" + (f", {e.share:.0%})" if e.share is not None else ")")
    # a flow that leaves is not green when an error-level finding says it will fail anyway
    doomed = any(f.severity == "error" for f in e.findings)
    colour = "yellow" if doomed and e.verdict in _VERDICT_COLOURS else _VERDICT_COLOURS.get(e.verdict, "red")
    dropped_as = f" (drop reason {e.drop_reason})" if e.drop_reason else ""
    lines.append(s("Verdict", "bold") + ": " + s(e.verdict, colour) + f" — {e.verdict_reason}{dropped_as}{forks}"
                 + (" — but see the error findings below" if doomed else ""))
    lines.extend(_kernel(e, s))
    lines.extend(_probe(probe, s))
    lines.extend(_findings(e.findings, s))
    return "\n".join(lines) + "\n"
