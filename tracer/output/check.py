"""Text and JSON output of `why-route check` and `why-route rules`."""

from __future__ import annotations

from tracer.checks.base import SEVERITIES, Finding
from tracer.output.style import Style

_COLOURS = {"error": "red", "warning": "yellow", "info": "cyan"}


def text(findings: list[Finding], *, colour: bool, source: str, rules_run: int) -> str:
    style = Style(colour)
    by_severity = {name: [f for f in findings if f.severity == name] for name in SEVERITIES}
    counts = ", ".join(f"{len(v)} {k}{'' if len(v) == 1 else 's'}" for k, v in by_severity.items())
    lines = [style(f"why-route check: {source}: {rules_run} rules, {counts}", "bold")]
    if not findings:
        lines.append(style("no problems found", "green"))
    for severity in SEVERITIES:
        group = by_severity[severity]
        if not group:
            continue
        lines.append("")
        lines.append(style(f"{severity.upper()}S ({len(group)})", "bold", _COLOURS[severity]))
        for f in group:
            lines.append(f"  {style(f.id, 'bold', _COLOURS[severity])} {style(f.title, 'bold')}")
            lines.extend(_wrap(f.message, "      "))
            for command in f.fix:
                lines.append(f"      {style('fix:', 'green')} {command}")
    return "\n".join(lines)


def _wrap(message: str, indent: str, width: int = 100) -> list[str]:
    import textwrap

    return textwrap.wrap(message, width=width, initial_indent=indent, subsequent_indent=indent,
                         break_long_words=False, break_on_hyphens=False)


def catalogue_text(checks, *, colour: bool) -> str:
    style = Style(colour)
    lines = []
    for c in checks:
        lines.append(f"{style(c.id, 'bold', _COLOURS[c.severity])}  {c.severity:<7}  {c.title}")
    lines.append("")
    lines.append("`why-route rules ID` prints a rule's page.")
    return "\n".join(lines)
