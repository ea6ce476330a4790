"""What a rule is made of: `Check` (the base class of every rule in `rules/`) and `Finding`."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

SEVERITIES = ("error", "warning", "info")
SEVERITY_RANK = {name: rank for rank, name in enumerate(SEVERITIES)}
DOC_SECTIONS = ("What it checks", "Why it breaks forwarding", "Example", "Fix")
# What a finding's command list is: "steps" — run all of them, in order; "alternatives" —
# pick one; "probe" — commands that find out more (they change nothing that matters).
FIX_KINDS = ("steps", "alternatives", "probe")


class Fix(tuple):
    """A finding's commands (a tuple of strings, as before) and what they are (`kind`,
    one of FIX_KINDS). Compares and hashes as the tuple of its commands."""

    kind: str

    def __new__(cls, commands: Iterable[str] | str = (), kind: str = "steps"):
        if kind not in FIX_KINDS:
            raise ValueError(f"fix kind must be one of {FIX_KINDS}, not {kind!r}")
        self = super().__new__(cls, (commands,) if isinstance(commands, str) else tuple(commands))
        self.kind = "steps" if kind == "alternatives" and len(self) < 2 else kind  # one choice: just do it
        return self

    def __getnewargs__(self):  # copy and pickle keep the kind
        return tuple(self), self.kind

    @property
    def commands(self) -> tuple[str, ...]:
        return tuple(self)

    @classmethod
    def steps(cls, *commands: str) -> Fix:
        return cls(commands, "steps")

    @classmethod
    def alternatives(cls, *commands: str) -> Fix:
        return cls(commands, "alternatives")

    @classmethod
    def probe(cls, *commands: str) -> Fix:
        return cls(commands, "probe")

    @property
    def label(self) -> str:
        """How text output introduces the commands: `fix:` (one step), `fix (run in order):`,
        `fix (one of):`, `probe:`."""
        if self.kind == "probe":
            return "probe:"
        if len(self) < 2:
            return "fix:"
        return "fix (run in order):" if self.kind == "steps" else "fix (one of):"

    def lines(self) -> list[tuple[str, str]]:
        """(label, command) pairs for text output: one line `label command` when there is
        one command, else the label alone and then each command (label "")."""
        if not self:
            return []
        if len(self) == 1:
            return [(self.label, self[0])]
        return [(self.label, ""), *(("", c) for c in self)]

    def __repr__(self) -> str:
        return f"Fix(kind={self.kind!r}, commands={tuple(self)!r})"


@dataclass(frozen=True)
class Finding:
    id: str
    severity: str
    title: str
    message: str  # names the real objects: interfaces, tables, addresses
    fix: Fix = Fix()  # exact commands computed from the state, and what they are (Fix.kind)
    objects: dict = field(default_factory=dict, compare=False, hash=False)

    def __post_init__(self):
        if not isinstance(self.fix, Fix):
            object.__setattr__(self, "fix", Fix(self.fix))


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

    def finding(self, message: str, fix: Fix | Iterable[str] | str = (), *, severity: str | None = None,
                **objects) -> Finding:
        """A finding of this rule; `fix` is a Fix, or commands that are steps run in order."""
        return Finding(self.id, severity or self.severity, self.title, message,
                       fix if isinstance(fix, Fix) else Fix(fix), objects)
