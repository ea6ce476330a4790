"""`--rules`: which nft rule decided, from nftables tracing. Opt-in, because it changes the ruleset
while the trace runs: a table of why-route's own (`flags owner`: NFT_TABLE_F_OWNER, so the kernel
removes it when the `nft -i` process holding it ends — with this process, even on SIGKILL) whose
chains at prerouting and output, before raw and conntrack (priority -400), set `meta nftrace set 1`
for the filtered flow only. `nft -a monitor trace` (NFNLGRP_NFTRACE) reports each rule those packets
cross, with its handle and verdict; iptables-nft rules are nft rules and appear too. iptables-legacy
rules cannot be traced this way.

Both nft processes get PR_SET_PDEATHSIG, so they end with why-route whatever kills it.
"""

from __future__ import annotations

import ctypes
import ipaddress
import os
import re
import select
import shutil
import signal
import subprocess
import time

from tracer.trace.collectors import Collector
from tracer.trace.events import FlowId, NftRuleEvent

PRIORITY = -400
_LINE = re.compile(r"trace id (?P<id>[0-9a-f]+) (?P<family>\w+) (?P<table>\S+) (?P<chain>\S+) "
                   r"(?P<what>packet|rule|policy|verdict):? ?(?P<rest>.*)$")
_HANDLE_VERDICT = re.compile(r"^(?P<text>.*?)(?: # handle (?P<handle>\d+))? \(verdict (?P<verdict>[^)]*)\)\s*$")


def _die_with_parent() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def table_name() -> str:
    return f"whyroute_trace_{os.getpid()}"


def match_text(options) -> str:
    """The nft match for the trace's filter; every value was validated (addresses, numbers)."""
    words = []
    if options.src:
        words.append(f"ip saddr {ipaddress.IPv4Address(options.src)}")
    if options.dst:
        words.append(f"ip daddr {ipaddress.IPv4Address(options.dst)}")
    if options.proto:
        words.append(f"meta l4proto {int(options.proto)}")
    if options.sport is not None:
        words.append(f"th sport {int(options.sport)}")
    if options.dport is not None:
        words.append(f"th dport {int(options.dport)}")
    return " ".join(words)


def table_commands(options) -> str:
    name, match = table_name(), match_text(options)
    return (f"add table ip {name} {{ flags owner; }}\n"
            f"add chain ip {name} pre {{ type filter hook prerouting priority {PRIORITY}; }}\n"
            f"add chain ip {name} out {{ type filter hook output priority {PRIORITY}; }}\n"
            f"add rule ip {name} pre {match} meta nftrace set 1\n"
            f"add rule ip {name} out {match} meta nftrace set 1\n")


def _packet_flow(rest: str, netns: int) -> FlowId | None:
    fields = dict(re.findall(r"(ip saddr|ip daddr|tcp sport|tcp dport|udp sport|udp dport|icmp id) (\S+)", rest))
    if "ip saddr" not in fields or "ip daddr" not in fields:
        return None
    if "tcp sport" in fields:
        return FlowId(netns, 6, fields["ip saddr"], fields["ip daddr"], int(fields["tcp sport"]),
                      int(fields["tcp dport"]))
    if "udp sport" in fields:
        return FlowId(netns, 17, fields["ip saddr"], fields["ip daddr"], int(fields["udp sport"]),
                      int(fields["udp dport"]))
    if "icmp id" in fields or " icmp " in f" {rest}":
        return FlowId(netns, 1, fields["ip saddr"], fields["ip daddr"], int(fields.get("icmp id", 0)), 0)
    return None


