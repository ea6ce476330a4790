"""Exceptions the CLI maps to exit codes; deep code raises these, never exits."""

import enum


class ExitStatus(enum.IntEnum):
    SUCCESS = 0
    # `check`/`verify` found an error-level problem; the command itself worked.
    PROBLEMS_FOUND = 1
    USAGE = 2
    ENVIRONMENT = 3
    INTERRUPTED = 130


class WhyRouteError(Exception):
    """An error with a one-line message meant for the user."""

    exit_status = ExitStatus.USAGE


class UsageError(WhyRouteError):
    """Bad input: malformed address, unknown node, broken file."""


class EnvironmentProblem(WhyRouteError):
    """The machine cannot do what was asked: not root, tool missing, feature absent."""

    exit_status = ExitStatus.ENVIRONMENT
