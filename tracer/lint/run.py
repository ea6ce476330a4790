"""Lint a script: replay the state, run each step with the real tool, read the result back.

    lint_state(state, script_path, source="snapshot route.json") -> LintReport
    state_after(state, "fix.sh") -> (HostState, LintReport)

The report holds every line's outcome (the tool's own message, a plain
explanation, a corrected line), the state after the script, how the key flows'
decisions changed, and the rules engine's findings that the script introduced.
"""

from __future__ import annotations

import dataclasses
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
from tracer.lint.script import IPROUTE2_DIR, Step, parse
from tracer.model import HostState
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


@dataclass(frozen=True)
class FlowChange:
    src: str
    dst: str
    before: Explanation
    after: Explanation

    @property
    def changed(self) -> bool:
        return flows_mod.facts(self.before) != flows_mod.facts(self.after)


@dataclass
class LintReport:
    script: str
    source: str
    before: HostState
    after: HostState | None = None
    lines: list[LineResult] = field(default_factory=list)
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
    steps = parse(read_script(script_path))
    report = LintReport(script=script_path, source=source, before=state)
    with Replay(state) as replay:
        report.namespace, report.replay_seconds, report.notes = replay.name, replay.seconds, replay.notes
        ctx = Context(state, steps, ask=lambda argv: replay.run(argv).stdout)
        previous: tuple[int, str] | None = None
        for step in steps:
            blocked = step.after_and and previous == (step.lineno, FAILED)
            result = _skipped(step, "not run: the command before `&&` failed") if blocked \
                else _run_step(replay, step, ctx)
            report.lines.append(result)
            previous = (step.lineno, result.status)
        report.after = _as_source(replay.collect(), state, replay)
        report.flows = _flow_changes(state, report.after, report.notes)
        report.new_findings = _new_findings(state, report.after)
        report.seconds = time.monotonic() - started
        yield report


def _skipped(step: Step, reason: str) -> LineResult:
    return LineResult(step.lineno, step.text, _command_text(step), NOT_CHECKED, reason)


def _command_text(step: Step) -> str:
    import shlex

    return shlex.join(step.argv) if step.argv else step.text


def _run_step(replay, step: Step, ctx: Context) -> LineResult:
    if step.skip:
        return _skipped(step, step.skip)
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
    changes = []
    for src, dst in flows_mod.key_flows(before, after):
        try:
            changes.append(FlowChange(src, dst, flows_mod.explained(before, src, dst),
                                      flows_mod.explained(after, src, dst)))
        except WhyRouteError as exc:  # e.g. no route back to the source after the script: the others still count
            notes.append(f"flow {src} → {dst} not explained: {exc}")
    return changes


def _new_findings(before: HostState, after: HostState) -> list:
    old = set(engine.run(before))
    return [f for f in engine.run(after) if f not in old]