class NftTraceSource:
    def __init__(self, owner: subprocess.Popen, monitor: subprocess.Popen, netns: int, hooks: dict):
        self.owner, self.monitor, self.netns, self.hooks = owner, monitor, netns, hooks
        self.lost = 0
        self._buffer = b""
        self._packets: dict[str, FlowId] = {}
        self._last_hook: dict[str, str] = {}

    def poll(self) -> list[NftRuleEvent]:
        events = []
        fd = self.monitor.stdout.fileno()
        while select.select([fd], [], [], 0)[0]:
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                break
            self._buffer += chunk
        *lines, self._buffer = self._buffer.split(b"\n")
        for raw in lines:
            event = self._parse(raw.decode(errors="replace"))
            if event is not None:
                events.append(event)
        return events

    def _parse(self, line: str) -> NftRuleEvent | None:
        m = _LINE.match(line.strip())
        if not m:
            return None
        trace_id, what, rest = m["id"], m["what"], m["rest"]
        hook = self.hooks.get((m["family"], m["table"], m["chain"])) or self._last_hook.get(trace_id)
        if hook:
            self._last_hook[trace_id] = hook
        if what == "packet":
            flow = _packet_flow(rest, self.netns)
            if flow is not None:
                self._packets[trace_id] = flow
            if len(self._packets) > 100_000:
                self._packets.pop(next(iter(self._packets)))
            return None
        packet = self._packets.get(trace_id)
        if packet is None:
            return None
        if m["table"].startswith("whyroute_trace_"):
            return None  # our own marking rule
        if what in ("policy", "verdict"):
            return NftRuleEvent(time.monotonic_ns(), packet, m["table"], m["chain"], hook, None,
                                f"{what} {rest.strip()}", rest.strip())
        vm = _HANDLE_VERDICT.match(rest)
        if not vm:
            return None
        return NftRuleEvent(time.monotonic_ns(), packet, m["table"], m["chain"], hook,
                            int(vm["handle"]) if vm["handle"] else None, vm["text"].strip(), vm["verdict"])

    def close(self) -> None:
        for proc in (self.monitor, self.owner):
            if proc.poll() is None:
                if proc is self.owner and proc.stdin:
                    proc.stdin.close()  # nft -i ends at EOF, and its table with it
                proc.terminate()
                try:
                    proc.wait(2)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()


def chain_hooks(state) -> dict:
    nft = (state.netfilter.get("nft") or {}).get("ruleset") or {}
    hooks = {}
    for item in nft.get("nftables", []):
        chain = item.get("chain")
        if chain and chain.get("hook"):
            hooks[(chain["family"], chain["table"], chain["name"])] = chain["hook"]
    return hooks


class NftraceCollector(Collector):
    name = "rules"
    part = None
    what = "nftables tracing of the filtered flow (--rules: the deciding nft rule, by handle)"
    event = "nftrule"

    def __init__(self, disabled=frozenset(), wanted: bool = False):
        super().__init__(disabled)
        self.wanted = wanted

    def can_run(self) -> str | None:
        if not self.wanted:
            return ("opt-in with --rules: it adds a table of why-route's own (removed when the trace ends) "
                    "that marks the filtered flow for nftables tracing")
        if self.name in self.disabled:
            return "disabled (--without rules or WHYROUTE_TRACE_DISABLE)"
        if shutil.which("nft") is None:
            return "`nft` (nftables) is not installed"
        if os.geteuid() != 0:
            return "needs root (CAP_NET_ADMIN)"
        return None

    def open(self, undo, options, state, netns_inode: int) -> NftTraceSource:
        from tracer.trace.kernel import KernelError

        prefix = ["ip", "netns", "exec", options.netns] if options.netns else []
        monitor = subprocess.Popen([*prefix, "nft", "-a", "monitor", "trace"], stdout=subprocess.PIPE,
                                   stderr=subprocess.DEVNULL, preexec_fn=_die_with_parent)
        owner = subprocess.Popen([*prefix, "nft", "-i"], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                 stderr=subprocess.PIPE, preexec_fn=_die_with_parent, text=True)
        source = NftTraceSource(owner, monitor, netns_inode, chain_hooks(state))
        undo.callback(source.close)
        owner.stdin.write(table_commands(options))
        owner.stdin.flush()
        # Wait until the table exists (nft -i applies each line as it reads it).
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            listed = subprocess.run([*prefix, "nft", "list", "table", "ip", table_name()], capture_output=True)
            if listed.returncode == 0:
                return source
            if owner.poll() is not None:
                break
            time.sleep(0.05)
        raise KernelError(f"nft could not create the tracing table: {owner.stderr.read() if owner.poll() else ''}"
                          .strip() or "nft could not create the tracing table")


def describe_rule(event: NftRuleEvent) -> dict:
    return {"table": event.table, "chain": event.chain, "handle": event.handle, "rule": event.text,
            "verdict": event.verdict}


__all__ = ["NftraceCollector", "table_name", "match_text", "describe_rule"]
