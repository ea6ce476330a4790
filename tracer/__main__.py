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


def main(argv=None) -> int:
    import click

    tune_gc()
    from tracer.cli import cli

    global_options: dict = {}  # filled by tracer.cli while it parses (--traceback)
    try:
        status = cli.main(args=argv, prog_name="why-route", standalone_mode=False, obj=global_options)
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except click.ClickException as exc:
        exc.show()
        return ExitStatus.USAGE
    except (click.Abort, KeyboardInterrupt):
        print("why-route: interrupted", file=sys.stderr)
        return ExitStatus.INTERRUPTED
    except Terminated as exc:
        return exc.exit_status
    except BrokenPipeError:
        return ExitStatus.SUCCESS
    except WhyRouteError as exc:
        if traceback_wanted(global_options):
            raise
        print(f"why-route: error: {exc}", file=sys.stderr)
        return exc.exit_status
    except Exception as exc:
        if traceback_wanted(global_options):
            raise
        print(bug_line(exc), file=sys.stderr)
        return ExitStatus.BUG
    return int(status or ExitStatus.SUCCESS)


if __name__ == "__main__":
    sys.exit(main())
