"""The rules engine: a catalogue of checks (the `rules/` package) run over a HostState.

A check is a class in `rules/wrNNN_*.py` deriving from `Check`, with a stable
`id`, a `severity`, a `title` and a docstring with fixed sections (from which
docs/rules/<ID>.md is generated). `check(ctx)` yields `Finding`s for the whole
host; the optional `flow_check(ctx, flow)` yields those concerning one flow.
"""
