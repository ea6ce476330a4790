"""Snapshot files: one versioned JSON document holding a HostState.

A snapshot taken on one machine is explained on another, so the format is a
contract: `format` and `version` are checked on load, unknown versions are
refused with a clear message, and every field is documented in
docs/snapshot.md.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from tracer.errors import UsageError
from tracer.model import (
    Address,
    ConntrackEntry,
    HostState,
    Link,
    Neighbour,
    Nexthop,
    Provenance,
    Route,
    RtTablesEntry,
    Rule,
)

FORMAT = "why-route-snapshot"
VERSION = 1

# Record lists in the file and the dataclass each entry becomes.
_RECORDS = {
    "links": Link,
    "addresses": Address,
    "rules": Rule,
    "routes": Route,
    "neighbours": Neighbour,
    "conntrack": ConntrackEntry,
}
_NOT_GIVEN = dataclasses.MISSING


def _defaults(cls) -> dict[str, Any]:
    out = {}
    for f in dataclasses.fields(cls):
        if f.default is not _NOT_GIVEN:
            out[f.name] = f.default
    return out


_DEFAULTS = {cls: _defaults(cls) for cls in (*_RECORDS.values(), Nexthop)}


def _encode(record) -> dict:
    """A record as a dict, leaving out fields at their default (keeps big tables small)."""
    defaults = _DEFAULTS[type(record)]
    out = {}
    for f in dataclasses.fields(record):
        value = getattr(record, f.name)
        if f.name in defaults and value == defaults[f.name]:
            continue
        if f.name == "nexthops":
            value = [_encode(nh) for nh in value]
        elif isinstance(value, tuple):
            value = list(value)
        out[f.name] = value
    return out


def _decode(cls, data: dict):
    kwargs = {}
    for key, value in data.items():
        if key == "nexthops":
            value = tuple(Nexthop(**nh) for nh in value)
        elif isinstance(value, list):
            value = tuple(value)
        kwargs[key] = value
    return cls(**kwargs)


def _meta(state: HostState) -> dict:
    provenance = {k: v for k, v in dataclasses.asdict(state.provenance).items() if v is not None}
    return {**provenance,
            "rt_tables_entries": [[e.table, e.name, e.path] for e in state.rt_tables_entries],
            "partial_tables": {str(t): n for t, n in sorted(state.partial_tables.items())},
            "warnings": list(state.warnings), **({"notes": list(state.notes)} if state.notes else {})}


def _from_meta(meta: dict) -> dict:
    """HostState's typed fields from the file's `meta` object (unknown keys are refused)."""
    known = {f.name for f in dataclasses.fields(Provenance)}
    extra = sorted(set(meta) - known - {"rt_tables_entries", "partial_tables", "warnings", "notes"})
    if extra:
        raise ValueError(f"unknown meta key {extra[0]!r}")
    return {"provenance": Provenance(**{k: v for k, v in meta.items() if k in known}),
            "rt_tables_entries": tuple(RtTablesEntry(int(t), n, p) for t, n, p in meta.get("rt_tables_entries", ())),
            "partial_tables": {int(t): int(n) for t, n in meta.get("partial_tables", {}).items()},
            "warnings": tuple(meta.get("warnings", ())), "notes": tuple(meta.get("notes", ()))}


def to_dict(state: HostState) -> dict:
    doc = {"format": FORMAT, "version": VERSION, "meta": _meta(state)}
    for key in _RECORDS:
        doc[key] = [_encode(r) for r in getattr(state, key)]
    doc["table_names"] = {str(k): v for k, v in sorted(state.table_names.items())}
    doc["sysctls"] = dict(sorted(state.sysctls.items()))
    doc["netfilter"] = state.netfilter
    return doc


def from_dict(doc: dict, source: str = "snapshot") -> HostState:
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise UsageError(f"{source}: not a why-route snapshot (no \"format\": \"{FORMAT}\")")
    if doc.get("version") != VERSION:
        raise UsageError(
            f"{source}: snapshot version {doc.get('version')!r} is not supported "
            f"(this why-route reads version {VERSION})"
        )
    try:
        records = {key: tuple(_decode(cls, r) for r in doc.get(key, ())) for key, cls in _RECORDS.items()}
        return HostState(
            **records,
            table_names={int(k): v for k, v in doc.get("table_names", {}).items()},
            sysctls=dict(doc.get("sysctls", {})),
            netfilter=doc.get("netfilter") or {},
            **_from_meta(doc.get("meta", {})),
        )
    except (TypeError, ValueError, AttributeError) as exc:
        raise UsageError(f"{source}: malformed snapshot: {exc}") from None


def save(state: HostState, path: str) -> None:
    doc = to_dict(state)
    if path == "-":
        import sys

        json.dump(doc, sys.stdout, separators=(",", ":"))
        sys.stdout.write("\n")
        return
    with open(path, "w") as fh:
        json.dump(doc, fh, separators=(",", ":"))
        fh.write("\n")


def load(path: str) -> HostState:
    try:
        with open(path) as fh:
            doc = json.load(fh)
    except OSError as exc:
        raise UsageError(f"cannot read snapshot {path}: {exc.strerror}") from None
    except json.JSONDecodeError as exc:
        raise UsageError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
    return from_dict(doc, source=path)
