"""Snapshot files: one versioned JSON document holding a HostState.

A snapshot taken on one machine is explained on another, so the format is a
contract (docs/snapshot.md): `format` and `version` are checked on load,
unknown versions are refused with a clear message, and every section, record
and field is validated while it is decoded — names, types, addresses valid for
their family, prefix lengths in range, the netfilter dump's shape. A broken
file is refused with one line that names the place in the file
(`routes[0].dst: 'notanip' is not an IPv4 address`), never answered from.

Validation is per field inside the decode loop (one dict lookup and one small
check each), so a million-route snapshot loads about as fast as without it.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import os
import socket
import tempfile
from collections.abc import Callable
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
from tracer.vocab import AF_INET, AF_INET6

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
# Every section is required (an empty list or object when there is nothing):
# a missing one would be answered as "nothing there", which is a wrong answer.
SECTIONS = ("format", "version", "meta", *_RECORDS, "table_names", "sysctls", "netfilter")
_NOT_GIVEN = dataclasses.MISSING


def _defaults(cls) -> dict[str, Any]:
    out = {}
    for f in dataclasses.fields(cls):
        if f.default is not _NOT_GIVEN:
            out[f.name] = f.default
    return out


_DEFAULTS = {cls: _defaults(cls) for cls in (*_RECORDS.values(), Nexthop)}


_FIELD_NAMES = {cls: tuple(f.name for f in dataclasses.fields(cls)) for cls in _DEFAULTS}


def _encode(record) -> dict:
    """A record as a dict, leaving out fields at their default (keeps big tables small)."""
    defaults = _DEFAULTS[type(record)]
    out = {}
    values = record.__dict__
    for name in _FIELD_NAMES[type(record)]:
        value = values[name]
        if name in defaults and value == defaults[name]:
            continue
        if name == "nexthops":
            value = [_encode(nh) for nh in value]
        elif isinstance(value, tuple):
            value = list(value)
        out[name] = value
    return out


# ---------------------------------------------------------------- validation

class Invalid(Exception):
    """A value that does not fit the format: `path` is where, relative to the value checked."""

    def __init__(self, message: str, path: str = ""):
        super().__init__(message)
        self.message = message
        self.path = path

    def within(self, prefix: str) -> Invalid:
        return Invalid(self.message, prefix + self.path)


_JSON_TYPES = {dict: "an object", list: "a list", str: "a string", int: "an integer", float: "a number",
               bool: "true/false", type(None): "null"}


def _got(value) -> str:
    """A value as the file spells it (true, null, 'text', 12), or its JSON type when it is big."""
    if value is None or isinstance(value, bool):
        return json.dumps(value)
    shown = repr(value) if isinstance(value, (str, int, float)) else _JSON_TYPES.get(type(value), type(value).__name__)
    return shown if len(shown) <= 60 else shown[:57] + "..."


def _wrong(value, wanted: str) -> Invalid:
    return Invalid(f"expected {wanted}, got {_got(value)}")


# A check takes (value, the record's family or None) and returns the value to store.
Check = Callable[[Any, Any], Any]


def _int(low: int, high: int) -> Check:
    def check(value, _family):
        if type(value) is not int:
            raise _wrong(value, "an integer")
        if not low <= value <= high:
            raise Invalid(f"{value} is out of range ({low}..{high})")
        return value
    return check


U8, U16, U32 = _int(0, 0xFF), _int(0, 0xFFFF), _int(0, 0xFFFFFFFF)
S32 = _int(-(1 << 31), (1 << 31) - 1)


def _str(value, _family):
    if type(value) is not str:
        raise _wrong(value, "a string")
    return value


def _bool(value, _family):
    if type(value) is not bool:
        raise _wrong(value, "true or false")
    return value


def _optional(check: Check) -> Check:
    def optional(value, family):
        return None if value is None else check(value, family)
    return optional


def _one_of(names: tuple[str, ...]) -> Check:
    """A name from `names`, or a number (what the collector writes for a kind it has no name for)."""
    allowed = frozenset(names)

    def check(value, _family):
        if type(value) is not str:
            raise _wrong(value, "a string")
        if value not in allowed and not value.isdigit():
            raise Invalid(f"{value!r} is not one of {', '.join(names)}")
        return value
    return check


_PTON = {AF_INET: socket.AF_INET, AF_INET6: socket.AF_INET6}
_FAMILY_WORD = {AF_INET: "an IPv4 address", AF_INET6: "an IPv6 address"}


def _address(value, family):
    """An address of the record's family (inet_pton: strict, and fast enough for a million routes)."""
    if type(value) is not str:
        raise _wrong(value, _FAMILY_WORD.get(family, "an IP address"))
    try:
        socket.inet_pton(_PTON[family], value)
    except (OSError, ValueError):
        raise Invalid(f"{value!r} is not {_FAMILY_WORD[family]}") from None
    return value


