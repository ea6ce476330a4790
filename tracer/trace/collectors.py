"""The collectors of a trace, retis-style: each one has its options, says whether it can run on
this kernel (`can_run()`: None, or the reason in plain words), attaches its probe, produces one
event type (tracer.trace.events), and registers its own cleanup on the session's Teardown.

    netfilter   BPF netfilter programs at each IPv4 and IPv6 hook (last priority; prerouting and output
                first too)                                                          → FlowRecord, notes
    fib         fib:fib_table_lookup tracepoint (tp_btf, else raw)                  → FibEvent
    fib6        fib6:fib6_table_lookup tracepoint (tp_btf, else raw)                → FibEvent
    drop        skb:kfree_skb tracepoint (tp_btf, else raw), reason names from BTF  → DropEvent
    fib_rule    fentry, else kprobe, on fib4_rule_action / fib6_rule_action         → FibEvent.rule
    conntrack   ctnetlink NEW/UPDATE/DESTROY multicast groups                       → ConntrackEvent

The BPF collectors share one BPF object (probes/common.h and each running one's probes/*.c) and its
maps: the flow table, the filter, the ring buffer.
"""

from __future__ import annotations

import contextlib
import os
import platform
from dataclasses import dataclass
from pathlib import Path

from tracer import netns as netns_mod
from tracer.errors import UsageError
from tracer.trace import kernel
from tracer.trace.btf import BtfError, KernelFacts

DISABLE_ENV = "WHYROUTE_TRACE_DISABLE"  # comma-separated collector names, as --without
TP_BTF = "tp_btf"  # --without tp_btf: the tracepoint probes attach as raw tracepoints
FENTRY = "fentry"  # --without fentry: the rule probe attaches as a kprobe

# Where a first-position program runs: the packet before the chains of input, forward and postrouting
# is the one the previous hook left (probes/netfilter.c records it from there), so a link less each.
FIRST_POSITION_HOOKS = ("prerouting", "output")


def kernel_release() -> tuple[int, int]:
    parts = platform.release().split(".")
    try:
        return int(parts[0]), int(parts[1].split("-")[0])
    except (IndexError, ValueError):
        return (0, 0)


def _btf() -> tuple[KernelFacts | None, str | None]:
    try:
        return KernelFacts.load(), None
    except BtfError as error:
        return None, str(error)


def _has_tracepoint(btf: KernelFacts, name: str) -> bool:
    """Raw tracepoints appear in BTF as typedefs btf_trace_<name>."""
    return btf.has_typedef(f"btf_trace_{name}")


class Collector:
    name = ""
    part: str | None = None  # its file in probes/
    what = ""  # one line for --check
    event = ""  # the event kind it produces

    def __init__(self, disabled: frozenset[str] = frozenset()):
        self.disabled = disabled
        self.attached: list[str] = []
        self.kind: str | None = None  # a tracepoint probe's attachment: tp_btf | raw_tracepoint

    def can_run(self) -> str | None:
        if self.name in self.disabled:
            return f"disabled (--without {self.name} or {DISABLE_ENV})"
        if os.geteuid() != 0:
            return "needs root (CAP_BPF, CAP_NET_ADMIN)"
        btf, why = _btf()
        if btf is None:
            return why
        return self._can_run(btf)

    def _can_run(self, btf: KernelFacts) -> str | None:
        return None

    def attach(self, bpf, undo, netns: str | None) -> None:
        """Attach (BCC already attached raw tracepoints when loading); cleanup goes on `undo`."""

    def attach_as(self) -> str | None:
        """For --check: the way it will attach, where it has a choice."""
        return None


class NetfilterCollector(Collector):
    name = "netfilter"
    part = "netfilter.c"
    what = ("BPF netfilter programs at every IPv4 and IPv6 hook, after its chains (and before them at prerouting "
            "and output): verdicts, NAT, marks, replies")
    event = "hook"

    def _can_run(self, btf: KernelFacts) -> str | None:
        if kernel_release() < (6, 4):
            return f"BPF netfilter links need kernel >= 6.4 (this is {platform.release()})"
        if not btf.has_struct("bpf_nf_ctx"):
            return "the kernel has no BPF netfilter links (built without CONFIG_NETFILTER_BPF_LINK)"
        for struct in ("nf_conn", "nf_hook_state"):
            if not btf.has_struct(struct):
                return f"the kernel's BTF has no struct {struct} (conntrack built as a module not loaded?)"
        return None

    def attach(self, bpf, undo, netns: str | None) -> None:
        first = bpf.load_func(b"wr_hook_first", kernel.BPF_PROG_TYPE_NETFILTER, attach_type=kernel.BPF_NETFILTER)
        last = bpf.load_func(b"wr_hook_last", kernel.BPF_PROG_TYPE_NETFILTER, attach_type=kernel.BPF_NETFILTER)
        # The link attaches in the calling thread's namespace, and pins it until closed.
        # A priority holds one BPF link per hook and namespace: a second trace of the same namespace
        # takes the next free one (INT_MIN+2, INT_MAX-2, …).
        with netns_mod.entered(netns):
            for family, pf in kernel.NF_FAMILIES.items():
                for hook in kernel.NF_HOOKS:
                    positions = ((first, kernel.PRIORITY_FIRST, 1),) if hook in FIRST_POSITION_HOOKS else ()
                    for prog, priority, step in (*positions, (last, kernel.PRIORITY_LAST, -1)):
                        fd = kernel.netfilter_link_near(prog.fd, hook, priority, step, pf)
                        undo.callback(os.close, fd)
                        self.attached.append(f"{family} {hook}")


