"""What the commands do, without click: load state, explain, cross-check.

The CLI parses options into the frozen objects below and calls these functions.
"""

from __future__ import annotations

import dataclasses
import shlex
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from tracer.errors import UsageError, WhyRouteError
from tracer.flow import Flow
from tracer.model import HostState
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
    if not explanation.alternatives:
        return explanation
    for outcome in explanation.outcomes:
        decisions = outcome.decisions
        if len(decisions) == len(asked) and all(
                (d.dev, d.gateway) == (a.dev, a.gateway) for d, a in zip(decisions, asked, strict=True)):
            picked = explanation.as_main(outcome)
            return dataclasses.replace(picked, notes=(*picked.notes, "of the multipath nexthops, the kernel's "
                                                      "answer for this exact flow names this one"))
    return explanation


@dataclass(frozen=True)
class BatchResult:
    """One query line of a batch: its explanation, or why it could not be explained."""

    line: int
    query: str
    explanation: Explanation | None = None
    error: WhyRouteError | None = None


def batch_lines(lines: Iterable[str]) -> Iterator[tuple[int, list[str]]]:
    """(line number, argv) for each query line; blank lines and # comments skipped."""
    for number, line in enumerate(lines, 1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        try:
            yield number, shlex.split(stripped, comments=True)
        except ValueError as exc:
            yield number, ["--malformed--", str(exc)]


def run_batch(state: HostState, source: StateSource, lines: Iterable[str],
              parse: Callable[[list[str]], Flow]) -> Iterator[BatchResult]:
    """One result per query; `parse(argv)` turns a line into a Flow or raises."""
    for number, argv in batch_lines(lines):
        query = " ".join(argv)
        try:
            if argv and argv[0] == "--malformed--":
                raise UsageError(f"cannot split the line: {argv[1]}")
            yield BatchResult(number, query, explain_flow(state, parse(argv), source))
        except WhyRouteError as exc:
            yield BatchResult(number, query, error=exc)
