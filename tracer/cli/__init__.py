"""The command line: parse, call, render. No logic lives here.

Heavy libraries (pyroute2, bcc, scapy, pyshark) are imported inside the
commands that need them so that `why-route --help` starts instantly.
"""

import os
import stat
import sys

import click

from tracer import __version__
from tracer.cli import capture as capture_commands
from tracer.cli import check as check_commands
from tracer.cli import complete
from tracer.cli import lab as lab_commands
from tracer.cli import lint as lint_commands
from tracer.cli import trace as trace_commands
from tracer.cli.options import json_option, source_options
from tracer.errors import ExitStatus, FlowError, UsageError, WhyRouteError


class OutputClosed(Exception):
    """The reader of our output went away (`why-route batch … | head -1`): not an error,
    tracer.__main__ exits 0 without a word."""


class ExplainByDefault(click.Group):
    """`why-route SRC DST` is short for `why-route explain SRC DST`. Global options (--traceback,
    --color, --version, --help) come first; the first word after them that is not a command
    starts an `explain`, so its options may come before the addresses too
    (`why-route --json 192.168.1.169 8.8.8.8`, `why-route --netns wr-route 8.8.8.8`)."""

    def parse_args(self, ctx, args):
        return super().parse_args(ctx, self._explain_inserted(ctx, list(args)))

    def _explain_inserted(self, ctx, args: list[str]) -> list[str]:
        takes_value = {}
        for param in self.get_params(ctx):
            if isinstance(param, click.Option):
                for name in (*param.opts, *param.secondary_opts):
                    takes_value[name] = not param.is_flag and not param.count
        index = 0
        while index < len(args):
            name, has_value, _ = args[index].partition("=")
            if name not in takes_value:
                break
            index += 2 if takes_value[name] and not has_value else 1
        if index < len(args) and args[index] not in self.commands and args[index] != "--":
            args.insert(index, "explain")
        return args

    def resolve_command(self, ctx, args):
        if args[0] not in self.commands and not args[0].startswith("-"):
            return "explain", self.commands["explain"], args
        return super().resolve_command(ctx, args)

    def get_command(self, ctx, cmd_name):
        command = super().get_command(ctx, cmd_name)
        if command is not None:
            complete.attach(command)  # every --netns, on any command, completes namespace names
        return command

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except BrokenPipeError:
            raise OutputClosed() from None


def _remember_traceback(ctx, _param, wanted):
    # Read by tracer.__main__ when an error reaches it.
    if wanted:
        ctx.ensure_object(dict)["traceback"] = True


def _set_colour(ctx, _param, mode):
    from tracer.output import style

    style.set_mode(mode)
    if style.use_colour():
        ctx.color = True  # else click.echo strips the colour codes from output that is not a terminal
    return mode


@click.group(cls=ExplainByDefault, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="why-route")
@click.option("--traceback", is_flag=True, expose_value=False, callback=_remember_traceback,
              help="On an error, show the Python traceback instead of one line (for bug reports; "
                   "also WHYROUTE_TRACEBACK=1).")
@click.option("--color", "--colour", type=click.Choice(["auto", "always", "never"]), default="auto",
              show_default=True, expose_value=False, callback=_set_colour, is_eager=True,
              help="Colour the text output: auto (on a terminal, unless NO_COLOR is set; FORCE_COLOR "
                   "forces it), always or never.")
def cli():
    """Explain why a flow leaves a Linux router the way it does.

    \b
    why-route 192.168.1.169 8.8.8.8     explain a forwarded flow (same as `explain`)
    why-route 8.8.8.8                   explain a locally generated flow
    why-route --json 10.0.0.2 8.8.8.8   options may come before the addresses
    why-route snapshot -o router.json   save the state for offline explanations
    why-route lab up --variant ultimate build the seed network in namespaces

    Shell completion (bash, zsh, fish): eval "$(_WHY_ROUTE_COMPLETE=bash_source why-route)",
    see docs/completion.md.
    """


