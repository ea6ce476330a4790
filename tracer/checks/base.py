"""What a rule is made of: `Check` (the base class of every rule in `rules/`) and `Finding`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable

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

    def to_dict(self) -> dict:
        return {"id": self.id, "severity": self.severity, "title": self.title,
                "message": self.message, "fix": list(self.fix)}


class Check:
    """Base class of a rule; subclasses set id, severity, title and a docstring."""

    id: str = ""
    severity: str = "warning"  # the worst severity this rule reports
    title: str = ""

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
