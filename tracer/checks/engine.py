"""Discovery, selection and running of the checks in the `rules/` package."""

from __future__ import annotations

import importlib
import pkgutil
import re
from collections.abc import Iterable
from functools import lru_cache

from tracer.checks.base import SEVERITY_RANK, Check, Finding
from tracer.checks.context import REQUIREMENTS, CheckContext, context_for
from tracer.errors import UsageError

_MODULE = re.compile(r"^(wr\d{3})_\w+$")
_ID = re.compile(r"^WR\d{3}$")


@lru_cache(maxsize=1)
def catalogue() -> tuple[Check, ...]:
    """Every rule, one instance per module `rules/wrNNN_*.py`, sorted by ID."""
    import rules

    found: dict[str, Check] = {}
    for info in pkgutil.iter_modules(rules.__path__):
        match = _MODULE.match(info.name)
        if not match:
            continue
        module = importlib.import_module(f"rules.{info.name}")
        classes = [obj for obj in vars(module).values()
                   if isinstance(obj, type) and issubclass(obj, Check) and obj is not Check
                   and obj.__module__ == module.__name__]
        if len(classes) != 1:
            raise RuntimeError(f"rules/{info.name}.py must define exactly one Check, found {len(classes)}")
        check = classes[0]()
        if check.id != match.group(1).upper() or not _ID.match(check.id):
            raise RuntimeError(f"rules/{info.name}.py: id {check.id!r} does not match the module name")
        if check.severity not in SEVERITY_RANK:
            raise RuntimeError(f"{check.id}: unknown severity {check.severity!r}")
        if check.id in found:
            raise RuntimeError(f"{check.id} defined twice")
        if not check.requires <= REQUIREMENTS.keys():
            raise RuntimeError(f"{check.id}: unknown requirement {sorted(check.requires - REQUIREMENTS.keys())}")
        found[check.id] = check
    return tuple(found[k] for k in sorted(found))


def resolve(rule_id: str) -> Check:
    """A rule by ID (any case), following rules/redirects.py for renamed IDs."""
    from rules.redirects import REDIRECTS

    wanted = rule_id.strip().upper()
    seen = set()
    while wanted in REDIRECTS and wanted not in seen:
        seen.add(wanted)
        wanted = REDIRECTS[wanted]
    for check in catalogue():
        if check.id == wanted:
            return check
    raise UsageError(f"unknown rule ID {rule_id!r} (`why-route rules` lists them)")


def _ids(spec: Iterable[str] | str | None) -> list[str]:
    if spec is None:
        return []
    items = [spec] if isinstance(spec, str) else list(spec)
    return [part for item in items for part in re.split(r"[,\s]+", item) if part]


def select(select: Iterable[str] | str | None = None, ignore: Iterable[str] | str | None = None) -> list[Check]:
    """The checks to run: all, or only `select`, minus `ignore` (comma-separated IDs allowed)."""
    chosen = [resolve(i) for i in _ids(select)] or list(catalogue())
    ignored = {resolve(i).id for i in _ids(ignore)}
    out, seen = [], set()
    for check in chosen:
        if check.id not in ignored and check.id not in seen:
            seen.add(check.id)
            out.append(check)
    return out


def _ordered(findings: Iterable[Finding]) -> list[Finding]:
    unique = list(dict.fromkeys(findings))
    return sorted(unique, key=lambda f: (SEVERITY_RANK[f.severity], f.id))


def run(state, checks: Iterable[Check] | None = None, *, ctx: CheckContext | None = None) -> list[Finding]:
    """Every finding of `checks` (default: the whole catalogue) over the host, worst first."""
    ctx = ctx or CheckContext(state)
    findings: list[Finding] = []
    for check in (catalogue() if checks is None else checks):
        if ctx.has(check.requires):
            findings.extend(check.check(ctx))
    return _ordered(findings)


def run_flow(state, explanation, checks: Iterable[Check] | None = None, *,
             ctx: CheckContext | None = None) -> list[Finding]:
    """The findings that concern one explained flow (for `why-route SRC DST`):
    the flow checks, plus host findings about the ip rules this flow matched."""
    # Shared by every query on this state (a batch asks thousands).
    ctx = ctx or context_for(state)
    checks = ctx.applicable(catalogue() if checks is None else tuple(checks))
    findings: list[Finding] = []
    path = ctx.flow_from_explanation(explanation)
    if path is not None:
        for check in checks:
            findings.extend(check.flow_check(ctx, path))
    decision = explanation.decision
    matched = {step.rule.priority for step in decision.rules_walked if step.matched} if decision else set()
    by_rule = ctx.host_findings(tuple(c for c in checks if c.shown_per_rule))
    findings.extend(f for f in by_rule if f.objects.get("rule") in matched)
    return _ordered(findings)


def grouped(findings: Iterable[Finding]) -> dict[str, list[Finding]]:
    out: dict[str, list[Finding]] = {name: [] for name in SEVERITY_RANK}
    for f in findings:
        out[f.severity].append(f)
    return out


def has_errors(findings: Iterable[Finding]) -> bool:
    return any(f.severity == "error" for f in findings)


def flow_findings(explanation) -> list[Finding]:
    """The findings concerning one explained flow (tracer.sim.explain.Explanation)."""
    return run_flow(explanation.state, explanation)
