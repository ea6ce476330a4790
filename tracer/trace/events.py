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
_NESTED = {"flow": FlowId, "packet": Tuple, "ct_orig": Tuple, "ct_reply": Tuple, "orig": Tuple, "reply": Tuple}
_NESTED_EVENTS = {"hooks": HookEvent, "lookups": FibEvent}  # a record's parts, each an event's JSON


def to_json(event: Event) -> dict:
    return dataclasses.asdict(event)


def from_json(data: dict) -> Event:
    """An event from its JSON object (raises ValueError on an unknown kind or missing field)."""
    cls = KINDS.get(data.get("kind"))
    if cls is None:
        raise ValueError(f"unknown event kind {data.get('kind')!r}")
    values = {}
    for f in dataclasses.fields(cls):
        if f.name not in data:
            if f.default is dataclasses.MISSING:
                raise ValueError(f"{cls.kind} event without {f.name}")
            continue
        value = data[f.name]
        if cls is FlowRecord and f.name in _NESTED_EVENTS:
            value = tuple(_part(part, _NESTED_EVENTS[f.name]) for part in value)
        elif cls is FlowRecord and f.name == "drop":
            value = None if value is None else _part(value, DropEvent)
        elif (nested := _NESTED.get(f.name)) and value is not None:
            value = nested(**value)
        elif f.name == "icmp" and value is not None:
            value = tuple(value)
        values[f.name] = value
    return cls(**values)


def _part(data, cls) -> Event:
    if not isinstance(data, dict) or data.get("kind") != cls.kind:
        raise ValueError(f"a record's part is not a {cls.kind} event: {data!r}")
    return from_json(data)
