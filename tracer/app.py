"""What the commands do, without click: load state, explain, cross-check, render.

The CLI parses options into the frozen objects below and calls these functions.
"""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass
from typing import Iterable, Iterator

from tracer.errors import UsageError, WhyRouteError
from tracer.model import HostState


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


def explain_flow(state: HostState, flow, source: StateSource) -> dict:
    """The JSON-contract dict for one flow; live sources are cross-checked with the kernel."""
    from tracer.sim.explain import explain

    if source.live and state.meta.get("partial_tables"):
        from tracer.collect.kernel_assist import augment
        state = augment(state, flow, source.netns)
    explanation = explain(state, flow)
    if source.live:
        from tracer.kernel_check import cross_check
        explanation = cross_check(explanation, source.netns)
    explanation = explanation.with_findings(_flow_findings(explanation))
    return explanation.to_dict()


def _flow_findings(explanation) -> list:
    from tracer.checks.engine import flow_findings

    return flow_findings(explanation)


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


def run_batch(state: HostState, source: StateSource, lines: Iterable[str], parse) -> Iterator[str]:
    """One JSON line per query; `parse(argv)` turns a line into a Flow or raises."""
    from tracer.output.json_out import render

    for number, argv in batch_lines(lines):
        try:
            if argv and argv[0] == "--malformed--":
                raise UsageError(f"cannot split the line: {argv[1]}")
            doc = explain_flow(state, parse(argv), source)
            yield render(doc, pretty=False)
        except WhyRouteError as exc:
            yield json.dumps({"line": number, "query": " ".join(argv), "error": str(exc)})