def flow_options(command):
    """The options that describe a flow: shared by `explain` and `batch` lines."""
    options = [
        click.argument("addresses", nargs=-1, required=True, metavar="[SRC] DST"),
        click.option("--iif", help="Input interface (default: inferred from the route back to SRC)."),
        click.option("--oif", help="Force the output interface (like `ip route get … oif`)."),
        click.option("--proto", help="tcp, udp, icmp, sctp or a protocol number."),
        click.option("--sport", help="Source port."),
        click.option("--dport", help="Destination port."),
        click.option("--mark", help="Firewall mark (fwmark), e.g. 0x10."),
        click.option("--tos", "--dsfield", "tos", help="TOS / DS field byte, e.g. 0x10."),
        click.option("--uid", help="Socket owner uid (locally generated flows)."),
    ]
    for option in reversed(options):
        command = option(command)
    return command


# How the command line names each Flow field in messages (tracer.errors.FlowError).
OPTION_NAMES = {name: f"--{name}" for name in ("iif", "oif", "proto", "sport", "dport", "mark", "tos", "uid")}


def worded(error: WhyRouteError) -> str:
    """The error's line for the command line: flow fields named as its options."""
    return error.worded(OPTION_NAMES) if isinstance(error, FlowError) else str(error)


def flow_from_params(params: dict):
    from tracer.flow import make_flow

    addresses = params["addresses"]
    if len(addresses) > 2:
        raise UsageError(f"expected [SRC] DST, got {len(addresses)} addresses: {' '.join(addresses)}")
    dst = addresses[-1]
    src = addresses[0] if len(addresses) == 2 else None
    return make_flow(dst, src, **{k: params[k] for k in OPTION_NAMES})


@cli.command()
@flow_options
@source_options
@json_option("Print the JSON contract (docs/json.md).")
@click.option("--with", "with_script", metavar="SCRIPT", type=click.Path(),
              help="What-if: the flow after SCRIPT (replayed, see lint).")
@click.option("--probe", "probe", is_flag=True,
              help="Also send one real packet of the flow through a throwaway replica and compare (docs/probe.md).")
def explain(snapshot, netns, as_json, **params):
    """Explain one flow: ip rules, table, route, netfilter, NAT, egress.

    \b
    why-route 192.168.1.169 8.8.8.8 --netns wr-route
    why-route 192.168.1.169 8.8.8.8 --proto tcp --dport 443 --snapshot router.json
    why-route 8.8.8.8 --mark 0x10 --json
    """
    from tracer.app import StateSource, explain_flow

    try:
        flow = flow_from_params(params)
        source = StateSource(snapshot, netns)
        if params.get("with_script"):
            explanation = lint_commands.what_if(source.load(), flow, params["with_script"])
        else:
            explanation = explain_flow(source.load(for_flows=True), flow, source)
    except FlowError as exc:
        raise UsageError(worded(exc)) from None
    probed = None
    if params.get("probe"):
        from tracer.lint.probe import probe
        probed = probe(explanation)
    if as_json:
        from tracer.output import json_out
        click.echo(json_out.explanation(explanation, source=json_out.source_doc(
            source.kind, source.name, params.get("with_script")), probe=probed))
    else:
        from tracer.output import style, text
        click.echo(text.render(explanation, colour=style.use_colour(), probe=probed), nl=False)
    if explanation.kernel is not None and not explanation.kernel.agrees:
        return ExitStatus.KERNEL_DISAGREES
    if probed is not None and not probed.agrees:
        return ExitStatus.KERNEL_DISAGREES
    return ExitStatus.SUCCESS


@cli.command("snapshot")
@click.option("-o", "--output", default="-", metavar="FILE", type=click.Path(),
              help="Write here (default: stdout); the file is written whole or not at all.")
@click.option("--netns", metavar="NAME", shell_complete=complete.namespaces, help="Snapshot this network namespace.")
def snapshot_command(output, netns):
    """Save everything an explanation needs into one versioned JSON file.

    \b
    why-route snapshot -o router.json
    why-route snapshot --netns wr-route -o route.json
    """
    from tracer.collect import snapshot
    from tracer.collect.live import collect_state

    snapshot.writable(output)  # before collecting anything for a file that cannot be made
    snapshot.save(collect_state(netns), output)
    if output != "-":
        click.echo(f"snapshot written to {output}", err=True)


