"""What the commands do, without click: load state, explain, cross-check.

The CLI parses options into the frozen objects below and calls these functions.
"""

from __future__ import annotations

import dataclasses
import os
import re
import shlex
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from tracer.errors import UsageError, WhyRouteError
from tracer.flow import Flow
from tracer.model import HostState
from tracer.netns import die_with_parent
from tracer.sim.explanation import Explanation


@dataclass(frozen=True)
class StateSource:
    """Where the host state comes from: a snapshot file, or the live kernel (a namespace)."""

    snapshot: str | None = None
    netns: str | None = None

    def __post_init__(self):
        if self.snapshot and self.netns:
            raise UsageError("use either --snapshot or --netns, not both")

    @property
    def live(self) -> bool:
        return self.snapshot is None

    # How every command names the state it read, in text and in JSON (docs/json.md, `source`).
    @property
    def kind(self) -> str:
        """`snapshot`, `netns` or `host`."""
        return "snapshot" if self.snapshot else "netns" if self.netns else "host"

    @property
    def name(self) -> str:
        """The snapshot's path, the namespace's name, or this host's hostname."""
        if self.snapshot or self.netns:
            return self.snapshot or self.netns
        import socket
        return socket.gethostname()

    @property
    def label(self) -> str:
        """`snapshot FILE`, `netns NAME` or `this host`: the text output's name for the source."""
        return f"{self.kind} {self.name}" if self.kind != "host" else "this host"

    def load(self, *, for_flows: bool = False) -> HostState:
        """The whole state; `for_flows` (live only) leaves out IPv4 tables larger
        than LARGE_TABLE, whose routes explain_flow then asks the kernel for."""
        if self.snapshot:
            from tracer.collect import snapshot
            return snapshot.load(self.snapshot)
        from tracer.collect.live import collect_state
        return collect_state(self.netns, large_table=LARGE_TABLE if for_flows else None)


# Dumping a full internet table (~1M routes) takes seconds; one flow needs a few routes.
LARGE_TABLE = 100_000


def explain_flow(state: HostState, flow: Flow, source: StateSource) -> Explanation:
    """One flow explained, with its findings; live sources are cross-checked with the kernel."""
    from tracer.checks.engine import flow_findings
    from tracer.sim.explain import explain

    if source.live and state.partial_tables:
        from tracer.collect.kernel import augment
        from tracer.sim.explain import infer_iif

        state = augment(state, flow, source.netns, lambda st, fl: infer_iif(st, fl).iif)
    explanation = explain(state, flow)
    if source.live and explanation.decisions:
        from tracer.collect.kernel import answers
        from tracer.sim.confirm import kernel_check

        asked = answers([d.query for d in explanation.decisions], source.netns, state.links)
        explanation = _kernels_pick(explanation, asked)
        explanation = explanation.with_kernel(kernel_check(explanation, asked))
    return explanation.with_findings(flow_findings(explanation))


def _kernels_pick(explanation: Explanation, asked) -> Explanation:
    """Of a forked path's outcomes, the one the kernel's answers name (its multipath hash of
    this exact flow), explained first; unchanged when the path does not fork or none matches."""
    if not any(c.kind == "multipath" for o in explanation.outcomes for c in o.choices):
        return explanation

    def named(outcome: Explanation) -> bool:
        decisions = outcome.decisions
        return len(decisions) == len(asked) and all(
            (d.dev, d.gateway) == (a.dev, a.gateway) for d, a in zip(decisions, asked, strict=True))
    matching = [o for o in explanation.outcomes if named(o)]
    if len({tuple(c.index for c in o.choices if c.kind == "multipath") for o in matching}) != 1:
        return explanation  # the kernel's answer fits several nexthop choices, or none
    picked = explanation.as_main(matching[0])
    return dataclasses.replace(picked, notes=(*picked.notes, "of the multipath nexthops, the kernel's answer "
                                              "for this exact flow names this one"))


@dataclass(frozen=True)
class BatchResult:
    """One query line of a batch: its explanation, or why it could not be explained."""

    line: int
    query: str
    explanation: Explanation | None = None
    error: WhyRouteError | None = None


