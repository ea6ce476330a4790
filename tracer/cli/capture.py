"""`why-route capture` and `why-route postmortem`: parse, call tracer.capture, render."""

from __future__ import annotations

import sys

import click

from tracer.errors import ExitStatus, UsageError


@click.command()
@click.argument("bpf", nargs=-1, metavar="[FILTER]")
@click.option("--netns", metavar="NAME", help="Capture inside this network namespace.")
@click.option("-i", "--interfaces", metavar="IF[,IF…]", help="Interfaces (default: every routed interface).")
@click.option("--duration", type=float, metavar="S", help="Stop after S seconds.")
@click.option("--count", type=int, metavar="N", help="Stop after N packets.")
@click.option("-o", "--output", "run_dir", required=True, metavar="RUN_DIR", help="Write the run here.")
@click.option("--buffer", "buffer_mib", type=int, default=64, show_default=True, metavar="MIB",
              help="Kernel capture buffer per interface, MiB.")
def capture(bpf, netns, interfaces, duration, count, run_dir, buffer_mib):
    """Capture on several interfaces at once (before and after NAT), with conntrack events and a snapshot.

    \b
    why-route capture --netns wr-route --duration 10 -o run1
    why-route capture --netns wr-route -i br-lan,ppp0 tcp port 80 -o run2
    why-route postmortem run1
    """
    from tracer.capture import live

    if duration is not None and count is not None:
        raise UsageError("use either --duration or --count, not both")
    wanted = [i for i in (interfaces or "").split(",") if i] or None
    tty = sys.stderr.isatty()

    def progress(p):
        if tty:
            click.echo("\r" + p.line() + "   ", nl=False, err=True)

    meta = live.capture(run_dir, netns=netns, interfaces=wanted, bpf=" ".join(bpf) or None, duration=duration,
                        count=count, progress=progress, buffer_mib=buffer_mib)
    if tty:
        click.echo("", err=True)
    click.echo(live.summary(meta, run_dir), err=True)
    return ExitStatus.SUCCESS


@click.command()
@click.argument("source", metavar="RUN_DIR|FILE.pcap[ng]")
@click.option("--snapshot", metavar="FILE", help="The router's configuration (default: RUN_DIR/snapshot.json).")
@click.option("--flow", metavar='"SRC DST [SPORT [DPORT]]"', help="Only this connection (* for any part).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON (docs/postmortem.md).")
@click.option("--report", metavar="FILE.html", help="Also write a self-contained HTML report.")
@click.option("--annotate", metavar="OUT.pcapng", help="Also write the packets with comments on suspects.")
def postmortem(source, snapshot, flow, as_json, report, annotate):
    """Diagnose the TCP connections of a capture, worst first, tied to the configuration.

    \b
    why-route postmortem run1
    why-route postmortem router.pcap --snapshot router.json --flow "192.168.1.169 8.8.8.8"
    """
    from tracer.capture import postmortem as pm

    result = pm.run(source, snapshot=snapshot, flow=flow)
    if annotate:
        from tracer.capture import annotate as annotations

        annotations.write(result, annotate)
    if report:
        from tracer.capture import report as html

        html.write(result, report)
    if as_json:
        from tracer.output import json_out

        # one line, as trace's: indenting a capture's thousands of connections costs more than reading it
        click.echo(json_out.dumps(pm.to_dict(result), pretty=False))
    else:
        from tracer.capture import render
        from tracer.output.style import use_colour

        click.echo(render.text(result, colour=use_colour()), nl=False)
    bad = any(c.verdict != "ok" for c in result.connections)
    return ExitStatus.PROBLEMS_FOUND if bad else ExitStatus.SUCCESS
