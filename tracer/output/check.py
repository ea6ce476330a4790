"""Text and JSON output of `why-route check` and `why-route rules`."""

from __future__ import annotations

from tracer.checks.base import SEVERITIES, Finding
from tracer.output.style import Style
from tracer.output.style import width as terminal_width

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
            lines.extend(fix_lines(f, style, "      "))
    return "\n".join(lines)


def fix_lines(f: Finding, style: Style, indent: str) -> list[str]:
    """A finding's commands, introduced by what they are (`fix:`, `fix (run in order):`,
    `fix (one of):`, `probe:`); several commands go one a line, indented under the label."""
    out = []
    for label, command in f.fix.lines():
        if label:
            out.append(f"{indent}{style(label, 'green')}" + (f" {command}" if command else ""))
        else:
            out.append(f"{indent}  {command}")
    return out


def _wrap(message: str, indent: str, width: int | None = None) -> list[str]:
    """Wrapped at the terminal's width (style.width: 100 columns when piped)."""
    import textwrap

    return textwrap.wrap(message, width=width or terminal_width(), initial_indent=indent, subsequent_indent=indent,
                         break_long_words=False, break_on_hyphens=False)


def catalogue_text(checks, *, colour: bool) -> str:
    style = Style(colour)
    lines = []
    for c in checks:
        lines.append(f"{style(c.id, 'bold', _COLOURS[c.severity])}  {c.severity:<7}  {c.title}")
    lines.append("")
    lines.append("`why-route rules ID` prints a rule's page.")
    return "\n".join(lines)
