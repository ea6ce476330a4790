"""Lint a script: replay the state, run each step with the real tool, read the result back.

    lint_state(state, script_path, source="snapshot route.json") -> LintReport
    state_after(state, "fix.sh") -> (HostState, LintReport)

The report holds every line's outcome (the tool's own message, a plain
explanation, a corrected line), the lines that destroy configuration
(`warnings`), the state after the script, how the key flows' decisions changed
(key flows come from the state before and after, so a script that deletes the
interfaces still shows what it does to them), and the rules engine's findings
that the script introduced (compared by rule ID and the objects they name, so a
renumbered rule is the same finding).

A script bash refuses (`bash -n`) fails at its syntax error: the lines before
it run (bash would run them), the rest do not.
"""

from __future__ import annotations

import dataclasses
import re
import shlex
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from tracer.checks import engine
from tracer.errors import UsageError, WhyRouteError
from tracer.lint import flows as flows_mod
from tracer.lint.messages import Context, explain
from tracer.lint.replay import Replay
from tracer.lint.script import IPROUTE2_DIR, Step, destruction, parse, syntax_error
from tracer.model import HostState, Rule
from tracer.sim.explanation import Explanation

OK, FAILED, NOT_CHECKED = "ok", "failed", "not checked"
_NOISE = ("Try `iptables -h'", "Try `ip6tables -h'", "Perhaps iptables or your kernel needs to be upgraded")


@dataclass(frozen=True)
class LineResult:
    lineno: int
    text: str  # the line as written
    command: str  # the command of this step (a line can hold several: a && b)
    status: str  # ok, failed, not checked
    message: str | None = None  # the tool's own words (failed), or why it is not checked
    why: str | None = None
    fix: str | None = None
    output: str = ""
    last_line: int = 0  # a block's last line (0: one line)


@dataclass(frozen=True)
class Destruction:
    """A line that ran and destroys configuration: a link, a ruleset, rules, routes, forwarding."""

    lineno: int
    text: str
    command: str
    destroys: str


_WORKING = ("forwarded", "sent", "delivered")


@dataclass(frozen=True)
class FlowChange:
    src: str
    dst: str
    before: Explanation
    after: Explanation | None  # None: the flow cannot even be asked after the script (after_reason says why)
    after_reason: str | None = None

    @property
    def changed(self) -> bool:
        return self.after is None or flows_mod.facts(self.before) != flows_mod.facts(self.after)

    @property
    def broken(self) -> bool:
        """The flow worked before the script and does not after it."""
        return self.before.verdict in _WORKING and (self.after is None or self.after.verdict not in _WORKING)

    @property
    def after_summary(self) -> str:
        return flows_mod.summary(self.after) if self.after is not None else f"unreachable: {self.after_reason}"

    @property
    def effect(self) -> str:
        """"after the script, 192.168.1.169 → 8.8.8.8 is unreachable: …" (broken flows)."""
        verdict = self.after.verdict if self.after is not None else "unreachable"
        reason = (self.after.verdict_reason if self.after is not None else self.after_reason) or ""
        return f"after the script, {self.src} → {self.dst} is {verdict}" + (f": {reason}" if reason else "")


@dataclass
class LintReport:
    script: str
    source: str
    before: HostState
    after: HostState | None = None
    lines: list[LineResult] = field(default_factory=list)
    warnings: list[Destruction] = field(default_factory=list)  # destructive lines, in script order
    flows: list[FlowChange] = field(default_factory=list)
    new_findings: list = field(default_factory=list)  # tracer.checks.Finding
    notes: list[str] = field(default_factory=list)  # what the replay could not reproduce
    namespace: str = ""
    replay_seconds: float = 0.0
    seconds: float = 0.0

    @property
    def failed(self) -> list[LineResult]:
        return [r for r in self.lines if r.status == FAILED]

    @property
    def not_checked(self) -> list[LineResult]:
        return [r for r in self.lines if r.status == NOT_CHECKED]

    @property
    def broken_flows(self) -> list[FlowChange]:
        return [f for f in self.flows if f.broken]


def read_script(path: str) -> str:
    try:
        data = Path(path).read_bytes()
    except IsADirectoryError:
        raise UsageError(f"cannot read script {path}: it is a directory") from None
    except OSError as exc:
        raise UsageError(f"cannot read script {path}: {exc.strerror}") from None
    try:
        return data.decode()
    except UnicodeDecodeError:
        raise UsageError(f"{path} is not a text file (not UTF-8)") from None


