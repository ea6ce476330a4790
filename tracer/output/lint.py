"""Text output of `why-route lint` (its JSON: tracer.output.json_out.lint)."""

from __future__ import annotations

import textwrap

from tracer.lint import flows as flows_mod
from tracer.lint.run import FAILED, NOT_CHECKED, LintReport
from tracer.output.style import Style

_SEVERITY_COLOUR = {"error": "red", "warning": "yellow", "info": "cyan"}


def text(report: LintReport, *, colour: bool) -> str:
    style = Style(colour)
    out = [style(f"why-route lint {report.script}: on {report.source}, replayed in a throwaway namespace "
                 f"in {report.replay_seconds:.2f} s", "bold")]
    width = max((len(str(r.lineno)) for r in report.lines), default=1)
    for r in report.lines:
        name, colours = {FAILED: ("FAILED", ("bold", "red")), NOT_CHECKED: ("not checked", ("yellow",))} \
            .get(r.status, ("ok", ("green",)))
        label = style(name, *colours) + " " * (len("not checked") - len(name))
        shown = r.text if r.command == r.text or r.status == NOT_CHECKED else f"{r.command}   ({r.text})"
        out.append(f"line {r.lineno:>{width}}  {label}  {shown}")
        indent = " " * (width + 20)
        if r.message:
            tool = r.command.split()[0] if r.status == FAILED else ""
            for line in r.message.splitlines():
                out.append(f"{indent}{style(f'{tool}: ' if tool else '', 'dim')}{line}")
        if r.why:
            out.extend(_wrap(f"why: {r.why}", indent))
        if r.fix:
            out.append(f"{indent}{style('fix:', 'green')} {r.fix}")
    failed, skipped = len(report.failed), len(report.not_checked)
    verdict = style(f"{failed} failed", "bold", "red") if failed else style("0 failed", "green")
    out.append(f"{verdict}, {skipped} not checked, {len(report.lines) - failed - skipped} ok "
               f"({len({r.lineno for r in report.lines})} lines)")
    if report.flows:
        out += ["", style("Key flows, before → after the script:", "bold")]
        for change in report.flows:
            before, after = flows_mod.summary(change.before), flows_mod.summary(change.after)
            head = f"  {change.src} → {change.dst}"
            if before == after:
                out.append(f"{head}: unchanged: {before}")
                continue
            mark = style("CHANGED", "bold", "yellow") if change.changed else style("same path out", "dim")
            out.append(f"{head}: {mark}")
            out.extend(_wrap(f"before: {before}", "      "))
            out.extend(_wrap(f"after:  {after}", "      "))
    if report.new_findings:
        out += ["", style("New findings after the script:", "bold")]
        for f in report.new_findings:
            colour = _SEVERITY_COLOUR.get(f.severity, "bold")
            out.append(f"  {style(f.severity, 'bold', colour)} {style(f.id, 'bold')} {f.title}")
            out.extend(_wrap(f.message, "      "))
            for command in f.fix:
                out.append(f"      {style('fix:', 'green')} {command}")
    if report.notes:
        out += ["", style("Not replayed exactly:", "bold")]
        out.extend(f"  {note}" for note in report.notes)
    return "\n".join(out) + "\n"


def _wrap(message: str, indent: str, width: int = 110) -> list[str]:
    return textwrap.wrap(message, width=width, initial_indent=indent, subsequent_indent=indent + "  ",
                         break_long_words=False, break_on_hyphens=False)
