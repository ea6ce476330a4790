"""What the probes report, as plain frozen dataclasses: one type per kind of event, each made
from a ring record of the kernel (tracer.trace.kernel.RawRecord, RawNote) or a netlink message, or
loaded back from its JSON line (`-o RUN_DIR` writes them, `--replay` reads them).

The kernel assembles a flow's first packet in its flow map and sends one record (`FlowRecord`:
its hook positions, table lookups and drop, as HookEvent, FibEvent and DropEvent) when the path is
complete; a later change comes as a note: the first reply (`ReplyEvent`), a reply dropped
(`ReplyDropEvent`), an ICMP error about the flow (`IcmpErrorEvent`).

Addresses are strings, interfaces are names (resolved with the state collected at trace start),
a flow is identified by its FlowKey-like `FlowId`: the conntrack original tuple in its namespace.
"""

from __future__ import annotations

import dataclasses
import functools
import ipaddress
import types
import typing
from dataclasses import dataclass

from tracer.vocab import family_of

HOOKS = ("prerouting", "input", "forward", "output", "postrouting")
POSITIONS = ("first", "last")


@dataclass(frozen=True)
class FlowId:
    netns: int  # the namespace's inode number
    proto: int
    src: str
    dst: str
    sport: int
    dport: int

    @property
    def family(self) -> int:
        return family_of(self.src)


@dataclass(frozen=True)
class Tuple:
    src: str
    dst: str
    sport: int
    dport: int


@dataclass(frozen=True)
class HookEvent:
    """A flow's first packet at one netfilter hook, before (`first`) or after (`last`) its chains."""

    ts: int
    cpu: int
    flow: FlowId
    hook: str
    position: str
    packet: Tuple
    iif: str | None
    oif: str | None
    mark: int
    ct_orig: Tuple | None
    ct_reply: Tuple | None
    ct_status: int
    kind: str = "hook"


@dataclass(frozen=True)
class FibEvent:
    """One FIB table looked up for a flow's first packet (fib:fib_table_lookup, fib6:fib6_table_lookup);
    for a local flow, by its socket before the packet existed (iif "lo")."""

    ts: int
    cpu: int
    flow: FlowId
    flowi: int  # the struct flowi4/flowi6's address: the lookups of one routing decision share it
    table_id: int
    err: int  # 0 found; -EAGAIN (-11) nothing here, go on; -113/-13/-22 unreachable/prohibit/blackhole
    reverse: bool  # the source-validation lookup (daddr = the packet's source)
    src: str
    dst: str
    iif: str | None
    mark: int
    dev: str | None
    gateway: str | None
    rule: int | None = None  # the priority of the ip rule whose lookup this is, when the rule probe saw it
    kind: str = "fib"


@dataclass(frozen=True)
class DropEvent:
    """A flow's packet freed with a drop reason (skb:kfree_skb)."""

    ts: int
    cpu: int
    flow: FlowId
    reason: str
    location: int
    dev: str | None
    packet: Tuple
    function: str | None = None  # the location as function+offset (/proc/kallsyms when it was recorded)
    kind: str = "drop"


@dataclass(frozen=True)
class ReplyEvent:
    """The first reply-direction packet of a flow seen at a hook (conntrack says IS_REPLY)."""

    ts: int
    cpu: int
    flow: FlowId
    hook: str
    kind: str = "reply"


@dataclass(frozen=True)
class _LaterDrop:
    """A packet of a flow freed with a drop reason (skb:kfree_skb) after the flow's first packet
    went through: where (`location`, as `function+0xoffset`) and on which device."""

    ts: int
    cpu: int
    flow: FlowId
    reason: str
    location: int
    dev: str | None
    function: str | None = None


@dataclass(frozen=True)
class ReplyDropEvent(_LaterDrop):
    """A reply-direction packet of a flow dropped: the first of the flow's. `icmp`: it was an ICMP
    error about the flow, (type, code, sender)."""

    icmp: tuple[int, int, str] | None = None
    after_hook: str | None = None  # the last hook position the packet passed (None: not known)
    after_position: str | None = None  # … "first" (before that hook's chains) or "last" (after them)
    kind: str = "reply_drop"


@dataclass(frozen=True)
class IcmpErrorEvent:
    """An ICMP (ICMPv6) error about a flow (conntrack: IP_CT_RELATED_REPLY), as it arrived at
    prerouting or was sent at output: its sender, type and code."""

    ts: int
    cpu: int
    flow: FlowId
    type: int
    code: int
    src: str
    hook: str
    kind: str = "icmp_error"


@dataclass(frozen=True)
class PathChangeEvent:
    """The first later packet of a flow (its original direction) to leave by another device than its
    first packet did (postrouting, after its chains): that device and the packet's mark."""

    ts: int
    cpu: int
    flow: FlowId
    dev: str | None
    mark: int
    kind: str = "path_change"


@dataclass(frozen=True)
class LaterDropEvent(_LaterDrop):
    """A later packet of a flow's own direction dropped: the first of the flow's. `dev`: the
    output device once routed."""

    kind: str = "later_drop"