def lint_state(state: HostState, script_path: str, *, source: str = "") -> LintReport:
    with linted(state, script_path, source=source) as report:
        return report


def state_after(state: HostState, script_path: str) -> tuple[HostState, LintReport]:
    """The state `state` would be in after running the script, and the lint report that says so."""
    report = lint_state(state, script_path)
    return report.after, report


@contextmanager
def linted(state: HostState, script_path: str, *, source: str = "") -> Iterator[LintReport]:
    """The report, while its namespace (report.namespace, in the state after the script) still exists."""
    started = time.monotonic()
    text = read_script(script_path)
    steps = parse(text)
    problem = syntax_error(text)
    report = LintReport(script=script_path, source=source, before=state)
    with Replay(state) as replay:
        report.namespace, report.replay_seconds, report.notes = replay.name, replay.seconds, replay.notes
        ctx = Context(state, steps, ask=lambda argv: replay.run(argv).stdout)
        previous: tuple[int, str] | None = None
        for step in steps:
            if problem and step.end >= problem.lineno:
                break
            blocked = step.after_and and previous == (step.lineno, FAILED)
            result = _skipped(step, "not run: the command before `&&` failed") if blocked \
                else _run_step(replay, step, ctx)
            report.lines.append(result)
            previous = (step.lineno, result.status)
            destroys = destruction(step, state) if result.status == OK else None
            if destroys:
                lines = result.command.splitlines()
                shown = f"{lines[0]} … {lines[-1]}" if len(lines) > 1 else result.command
                report.warnings.append(Destruction(step.lineno, step.text, shown, destroys))
        if problem:
            report.lines.append(LineResult(problem.lineno, problem.text, problem.text, FAILED, problem.message,
                                           problem.why, problem.fix))
            report.lines += [_skipped(step, f"not run: bash refuses the script at its syntax error on line "
                                            f"{problem.lineno}") for step in steps if step.end > problem.lineno]
        report.after = _as_source(replay.collect(), state, replay)
        report.flows = _flow_changes(state, report.after, report.notes)
        report.new_findings = _new_findings(state, report.after)
        report.seconds = time.monotonic() - started
        yield report


def _skipped(step: Step, reason: str) -> LineResult:
    return LineResult(step.lineno, step.text, _command_text(step), NOT_CHECKED, reason,
                      last_line=step.last_line and step.end)


def _command_text(step: Step) -> str:
    import shlex

    return shlex.join(step.argv) if step.argv else step.text


def _run_step(replay, step: Step, ctx: Context) -> LineResult:
    if step.skip:
        return _skipped(step, step.skip)
    if step.block:
        return _run_block(replay, step, ctx)
    if step.write:
        path, mode, content = step.write
        target = PurePosixPath(path)
        if target.is_relative_to(IPROUTE2_DIR):
            own = replay.etc / target.relative_to(IPROUTE2_DIR)
            try:
                own.parent.mkdir(parents=True, exist_ok=True)
                with open(own, mode) as fh:
                    fh.write(content)
            except OSError as exc:
                return _failure(step, f"sh: cannot create {path}: {exc.strerror}", ctx)
            return LineResult(step.lineno, step.text, step.text, OK)
        result = replay.run(["tee", path], input=content)  # /proc/sys/net: the namespace's own
    else:
        result = replay.run(list(step.argv), input=step.stdin)
    if result.returncode == 0:
        return LineResult(step.lineno, step.text, _command_text(step), OK, output=result.stdout[:4000])
    message = "\n".join(line for line in result.stderr.strip().splitlines()
                        if line.strip() and not line.startswith(_NOISE))
    if "FIB table does not exist" in message and _reads_only(step):
        # The kernel has no empty tables: showing one that has no routes yet is not a mistake.
        return LineResult(step.lineno, step.text, _command_text(step), OK, message,
                          "the table has no routes (yet): the kernel reports an empty table as missing")
    return _failure(step, message or f"exit status {result.returncode}", ctx)


_TRACE = "+wrlint "


