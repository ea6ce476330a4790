"""The running kernel's BTF (/sys/kernel/btf/vmlinux), read with the stdlib: struct member offsets
and enum values. Struct layouts differ between kernels (and from the installed headers, which may
be for another kernel), so every offset a probe uses comes from here, never from a header.

    btf = Btf.load()
    btf.offset("sk_buff", "mark")              164 on 6.18
    btf.offset("nf_conn", "tuplehash")         nested and anonymous members are searched
    btf.enum("skb_drop_reason")                {"SKB_DROP_REASON_NOT_SPECIFIED": 2, …}
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from dataclasses import dataclass
from functools import cache
from pathlib import Path

VMLINUX = Path("/sys/kernel/btf/vmlinux")
CACHE_DIR = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "why-route"
MAGIC = 0xEB9F
(INT, PTR, ARRAY, STRUCT, UNION, ENUM, FWD, TYPEDEF, VOLATILE, CONST, RESTRICT, FUNC, FUNC_PROTO,
 VAR, DATASEC, FLOAT, DECL_TAG, TYPE_TAG, ENUM64) = range(1, 20)
# Bytes of kind-specific data after the 12-byte common header: fixed, or per vlen entry.
_FIXED = {INT: 4, ARRAY: 12, VAR: 4, DECL_TAG: 4}
_PER_ENTRY = {STRUCT: 12, UNION: 12, ENUM: 8, FUNC_PROTO: 8, DATASEC: 12, ENUM64: 12}
_MODIFIERS = (TYPEDEF, VOLATILE, CONST, RESTRICT, TYPE_TAG)


class BtfError(Exception):
    """The BTF is missing, malformed, or lacks a type or member a probe needs."""


def read_btf(path: Path = VMLINUX) -> bytes:
    try:
        return path.read_bytes()
    except OSError as error:
        raise BtfError(f"cannot read {path}: {error.strerror} (kernel built without CONFIG_DEBUG_INFO_BTF?)") \
            from None


@dataclass(frozen=True)
class _Type:
    kind: int
    name: str
    size_or_type: int
    members: tuple  # (name, type_id, bit_offset) for structs/unions, (name, value) for enums, (name, type) params


# Only these kinds are looked up by name; the rest are decoded when a member refers to them.
_NAMED = (STRUCT, UNION, ENUM, ENUM64, TYPEDEF, FUNC)


class Btf:
    """Types are located in one pass over the type section; a type's name and members are decoded
    only when it is used (the whole vmlinux BTF holds over 100,000 types)."""

    def __init__(self, data: bytes):
        if len(data) < 24:
            raise BtfError("BTF data too short")
        magic, _version, _flags, hdr_len = struct.unpack_from("<HBBI", data, 0)
        if magic != MAGIC:
            raise BtfError("not BTF data (bad magic)")
        type_off, type_len, str_off, str_len = struct.unpack_from("<IIII", data, 8)
        self._data = data
        self._strings = data[hdr_len + str_off:hdr_len + str_off + str_len]
        self._positions: list[int] = [0]  # type id → position of its header (id 0 is void)
        self._cache: dict[int, _Type] = {}
        self._by_name: dict[tuple[int, str], int] = {}
        unpack = struct.unpack_from
        fixed, per_entry, named = _FIXED, _PER_ENTRY, _NAMED
        pos, end = hdr_len + type_off, hdr_len + type_off + type_len
        names: list[tuple[int, int, int]] = []
        while pos < end:
            name_off, info = unpack("<II", data, pos)
            kind, vlen = (info >> 24) & 0x1F, info & 0xFFFF
            self._positions.append(pos)
            if name_off and kind in named:
                names.append((kind, name_off, len(self._positions) - 1))
            pos += 12 + fixed.get(kind, 0) + per_entry.get(kind, 0) * vlen
        for kind, name_off, type_id in names:
            self._by_name.setdefault((kind, self._name(name_off)), type_id)

    def _name(self, offset: int) -> str:
        strings = self._strings
        return strings[offset:strings.index(b"\0", offset)].decode()

    def _type(self, type_id: int) -> _Type | None:
        if type_id == 0:
            return None
        found = self._cache.get(type_id)
        if found is not None:
            return found
        data, pos = self._data, self._positions[type_id]
        name_off, info, size_or_type = struct.unpack_from("<III", data, pos)
        pos += 12
        kind, vlen, kind_flag = (info >> 24) & 0x1F, info & 0xFFFF, info >> 31
        name = self._name(name_off)
        members: tuple = ()
        if kind in (STRUCT, UNION):
            entries = []
            for i in range(vlen):
                m_name, m_type, m_off = struct.unpack_from("<III", data, pos + 12 * i)
                entries.append((self._name(m_name), m_type, m_off & 0xFFFFFF if kind_flag else m_off))
            members = tuple(entries)
        elif kind == ENUM:
            members = tuple((self._name(n), v) for n, v in
                            (struct.unpack_from("<Ii", data, pos + 8 * i) for i in range(vlen)))
        elif kind == ENUM64:
            members = tuple((self._name(n), lo | (hi << 32)) for n, lo, hi in
                            (struct.unpack_from("<III", data, pos + 12 * i) for i in range(vlen)))
        elif kind == FUNC_PROTO:
            members = tuple((self._name(n), t) for n, t in
                            (struct.unpack_from("<II", data, pos + 8 * i) for i in range(vlen)))
        found = self._cache[type_id] = _Type(kind, name, size_or_type, members)
        return found

    @classmethod
    @cache
    def load(cls, path: Path = VMLINUX) -> Btf:
        return cls(read_btf(path))

    def _resolve(self, type_id: int) -> _Type:
        t = self._type(type_id)
        while t is not None and t.kind in _MODIFIERS:
            t = self._type(t.size_or_type)
        if t is None:
            raise BtfError("member of type void")
        return t

    def _struct(self, name: str) -> _Type:
        for kind in (STRUCT, UNION):
            type_id = self._by_name.get((kind, name))
            if type_id is not None:
                return self._type(type_id)
        raise BtfError(f"the kernel's BTF has no struct {name}")

    def _member(self, t: _Type, name: str) -> tuple[int, int] | None:
        """(bit offset, type id) of member `name`, looking into anonymous structs and unions."""
        for m_name, m_type, m_off in t.members:
            if m_name == name:
                return m_off, m_type
        for m_name, m_type, m_off in t.members:
            if not m_name:
                inner = self._resolve(m_type)
                if inner.kind in (STRUCT, UNION):
                    found = self._member(inner, name)
                    if found:
                        return m_off + found[0], found[1]
        return None

    def offset(self, struct_name: str, path: str) -> int:
        """Byte offset of a (dotted) member path in a struct, e.g. ("net", "ns.inum")."""
        t, total = self._struct(struct_name), 0
        for part in path.split("."):
            if t.kind not in (STRUCT, UNION):
                raise BtfError(f"{struct_name}.{path}: {part} is not inside a struct")
            found = self._member(t, part)
            if found is None:
                raise BtfError(f"the kernel's struct {struct_name} has no member {path}")
            total += found[0]
            t = self._resolve(found[1])
        if total % 8:
            raise BtfError(f"{struct_name}.{path} is a bit field")
        return total // 8

    def size(self, struct_name: str) -> int:
        return self._struct(struct_name).size_or_type

    def has(self, struct_name: str, path: str) -> bool:
        try:
            self.offset(struct_name, path)
        except BtfError:
            return False
        return True

    def has_struct(self, name: str) -> bool:
        return (STRUCT, name) in self._by_name or (UNION, name) in self._by_name

    def has_typedef(self, name: str) -> bool:
        return (TYPEDEF, name) in self._by_name

    def typedef_id(self, name: str) -> int:
        type_id = self._by_name.get((TYPEDEF, name))
        if type_id is None:
            raise BtfError(f"the kernel's BTF has no typedef {name}")
        return type_id

    def func_id(self, name: str) -> int:
        """The type id of a kernel function (what an fentry program names as its attach_btf_id)."""
        type_id = self._by_name.get((FUNC, name))
        if type_id is None:
            raise BtfError(f"the kernel's BTF has no function {name}")
        return type_id

    def tracepoint_args(self, name: str) -> list[str]:
        """The kinds ("ptr", "int", …) of a raw tracepoint's arguments (without the leading __data),
        from the typedef btf_trace_<name>: what ctx->args[i] holds on this kernel."""
        type_id = self._by_name.get((TYPEDEF, f"btf_trace_{name}"))
        if type_id is None:
            raise BtfError(f"the kernel has no tracepoint {name}")
        proto = self._resolve(type_id)
        if proto.kind == PTR:
            proto = self._resolve(proto.size_or_type)
        if proto.kind != FUNC_PROTO:
            raise BtfError(f"btf_trace_{name} is not a function pointer")
        names = {PTR: "ptr", INT: "int", ENUM: "int", ENUM64: "int", STRUCT: "struct"}
        return [names.get(self._resolve(t).kind, "other") for _n, t in proto.members[1:]]

    def enum(self, name: str) -> dict[str, int]:
        for kind in (ENUM, ENUM64):
            type_id = self._by_name.get((kind, name))
            if type_id is not None:
                return dict(self._type(type_id).members)
        raise BtfError(f"the kernel's BTF has no enum {name}")


class KernelFacts:
    """The answers the probes need from the running kernel's BTF — offsets, sizes, enums, which
    structs and tracepoints exist — remembered per kernel in CACHE_DIR: parsing the whole BTF takes
    0.2 s of a trace's start, reading the answers back a millisecond. A kernel is named by a hash of
    its BTF, so another kernel (or a rebuilt one) gets answers of its own. Same questions as Btf.

        facts = KernelFacts.load()
        facts.offset("sk_buff", "mark")     parsed once, then from the cache file
        facts.save()                        after a start that asked something new
    """

    def __init__(self, data: bytes, cache_dir: Path = CACHE_DIR):
        self._data = data
        self._file = cache_dir / f"btf-{hashlib.blake2b(data, digest_size=12).hexdigest()}.json"
        try:
            self._answers: dict[str, dict] = json.loads(self._file.read_text())
        except (OSError, ValueError):
            self._answers = {}
        self._btf: Btf | None = None
        self._asked_new = False

    @classmethod
    @cache
    def load(cls, path: Path = VMLINUX) -> KernelFacts:
        return cls(read_btf(path))

    def _ask(self, question: str, *args: str):
        key = "|".join((question, *args))
        answer = self._answers.get(key)
        if answer is None:
            if self._btf is None:
                self._btf = Btf(self._data)
            try:
                answer = {"value": getattr(self._btf, question)(*args)}
            except BtfError as error:
                answer = {"error": str(error)}
            self._answers[key] = answer
            self._asked_new = True
        if "error" in answer:
            raise BtfError(answer["error"])
        return answer["value"]

    def offset(self, struct_name: str, path: str) -> int:
        return self._ask("offset", struct_name, path)

    def size(self, struct_name: str) -> int:
        return self._ask("size", struct_name)

    def has_struct(self, name: str) -> bool:
        return self._ask("has_struct", name)

    def has_typedef(self, name: str) -> bool:
        return self._ask("has_typedef", name)

    def typedef_id(self, name: str) -> int:
        return self._ask("typedef_id", name)

    def func_id(self, name: str) -> int:
        return self._ask("func_id", name)

    def tracepoint_args(self, name: str) -> list[str]:
        return self._ask("tracepoint_args", name)

    def enum(self, name: str) -> dict[str, int]:
        return self._ask("enum", name)

    @property
    def parsed(self) -> bool:
        """Whether the BTF itself had to be parsed (an answer was not in the cache)."""
        return self._btf is not None

    def save(self) -> None:
        """Write the answers if some were new; a cache that cannot be written is only slower."""
        if not self._asked_new:
            return
        try:
            self._file.parent.mkdir(parents=True, exist_ok=True)
            partial = self._file.with_suffix(f".{os.getpid()}.tmp")
            partial.write_text(json.dumps(self._answers))
            partial.replace(self._file)
            self._asked_new = False
        except OSError:
            pass
