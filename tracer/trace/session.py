"""A trace session: collect the state, load and attach the collectors that can run, read events
until --count flows, --duration seconds, Ctrl-C or SIGTERM, then print the summary. Everything
attached is undone by a tracer.netns.Teardown whatever happens; what a SIGKILL leaves is undone by
the kernel (BPF links and programs die with their last fd, ctnetlink sockets with the process).

    options = TraceOptions(dst="8.8.8.8", netns="wr-route", count=1)
    Session(options).run(emit=print)            flow documents, then the summary
    replay(run_dir)                             the same documents from a -o RUN_DIR
"""

from __future__ import annotations

import collections
import contextlib
import ctypes
import gc
import json
import os
import signal
import socket
import struct
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from tracer import netns as netns_mod
from tracer.collect import snapshot
from tracer.errors import EnvironmentProblem, Terminated, UsageError
from tracer.model import HostState
from tracer.trace import collectors as collectors_mod
from tracer.trace import kernel
from tracer.trace.btf import KernelFacts
from tracer.trace.conntrack import ConntrackCollector
from tracer.trace.events import (
    HOOKS,
    POSITIONS,
    ConntrackEvent,
    DropEvent,
    Event,
    FibEvent,
    FlowId,
    FlowRecord,
    HookEvent,
    IcmpErrorEvent,
    LaterDropEvent,
    NftRuleEvent,
    PathChangeEvent,
    ReplyDropEvent,
    ReplyEvent,
    Tuple,
    from_json,
    to_json,
)
from tracer.trace.flows import COMPARE_LAG_SECONDS, Describer, TracedFlow, later_doc
from tracer.trace.nftrace import NftraceCollector
from tracer.vocab import family_of, protocol_name

POLL_SECONDS = 0.02
RING_POLL_SECONDS = 0.005  # the ring is read this often (its programs never wake user space up)
REPLY_GRACE_SECONDS = 0.05  # an answered flow waits this long for its reply's fate (dropped?)
BATCH = 2000  # ring records decoded and described between two polls of the sources
GATEWAY_FAMILIES = {socket.AF_INET: 4, socket.AF_INET6: 6}  # fib_nh_common.nhc_gw_family → address family


@dataclass(frozen=True)
class TraceOptions:
    src: str | None = None
    dst: str | None = None
    proto: int = 0
    sport: int | None = None
    dport: int | None = None
    iif: str | None = None
    netns: str | None = None
    duration: float | None = None
    count: int | None = None
    run_dir: str | None = None
    without: tuple[str, ...] = ()
    reply_wait: float = 1.0  # seconds a complete flow waits for its reply before it is printed
    rules: bool = False  # --rules: nftables tracing (adds a table of ours while tracing)
    backlog: int | None = None  # --backlog: ring records held while why-route catches up (None: by memory)
    compare_lag: float = COMPARE_LAG_SECONDS  # --compare-lag: a flow described later is not compared


@dataclass
class Summary:
    flows: int = 0
    events: int = 0
    lost: int = 0
    lost_by: dict[str, int] = field(default_factory=dict)  # the ring's failed reservations; each socket's ENOBUFS
    deferred: int = 0  # complete records the ring refused, read from the flow map at the end instead
    probes: list[str] = field(default_factory=list)
    attached_as: dict[str, str] = field(default_factory=dict)  # a tracepoint probe: tp_btf | raw_tracepoint
    unavailable: dict[str, str] = field(default_factory=dict)
    duration: float = 0.0
    first_event_after: float | None = None  # seconds from start to the first event
    not_compared: int = 0  # flows described too late behind the kernel to be compared (flows.Describer)

    def to_json(self) -> dict:
        return {"type": "summary", "flows": self.flows, "events": self.events, "lost": self.lost,
                "lost_by": self.lost_by, "deferred": self.deferred, "probes": self.probes,
                "attached_as": self.attached_as,
                "unavailable": self.unavailable, "duration": round(self.duration, 3),
                "first_event_after": None if self.first_event_after is None else round(self.first_event_after, 3),
                "not_compared": self.not_compared}


# bytes a held ring record takes: 1,360 of data, about 1.5 KB with the bytes object and the deque; a margin
RECORD_MEMORY = 2048
# the memory a backlog's record accounts for: its own, and as much again shared by the sockets' datagrams
BACKLOG_MEMORY = 2 * RECORD_MEMORY
BACKLOG_RANGE = (10_000, 2_000_000)