def _run_block(replay, step: Step, ctx: Context) -> LineResult:
    """The block as one step, through bash in the namespace; a command that prints an error fails it,
    explained as that command (bash -x says which one it was)."""
    result = replay.run(["bash", "-c", f"PS4='{_TRACE}'\nset -x\n{step.block}"], timeout=30)
    current: str | None = None
    failing: str | None = None
    errors: list[str] = []
    for line in result.stderr.splitlines():
        traced = re.match(r"\+*" + re.escape(_TRACE) + "(.*)", line)
        if traced:
            current = traced.group(1)
        elif line.strip() and not line.startswith(_NOISE):
            errors.append(line)
            failing = failing or current
    command = failing or step.text.splitlines()[0]
    if result.returncode == 0 and not errors:
        return LineResult(step.lineno, step.text, step.text, OK, output=result.stdout[:4000], last_line=step.end)
    message = "\n".join(errors) or f"exit status {result.returncode}"
    why = fix = None
    if failing:
        try:
            argv = tuple(shlex.split(failing))
        except ValueError:
            argv = ()
        if argv:
            why, fix = explain(Step(step.lineno, failing, argv), message, ctx)
    where = f"in the block, `{command}` failed" if failing else None
    return LineResult(step.lineno, step.text, failing or step.text, FAILED, message,
                      f"{where}: {why}" if where and why else where or why, fix, last_line=step.end)


def _reads_only(step: Step) -> bool:
    words = [w for w in step.argv[1:] if not w.startswith("-")]
    return step.tool == "ip" and len(words) > 1 and any(w.startswith(("sh", "l", "g")) for w in words[1:2])


def _failure(step: Step, message: str, ctx: Context) -> LineResult:
    why, fix = explain(step, message, ctx)
    return LineResult(step.lineno, step.text, _command_text(step), FAILED, message, why, fix)


def _as_source(after: HostState, before: HostState, replay) -> HostState:
    """The replayed namespace's state, put back in the source host's terms."""
    etc = str(replay.etc)
    entries = tuple(dataclasses.replace(e, path=e.path.replace(etc, str(IPROUTE2_DIR)))
                    for e in after.rt_tables_entries)
    links = {link.name for link in after.links}
    # Conntrack entries and neighbours are not replayed: the host's own still apply after the script.
    return after.replace(conntrack=before.conntrack,
                         neighbours=tuple(n for n in before.neighbours if n.ifname in links),
                         rt_tables_entries=entries)


def _flow_changes(before: HostState, after: HostState, notes: list[str]) -> list[FlowChange]:
    """Every key flow of the state before and after the script, explained in both."""
    changes = []
    for src, dst in flows_mod.key_flows(before, after):
        try:
            was = flows_mod.explained(before, src, dst)
        except WhyRouteError as exc:  # e.g. a source the script adds: the others still count
            notes.append(f"flow {src} → {dst} not explained before the script: {exc}")
            continue
        try:
            now, reason = flows_mod.explained_after(after, was)
        except WhyRouteError as exc:
            now, reason = None, str(exc)
        changes.append(FlowChange(src, dst, was, now, reason))
    return changes


def _new_findings(before: HostState, after: HostState) -> list:
    """The after-state's findings that were not there before, compared by rule ID and the objects they
    name (a rule by what it selects and does, not its priority), so that a renumbering is no news."""
    old = {finding_key(f, before) for f in engine.run(before)}
    return [f for f in engine.run(after) if finding_key(f, after) not in old]


_PRIORITY_OBJECTS = ("rule", "shadowed_by", "decided_by")


def finding_key(finding, state: HostState) -> tuple:
    """What makes a finding the same finding in another state: its rule ID and its objects, normalised
    (an ip rule priority becomes the rules with that priority, priority left out). Without objects,
    its message with every rule priority blanked."""
    if not finding.objects:
        return finding.id, re.sub(r"\b(rule|priority|pref) \d+", r"\1 #", finding.message)
    items = []
    for key, value in finding.objects.items():
        if key in _PRIORITY_OBJECTS and isinstance(value, int) and not isinstance(value, bool):
            value = tuple(sorted((_rule_identity(r) for r in state.rules if r.priority == value), key=repr)) or value
        items.append((key, _hashable(value)))
    return finding.id, tuple(sorted(items, key=repr))


def _rule_identity(rule: Rule) -> Rule:
    return dataclasses.replace(rule, priority=0)


def _hashable(value):
    if isinstance(value, dict):
        return tuple(sorted(((k, _hashable(v)) for k, v in value.items()), key=repr))
    if isinstance(value, list | tuple | set | frozenset):
        return tuple(_hashable(v) for v in value)
    return value