def _optional_address(value, family):
    return None if value is None else _address(value, family)


def _any_address(value, _family):
    """An IPv4 or an IPv6 address (neighbours, conntrack, a nexthop's RTA_VIA)."""
    if type(value) is not str:
        raise _wrong(value, "an IP address")
    try:
        socket.inet_pton(socket.AF_INET6 if ":" in value else socket.AF_INET, value)
    except (OSError, ValueError):
        raise Invalid(f"{value!r} is not an IP address") from None
    return value


def _optional_any_address(value, family):
    return None if value is None else _any_address(value, family)


def _optional_str(value, _family):
    if value is not None and type(value) is not str:
        raise _wrong(value, "a string or null")
    return value


def _prefix_length(value, family):
    if type(value) is not int:
        raise _wrong(value, "an integer")
    if not 0 <= value <= (32 if family == AF_INET else 128):
        raise Invalid(f"{value} is not a prefix length for IPv{family} (0..{32 if family == AF_INET else 128})")
    return value


def _strings(value, _family):
    if type(value) is not list:
        raise _wrong(value, "a list of strings")
    for i, item in enumerate(value):
        if type(item) is not str:
            raise _wrong(item, "a string").within(f"[{i}]")
    return tuple(value)


def _range(high: int) -> Check:
    """[low, high] as a list of two integers, low ≤ high (port and uid ranges)."""
    def check(value, _family):
        if value is None:
            return None
        if type(value) is not list or len(value) != 2:
            raise _wrong(value, "[low, high]")
        low, top = value
        for i, bound in enumerate(value):
            if type(bound) is not int or not 0 <= bound <= high:
                raise Invalid(f"{_got(bound)} is not an integer in 0..{high}", f"[{i}]")
        if low > top:
            raise Invalid(f"[{low}, {top}]: low end above high end")
        return (low, top)
    return check


_NF_CALL_TOOLS = ("iptables", "ip6tables", "arptables")


def _nf_call(value, family):
    """A bridge's nf_call_* options: a list of iptables, ip6tables, arptables."""
    tools = _strings(value, family)
    for i, tool in enumerate(tools):
        if tool not in _NF_CALL_TOOLS:
            raise Invalid(f"{tool!r} is not one of {', '.join(_NF_CALL_TOOLS)}", f"[{i}]")
    return tools


_NEXTHOP = {"gateway": _optional_any_address, "dev": _optional_str, "weight": _int(1, 256),
            "onlink": _bool, "dead": _bool, "linkdown": _bool}


# Nexthops already checked, by their family and JSON fields: a full table has a million routes
# through a handful of gateways, and one checked Nexthop serves them all (records are frozen).
_CHECKED_NEXTHOPS: dict[tuple, Nexthop] = {}


def _nexthops(value, family):
    if type(value) is not list:
        raise _wrong(value, "a list of nexthops")
    out: list = []
    try:
        for item in value:
            try:
                # with each value's type: 1 and True are equal keys, not equally valid fields
                key = (family, *((k, v, type(v)) for k, v in item.items())) if type(item) is dict else None
                nexthop = _CHECKED_NEXTHOPS.get(key)
            except TypeError:  # a list or object as a value: checking names it
                key = nexthop = None
            if nexthop is None:
                nexthop = _record(Nexthop, _NEXTHOP, _NEXTHOP_REQUIRED, item, family)
                if key is not None and len(_CHECKED_NEXTHOPS) < 65536:
                    _CHECKED_NEXTHOPS[key] = nexthop
            out.append(nexthop)
    except Invalid as exc:
        raise exc.within(f"[{len(out)}]") from None
    return tuple(out)


def _family(value, _family):
    if value not in (AF_INET, AF_INET6) or type(value) is not int:
        raise Invalid(f"{_got(value)} is not an address family (4 or 6)")
    return value