def default_backlog(meminfo: str = "/proc/meminfo") -> int:
    """How many ring records to hold while describing falls behind: what a quarter of the memory
    available now holds, within BACKLOG_RANGE. Beyond it records are dropped and counted (lost_by
    backlog), rather than the trace growing until the router runs out of memory."""
    try:
        with open(meminfo) as f:
            available = next(int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable:"))
    except (OSError, StopIteration, ValueError, IndexError):
        return BACKLOG_RANGE[0]
    return max(BACKLOG_RANGE[0], min(BACKLOG_RANGE[1], available // 4 // BACKLOG_MEMORY))


def netns_inode(name: str | None) -> int:
    path = netns_mod.check_name(name) if name else Path("/proc/self/ns/net")
    return os.stat(path).st_ino


def _config(options: TraceOptions, state: HostState, inode: int) -> kernel.Config:
    cfg = kernel.Config(flags=kernel.F_READY | kernel.F_NETNS, netns=inode)
    if options.src:
        cfg.flags |= kernel.F_SRC | kernel.F_FAMILY
        cfg.saddr = kernel.address_bytes(options.src)
        cfg.family = family_of(options.src)
    if options.dst:
        cfg.flags |= kernel.F_DST | kernel.F_FAMILY
        cfg.daddr = kernel.address_bytes(options.dst)
        cfg.family = family_of(options.dst)
    if options.proto:
        cfg.flags |= kernel.F_PROTO
        cfg.proto = options.proto
    if options.sport is not None:
        cfg.flags |= kernel.F_SPORT
        cfg.sport = options.sport
    if options.dport is not None:
        cfg.flags |= kernel.F_DPORT
        cfg.dport = options.dport
    if options.iif:
        link = state.link(options.iif)
        if link is None:
            raise UsageError(f"unknown interface {options.iif!r} for --iif")
        cfg.flags |= kernel.F_IIF
        cfg.iif = link.index
    return cfg


class _DeviceNames(dict):
    """ifindex → the device's name in the state collected at start; a device made since by its number;
    0 (none) → None."""

    def __init__(self, names: dict[int, str]):
        super().__init__(names)
        self[0] = None

    def __missing__(self, index: int) -> str:
        return str(index)


class Decoder:
    """Ring records (bytes of struct flowrec / struct note) → events: one FlowRecord per flow, a
    ReplyEvent per note; interfaces named from the state collected at start."""

    def __init__(self, state: HostState, drop_reasons: dict[int, str]):
        self.names = _DeviceNames({link.index: link.name for link in state.links})
        self.reasons = drop_reasons
        self.symbols = kernel.KernelSymbols()
        self._dev = self.names.__getitem__  # a dozen times a record


    @staticmethod
    def _flow(k) -> FlowId:
        family = k.family
        return FlowId(k.netns, k.proto, kernel.address_text(k.saddr, family), kernel.address_text(k.daddr, family),
                      k.sport, k.dport)

    def decode(self, raw: bytes) -> Event | None:
        (kind,) = _KIND.unpack_from(raw, kernel.KIND_OFFSET)
        if kind == kernel.KIND_FLOW:
            return self.record(bytes(raw))
        note = kernel.RawNote.from_buffer_copy(raw)
        fid = self._flow(note.key)
        if kind == kernel.KIND_REPLY:
            return ReplyEvent(note.ts, note.cpu, fid, HOOKS[note.hook])
        sender = kernel.address_text(note.from_, note.key.family)
        if kind == kernel.KIND_ICMP_ERROR:
            return IcmpErrorEvent(note.ts, note.cpu, fid, note.icmp_type, note.icmp_code, sender, HOOKS[note.hook])
        if kind == kernel.KIND_REPLY_DROP:
            after = note.after - 1 if 0 < note.after <= kernel.POSITIONS else None
            return ReplyDropEvent(note.ts, note.cpu, fid, self._reason(note.reason), note.location,
                                  self._dev(note.ifindex), self.symbols.name(note.location),
                                  (note.icmp_type, note.icmp_code, sender) if note.icmp_error else None,
                                  HOOKS[after >> 1] if after is not None else None,
                                  POSITIONS[after & 1] if after is not None else None)
        if kind == kernel.KIND_PATH_CHANGE:
            return PathChangeEvent(note.ts, note.cpu, fid, self._dev(note.ifindex), note.mark)
        if kind == kernel.KIND_LATER_DROP:
            return LaterDropEvent(note.ts, note.cpu, fid, self._reason(note.reason), note.location,
                                  self._dev(note.ifindex), self.symbols.name(note.location))
        return None

    def _reason(self, number: int) -> str:
        return self.reasons.get(number, str(number)).removeprefix("SKB_DROP_REASON_")

    def record(self, raw: bytes) -> FlowRecord:
        """A ring record (struct flowrec) → its FlowRecord, by kernel.RECORD_HEAD and the formats of its parts."""
        (ts, location, _kind, cpu, netns, src, dst, sport, dport, proto, family, _seen, ct_status,
         osrc, odst, osport, odport, rsrc, rdst, rsport, rdport, reason, drop_ifindex,
         has_ct, nlookups, complete, npositions, order) = kernel.RECORD_HEAD.unpack_from(raw)
        fid = FlowId(netns, proto, kernel.packed_text(src, family), kernel.packed_text(dst, family), sport, dport)
        tuples: dict[tuple, Tuple] = {}  # a record's positions mostly carry the same tuple

        def tuple_of(key: tuple) -> Tuple:
            t = tuples.get(key)
            if t is None:
                t = tuples[key] = Tuple(kernel.packed_text(key[0], family), kernel.packed_text(key[1], family),
                                        key[2], key[3])
            return t

        ct_orig = tuple_of((osrc, odst, osport, odport)) if has_ct else None
        ct_reply = tuple_of((rsrc, rdst, rsport, rdport)) if has_ct else None
        hooks = []
        for index in order[:npositions]:
            if index >= kernel.POSITIONS:
                continue
            psrc, pdst, psport, pdport, in_ifindex, out_ifindex, mark = kernel.HOOK_POSITION.unpack_from(
                raw, kernel.HOOKS_OFFSET + index * kernel.HOOK_POSITION.size)
            hooks.append(HookEvent(ts, cpu, fid, HOOKS[index >> 1], POSITIONS[index & 1],
                                   tuple_of((psrc, pdst, psport, pdport)), self._dev(in_ifindex),
                                   self._dev(out_ifindex), mark, ct_orig, ct_reply, ct_status))
        lookups = []
        for i in range(min(nlookups, kernel.LOOKUPS_MAX)):
            (flowi, table, err, in_ifindex, out_ifindex, mark, lookup_cpu, lsrc, ldst, gw, gw_family,
             reverse, rule_known, rule_pref) = kernel.LOOKUP.unpack_from(raw, kernel.LOOKUPS_OFFSET
                                                                         + i * kernel.LOOKUP.size)
            gateway = GATEWAY_FAMILIES.get(gw_family)
            lookups.append(FibEvent(ts, lookup_cpu, fid, flowi, table, err, bool(reverse),
                                    kernel.packed_text(lsrc, family), kernel.packed_text(ldst, family),
                                    self._dev(in_ifindex), mark, self._dev(out_ifindex),
                                    kernel.packed_text(gw, gateway) if gateway else None,
                                    rule_pref if rule_known else None))
        drop = None
        if reason:
            packet = hooks[-1].packet if hooks else Tuple(fid.src, fid.dst, fid.sport, fid.dport)
            drop = DropEvent(ts, cpu, fid, self._reason(reason), location, self._dev(drop_ifindex), packet,
                             self.symbols.name(location))
        return FlowRecord(ts, cpu, fid, tuple(hooks), tuple(lookups), drop, bool(complete))


_KIND = struct.Struct("=I")


class Assembler:
    """Events → flow documents, each once, when its first packet left or was dropped and its reply
    came or `reply_wait` passed."""

    def __init__(self, state: HostState, reply_wait: float, compare_lag: float | None = COMPARE_LAG_SECONDS):
        self.state = state
        self.reply_wait = reply_wait
        self.flows: dict[FlowId, TracedFlow] = {}
        self.done: dict[FlowId, str | None] = {}  # printed flows: where their first packet left
        self._later: list[dict] = []  # path_change documents of printed flows
        # Complete flows, in the order they completed: waiting for their reply, or answered (ready).
        self._waiting: dict[FlowId, TracedFlow] = {}
        self._answered: dict[FlowId, TracedFlow] = {}
        self.rule_events: list[NftRuleEvent] = []
        self.describe = Describer(state, compare_lag)
        self.hooks_traced = False  # set once the netfilter probe is attached (TracedFlow.add)

    def add(self, event: Event, now: float) -> None:
        if isinstance(event, NftRuleEvent):
            self.rule_events.append(event)  # keyed by the packet's tuple at its chain: matched when described
            if len(self.rule_events) > 100_000:
                del self.rule_events[:10_000]
            return
        fid = event.flow
        if fid in self.done:
            if isinstance(event, PathChangeEvent | LaterDropEvent):
                self._later.append(later_doc(event, self.done[fid]))
            return
        flow = self.flows.get(fid)
        if flow is None:
            if isinstance(event, ConntrackEvent) and event.type != "new":
                return  # an update or the end of a flow that began before the trace: not a new flow
            flow = self.flows[fid] = TracedFlow(fid)
        was_complete = flow.complete_at is not None
        flow.add(event, now, self.hooks_traced)
        if flow.complete_at is None:
            return
        if flow.reply:
            self._waiting.pop(fid, None)
            self._answered[fid] = flow
        elif not was_complete:
            self._waiting[fid] = flow

    def _rules_of(self, flow: TracedFlow) -> list[NftRuleEvent]:
        if not self.rule_events:
            return []
        tuples = {(flow.id.src, flow.id.dst, flow.id.sport, flow.id.dport)}
        tuples.update((h.packet.src, h.packet.dst, h.packet.sport, h.packet.dport) for h in flow.hooks)
        found = []
        for event in self.rule_events:
            f = event.flow
            if f.proto == flow.id.proto and (f.src, f.dst, f.sport, f.dport) in tuples:
                found.append(event)
        return found

    def ready(self, now: float, *, final: bool = False) -> Iterator[dict]:
        """The documents of the flows that are ready (every flow left, with `final`)."""
        yield from self._later
        self._later.clear()
        if final:
            due = list(self.flows)
        else:
            due = []
            for fid, flow in self._answered.items():  # in reply order; a reply's drop may follow it
                if now - flow.reply_at < REPLY_GRACE_SECONDS:
                    break
                due.append(fid)
            for fid, flow in self._waiting.items():  # in completion order: the first not due ends it
                if now - flow.complete_at < self.reply_wait:
                    break
                due.append(fid)
        for fid in due:
            self._answered.pop(fid, None)
            self._waiting.pop(fid, None)
            flow = self.flows[fid]
            if not flow.original:  # the reply direction of a flow (see TracedFlow.original)
                if final:
                    del self.flows[fid]
                continue
            del self.flows[fid]
            flow.rules = self._rules_of(flow)
            doc = self.describe(flow, self.reply_wait)
            self.done[fid] = doc["egress"]["dev"] if doc["egress"] else None
            yield doc


def check(options: TraceOptions) -> tuple[list[collectors_mod.Collector], list[collectors_mod.Offer]]:
    """The collectors (each with can_run()) and how the tracepoint probes attach, for --check and the
    start line."""
    disabled = collectors_mod.disabled_from(options.without)
    chosen = [cls(disabled) for cls in collectors_mod.BPF_COLLECTORS]
    chosen.append(ConntrackCollector(disabled))
    chosen.append(NftraceCollector(disabled, wanted=options.rules))
    collectors_mod.refuse_unknown(options.without, [c.name for c in chosen])
    return chosen, collectors_mod.other_probes(disabled)


class Session:
    def __init__(self, options: TraceOptions):
        self.options = options
        self.summary = Summary()
        self.state: HostState | None = None
        self.started = time.monotonic()
        self.interrupted: BaseException | None = None

    def run(self, emit, on_start=None, flush=None) -> None:
        """`emit(doc)` for each flow document as it completes, then for the summary's document —
        also after Ctrl-C or SIGTERM (`self.interrupted` then says which), even when the signal
        arrives while `emit` prints. `on_start(collectors, summary)` is called once the probes are
        attached (the first event may come right after); `flush()`, if given, after each batch of
        documents (so that `emit` need not flush each one)."""
        flush = flush or (lambda: None)
        options = self.options
        if os.geteuid() != 0:
            raise EnvironmentProblem("why-route trace needs root (BPF programs, netfilter links)")
        from tracer.collect.live import collect_state

        inode = netns_inode(options.netns)
        run_dir = _run_dir(options.run_dir) if options.run_dir else None  # before the probes: fail early
        collectors, _others = check(options)
        usable = [c for c in collectors if c.can_run() is None]
        bpf_parts = [c for c in usable if c.part]
        # Compiling the probes (BCC, in C++: the GIL is released) while the state is collected
        # (mostly waiting for nft, iptables-save, conntrack) saves a good part of the start.
        compiled: dict = {}
        tp_btf, _why = collectors_mod.tp_btf_wanted(collectors_mod.disabled_from(options.without))

        def compile_in_background() -> None:
            try:
                compiled["bpf"] = kernel.compile_probes([c.part for c in bpf_parts], KernelFacts.load(),
                                                        tp_btf=tp_btf)
            except kernel.KernelError as error:
                compiled["error"] = error

        compiler = threading.Thread(target=compile_in_background, daemon=True)
        if bpf_parts:
            compiler.start()
        try:
            self.state = state = collect_state(options.netns)
        finally:
            if bpf_parts:
                compiler.join()
        self.summary.unavailable = {c.name: c.can_run() for c in collectors
                                    if c not in usable and (c.name != "rules" or options.rules)}
        if not usable:
            raise EnvironmentProblem("no probe can run here: " + "; ".join(
                f"{n}: {why}" for n, why in self.summary.unavailable.items()))
        events_file = None
        with netns_mod.Teardown() as undo:
            if run_dir:
                try:
                    snapshot.save(state, str(run_dir / "snapshot.json"))
                    events_file = undo.enter_context(open(run_dir / "events.jsonl", "w"))
                except OSError as error:
                    raise UsageError(f"cannot write the run directory {run_dir}: {error.strerror}") from None
            facts = KernelFacts.load()
            decoder = Decoder(state, {v: k for k, v in facts.enum("skb_drop_reason").items()})
            facts.save()  # the next start reads these answers instead of parsing the BTF
            assembler = Assembler(state, options.reply_wait, options.compare_lag)
            pending: list[Event] = []
            bpf = ring = None
            if bpf_parts:
                if "error" in compiled:
                    raise compiled["error"]
                bpf = compiled["bpf"]
                undo.callback(bpf.cleanup)
                bpf["config"][ctypes.c_int(0)] = _config(options, state, inode)
                events = bpf["events"]
                ring = kernel.Ring(events.map_fd, events.max_entries)
                undo.callback(ring.close)
            sources = []
            for collector in usable:
                try:
                    if collector.part:
                        collector.attach(bpf, undo, options.netns)
                    else:
                        sources.append(collector.open(undo, options, state, inode,
                                                      hooks_traced="netfilter" in self.summary.probes))
                except kernel.KernelError as error:
                    self.summary.unavailable[collector.name] = str(error)
                    continue
                self.summary.probes.append(collector.name)
                if collector.kind:
                    self.summary.attached_as[collector.name] = collector.kind
            drainer = Drainer(ring, {source.name: source.inbox for source in sources},
                              options.backlog or default_backlog())
            undo.callback(drainer.stop)
            drainer.start()
            assembler.hooks_traced = "netfilter" in self.summary.probes
            for routing in ("fib", "fib6", "fib_rule"):
                if "netfilter" not in self.summary.probes and routing in self.summary.probes:
                    # Nothing arms the routing probe: it would see no packet.
                    self.summary.probes.remove(routing)
                    self.summary.unavailable[routing] = "needs the netfilter probe, which could not attach"
            deadline = time.monotonic() + options.duration if options.duration else None
            try:
                with StopRequests() as stops, _collector_paused():
                    if on_start:  # inside: a Ctrl-C right after the start line still gets its summary
                        on_start(collectors, self.summary)
                    while not self._enough() and stops.signum is None:
                        for source in sources:
                            pending.extend(source.poll())
                        # A batch at a time: the sources are polled between batches however long the backlog.
                        raw = drainer.take(BATCH)
                        pending.extend(event for event in map(decoder.decode, raw) if event is not None)
                        now = time.monotonic()
                        self._add(pending, assembler, now, events_file)
                        for doc in assembler.ready(now):
                            self.summary.flows += doc["type"] == "flow"
                            emit(doc)
                            if self._enough() or stops.signum is not None:
                                break
                        flush()
                        if deadline and now >= deadline:
                            break
                        if len(raw) < BATCH:
                            time.sleep(POLL_SECONDS)
                self.interrupted = stops.exception()
            except (KeyboardInterrupt, Terminated) as stop:
                self.interrupted = stop  # a second signal: what is complete is still printed
            # What the kernel handed over until now is kept, and the flows still on their way.
            if bpf is not None:
                bpf["config"][ctypes.c_int(0)] = kernel.Config()  # not ready: the probes stop recording
            drainer.stop()
            for source in sources:
                pending.extend(source.poll())
            pending.extend(event for event in map(decoder.decode, drainer.take(len(drainer.records)))
                           if event is not None)
            left = _unfinished(bpf, decoder) if bpf is not None else []
            pending.extend(left)
            self._add(pending, assembler, time.monotonic(), events_file)
            self.summary.deferred = sum(record.complete for record in left)
            self.summary.lost_by = {**_lost(bpf, self.summary.deferred),
                                    **{source.name: source.lost for source in sources}}
            self.summary.lost_by.update(drainer.dropped())
            self.summary.lost = sum(self.summary.lost_by.values())
        # Detached: the rest is printing.
        for doc in assembler.ready(time.monotonic(), final=True):
            if self._enough():
                break
            self.summary.flows += doc["type"] == "flow"
            emit(doc)
        self.summary.not_compared = assembler.describe.not_compared
        self.summary.duration = time.monotonic() - self.started
        if run_dir:
            (run_dir / "summary.json").write_text(json.dumps(self.summary.to_json(), indent=2) + "\n")
        flush()  # the flows before the summary (on a terminal, text's goes to stderr)
        emit(self.summary.to_json())
        flush()

    def _enough(self) -> bool:
        return bool(self.options.count) and self.summary.flows >= self.options.count

    def _add(self, events: list[Event], assembler: Assembler, now: float, events_file) -> None:
        for event in events:
            self._count_event(event, events_file)
            assembler.add(event, now)
        events.clear()

    def _count_event(self, event: Event, events_file) -> None:
        self.summary.events += 1
        if self.summary.first_event_after is None:
            self.summary.first_event_after = time.monotonic() - self.started
        if events_file is not None:
            events_file.write(json.dumps(to_json(event)) + "\n")


@contextlib.contextmanager
def _collector_paused():
    """No cyclic garbage collection while tracing: a full collection over a backlog of flows holds
    the interpreter for up to a second, and the drain thread with it, long enough for the kernel's
    ring to fill under tens of thousands of new flows a second. What is made here is freed by
    reference counting (a flow's objects form no cycles); collection resumes afterwards."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


class StopRequests:
    """Ctrl-C, SIGTERM and SIGHUP while the main loop runs: the first is noted (`signum`), for the loop
    to stop where nothing is half moved from the kernel's buffers to the flows (then what is complete
    is printed); a second one raises KeyboardInterrupt or Terminated at once (a pipe nobody reads
    would block the printing forever)."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

    def __init__(self):
        self.signum: int | None = None
        self._previous: dict[int, object] = {}

    def _handle(self, signum, _frame) -> None:
        if self.signum is not None:
            raise self.exception()
        self.signum = signum

    def exception(self) -> BaseException | None:
        if self.signum is None:
            return None
        return KeyboardInterrupt() if self.signum == signal.SIGINT else Terminated(self.signum)

    def __enter__(self) -> StopRequests:
        try:
            for signum in self.SIGNALS:
                self._previous[signum] = signal.signal(signum, self._handle)
        except ValueError:
            pass  # not the main thread: the signals keep their handlers (and raise wherever they arrive)
        return self

    def __exit__(self, *exc_info) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)


class Drainer:
    """Copies what the kernel hands over — the ring's records, the netlink sockets' datagrams — into
    memory, in a thread of its own every few milliseconds, whatever the main loop is doing (describing
    a backlog of flows, or blocked writing them to a slow reader): neither the ring nor a socket's
    buffer may overflow meanwhile (the kernel would lose their events)."""

    def __init__(self, ring: kernel.Ring | None, inboxes: dict, limit: int = BACKLOG_RANGE[1]):
        self.ring, self.inboxes = ring, inboxes
        self.records: collections.deque[bytes] = collections.deque()
        self.limit = limit  # records held at most; the ring's records beyond are dropped and counted
        for inbox in inboxes.values():  # the sockets' datagrams share as many bytes as the records take
            inbox.limit = limit * RECORD_MEMORY // len(inboxes)
        self._ring_dropped = 0
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="drainer", daemon=True)

    def drain(self) -> None:
        if self.ring is not None:
            taken = self.ring.read()  # (read whatever the room: the kernel's ring must not fill)
            room = max(0, self.limit - len(self.records))
            if len(taken) > room:
                self._ring_dropped += len(taken) - room
                del taken[room:]
            self.records.extend(taken)
        for inbox in self.inboxes.values():
            inbox.drain()

    def dropped(self) -> dict[str, int]:
        """What was dropped because the backlog was full, where anything was: ring records
        (`backlog`), each source's netlink messages (`<source>_backlog`)."""
        counts = {"backlog": self._ring_dropped,
                  **{f"{name}_backlog": inbox.dropped for name, inbox in self.inboxes.items()}}
        return {key: count for key, count in counts.items() if count}

    def _run(self) -> None:
        while not self._stopping.is_set():
            self.drain()
            self._stopping.wait(RING_POLL_SECONDS)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Stop the thread, then read what is left (idempotent)."""
        if self._thread.is_alive():
            self._stopping.set()
            self._thread.join()
        self.drain()

    def take(self, most: int) -> list[bytes]:
        taken = []
        while self.records and len(taken) < most:
            taken.append(self.records.popleft())
        return taken


def _run_dir(name: str) -> Path:
    """-o RUN_DIR, made if need be; a UsageError if it cannot be."""
    path = Path(name)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise UsageError(f"cannot make the run directory {name}: {error.strerror}") from None
    if not os.access(path, os.W_OK):
        raise UsageError(f"cannot write the run directory {name}: read-only")
    return path


def _unfinished(bpf, decoder: Decoder) -> list[FlowRecord]:
    """The records still in the kernel's map when the trace ends: flows whose first packet's path did
    not end while traced (queued, stolen, or the trace stopped in between), and complete ones the
    ring refused at the time."""
    return [decoder.record(bytes(value))
            for _key, value in bpf["records"].items()]


def _lost(bpf, recovered: int) -> dict[str, int]:
    """What the probes counted as lost: notes the ring refused, and the records it refused that were
    not found in the flow map at the end (`recovered` were: complete, read there); records the flow
    map refused."""
    if bpf is None:
        return {}
    notes, refused, deferred = (int(bpf["lost"][ctypes.c_int(index)].value) for index in range(3))
    return {"ring": notes + max(0, deferred - recovered), "flow_map": refused}


def replay(run_dir: str, reply_wait: float = 0.0) -> Iterator[dict]:
    """The flows of a `-o RUN_DIR`, from its events and its snapshot, without the host; then its summary."""
    path = Path(run_dir)
    missing = [name for name in ("snapshot.json", "events.jsonl") if not (path / name).is_file()]
    if missing:
        raise UsageError(f"cannot read the run directory {run_dir}: no {' and no '.join(missing)} in it "
                         "(made by `why-route trace -o RUN_DIR`)")
    try:
        state = snapshot.load(str(path / "snapshot.json"))
        lines = (path / "events.jsonl").read_text().splitlines()
    except OSError as error:
        raise UsageError(f"cannot read the run directory {run_dir}: {error.strerror}: {error.filename}") from None
    assembler = Assembler(state, reply_wait, compare_lag=None)  # recorded times: no lag to judge
    for number, line in enumerate(lines, 1):
        try:
            assembler.add(from_json(json.loads(line)), 0.0)
        except (ValueError, TypeError) as error:
            raise UsageError(f"{path / 'events.jsonl'} line {number}: {error}") from None
    yield from assembler.ready(0.0, final=True)
    summary = path / "summary.json"
    if summary.exists():
        yield json.loads(summary.read_text())


def describe_filter(options: TraceOptions) -> str:
    words = []
    if options.proto:
        words.append(protocol_name(options.proto))
    for label, value in (("from", options.src), ("to", options.dst), ("sport", options.sport),
                         ("dport", options.dport), ("iif", options.iif)):
        if value is not None:
            words.append(f"{label} {value}")
    return " ".join(words) or "every new flow"


__all__ = ["TraceOptions", "Session", "Summary", "check", "replay", "describe_filter", "FibEvent", "HookEvent",
           "DropEvent", "ReplyEvent"]
