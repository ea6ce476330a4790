"""Options every command spells the same way: where the state comes from, and --json."""

from __future__ import annotations

import click

from tracer.cli import complete


def _remember_json(ctx, _param, wanted):
    # Read by tracer.__main__: under --json an error is a JSON document too.
    if wanted:
        ctx.ensure_object(dict)["json"] = True
    return wanted


def json_option(help_text: str):
    return click.option("--json", "as_json", is_flag=True, callback=_remember_json, help=help_text)


def source_options(command):
    """`--snapshot FILE` (offline) and `--netns NAME` (live), the same on every command."""
    command = click.option("--netns", metavar="NAME", shell_complete=complete.namespaces,
                           help="Use the live state of this network namespace (default: this host's).")(command)
    return click.option("--snapshot", metavar="FILE", type=click.Path(),
                        help="Use the state in this snapshot file, offline (`why-route snapshot`).")(command)


def netns_option(help_text: str):
    return click.option("--netns", metavar="NAME", shell_complete=complete.namespaces, help=help_text)