@cli.command()
@click.argument("queries", type=click.File("rb"))
@source_options
@click.option("--probe", is_flag=True, help="Probe each flow with a real packet in one throwaway replica "
              "(docs/probe.md).")
@click.pass_obj
def batch(global_options, queries, snapshot, netns, probe):
    """Explain many flows: one query per line (`SRC DST --dport 443`, or `DST`),
    `-` for stdin, `#` comments. Prints one JSON object per line.

    \b
    why-route batch --snapshot router.json flows.txt
    printf '192.168.1.169 8.8.8.8\\n' | why-route batch --netns wr-route -
    """
    from tracer.app import StateSource, rendered_batch
    from tracer.output import json_out

    if global_options is not None:
        global_options["json"] = True  # its output is JSON: so is an error that stops it
    source = StateSource(snapshot, netns)
    named = json_out.source_doc(source.kind, source.name)
    state = source.load(for_flows=True)
    import contextlib

    from tracer.lint.probe import Prober
    with Prober(state) if probe else contextlib.nullcontext() as prober:
        def render(result) -> str:
            if result.error is not None:
                return json_out.dumps({"source": named, "line": result.line, "query": result.query,
                                       "error": worded(result.error), "exit_status": int(result.error.exit_status)},
                                      pretty=False)
            probed = prober.probe(result.explanation) if probe else None
            return json_out.explanation(result.explanation, pretty=False, source=named, probe=probed)

        # A file of queries is read whole and shared out among the CPUs; a stream (stdin, a
        # pipe) is answered line by line as it comes, and --probe's replica is one.
        workers = 1 if probe or not _is_regular_file(queries) else len(os.sched_getaffinity(0))
        for line in rendered_batch(state, source, queries, _parse_query, render, workers=workers):
            click.echo(line)
            sys.stdout.flush()


def _is_regular_file(stream) -> bool:
    try:
        return stat.S_ISREG(os.fstat(stream.fileno()).st_mode)
    except (OSError, ValueError, AttributeError):
        return False


# A batch line is parsed by the same options as the command line (no --help: a line is a query).
_QUERY_LINE = click.command("query", context_settings={"help_option_names": []})(
    flow_options(lambda **params: params))


def _parse_query(argv: list[str]):
    params = _plain_query_params(argv)
    if params is not None:
        return flow_from_params(params)
    asked = next((a for a in argv if a in ("--help", "-h")), None)
    if asked:
        raise UsageError(f"{asked} is not a query option: a batch line is `[SRC] DST [--iif …] [--dport …]` "
                         "(`why-route explain --help` lists the options)")
    try:
        with _QUERY_LINE.make_context("query", list(argv)) as ctx:
            return flow_from_params(ctx.params)
    except click.ClickException as exc:
        raise UsageError(exc.format_message()) from None


# A batch line's option spellings and the parameter each sets (the same as flow_options').
_QUERY_OPTIONS = {f"--{name}": name for name in OPTION_NAMES} | {"--dsfield": "tos"}


def _plain_query_params(argv: list[str]) -> dict | None:
    """The parameters click would give for a line of plain `--option value` pairs and up to two
    addresses, parsed without click (a 10k-line batch spends a third of its time in click);
    None for anything else (`--opt=value`, `--`, a repeated or unknown option, a missing value),
    which click then parses and words."""
    params = dict.fromkeys(OPTION_NAMES)
    addresses = []
    tokens = iter(argv)
    for token in tokens:
        if not token.startswith("-"):
            addresses.append(token)
            continue
        name = _QUERY_OPTIONS.get(token)
        value = next(tokens, None)
        if name is None or params[name] is not None or value is None or value.startswith("-"):
            return None
        params[name] = value
    if not 1 <= len(addresses) <= 2:
        return None
    params["addresses"] = tuple(addresses)
    return params


cli.add_command(lab_commands.lab)
cli.add_command(check_commands.check)
cli.add_command(check_commands.rules)
cli.add_command(lint_commands.lint)
cli.add_command(lint_commands.verify)
cli.add_command(trace_commands.trace)
cli.add_command(capture_commands.capture)
cli.add_command(capture_commands.postmortem)
