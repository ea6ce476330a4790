"""Exceptions the CLI maps to exit codes; deep code raises these, never exits."""

import enum


class ExitStatus(enum.IntEnum):
    SUCCESS = 0
    # `check`/`verify`/`lint` found an error-level problem; the command itself worked.
    PROBLEMS_FOUND = 1
    # Live explain: the kernel's answer differs from the simulation. Same code as PROBLEMS_FOUND
    # (an alias of it): scripts test for "1: something to look at".
    KERNEL_DISAGREES = 1
    USAGE = 2
    ENVIRONMENT = 3
    # An unexpected exception: a bug in why-route (sysexits' EX_SOFTWARE).
    BUG = 70
    INTERRUPTED = 130


class WhyRouteError(Exception):
    """An error with a one-line message meant for the user."""

    exit_status = ExitStatus.USAGE


class UsageError(WhyRouteError):
    """Bad input: malformed address, unknown node, broken file."""


class FlowError(UsageError):
    """A flow that cannot be taken as asked: a malformed address, an unknown interface.

    `field` names the Flow field at fault; `{field}` in the text marks where a
    front end puts its own name for it (the CLI's `--iif`): `worded(names)`.
    """

    def __init__(self, field: str, text: str):
        self.field = field
        self.text = text
        super().__init__(self.worded({}))

    def worded(self, names: dict[str, str]) -> str:
        return self.text.replace("{" + self.field + "}", names.get(self.field, self.field))


class EnvironmentProblem(WhyRouteError):
    """The machine cannot do what was asked: not root, tool missing, feature absent."""

    exit_status = ExitStatus.ENVIRONMENT


class Terminated(BaseException):
    """SIGTERM or SIGHUP arrived while this process owned kernel objects (tracer.netns.Teardown).

    A BaseException, like KeyboardInterrupt, so that no `except Exception` (nor `except
    WhyRouteError`) on the way takes it for an error: it unwinds every `with` block, which
    removes what was made, and the process exits with 128 + the signal's number, as the shell
    reports a process killed by it."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum

    @property
    def exit_status(self) -> int:
        return 128 + self.signum
