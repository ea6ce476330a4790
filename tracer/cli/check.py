"""`why-route check` and `why-route rules`: parse, call the engine, render."""

from __future__ import annotations

import click

from tracer.cli import complete
from tracer.cli.options import json_option, source_options
from tracer.errors import ExitStatus


@click.command()
@source_options
@click.option("--select", "select_", multiple=True, metavar="IDS", shell_complete=complete.rule_id_list,
              help="Run only these rules (comma-separated IDs).")
@click.option("--ignore", multiple=True, metavar="IDS", shell_complete=complete.rule_id_list,
              help="Skip these rules (comma-separated IDs).")
@json_option("Print the findings as JSON (docs/json.md).")
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
    if as_json:
        from tracer.output import json_out

        click.echo(json_out.check(findings, source=json_out.source_doc(source.kind, source.name),
                                  rules_run=[c.id for c in checks]))
    else:
        click.echo(render.text(findings, colour=use_colour(), source=source.label, rules_run=len(checks)))
    return ExitStatus.PROBLEMS_FOUND if engine.has_errors(findings) else ExitStatus.SUCCESS


@click.command()
@click.argument("rule_id", required=False, metavar="[ID]", shell_complete=complete.rule_id)
def rules(rule_id):
    """List the rule catalogue, or print one rule's page."""
    from tracer.checks import docs, engine
    from tracer.output import check as render
    from tracer.output.style import use_colour

    if rule_id:
        click.echo(docs.page(engine.resolve(rule_id)), nl=False)
    else:
        click.echo(render.catalogue_text(engine.catalogue(), colour=use_colour()))
