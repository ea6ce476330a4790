"""`why-route lint` and `why-route verify`: parse, call, render (the logic is in tracer/lint)."""

from __future__ import annotations

import dataclasses

import click

from tracer.cli.options import json_option, source_options
from tracer.errors import ExitStatus


def load_source(snapshot: str | None, netns: str | None):
    """(HostState, its StateSource) from a snapshot, a namespace or this host."""
    from tracer.app import StateSource

    source = StateSource(snapshot, netns)
    return source.load(), source


@click.command()
@click.argument("script", metavar="SCRIPT", type=click.Path())
@source_options
@json_option("Print the report as JSON (docs/json.md).")
def lint(script, snapshot, netns, as_json):
    """Check a pasted script with the real tools in a throwaway copy of the host.

    Replays the host (or --snapshot FILE, or --netns NAME) into an isolated
    network namespace, runs each line of SCRIPT there, reports the lines the
    tools reject, and shows how key flows change. The host is never touched.
    Exit 1 if any line failed.

    \b
    why-route lint fix.sh --snapshot router.json
    why-route lint fix.sh --netns wr-route --json
    """
    from tracer.lint.replay import require_root
    from tracer.lint.run import lint_state, read_script

    read_script(script)  # an unreadable script fails before anything is collected
    state, source = load_source(snapshot, netns)
    require_root()
    report = lint_state(state, script, source=source.label)
    if as_json:
        from tracer.output import json_out

        click.echo(json_out.lint(report, source=json_out.source_doc(source.kind, source.name)))
    else:
        from tracer.output.lint import text
        from tracer.output.style import use_colour
        click.echo(text(report, colour=use_colour()), nl=False)
    return ExitStatus.PROBLEMS_FOUND if report.failed else ExitStatus.SUCCESS


@click.command()
@click.argument("expectations", metavar="EXPECTATIONS.toml", type=click.Path())
@source_options
@click.option("--with", "with_script", metavar="SCRIPT", type=click.Path(),
              help="Verify the state as it would be after SCRIPT.")
@json_option("Print the outcomes as JSON (docs/json.md).")
@click.option("--probe", is_flag=True, help="Also probe each flow expectation with a real packet in one "
              "throwaway replica; a probe that disagrees fails it (docs/probe.md).")
def verify(expectations, snapshot, netns, with_script, as_json, probe):
    """Check a router's config against expectations (docs/verify.md); exit 1 on a mismatch.

    \b
    why-route verify router.toml --snapshot router.json
    why-route verify router.toml --netns wr-route --with fix.sh
    """
    from tracer.lint import verify as verify_mod
    from tracer.output.style import Style, use_colour

    wanted = verify_mod.load_expectations(expectations)  # a broken file fails before any collection
    state, source = load_source(snapshot, netns)
    label = source.label
    if with_script:
        label = f"{label} after {with_script}"
        state = _replayed(state, with_script)[0]
    verify_mod.check_interfaces(state, wanted, expectations, label)  # an unknown device is a broken file
    outcomes = verify_mod.verify(state, wanted)
    probes = None
    if probe:
        from tracer.lint.probe import probe_outcomes
        outcomes, probes = (list(x) for x in zip(*probe_outcomes(state, outcomes), strict=True))
    failed = [o for o in outcomes if not o.ok]
    if as_json:
        from tracer.output import json_out

        click.echo(json_out.verify(outcomes, expectations=expectations,
                                   source=json_out.source_doc(source.kind, source.name, with_script), probes=probes))
    else:
        from tracer.output import text

        colour = use_colour()
        style = Style(colour)
        click.echo(style(f"why-route verify {expectations}: on {label}", "bold"))
        for o in outcomes:
            mark = style("ok  ", "green") if o.ok else style("FAIL", "bold", "red")
            click.echo(f"  {mark}  {o.expectation.title}")
            for mismatch in o.mismatches:
                click.echo(f"        {mismatch}")
            probed = probes[outcomes.index(o)] if probes else None
            if probed is not None and probed.agrees:
                click.echo(f"        probe: agrees — {probed.observed.text}")
        for o in failed:
            if o.explanation is not None:
                click.echo("\n" + style(f"Why {o.expectation.title} fails:", "bold"))
                click.echo(text.render(o.explanation, colour=colour,
                                       probe=probes[outcomes.index(o)] if probes else None), nl=False)
        click.echo(f"{len(outcomes) - len(failed)} of {len(outcomes)} expectations hold")
    return ExitStatus.PROBLEMS_FOUND if failed else ExitStatus.SUCCESS


def _replayed(state, script: str):
    """(the state after SCRIPT, its lint report); an unreadable script or a missing tool fails first."""
    from tracer.lint.replay import require_root
    from tracer.lint.run import read_script, state_after

    read_script(script)
    require_root()
    return state_after(state, script)


def what_if(state, flow, script: str):
    """`why-route SRC DST --with SCRIPT`: the explanation in the state after SCRIPT, computed offline
    from the replay's result; the script's failed lines are reported on stderr."""
    from tracer.app import StateSource, explain_flow

    after, report = _replayed(state, script)
    # An offline source: the after-state exists only as data once the replay namespace is gone.
    explanation = explain_flow(after, flow, StateSource(snapshot=script))
    for line in report.failed:
        click.echo(f"why-route: {script} line {line.lineno} failed, so it is not part of this what-if: "
                   f"{line.message.splitlines()[0]}", err=True)
    note = f"what-if: the state after {script} (replayed in a throwaway namespace)"
    return dataclasses.replace(explanation, notes=(note, *explanation.notes))