ROUTE_TYPES = ("unicast", "local", "broadcast", "anycast", "multicast", "blackhole", "unreachable", "prohibit",
               "throw", "nat", "xresolve", "unspec")
RULE_ACTIONS = ("lookup", "goto", "nop", "blackhole", "unreachable", "prohibit")

# Each record's fields and their checks: the contract of docs/snapshot.md, field by field
# (tests/explain/test_snapshot_schema.py keeps these in step with tracer/model.py).
FIELDS: dict[type, dict[str, Check]] = {
    Link: {"index": U32, "name": _str, "kind": _optional_str, "flags": _strings, "mtu": U32,
           "master": _optional_str, "mac": _optional_str, "operstate": _str, "group": U32,
           "l3mdev_master": _bool, "nf_call": _nf_call},
    Address: {"family": _family, "ifname": _str, "local": _address, "prefixlen": _prefix_length,
              "peer": _optional_address, "scope": U8, "secondary": _bool},
    Rule: {"family": _family, "priority": U32, "action": _one_of(RULE_ACTIONS), "table": U32,
           "src": _optional_address, "src_len": _prefix_length, "dst": _optional_address,
           "dst_len": _prefix_length, "iif": _optional_str, "oif": _optional_str, "fwmark": U32,
           "fwmask": U32, "tos": U8, "ipproto": U8, "sport": _range(0xFFFF), "dport": _range(0xFFFF),
           "uidrange": _range(0xFFFFFFFF), "invert": _bool, "goto": _optional(U32),
           "suppress_prefixlength": _int(-1, 128), "suppress_ifgroup": S32, "l3mdev": _bool,
           "protocol": _optional_str},
    Route: {"family": _family, "table": U32, "dst": _address, "dst_len": _prefix_length,
            "type": _one_of(ROUTE_TYPES), "tos": U8, "metric": U32, "protocol": _str, "scope": U8,
            "prefsrc": _optional_address, "nexthops": _nexthops, "src": _optional_address,
            "src_len": _prefix_length},
    Neighbour: {"ifname": _str, "address": _any_address, "lladdr": _optional_str, "state": _str},
    ConntrackEntry: {"proto": U8, "orig_src": _any_address, "orig_dst": _any_address,
                     "reply_src": _any_address, "reply_dst": _any_address, "orig_sport": _optional(U16),
                     "orig_dport": _optional(U16), "reply_sport": _optional(U16), "reply_dport": _optional(U16),
                     "mark": U32, "state": _optional_str, "text": _str},
    Nexthop: _NEXTHOP,
}


def _required(cls) -> frozenset[str]:
    return frozenset(f.name for f in dataclasses.fields(cls) if f.default is _NOT_GIVEN
                     and f.default_factory is _NOT_GIVEN)


_REQUIRED = {cls: _required(cls) for cls in FIELDS}


def _maker(cls) -> Callable[[dict], Any]:
    """How a record is built from its checked fields. The frozen dataclass __init__ sets each
    field through object.__setattr__ (1.6 µs for a Route, more than all its checks); every field
    is checked and the defaults are filled here, so the instance's __dict__ is filled directly —
    the same object, field for field (equality, hash, repr). Classes with __post_init__, slots or
    default factories go through their __init__."""
    fields = dataclasses.fields(cls)
    if (hasattr(cls, "__post_init__") or hasattr(cls, "__slots__")
            or any(f.default_factory is not _NOT_GIVEN for f in fields)):
        return lambda kwargs: cls(**kwargs)
    defaults = {f.name: f.default for f in fields if f.default is not _NOT_GIVEN}
    new = object.__new__

    def make(kwargs: dict):
        record = new(cls)
        attributes = record.__dict__
        attributes.update(defaults)
        attributes.update(kwargs)
        return record
    return make


_MAKE = {cls: _maker(cls) for cls in FIELDS}
_NEXTHOP_REQUIRED = _REQUIRED[Nexthop]


def _unknown(key: str, fields) -> Invalid:
    close = difflib.get_close_matches(str(key), list(fields), n=1)
    return Invalid(f"unknown field {key!r}" + (f" (did you mean {close[0]!r}?)" if close else ""), f".{key}")


