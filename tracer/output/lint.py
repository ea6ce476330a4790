"""Text output of `why-route lint` (its JSON: tracer.output.json_out.lint)."""

from __future__ import annotations

import textwrap

from tracer.lint import flows as flows_mod
from tracer.lint.run import FAILED, NOT_CHECKED, LineResult, LintReport
from tracer.output.style import Style, width

_SEVERITY_COLOUR = {"error": "red", "warning": "yellow", "info": "cyan"}


def text(report: LintReport, *, colour: bool) -> str:
    style = Style(colour)
    out = [style(f"why-route lint {report.script}: on {report.source}, replayed in a throwaway namespace "
                 f"in {report.replay_seconds:.2f} s", "bold")]
    out += _warning(report, style)
    digits = max((len(str(r.lineno)) for r in report.lines), default=1)
    for r in report.lines:
        name, colours = {FAILED: ("FAILED", ("bold", "red")), NOT_CHECKED: ("not checked", ("yellow",))} \
            .get(r.status, ("ok", ("green",)))
        label = style(name, *colours) + " " * (len("not checked") - len(name))
        out.append(f"line {r.lineno:>{digits}}  {label}  {_shown(r)}")
        indent = " " * (digits + 20)
        if r.message:
            tool = r.command.split()[0] if r.status == FAILED and r.command.split() \
                and not r.message.startswith("bash: ") else ""
            for line in r.message.splitlines():
                out.append(f"{indent}{style(f'{tool}: ' if tool else '', 'dim')}{line}")
        if r.why:
            out.extend(_wrap(f"why: {r.why}", indent))
        if r.fix:
            out.append(f"{indent}{style('fix:', 'green')} {r.fix}")
    failed, skipped = len(report.failed), len(report.not_checked)
    verdict = style(f"{failed} failed", "bold", "red") if failed else style("0 failed", "green")
    destructive = f", {len(report.warnings)} destructive (see WARNING)" if report.warnings else ""
    out.append(f"{verdict}, {skipped} not checked, {len(report.lines) - failed - skipped} ok{destructive} "
               f"({len({r.lineno for r in report.lines})} lines)")
    if report.flows:
        out += ["", style("Key flows, before → after the script:", "bold")]
        for change in report.flows:
            before, after = flows_mod.summary(change.before), change.after_summary
            head = f"  {change.src} → {change.dst}"
            if change.broken:
                out.extend(_wrap(style(change.effect, "bold", "red"), "  "))
                out.extend(_wrap(f"before: {before}", "      "))
                continue
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


def _warning(report: LintReport, style: Style) -> list[str]:
    """The WARNING block, before anything else: each destructive line and what it destroys, then the
    key flows the script breaks."""
    if not report.warnings:
        return []
    count = len(report.warnings)
    out = [style(f"WARNING: {count} line{'s' if count != 1 else ''} of this script destroy"
                 f"{'s' if count == 1 else ''} configuration:", "bold", "red")]
    for w in report.warnings:
        out.extend(_wrap(f"line {w.lineno}: {w.command}: {w.destroys}", "  "))
    broken = report.broken_flows
    if broken:
        out.append(style(f"  after the script, {len(broken)} of {len(report.flows)} key flows no longer work:",
                         "bold"))
        out.extend(f"    {f.src} → {f.dst} is {f.after.verdict if f.after is not None else 'unreachable'}"
                   for f in broken)
    out.append("")
    return out


def _shown(r: LineResult) -> str:
    """The line as written; a block as its first and last line; the command run when it differs."""
    if "\n" in r.text:
        lines = r.text.splitlines()
        shown = f"{lines[0]} … {lines[-1]}  (lines {r.lineno}–{r.last_line or r.lineno + len(lines) - 1}, one block)"
        return shown if r.command == r.text or r.status == NOT_CHECKED else f"{shown}: {r.command}"
    return r.text if r.command == r.text or r.status == NOT_CHECKED else f"{r.command}   ({r.text})"


def _wrap(message: str, indent: str) -> list[str]:
    # the terminal's width; 110 columns when piped (stable output for files and tests)
    return textwrap.wrap(message, width=width(default=110), initial_indent=indent, subsequent_indent=indent + "  ",
                         break_long_words=False, break_on_hyphens=False)
