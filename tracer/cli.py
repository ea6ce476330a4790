"""The command line: parse, call, render. No logic lives here.

Heavy libraries (pyroute2, bcc, scapy, pyshark) are imported inside the
commands that need them so that `why-route --help` starts instantly.
"""

import click

from tracer import __version__
from tracer.lab import cli as lab_commands


class ExplainByDefault(click.Group):
    """`why-route SRC DST` is short for `why-route explain SRC DST`."""

    def parse_args(self, ctx, args):
        if args and args[0] not in self.commands and not args[0].startswith("-"):
            args = ["explain", *args]
        return super().parse_args(ctx, args)


@click.group(cls=ExplainByDefault, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="why-route")
def cli():
    """Explain why a flow leaves a Linux router the way it does.

    \b
    why-route 192.168.1.169 8.8.8.8     explain a forwarded flow (same as `explain`)
    why-route lab up --variant ultimate build the seed network in namespaces
    """


cli.add_command(lab_commands.lab)