def _record(cls, fields: dict[str, Check], required: frozenset[str], data, family=None):
    """One record checked field by field and built; Invalid names the field."""
    if type(data) is not dict:
        raise _wrong(data, "an object")
    if "family" in fields:
        family = data.get("family")
        if family not in _PTON:  # before the other fields: addresses and prefix lengths depend on it
            if "family" not in data:
                raise Invalid("missing field 'family'")
            try:
                _family(family, None)
            except Invalid as exc:
                raise exc.within(".family") from None
    kwargs = {}
    key = None
    try:
        for key, value in data.items():
            kwargs[key] = fields[key](value, family)
    except KeyError:
        if key not in fields:
            raise _unknown(key, fields) from None
        raise
    except Invalid as exc:
        raise exc.within(f".{key}") from None
    if len(kwargs) < len(required) or not required <= kwargs.keys():
        missing = sorted(required - kwargs.keys())
        raise Invalid(f"missing field {missing[0]!r}")
    return _MAKE[cls](kwargs)


def _records(key: str, cls, items) -> tuple:
    if type(items) is not list:
        raise _wrong(items, f"a list of {key}").within(key)
    fields, required = FIELDS[cls], _REQUIRED[cls]
    out: list = []
    append = out.append
    try:
        for data in items:
            append(_record(cls, fields, required, data))
    except Invalid as exc:
        raise exc.within(f"{key}[{len(out)}]") from None
    return tuple(out)


def _object(value, what: str) -> dict:
    if type(value) is not dict:
        raise _wrong(value, what)
    return value


def _refuse_unknown(doc: dict, known, where: str | None) -> None:
    """Keys of `doc` not in `known` are refused; `where` is doc's path (None: the top level)."""
    extra = [k for k in doc if k not in known]
    if extra:
        close = difflib.get_close_matches(extra[0], list(known), n=1)
        raise Invalid(f"unknown {'section' if where is None else 'key'} {extra[0]!r}"
                      + (f" (did you mean {close[0]!r}?)" if close else ""),
                      extra[0] if where is None else f"{where}.{extra[0]}")


def _require(doc: dict, keys, where: str | None) -> None:
    for key in keys:
        if key not in doc:
            raise Invalid(f"missing {'section' if where is None else 'key'} {key!r}", where or "")


_PROVENANCE = {f.name for f in dataclasses.fields(Provenance)}
_META_LISTS = ("rt_tables_entries", "partial_tables", "warnings", "notes")
_META_FLAGS = ("br_netfilter",)  # true/false; absent in snapshots taken before why-route read it


def _from_meta(meta) -> dict:
    """HostState's typed fields from the file's `meta` object (unknown keys are refused)."""
    meta = _object(meta, "an object")
    _refuse_unknown(meta, (*_PROVENANCE, *_META_LISTS, *_META_FLAGS), "")
    entries = []
    rt = meta.get("rt_tables_entries", [])
    if type(rt) is not list:
        raise _wrong(rt, "a list of [id, name, path]").within(".rt_tables_entries")
    for i, entry in enumerate(rt):
        if (type(entry) is not list or len(entry) != 3 or type(entry[0]) is not int
                or type(entry[1]) is not str or type(entry[2]) is not str):
            raise _wrong(entry, "[id, name, path]").within(f".rt_tables_entries[{i}]")
        entries.append(RtTablesEntry(*entry))
    partial = _table_keyed(meta.get("partial_tables", {}), U32, ".partial_tables")
    lists = {}
    for key in ("warnings", "notes"):
        try:
            lists[key] = _strings(meta.get(key, []), None)
        except Invalid as exc:
            raise exc.within(f".{key}") from None
    for key in _PROVENANCE - {"comment"}:
        try:
            _optional_str(meta.get(key), None)
        except Invalid as exc:
            raise exc.within(f".{key}") from None
    flags = {}
    for key in _META_FLAGS:
        if key in meta:
            try:
                flags[key] = _bool(meta[key], None)
            except Invalid as exc:
                raise exc.within(f".{key}") from None
    return {"provenance": Provenance(**{k: v for k, v in meta.items() if k in _PROVENANCE}),
            "rt_tables_entries": tuple(entries), "partial_tables": partial, **lists, **flags}


def _table_keyed(value, check: Check, where: str) -> dict:
    """An object keyed by table id ("7375"), each value checked."""
    if type(value) is not dict:
        raise _wrong(value, "an object keyed by table id").within(where)
    out = {}
    for key, item in value.items():
        if not key.isdigit() or int(key) > 0xFFFFFFFF:
            raise Invalid(f"{key!r} is not a table id", f"{where}.{key}")
        try:
            out[int(key)] = check(item, None)
        except Invalid as exc:
            raise exc.within(f"{where}.{key}") from None
    return out


