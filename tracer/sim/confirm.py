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
        if key in ("dev", "gateway") and r.nexthop is None and len(r.nexthops) > 1:
            # Multipath with a hash-dependent pick: the kernel's nexthop must be one of ours.
            if not any(getattr(h, key) == theirs for h in r.nexthops):
                found.append(f"{key}: kernel {theirs}, not among our nexthops")
            continue
        if ours[key] != theirs:
            found.append(f"{key}: why-route {ours[key]}, kernel {theirs}")
    if not (answer.error or r.error):
        # IPv6 source selection is approximated (explain notes it), not compared.
        if step.query.src is None and step.query.family == AF_INET and r.prefsrc != answer.prefsrc:
            found.append(f"source: why-route {r.prefsrc}, kernel {answer.prefsrc}")
        if answer.route and r.route and r.route.prefix != answer.route:
            found.append(f"matched route: why-route {r.route.prefix}, kernel {answer.route}")
    return found


def kernel_check(explanation: Explanation, answers: Sequence[RouteAnswer]) -> KernelCheck:
    """The kernel's answers, one per routing decision of the explanation, compared."""
    pairs = zip(explanation.decisions, answers, strict=True)
    found = [diff for step, answer in pairs for diff in differences(step, answer)]
    return KernelCheck(tuple(answers), tuple(found))
