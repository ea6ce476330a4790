"""What a rule is made of: `Check` (the base class of every rule in `rules/`) and `Finding`."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

SEVERITIES = ("error", "warning", "info")
SEVERITY_RANK = {name: rank for rank, name in enumerate(SEVERITIES)}
DOC_SECTIONS = ("What it checks", "Why it breaks forwarding", "Example", "Fix")


@dataclass(frozen=True)
class Finding:
    id: str
    severity: str
    title: str
    message: str  # names the real objects: interfaces, tables, addresses
    fix: tuple[str, ...] = ()  # exact commands, computed from the state
    objects: dict = field(default_factory=dict, compare=False, hash=False)


class Check:
    """Base class of a rule; subclasses set id, severity, title and a docstring."""

    id: str = ""
    severity: str = "warning"  # the worst severity this rule reports
    title: str = ""
    # What the state must hold for the rule to judge at all (CheckContext.has); without
    # it the engine does not run the rule: "netfilter" — a netfilter dump.
    requires: frozenset[str] = frozenset()
    # A host check about single ip rules (findings carry objects["rule"] = its priority):
    # cheap, and shown with every flow that matches that rule.
    shown_per_rule: bool = False

    def check(self, ctx) -> Iterable[Finding]:
        """Findings over the whole host; by default, `flow_check` over the flows the
        host is evidently meant to forward (`ctx.derived_flows`)."""
        for flow in ctx.derived_flows:
            yield from self.flow_check(ctx, flow)

    def flow_check(self, ctx, flow) -> Iterable[Finding]:
        """Findings about one flow (`tracer.checks.context.FlowPath`); none by default."""
        return ()

    def finding(self, message: str, fix: Iterable[str] | str = (), *, severity: str | None = None,
                **objects) -> Finding:
        fixes = (fix,) if isinstance(fix, str) else tuple(fix)
        return Finding(self.id, severity or self.severity, self.title, message, fixes, objects)
