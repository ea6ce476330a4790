"""`why-route check` and `why-route rules`: parse, call the engine, render."""

from __future__ import annotations

import click

from tracer.errors import ExitStatus


@click.command()
@click.option("--snapshot", metavar="FILE", help="Check a snapshot file instead of the live host.")
@click.option("--netns", metavar="NAME", help="Check this network namespace (live).")
@click.option("--select", "select_", multiple=True, metavar="IDS", help="Run only these rules (comma-separated IDs).")
@click.option("--ignore", multiple=True, metavar="IDS", help="Skip these rules (comma-separated IDs).")
@click.option("--json", "as_json", is_flag=True, help="Print the findings as JSON.")
def check(snapshot, netns, select_, ignore, as_json):
    """Run every rule over the host; exit 1 if any error-level finding.

    \b
    why-route check --netns wr-route
    why-route check --snapshot router.json --select WR001,WR019 --json
    """
    from tracer.app import StateSource
    from tracer.checks import engine
    from tracer.output import check as render
    from tracer.output.style import use_colour

    checks = engine.select(select_, ignore)  # unknown IDs fail before any collection
    source = StateSource(snapshot, netns)
    state = source.load()
    findings = engine.run(state, checks)
    where = snapshot or (f"netns {netns}" if netns else "this host")
    if as_json:
        from tracer.output import json_out

        click.echo(json_out.check(findings, source=where, rules_run=[c.id for c in checks]))
    else:
        click.echo(render.text(findings, colour=use_colour(), source=where, rules_run=len(checks)))
    return ExitStatus.PROBLEMS_FOUND if engine.has_errors(findings) else ExitStatus.SUCCESS


@click.command()
@click.argument("rule_id", required=False, metavar="[ID]")
def rules(rule_id):
    """List the rule catalogue, or print one rule's page."""
    from tracer.checks import docs, engine
    from tracer.output import check as render
    from tracer.output.style import use_colour

    if rule_id:
        click.echo(docs.page(engine.resolve(rule_id)), nl=False)
    else:
        click.echo(render.catalogue_text(engine.catalogue(), colour=use_colour()))