class FibCollector(Collector):
    name = "fib"
    part = "fib.c"
    tracepoint = "fib_table_lookup"
    what = ("fib:fib_table_lookup tracepoint, tp_btf or raw (every IPv4 table looked up, in order, with its result; "
            "a socket's lookups too)")
    event = "fib"

    def _can_run(self, btf: KernelFacts) -> str | None:
        if not _has_tracepoint(btf, self.tracepoint):
            return f"the kernel has no {self.what.split()[0]} tracepoint"
        if NetfilterCollector(self.disabled).can_run() is not None:
            return ("needs the netfilter probe: the prerouting-last program tells which packet is being "
                    "routed, the output one which socket lookup was a new flow's (the tracepoint "
                    "carries no packet)")
        return None

    def attach(self, bpf, undo, netns: str | None) -> None:
        _attach_tracepoint(self, bpf, undo, self.tracepoint)


class Fib6Collector(FibCollector):
    name = "fib6"
    part = "fib6.c"
    tracepoint = "fib6_table_lookup"
    what = ("fib6:fib6_table_lookup tracepoint, tp_btf or raw (every IPv6 table looked up, in order, with its result; "
            "a socket's lookups too)")


class DropCollector(Collector):
    name = "drop"
    part = "drop.c"
    what = "skb:kfree_skb tracepoint, tp_btf or raw (where and why a flow's packet was dropped)"
    event = "drop"

    def _can_run(self, btf: KernelFacts) -> str | None:
        if not _has_tracepoint(btf, "kfree_skb"):
            return "the kernel has no skb:kfree_skb tracepoint"
        try:
            btf.enum("skb_drop_reason")
        except BtfError:
            return "the kernel has no enum skb_drop_reason (kernel < 5.17): drops would have no reason"
        return None

    def attach(self, bpf, undo, netns: str | None) -> None:
        _attach_tracepoint(self, bpf, undo, "kfree_skb")


def tp_btf_wanted(disabled: frozenset[str]) -> tuple[bool, str | None]:
    """Whether the tracepoint probes are to be built as tp_btf programs, and why not."""
    if TP_BTF in disabled:
        return False, f"--without {TP_BTF}"
    btf, why = _btf()
    if why is None:
        try:
            why = kernel.tp_btf_refused(btf.typedef_id("btf_trace_kfree_skb"))
        except BtfError as error:
            why = str(error)
    return why is None, why


def _attach_tracepoint(collector: Collector, probes, undo, tracepoint: str) -> None:
    """As the probes were built (see tp_btf_wanted): a BTF-typed tracepoint, whose pointer arguments
    are read without a helper call, or a raw tracepoint; `kind` says which."""
    fd = kernel.attach_tracepoint(probes, tracepoint)
    if fd is not None:
        undo.callback(os.close, fd)
    collector.kind = "tp_btf" if probes.tp_btf else "raw_tracepoint"
    collector.attached.append(f"{collector.kind}/{tracepoint}")


KPROBE_PMU = Path("/sys/bus/event_source/devices/kprobe")
RULE_ACTIONS = ((4, "fib4_rule_action"), (6, "fib6_rule_action"))