def _sysctls(value) -> dict:
    if type(value) is not dict:
        raise _wrong(value, "an object of sysctl name → value")
    for key, item in value.items():
        if type(item) is not str:
            raise _wrong(item, "a string").within(f"[{key!r}]")
    return dict(value)


_SAVE_KEYS = ("status", "save", "error", "notes")
_STATUSES = ("ok", "absent", "error")
_NFT_KEYS = ("status", "ruleset", "text", "error", "warnings")
_NETFILTER_KEYS = ("version", "netns", "nft", "iptables_nft", "iptables_legacy", "ipset")
_NETFILTER_REQUIRED = ("version", "nft", "iptables_nft", "iptables_legacy")


def _status(doc: dict, where: str) -> None:
    _require(doc, ("status",), where)
    if doc["status"] not in _STATUSES:
        raise Invalid(f"{_got(doc['status'])} is not one of {', '.join(_STATUSES)}", f"{where}.status")
    for key in ("error", "text", "save"):
        if key in doc and doc[key] is not None and type(doc[key]) is not str:
            raise _wrong(doc[key], "a string or null").within(f"{where}.{key}")
    for key in ("warnings", "notes"):
        if doc.get(key) is not None:
            if type(doc[key]) is not list or any(type(x) is not str for x in doc[key]):
                raise _wrong(doc[key], "a list of strings or null").within(f"{where}.{key}")


def _save(doc, where: str) -> None:
    """A SAVE object: {"status", "save", "error", "notes"} (docs/netfilter.md § 1)."""
    if type(doc) is not dict:
        raise _wrong(doc, "an object {status, save, error, notes}").within(where)
    _refuse_unknown(doc, _SAVE_KEYS, where)
    _status(doc, where)


def _netfilter(raw) -> dict:
    """The collector's dict (docs/netfilter.md § 1), checked for shape; nft's own JSON inside
    `nft.ruleset` is the ruleset compiler's to read."""
    if type(raw) is not dict:
        raise _wrong(raw, "the netfilter dump (an object, docs/netfilter.md § 1)")
    if not raw:
        raise Invalid("empty: no netfilter dump (one that `why-route snapshot` writes, docs/netfilter.md § 1)")
    _refuse_unknown(raw, _NETFILTER_KEYS, "")
    _require(raw, _NETFILTER_REQUIRED, "")
    if raw["version"] != 1 or type(raw["version"]) is not int:
        raise Invalid(f"netfilter dump version {_got(raw['version'])} is not supported (1)", ".version")
    if raw.get("netns") is not None and type(raw["netns"]) is not str:
        raise _wrong(raw["netns"], "a string or null").within(".netns")
    nft = raw["nft"]
    if type(nft) is not dict:
        raise _wrong(nft, "an object {status, ruleset, text, error, warnings}").within(".nft")
    _refuse_unknown(nft, _NFT_KEYS, ".nft")
    _status(nft, ".nft")
    ruleset = nft.get("ruleset")
    if ruleset is not None and (type(ruleset) is not dict or type(ruleset.get("nftables")) is not list):
        raise _wrong(ruleset, '{"nftables": [...]} (nft -j list ruleset) or null').within(".nft.ruleset")
    for key in ("iptables_nft", "iptables_legacy"):
        families = raw[key]
        if type(families) is not dict:
            raise _wrong(families, "an object {ip: SAVE, ip6: SAVE}").within(f".{key}")
        _refuse_unknown(families, ("ip", "ip6"), f".{key}")
        for family, save in families.items():
            _save(save, f".{key}.{family}")
    if "ipset" in raw:
        _save(raw["ipset"], ".ipset")
    return raw


def _section(name: str, build: Callable[[], Any]):
    try:
        return build()
    except Invalid as exc:
        raise exc.within(name) from None


def to_dict(state: HostState) -> dict:
    doc = {"format": FORMAT, "version": VERSION, "meta": _meta(state)}
    for key in _RECORDS:
        doc[key] = [_encode(r) for r in getattr(state, key)]
    doc["table_names"] = {str(k): v for k, v in sorted(state.table_names.items())}
    doc["sysctls"] = dict(sorted(state.sysctls.items()))
    doc["netfilter"] = state.netfilter
    return doc


