"""What the kernel's answers confirm of an explanation's routing decisions (pure).

The live kernel is asked each RoutingStep's query (tracer/collect/kernel.py);
here its answers are compared with the simulated decisions, field by field.
Any difference is reported, never hidden.
"""

from __future__ import annotations

from collections.abc import Sequence

from tracer.flow import RouteAnswer
from tracer.sim.explanation import Explanation, KernelCheck, RoutingStep
from tracer.vocab import AF_INET

_COMPARED = ("error", "type", "dev", "gateway", "table")


def differences(step: RoutingStep, answer: RouteAnswer) -> list[str]:
    """Differences between one simulated decision and the kernel's answer (empty: agree)."""
    r = step.result
    ours = {"error": r.error, "type": r.type, "dev": r.dev, "gateway": r.gateway, "table": r.table}
    keys = ("error",) if answer.error or r.error else _COMPARED
    found = []
    for key in keys:
        theirs = getattr(answer, key)
        if ours[key] != theirs:
            found.append(f"{key}: why-route {_shown(ours[key])}, kernel {_shown(theirs)}")
    if not (answer.error or r.error):
        # IPv6 source selection is approximated (explain notes it), not compared.
        if step.query.src is None and step.query.family == AF_INET and r.prefsrc != answer.prefsrc:
            found.append(f"source: why-route {_shown(r.prefsrc)}, kernel {_shown(answer.prefsrc)}")
        ours_route = r.route.prefix if r.route else None
        if answer.fibmatch_error is None and ours_route != answer.route:
            found.append(f"matched route: why-route {_shown(ours_route)}, kernel {_shown(answer.route)}")
    return found


def _shown(value) -> str:
    return "none" if value is None else str(value)


def confirmed(step: RoutingStep, answer: RouteAnswer) -> list[str]:
    """The fields of the decision that the kernel's answer holds too (never an empty one)."""
    r = step.result
    if answer.error or r.error:
        return [f"error {answer.error}"] if answer.error == r.error else []
    pairs = (("type", r.type, answer.type), ("table", r.table, answer.table),
             ("route", r.route.prefix if r.route else None, answer.route),
             ("gateway", r.gateway, answer.gateway), ("device", r.dev, answer.dev))
    found = [f"{name} {ours}" for name, ours, theirs in pairs if ours is not None and ours == theirs]
    if step.query.src is None and step.query.family == AF_INET and r.prefsrc and r.prefsrc == answer.prefsrc:
        found.append(f"source {r.prefsrc}")
    return found


def assumed(explanation: Explanation) -> list[str]:
    """What the routing questions took from the simulation rather than from the flow asked."""
    flow = explanation.flow
    found = []
    for step in explanation.decisions:
        q = step.query
        where = "as it leaves prerouting" if step.stage == "routing" and flow.iif else f"at the {step.stage}"
        changed = []
        if q.mark != flow.mark:
            changed.append(f"mark {q.mark:#x}")
        if q.dst != flow.dst or q.dport != flow.dport:
            changed.append(f"destination {q.dst}" + (f" port {q.dport}" if q.dport is not None else "") + " after NAT")
        if step.stage == "re-route after output":
            changed.append("the re-route itself")
        elif step.stage.startswith("connect()"):
            changed.append(f"source {q.src}, selected by the first lookup as connect() does")
        if changed:
            found.append(f"the packet {where}: {', '.join(changed)} (simulated)")
    if explanation.hook_steps:
        found.append("netfilter verdicts and NAT are simulated: a route query does not confirm them")
    return found


def kernel_check(explanation: Explanation, answers: Sequence[RouteAnswer]) -> KernelCheck:
    """The kernel's answers, one per routing decision of the explanation, compared."""
    pairs = list(zip(explanation.decisions, answers, strict=True))
    found = [diff for step, answer in pairs for diff in differences(step, answer)]
    agreed = [field for step, answer in pairs for field in confirmed(step, answer)]
    return KernelCheck(tuple(answers), tuple(found), tuple(dict.fromkeys(agreed)), tuple(assumed(explanation)))
