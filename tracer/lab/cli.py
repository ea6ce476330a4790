"""`why-route lab …` commands (thin: parse, call tracer.lab, print)."""

import click


@click.group()
def lab():
    """Build the seed network (or your own topology) in network namespaces."""
