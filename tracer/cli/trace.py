"""`why-route trace`: parse, call tracer.trace, print. No logic lives here."""

from __future__ import annotations

import sys

import click

from tracer.errors import ExitStatus, Terminated, UsageError


@click.command()
@click.argument("addresses", nargs=-1, metavar="[SRC] [DST]")
@click.option("--proto", help="tcp, udp, icmp or a protocol number.")
@click.option("--sport", help="Source port (original direction).")
@click.option("--dport", help="Destination port (original direction).")
@click.option("--iif", help="Only flows arriving on this interface.")
@click.option("--netns", metavar="NAME", help="Trace this network namespace (default: the host's).")
@click.option("--duration", type=click.FloatRange(min=0, min_open=True), metavar="S", help="Stop after S seconds.")
@click.option("--count", type=click.IntRange(min=1), metavar="N", help="Stop after N flows.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per flow, then a summary object.")
@click.option("-o", "run_dir", metavar="RUN_DIR", help="Also write events, the start snapshot and the summary here.")
@click.option("--replay", metavar="RUN_DIR", help="Print the flows of a run directory (no kernel involved).")
@click.option("--check", "check_only", is_flag=True, help="Say which probes this kernel offers and which are used.")
@click.option("--without", multiple=True, metavar="PROBE",
              help="Do not use this probe (netfilter, fib, fib6, drop, fib_rule, conntrack; tp_btf: attach the "
                   "tracepoint probes as raw tracepoints; fentry: the rule probe as a kprobe); also "
                   "WHYROUTE_TRACE_DISABLE.")
@click.option("--rules", is_flag=True,
              help="Name the nft rules each hook ran (nftables tracing; adds a table of why-route's own while "
                   "tracing, removed when it ends).")
@click.option("--reply-wait", type=click.FloatRange(min=0), default=1.0, show_default=True, metavar="S",
              help="How long a flow waits for its reply before it is printed.")
@click.option("--backlog", type=click.IntRange(min=1), metavar="N",
              help="Flow records (and 2 KB of socket messages each) held while printing falls behind "
                   "(default: what a quarter of the available memory holds); beyond, they are dropped "
                   "and counted as lost.")
@click.option("--compare-lag", type=click.FloatRange(min=0), default=2.0, show_default=True,
              metavar="S", help="Compare a flow with the simulation only if it is described within S seconds of "
                                "when it could have been (raise it on a slow machine; inf: always compare).")
def trace(addresses, proto, sport, dport, iif, netns, duration, count, as_json, run_dir, replay, check_only,
          without, reply_wait, rules, backlog, compare_lag):
    """Watch new flows take their decisions in the kernel, next to the simulation.

    \b
    why-route trace --netns wr-route 192.168.1.169 8.8.8.8 --count 1
    why-route trace --netns wr-route --json -o run1      every new flow, until Ctrl-C
    why-route trace --check
    """
    from tracer.flow import make_flow
    from tracer.trace import report, session

    if len(addresses) > 2:
        raise UsageError("at most two addresses: [SRC] [DST]")
    from tracer.output import json_out

    if check_only:
        collectors, others = session.check(session.TraceOptions(without=tuple(without)))
        doc = report.check_doc(collectors, others)
        click.echo(json_out.dumps(doc, pretty=False) if as_json else report.check_text(doc))
        return ExitStatus.SUCCESS
    if replay:
        for doc in session.replay(replay):
            _print(doc, as_json)
        return ExitStatus.SUCCESS
    src = addresses[0] if len(addresses) == 2 else None
    dst = addresses[-1] if addresses else None
    flow = make_flow(dst or "0.0.0.0", src, proto=proto, sport=sport, dport=dport)
    options = session.TraceOptions(src=src and flow.src, dst=dst and flow.dst, proto=flow.proto,
                                   sport=flow.sport, dport=flow.dport, iif=iif, netns=netns, duration=duration,
                                   count=count, run_dir=run_dir, without=tuple(without), reply_wait=reply_wait,
                                   rules=rules, backlog=backlog, compare_lag=compare_lag)
    run = session.Session(options)

    def started(_collectors, summary):
        print(report.start_line(netns, session.describe_filter(options), summary), file=sys.stderr, flush=True)

    run.run(emit=lambda doc: _print(doc, as_json), on_start=started, flush=sys.stdout.flush)
    if isinstance(run.interrupted, Terminated):
        return run.interrupted.exit_status
    if run.interrupted is not None:
        return ExitStatus.INTERRUPTED
    return ExitStatus.SUCCESS


def _print(doc: dict, as_json: bool) -> None:
    from tracer.output import json_out
    from tracer.trace import flows, report

    # Written, not click.echo'd: echo flushes each line, a system call a flow (the session flushes a batch)
    if as_json:
        sys.stdout.write(json_out.dumps(doc, pretty=False) + "\n")
    elif doc.get("type") == "summary":
        click.echo(report.summary_text(doc), err=True)
    else:
        sys.stdout.write(flows.text_line(doc) + "\n")
