"""Colour and width of the text output.

Colour: `--color always|never` (the global option, `set_mode`) decides; with `auto` (the
default) NO_COLOR (set and non-empty) turns it off, FORCE_COLOR (set, not empty, not `0`)
turns it on even when piped, TERM=dumb turns it off; otherwise colour when the output is a
terminal.

Width: the terminal's (shutil.get_terminal_size, which honours COLUMNS) when the output is a
terminal; else DEFAULT_WIDTH, so that piped output is the same everywhere.
"""

from __future__ import annotations

import os
import shutil
import sys

_CODES = {"bold": "1", "dim": "2", "red": "31", "green": "32", "yellow": "33", "blue": "34", "cyan": "36"}
MODES = ("auto", "always", "never")
DEFAULT_WIDTH = 100
MIN_WIDTH = 60

_mode = "auto"


def set_mode(mode: str) -> None:
    """The global `--color` option."""
    global _mode
    if mode not in MODES:
        raise ValueError(f"colour mode {mode!r} is not one of {', '.join(MODES)}")
    _mode = mode


def use_colour(stream=None) -> bool:
    if _mode != "auto":
        return _mode == "always"
    stream = stream or sys.stdout
    if os.environ.get("NO_COLOR"):
        return False
    if os.environ.get("FORCE_COLOR", "") not in ("", "0"):
        return True
    if os.environ.get("TERM") == "dumb":
        return False
    return _isatty(stream)


def _isatty(stream) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


def width(stream=None, *, default: int = DEFAULT_WIDTH) -> int:
    """Columns to wrap the text output at: the terminal's (never fewer than MIN_WIDTH), or
    `default` when the output is not a terminal."""
    stream = stream or sys.stdout
    if _isatty(stream):
        columns = shutil.get_terminal_size((default, 24)).columns
        return max(columns, MIN_WIDTH)
    return default


class Style:
    def __init__(self, colour: bool):
        self.colour = colour

    def __call__(self, text: str, *names: str) -> str:
        if not self.colour or not names:
            return text
        codes = ";".join(_CODES[n] for n in names)
        return f"\033[{codes}m{text}\033[0m"
