"""Entry point: `python -m tracer` and the `why-route` console script."""

import sys

from tracer.errors import ExitStatus, WhyRouteError


def main(argv=None) -> int:
    import click

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