def batch_lines(lines: Iterable[str | bytes], first_line: int = 1) -> Iterator[tuple[int, list[str]]]:
    """(line number, argv) for each query line; blank lines and # comments skipped. Lines may be
    bytes (a batch file or stdin read as binary): one that is not UTF-8 becomes an error for that
    line alone."""
    for number, line in enumerate(lines, first_line):
        if isinstance(line, bytes):
            try:
                line = line.decode("utf-8")
            except UnicodeDecodeError as exc:
                yield number, [_MALFORMED, f"not UTF-8 text (byte {exc.start + 1} of the line: "
                                            f"{line[exc.start:exc.start + 1]!r})",
                               line.decode("utf-8", "replace").strip()]
                continue
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if not _NEEDS_SHLEX.search(stripped):
            yield number, stripped.split()  # the common line: what shlex would give, 10× faster
            continue
        try:
            yield number, shlex.split(stripped, comments=True)
        except ValueError as exc:
            yield number, [_MALFORMED, f"cannot split the line: {exc}", stripped]


# What makes shlex's answer differ from str.split: quotes, escapes, comments, and whitespace
# other than blanks and tabs (str.split would split there, shlex not).
_NEEDS_SHLEX = re.compile(r"""['"\\#]|[^\S \t]""")

# Marks a line that could not be read or split: [_MALFORMED, why, the line as far as it reads].
_MALFORMED = "\0malformed"


def run_batch(state: HostState, source: StateSource, lines: Iterable[str | bytes],
              parse: Callable[[list[str]], Flow], *, first_line: int = 1) -> Iterator[BatchResult]:
    """One result per query; `parse(argv)` turns a line into a Flow or raises. `first_line`:
    the number of the first of `lines` in the whole input."""
    for number, argv in batch_lines(lines, first_line):
        if argv and argv[0] == _MALFORMED:
            yield BatchResult(number, argv[2], error=UsageError(argv[1]))
            continue
        query = " ".join(argv)
        try:
            yield BatchResult(number, query, explain_flow(state, parse(argv), source))
        except WhyRouteError as exc:
            yield BatchResult(number, query, error=exc)


# Below this many lines a batch runs in this process (forking costs more than it saves).
PARALLEL_MIN_LINES = 256
# The lines explained here before the fork: their first query builds the state's indexes
# (FIB, rules, compiled ruleset: seconds for a full table), which every worker then inherits.
_WARM_UP_LINES = 64
_CHUNK_LINES = 256


def rendered_batch(state: HostState, source: StateSource, lines: Iterable[str | bytes],
                   parse: Callable[[list[str]], Flow], render: Callable[[BatchResult], str], *,
                   workers: int = 1) -> Iterator[str]:
    """Each query line's output, `render(result)`, in input order. With `workers` > 1 and
    enough lines (a file, read whole), the lines after the first few are shared out, in chunks,
    among that many forked processes: the explanations are independent, the state is read-only."""
    if workers > 1:
        lines = list(lines)
    if workers <= 1 or len(lines) < PARALLEL_MIN_LINES:
        for result in run_batch(state, source, lines, parse):
            yield render(result)
        return
    for result in run_batch(state, source, lines[:_WARM_UP_LINES], parse):
        yield render(result)
    rest = lines[_WARM_UP_LINES:]
    chunks = [(_WARM_UP_LINES + 1 + start, rest[start:start + _CHUNK_LINES])
              for start in range(0, len(rest), _CHUNK_LINES)]
    import multiprocessing

    global _FORKED_BATCH
    _FORKED_BATCH = (state, source, parse, render)
    try:
        # a worker dies with the batch, even by SIGKILL, and leaves Ctrl-C to it ("interrupted", once)
        pool = multiprocessing.get_context("fork").Pool(workers, initializer=die_with_parent,
                                                        initargs=(os.getpid(), True))
        with pool:
            for rendered in pool.imap(_render_chunk, chunks):
                yield from rendered
    finally:
        _FORKED_BATCH = None


# What the forked workers of rendered_batch read (inherited by fork, never pickled).
_FORKED_BATCH: tuple | None = None


def _render_chunk(chunk: tuple[int, list]) -> list[str]:
    first_line, lines = chunk
    state, source, parse, render = _FORKED_BATCH
    return [render(result) for result in run_batch(state, source, lines, parse, first_line=first_line)]
