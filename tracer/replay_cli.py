"""`why-route lint` and `why-route verify`: parse, call, render (the logic is in tracer/lint and tracer/replay.py)."""

from __future__ import annotations

import json

import click

from tracer.errors import ExitStatus


def load_source(snapshot: str | None, netns: str | None):
    """(HostState, a label for it) from a snapshot, a namespace or this host."""
    from tracer.app import StateSource

    state = StateSource(snapshot, netns).load()
    return state, f"snapshot {snapshot}" if snapshot else f"netns {netns}" if netns else "this host"


@click.command()
@click.argument("script", metavar="SCRIPT")
@click.option("--on", "snapshot", metavar="SNAPSHOT", help="Start from this snapshot instead of the live host.")
@click.option("--netns", metavar="NAME", help="Start from this network namespace (live).")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def lint(script, snapshot, netns, as_json):
    """Check a pasted script with the real tools in a throwaway copy of the host.

    Replays the host (or --on SNAPSHOT, or --netns NAME) into an isolated
    network namespace, runs each line of SCRIPT there, reports the lines the
    tools reject, and shows how key flows change. The host is never touched.
    Exit 1 if any line failed.

    \b
    why-route lint fix.sh --on router.json
    why-route lint fix.sh --netns wr-route --json
    """
    from tracer.lint.run import lint_state, read_script
    from tracer.replay import require_root

    read_script(script)  # an unreadable script fails before anything is collected
    state, label = load_source(snapshot, netns)
    require_root()
    report = lint_state(state, script, source=label)
    if as_json:
        click.echo(json.dumps(report.to_dict(), indent=2))
    else:
        from tracer.lint.render import text
        from tracer.output.style import use_colour
        click.echo(text(report, colour=use_colour()), nl=False)
    return ExitStatus.PROBLEMS_FOUND if report.failed else ExitStatus.SUCCESS