class RuleCollector(Collector):
    """The ip rule of each table lookup in the kernel's own word: the rule's action function, entered
    just before its table is looked up. Best first: fentry (a trampoline), else a kprobe (a trap);
    without either the rule is derived from the rule list and the tables looked up (flows.py)."""

    name = "fib_rule"
    part = "fib_rule.c"
    what = ("fentry, else kprobe, on fib4_rule_action / fib6_rule_action (the ip rule of each table looked up, "
            "from the kernel; without it, derived from the rule list and the tables looked up)")
    event = "fib"

    def __init__(self, disabled: frozenset[str] = frozenset()):
        super().__init__(disabled)
        self._kinds: tuple[list[str], str | None] | None = None

    def _can_run(self, btf: KernelFacts) -> str | None:
        needed = [n for n, cls in (("netfilter", NetfilterCollector), ("fib", FibCollector))
                  if cls(self.disabled).can_run() is not None]
        if needed:
            return (f"needs the {' and '.join(needed)} probe{'s' if len(needed) > 1 else ''}: the rule is "
                    "named on the table lookups of a traced packet")
        return self.kinds(btf)[1]

    def kinds(self, btf: KernelFacts) -> tuple[list[str], str | None]:
        """The ways this kernel lets the probe attach, best first, and why there is none."""
        if self._kinds is None:
            function = RULE_ACTIONS[0][1]
            try:
                func_id: int | None = btf.func_id(function)
            except BtfError:
                func_id = None
            refused = f"--without {FENTRY}" if FENTRY in self.disabled else kernel.fentry_refused(function, func_id)
            kinds = ([] if refused else ["fentry"]) + (["kprobe"] if KPROBE_PMU.exists() and func_id else [])
            why = None if kinds else (
                f"{refused}, and {'it has no kprobes (CONFIG_KPROBES off)' if func_id else 'no kprobe either'}: "
                "the rule is derived from the rule list and the tables looked up")
            self._kinds = kinds, why
        return self._kinds

    def attach_as(self) -> str | None:
        btf, _why = _btf()
        return self.kinds(btf)[0][0] if btf and self.can_run() is None else None

    def attach(self, bpf, undo, netns: str | None) -> None:
        btf = KernelFacts.load()
        kinds, _why = self.kinds(btf)
        failures = []
        for kind in kinds:
            with contextlib.ExitStack() as attempt:  # a kind that attaches for one family only leaves nothing
                try:
                    for family, function in RULE_ACTIONS:
                        if family == 4 or "fib6.c" in bpf.parts:
                            self._attach_one(kind, bpf, attempt, family, function, btf)
                except kernel.KernelError as error:
                    failures.append(str(error))
                    self.attached.clear()
                    continue
                undo.push(attempt.pop_all())
            self.kind = kind
            return
        raise kernel.KernelError("; ".join(failures) or "no way to attach")

    def _attach_one(self, kind: str, bpf, undo, family: int, function: str, btf: KernelFacts) -> None:
        program = f"wr_rule{family}_{kind}"
        if kind == "fentry":
            try:
                func_id = btf.func_id(function)
            except BtfError as error:
                raise kernel.KernelError(str(error)) from None
            undo.callback(os.close, kernel.attach_fentry(bpf, program, function, func_id))
        else:
            try:
                bpf.bpf.attach_kprobe(event=function.encode(), fn_name=program.encode())
            except Exception as error:  # noqa: BLE001 - BCC raises bare Exception
                raise kernel.KernelError(f"kprobe on {function}: {error}") from None
            undo.callback(bpf.bpf.detach_kprobe, event=function.encode())
        self.attached.append(f"{kind}/{function}")


BPF_COLLECTORS = (NetfilterCollector, FibCollector, Fib6Collector, DropCollector, RuleCollector)


@dataclass(frozen=True)
class Offer:
    """One probe this kernel may or may not offer, for --check."""

    name: str
    offered: bool | None  # None: not tried
    used: bool
    why: str


def _tp_btf_offer(disabled: frozenset[str]) -> Offer:
    if os.geteuid() != 0:
        return Offer(TP_BTF, None, False, "needs root to try")
    wanted, why = tp_btf_wanted(disabled - {TP_BTF})
    if not wanted:
        return Offer(TP_BTF, False, False, why + "; the tracepoint probes attach as raw tracepoints (a helper call "
                                                  "for each field they read)")
    if TP_BTF in disabled:
        return Offer(TP_BTF, True, False, "offered, not used: --without tp_btf (raw tracepoints instead)")
    return Offer(TP_BTF, True, True, None)


def other_probes(disabled: frozenset[str] = frozenset()) -> list[Offer]:
    """Whether the tracepoint probes attach as tp_btf, and why not."""
    return [_tp_btf_offer(disabled)]


def _disabled_by_env() -> set[str]:
    return {n.strip() for n in os.environ.get(DISABLE_ENV, "").split(",") if n.strip()}


def disabled_from(without: tuple[str, ...] = ()) -> frozenset[str]:
    return frozenset(set(without) | _disabled_by_env())


def refuse_unknown(without: tuple[str, ...], probes: list[str]) -> None:
    """A UsageError for a name --without or WHYROUTE_TRACE_DISABLE gives that is none of `probes` nor
    tp_btf nor fentry: a typo would leave that probe in."""
    names = [*probes, TP_BTF, FENTRY]
    for given, where in ((set(without), "--without"), (_disabled_by_env(), DISABLE_ENV)):
        unknown = sorted(given - set(names))
        if unknown:
            raise UsageError(f"{where}: no probe named {', '.join(map(repr, unknown))} "
                             f"(probes: {', '.join(names)})")
