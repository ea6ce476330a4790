"""Entry point: `python -m tracer` and the `why-route` console script."""

import gc
import sys

from tracer.errors import ExitStatus, WhyRouteError


def tune_gc() -> None:
    """Collect rarely: loading a million routes or compiling 10,000 nft rules makes
    millions of acyclic objects, and the default thresholds spend most of the time
    (3×–4×) re-scanning them. Cycles are still collected."""
    gc.set_threshold(1_000_000, 100, 100)


def main(argv=None) -> int:
    import click

    tune_gc()
    from tracer.cli import cli

    try:
        status = cli.main(args=argv, prog_name="why-route", standalone_mode=False)
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except click.ClickException as exc:
        exc.show()
        return ExitStatus.USAGE
    except click.Abort:
        print("why-route: interrupted", file=sys.stderr)
        return ExitStatus.INTERRUPTED
    except KeyboardInterrupt:
        print("why-route: interrupted", file=sys.stderr)
        return ExitStatus.INTERRUPTED
    except WhyRouteError as exc:
        print(f"why-route: error: {exc}", file=sys.stderr)
        return exc.exit_status
    except BrokenPipeError:
        return ExitStatus.SUCCESS
    return int(status or ExitStatus.SUCCESS)


if __name__ == "__main__":
    sys.exit(main())