def _meta(state: HostState) -> dict:
    provenance = {k: v for k, v in dataclasses.asdict(state.provenance).items() if v is not None}
    return {**provenance,
            "rt_tables_entries": [[e.table, e.name, e.path] for e in state.rt_tables_entries],
            "partial_tables": {str(t): n for t, n in sorted(state.partial_tables.items())},
            "warnings": list(state.warnings), **({"notes": list(state.notes)} if state.notes else {}),
            **({"br_netfilter": state.br_netfilter} if state.br_netfilter is not None else {})}


def from_dict(doc: dict, source: str = "snapshot") -> HostState:
    """The HostState in a parsed snapshot document; UsageError (one line, naming the place
    in the file) when it does not follow docs/snapshot.md."""
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise UsageError(f"{source}: not a why-route snapshot (no \"format\": \"{FORMAT}\")")
    if doc.get("version") != VERSION:
        raise UsageError(
            f"{source}: snapshot version {doc.get('version')!r} is not supported "
            f"(this why-route reads version {VERSION})"
        )
    try:
        _refuse_unknown(doc, SECTIONS, None)
        _require(doc, SECTIONS, None)
        records = {key: _records(key, cls, doc[key]) for key, cls in _RECORDS.items()}
        return HostState(
            **records,
            table_names=_table_keyed(doc["table_names"], _str, "table_names"),
            sysctls=_section("sysctls", lambda: _sysctls(doc["sysctls"])),
            netfilter=_section("netfilter", lambda: _netfilter(doc["netfilter"])),
            **_section("meta", lambda: _from_meta(doc["meta"])),
        )
    except Invalid as exc:
        where = f"{exc.path}: " if exc.path else ""
        raise UsageError(f"{source}: malformed snapshot: {where}{exc.message}") from None


# ---------------------------------------------------------------- files

def writable(path: str) -> None:
    """UsageError now if `path` cannot be written (its directory is missing or read-only),
    so that nothing is collected for a file that cannot be made."""
    if path == "-":
        return
    directory = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        raise UsageError(f"cannot write snapshot {path}: it is a directory")
    if not os.path.isdir(directory):
        raise UsageError(f"cannot write snapshot {path}: directory {directory} does not exist")
    if not os.access(directory, os.W_OK | os.X_OK):
        raise UsageError(f"cannot write snapshot {path}: directory {directory} is not writable")


def _dumps(doc: dict) -> str:
    # json.dumps, not json.dump: only a one-shot encoding uses the C encoder (a million routes
    # encode in a few seconds, not a minute)
    return json.dumps(doc, separators=(",", ":")) + "\n"


def save(state: HostState, path: str) -> None:
    """Write the snapshot; a file is written whole or not at all (a temporary file in the same
    directory, renamed over `path` once complete)."""
    doc = to_dict(state)
    if path == "-":
        import sys

        sys.stdout.write(_dumps(doc))
        return
    writable(path)
    directory = os.path.dirname(os.path.abspath(path))
    try:
        fd, temporary = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=directory)
    except OSError as exc:
        raise UsageError(f"cannot write snapshot {path}: {exc.strerror}") from None
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(_dumps(doc))
        os.chmod(temporary, 0o644)
        os.replace(temporary, path)
    except OSError as exc:
        os.unlink(temporary)
        raise UsageError(f"cannot write snapshot {path}: {exc.strerror}") from None
    except BaseException:
        os.unlink(temporary)
        raise


def load(path: str) -> HostState:
    try:
        with open(path, "rb") as fh:
            data = fh.read()
    except OSError as exc:
        raise UsageError(f"cannot read snapshot {path}: {exc.strerror}") from None
    try:
        doc = json.loads(data)
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        column = exc.start - data.rfind(b"\n", 0, exc.start)
        raise UsageError(f"{path}: not UTF-8 text: byte {data[exc.start]:#04x} at line {line}, "
                         f"column {column}") from None
    except json.JSONDecodeError as exc:
        raise UsageError(f"{path}: not valid JSON: {exc.msg} at line {exc.lineno}, column {exc.colno}") from None
    except RecursionError:
        raise UsageError(f"{path}: not a why-route snapshot (nested too deeply)") from None
    return from_dict(doc, source=path)
