"""The post-mortem's suspect catalogue: one module `pmNNN_name.py` per suspect, each defining one
`Suspect` subclass whose docstring has the fixed sections of `DOC_SECTIONS` (docs/postmortem/ is
generated from them by `python -m tracer.capture.docs`)."""

from __future__ import annotations

import importlib
import pkgutil
import re
from dataclasses import dataclass, field
from functools import lru_cache

DOC_SECTIONS = ("What it detects", "Why the connection suffers", "Ties to", "Fix")
_MODULE = re.compile(r"^(pm\d{3})_\w+$")


@dataclass
class Suspicion:
    """One suspect raised on one connection."""

    id: str
    title: str
    score: int  # 0-100: how much of the connection's trouble it explains (ranks suspects)
    summary: str
    evidence: list[tuple] = field(default_factory=list)  # (packet number, time, interface, text)
    config: list[dict] = field(default_factory=list)  # configuration objects (tracer.capture.ties)
    fix: list[str] = field(default_factory=list)
    findings: list[str] = field(default_factory=list)  # rules-engine finding IDs it rests on
    shown_when_ok: bool = False  # a configuration fault worth showing on a connection that works


class Suspect:
    id = ""
    title = ""
    # Raised on a connection whose verdict is ok, a suspect is dropped (no false alarm) unless it
    # scores ≥ 90 or is a configuration fault that holds however fast the connection was.
    shown_when_ok = False

    def detect(self, conn, ctx) -> Suspicion | None:
        raise NotImplementedError

    def raise_(self, score: int, summary: str, **kwargs) -> Suspicion:
        return Suspicion(self.id, self.title, score, summary, shown_when_ok=self.shown_when_ok, **kwargs)


def rtt_text(summary: dict) -> str:
    """An RTT summary (seconds, from connection.rtt_summary) as evidence text."""
    return (f"min {summary['min'] * 1000:.1f} / median {summary['median'] * 1000:.1f} / p95 "
            f"{summary['p95'] * 1000:.1f} ms ({summary['samples']} samples)")


@lru_cache(maxsize=1)
def catalogue() -> tuple[Suspect, ...]:
    found = {}
    for info in pkgutil.iter_modules(__path__):
        match = _MODULE.match(info.name)
        if not match:
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        classes = [obj for obj in vars(module).values() if isinstance(obj, type) and issubclass(obj, Suspect)
                   and obj is not Suspect and obj.__module__ == module.__name__]
        if len(classes) != 1:
            raise RuntimeError(f"{info.name}.py must define exactly one Suspect")
        suspect = classes[0]()
        if suspect.id != match.group(1).upper():
            raise RuntimeError(f"{info.name}.py: id {suspect.id!r} does not match the module name")
        found[suspect.id] = suspect
    return tuple(found[k] for k in sorted(found))