@dataclass(frozen=True)
class ConntrackEvent:
    """A ctnetlink message about a flow: NEW, UPDATE or DESTROY, with both tuples and the status."""

    ts: int
    flow: FlowId
    type: str  # new | update | destroy
    orig: Tuple
    reply: Tuple
    status: int
    cpu: int = -1
    kind: str = "conntrack"


@dataclass(frozen=True)
class NftRuleEvent:
    """One nft rule (or chain policy) a traced packet crossed (`--rules`, nftables tracing). `flow`
    is the packet's tuple as the trace printed it at that chain (before that chain's NAT)."""

    ts: int
    flow: FlowId
    table: str
    chain: str
    hook: str | None
    handle: int | None
    text: str
    verdict: str
    cpu: int = -1
    kind: str = "nftrule"


@dataclass(frozen=True)
class FlowRecord:
    """A flow's first packet as the kernel's flow map assembled it, in one ring record: the hook
    positions it reached (in that order), the table lookups of its routing decision, its drop.
    `complete`: sent when its path ended (left, delivered, dropped); otherwise read from the map
    when the trace ended."""

    ts: int
    cpu: int
    flow: FlowId
    hooks: tuple[HookEvent, ...]
    lookups: tuple[FibEvent, ...]
    drop: DropEvent | None
    complete: bool
    kind: str = "record"


Event = (HookEvent | FibEvent | DropEvent | ReplyEvent | ReplyDropEvent | IcmpErrorEvent | PathChangeEvent
         | LaterDropEvent | ConntrackEvent | NftRuleEvent | FlowRecord)
KINDS = {cls.kind: cls for cls in (HookEvent, FibEvent, DropEvent, ReplyEvent, ReplyDropEvent, IcmpErrorEvent,
                                   PathChangeEvent, LaterDropEvent, ConntrackEvent, NftRuleEvent, FlowRecord)}


def to_json(event: Event) -> dict:
    return dataclasses.asdict(event)


def from_json(data: dict) -> Event:
    """An event from its JSON object. Raises ValueError when it is not one as to_json writes it: an
    unknown kind, a missing field, a value of another type, an address or hook name that is none."""
    if not isinstance(data, dict):
        raise ValueError(f"an event is a JSON object, not {type(data).__name__}")
    cls = KINDS.get(data.get("kind"))
    if cls is None:
        raise ValueError(f"unknown event kind {data.get('kind')!r}")
    return _build(cls, data, cls.kind)


def _build(cls, data, where: str):
    if not isinstance(data, dict):
        raise ValueError(f"{where}: an object expected, not {data!r}")
    kind = getattr(cls, "kind", None)
    if data.get("kind", kind) != kind:
        raise ValueError(f"{where}: not a {kind} event: {data.get('kind')!r}")
    values = {}
    for f in dataclasses.fields(cls):
        if f.name not in data:
            if f.default is dataclasses.MISSING:
                raise ValueError(f"{where} without {f.name}")
            continue
        # an nft chain's hook may be any the family has (ingress, a bridge's): not checked by name
        name = "chain_hook" if cls is NftRuleEvent and f.name == "hook" else f.name
        values[f.name] = _value(_hints(cls)[f.name], data[f.name], name, f"{where}.{f.name}")
    if (values.get("ct_orig") is None) != (values.get("ct_reply") is None):
        raise ValueError(f"{where}: ct_orig and ct_reply go together")
    return cls(**values)


_ADDRESS_FIELDS = frozenset({"src", "dst", "gateway"})
_NAMES = {"hook": HOOKS, "after_hook": HOOKS, "position": POSITIONS, "after_position": POSITIONS}


def _value(hint, value, name: str, where: str):
    """`value` as the field typed `hint` holds it, or ValueError."""
    if isinstance(hint, types.UnionType):
        if value is None and type(None) in hint.__args__:
            return None
        (hint,) = [arg for arg in hint.__args__ if arg is not type(None)]
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, where)
    if typing.get_origin(hint) is tuple:
        args = typing.get_args(hint)
        if args[-1] is Ellipsis:
            if not isinstance(value, list):
                raise ValueError(f"{where}: a list expected, not {value!r}")
            args = (args[0],) * len(value)
        elif not isinstance(value, list) or len(value) != len(args):
            raise ValueError(f"{where}: a list of {len(args)} expected, not {value!r}")
        return tuple(_value(kind, item, name, f"{where}[{i}]")
                     for i, (kind, item) in enumerate(zip(args, value, strict=True)))
    if not isinstance(value, hint) or (hint is int and isinstance(value, bool)):
        raise ValueError(f"{where}: {hint.__name__} expected, not {value!r}")
    if hint is str and name in _ADDRESS_FIELDS and not _is_address(value):
        raise ValueError(f"{where}: not an IP address: {value!r}")
    if hint is str and value not in _NAMES.get(name, (value,)):
        raise ValueError(f"{where}: none of {', '.join(_NAMES[name])}: {value!r}")
    return value


def _is_address(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


@functools.cache
def _hints(cls) -> dict:
    return typing.get_type_hints(cls)
