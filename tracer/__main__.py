"""Entry point: `python -m tracer` and the `why-route` console script.

Errors meant for the user (tracer.errors) become one line on stderr and their exit status.
Any other exception is a bug in why-route: one line that says so, and ExitStatus.BUG.
`--traceback` (or WHYROUTE_TRACEBACK=1) re-raises both instead, for a bug report.
"""

import gc
import os
import sys

from tracer.errors import ExitStatus, Terminated, WhyRouteError

TRACEBACK_VARIABLE = "WHYROUTE_TRACEBACK"


def tune_gc() -> None:
    """Collect rarely: loading a million routes or compiling 10,000 nft rules makes
    millions of acyclic objects, and the default thresholds spend most of the time
    (3×–4×) re-scanning them. Cycles are still collected."""
    gc.set_threshold(1_000_000, 100, 100)


def traceback_wanted(global_options: dict) -> bool:
    return bool(global_options.get("traceback")) or os.environ.get(TRACEBACK_VARIABLE, "") not in ("", "0")


def bug_line(exc: BaseException) -> str:
    """One line for an unexpected exception: what it was, and how to get the traceback."""
    message = next(iter(str(exc).splitlines()), "")
    what = f"{type(exc).__name__}: {message}" if message else type(exc).__name__
    return (f"why-route: bug: {what}; please report it with the traceback that "
            f"`why-route --traceback ...` (or {TRACEBACK_VARIABLE}=1) prints")


def json_wanted(global_options: dict, argv: list[str]) -> bool:
    """Under --json an error is a JSON document too. The commands say so as they parse
    (tracer.cli.options.json_option, `batch`); a usage error can come before that, so a
    `--json` word among the options counts too."""
    words = argv[:argv.index("--")] if "--" in argv else argv
    return bool(global_options.get("json")) or "--json" in words


def report(message: str, status: int, as_json: bool) -> int:
    """One line on stderr; under --json also {"schema", "error", "exit_status"} on stdout."""
    print(message, file=sys.stderr)
    if as_json:
        from tracer.output import json_out

        error = message.removeprefix("why-route: error: ")
        try:
            print(json_out.error(error, status), flush=True)
        except BrokenPipeError:
            silence_stdout()
    return status


def silence_stdout() -> None:
    """The reader went away: what is still buffered for stdout goes nowhere, not into a
    BrokenPipeError at exit."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):  # no file descriptor (captured by a test)
        pass


def main(argv=None) -> int:
    import click

    tune_gc()
    from tracer.cli import OutputClosed, cli

    argv = list(sys.argv[1:] if argv is None else argv)
    global_options: dict = {}  # filled by tracer.cli while it parses (--traceback, --json)
    try:
        status = cli.main(args=argv, prog_name="why-route", standalone_mode=False, obj=global_options)
        sys.stdout.flush()  # a closed pipe shows here, not as an error at exit
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except click.ClickException as exc:
        if json_wanted(global_options, argv):
            return report(f"why-route: error: {exc.format_message()}", ExitStatus.USAGE, True)
        exc.show()
        return ExitStatus.USAGE
    except (click.Abort, KeyboardInterrupt):
        print("why-route: interrupted", file=sys.stderr)
        return ExitStatus.INTERRUPTED
    except Terminated as exc:
        return exc.exit_status
    except (OutputClosed, BrokenPipeError):
        silence_stdout()
        return ExitStatus.SUCCESS
    except WhyRouteError as exc:
        if traceback_wanted(global_options):
            raise
        return report(f"why-route: error: {exc}", exc.exit_status, json_wanted(global_options, argv))
    except Exception as exc:
        if traceback_wanted(global_options):
            raise
        return report(bug_line(exc), ExitStatus.BUG, json_wanted(global_options, argv))
    return int(status or ExitStatus.SUCCESS)


if __name__ == "__main__":
    sys.exit(main())
