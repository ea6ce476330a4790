"""`--rules`: which nft rule decided, from nftables tracing. Opt-in, because it changes the ruleset
while the trace runs: a table of why-route's own (`flags owner`: NFT_TABLE_F_OWNER, so the kernel
removes it when the `nft -i` process holding it ends — with this process, even on SIGKILL) whose
chains at prerouting and output, before raw and conntrack (priority -400), set `meta nftrace set 1`
for the filtered flow only (an `inet` table: IPv4 and IPv6). The kernel then reports each rule those
packets cross on the NFNLGRP_NFTRACE netlink group: table, chain, rule handle, verdict, the packet's
headers; this module reads those messages itself (no `nft monitor` text) and names each rule by its
handle, with its text from the ruleset collected at start (`nft -a list ruleset`), or listed again
for a rule added since. iptables-nft rules are nft rules and appear too. iptables-legacy rules cannot
be traced this way.

The `nft -i` process gets PR_SET_PDEATHSIG, so it ends with why-route whatever kills it.
"""

from __future__ import annotations

import functools
import ipaddress
import os
import re
import shutil
import struct
import subprocess
import time

from tracer import netns as netns_mod
from tracer.trace import netlink
from tracer.trace.collectors import Collector
from tracer.trace.events import FlowId, NftRuleEvent

PRIORITY = -400
NFNLGRP_NFTRACE = 9
NFNL_SUBSYS_NFTABLES, NFT_MSG_TRACE = 10, 17
(NFTA_TRACE_TABLE, NFTA_TRACE_CHAIN, NFTA_TRACE_RULE_HANDLE, NFTA_TRACE_TYPE, NFTA_TRACE_VERDICT, NFTA_TRACE_ID,
 NFTA_TRACE_LL_HEADER, NFTA_TRACE_NETWORK_HEADER, NFTA_TRACE_TRANSPORT_HEADER) = range(1, 10)
NFTA_TRACE_POLICY = 16
NFTA_VERDICT_CODE, NFTA_VERDICT_CHAIN = 1, 2
TRACE_POLICY, TRACE_RETURN, TRACE_RULE = 1, 2, 3  # enum nft_trace_types
VERDICTS = {0: "drop", 1: "accept", 2: "stolen", 3: "queue", 4: "repeat", 5: "stop",
            -1: "continue", -2: "break", -3: "jump", -4: "goto", -5: "return"}
NF_VERDICT_MASK = 0xFF  # a queue verdict carries its queue number above
FAMILIES = {1: "inet", 2: "ip", 3: "arp", 5: "netdev", 7: "bridge", 10: "ip6"}  # nfgenmsg family → nft's name
RECEIVE_BUFFER = 16 << 20
PORTED, ECHO = (6, 17, 132), {1: (8, 0), 58: (128, 129)}
_COUNTER = re.compile(r"counter packets \d+ bytes \d+")
_HANDLE = re.compile(r"^(?P<text>.*\S) # handle (?P<handle>\d+)$")


def table_name() -> str:
    return f"whyroute_trace_{os.getpid()}"


def match_text(options) -> str:
    """The nft match for the trace's filter; every value was validated (addresses, numbers)."""
    words = []
    for keyword, text in (("saddr", options.src), ("daddr", options.dst)):
        if text:
            address = ipaddress.ip_address(text)
            words.append(f"{'ip' if address.version == 4 else 'ip6'} {keyword} {address}")
    if options.proto:
        words.append(f"meta l4proto {int(options.proto)}")
    if options.sport is not None:
        words.append(f"th sport {int(options.sport)}")
    if options.dport is not None:
        words.append(f"th dport {int(options.dport)}")
    return " ".join(words)


def table_commands(options) -> str:
    name, match = table_name(), match_text(options)
    return (f"add table inet {name} {{ flags owner; }}\n"
            f"add chain inet {name} pre {{ type filter hook prerouting priority {PRIORITY}; }}\n"
            f"add chain inet {name} out {{ type filter hook output priority {PRIORITY}; }}\n"
            f"add rule inet {name} pre {match} meta nftrace set 1\n"
            f"add rule inet {name} out {match} meta nftrace set 1\n")


def packet_flow(network: bytes, transport: bytes, netns: int) -> FlowId | None:
    """The flow tuple of a traced packet, from the headers the trace message carries."""
    if len(network) >= 20 and network[0] >> 4 == 4:
        proto, src, dst = network[9], network[12:16], network[16:20]
    elif len(network) >= 40 and network[0] >> 4 == 6:
        proto, src, dst = network[6], network[8:24], network[24:40]
    else:
        return None
    sport = dport = 0
    if proto in PORTED and len(transport) >= 4:
        sport, dport = struct.unpack_from("!HH", transport)
    elif proto in ECHO and len(transport) >= 6 and transport[0] in ECHO[proto]:
        sport = struct.unpack_from("!H", transport, 4)[0]
    return FlowId(netns, proto, str(ipaddress.ip_address(src)), str(ipaddress.ip_address(dst)), sport, dport)


def rule_texts(listing: str) -> dict[tuple[str, str, int], tuple[str, str]]:
    """(family, table, handle) → (chain, rule text) from `nft -a list …` text; counters' values are
    left out (they were those of the listing's time)."""
    found, family, table, chain = {}, None, None, None
    for line in listing.splitlines():
        words = line.split()
        m = _HANDLE.match(line.strip())
        text = m["text"] if m else line.strip()
        if not words:
            continue
        if words[0] == "table" and len(words) >= 3:
            family, table, chain = words[1], words[2], None
        elif words[0] == "chain" and len(words) >= 2:
            chain = words[1]
        elif text.endswith("{"):  # a set, map, flowtable or stateful object: no rules inside
            chain = None
        elif chain and m:
            found[(family, table, int(m["handle"]))] = (chain, _COUNTER.sub("counter", text))
    return found


class RuleTexts:
    """Rule texts by handle: from the ruleset collected at start; a table is listed again (once per
    unknown handle) for rules added since."""

    def __init__(self, state, netns: str | None):
        self.netns = netns
        self.known = rule_texts((state.netfilter.get("nft") or {}).get("text") or "")
        self.missed: set[tuple[str, str, int]] = set()

    def text(self, family: str, table: str, handle: int) -> str | None:
        key = (family, table, handle)
        if key not in self.known and key not in self.missed:
            self.missed.add(key)
            prefix = ["ip", "netns", "exec", self.netns] if self.netns else []
            listed = subprocess.run([*prefix, "nft", "-a", "list", "table", family, table], capture_output=True,
                                    text=True)
            if listed.returncode == 0:
                self.known.update(rule_texts(listed.stdout))
        found = self.known.get(key)
        return found[1] if found else None


class NftTraceSource:
    """The NFNLGRP_NFTRACE socket of a session (and the `nft -i` process owning the marking table)."""

    name = "rules"

    def __init__(self, owner: subprocess.Popen, sock, netns: int, hooks: dict, texts: RuleTexts):
        self.owner, self.sock, self.netns, self.hooks, self.texts = owner, sock, netns, hooks, texts
        self.inbox = netlink.Inbox(sock)
        self._packets: dict[bytes, FlowId] = {}
        self._last_hook: dict[bytes, str] = {}

    @property
    def lost(self) -> int:
        return self.inbox.overflows

    def poll(self) -> list[NftRuleEvent]:
        events = []
        for data in self.inbox.take():
            for subsystem, message, _flags, family, attrs in netlink.messages(data):
                if subsystem == NFNL_SUBSYS_NFTABLES and message == NFT_MSG_TRACE:
                    event = self._event(FAMILIES.get(family, str(family)), attrs)
                    if event is not None:
                        events.append(event)
        return events

    def _event(self, family: str, attrs: dict[int, bytes]) -> NftRuleEvent | None:
        trace_id = attrs.get(NFTA_TRACE_ID, b"")
        table = attrs.get(NFTA_TRACE_TABLE, b"").rstrip(b"\0").decode()
        chain = attrs.get(NFTA_TRACE_CHAIN, b"").rstrip(b"\0").decode()
        if NFTA_TRACE_NETWORK_HEADER in attrs:  # the first message of a packet at a chain carries its headers
            flow = packet_flow(attrs[NFTA_TRACE_NETWORK_HEADER], attrs.get(NFTA_TRACE_TRANSPORT_HEADER, b""),
                               self.netns)
            if flow is not None:
                self._packets[trace_id] = flow
                if len(self._packets) > 100_000:
                    self._packets.pop(next(iter(self._packets)))
        hook = self.hooks.get((family, table, chain)) or self._last_hook.get(trace_id)
        if hook:  # a chain without a hook was jumped to from the last base chain of this packet
            self._last_hook[trace_id] = hook
            if len(self._last_hook) > 100_000:
                self._last_hook.pop(next(iter(self._last_hook)))
        packet = self._packets.get(trace_id)
        kind = struct.unpack("!I", attrs[NFTA_TRACE_TYPE])[0] if NFTA_TRACE_TYPE in attrs else 0
        if packet is None or table.startswith("whyroute_trace_") or kind not in (TRACE_POLICY, TRACE_RETURN,
                                                                                 TRACE_RULE):
            return None  # our own marking rule, or a message we do not report
        verdict = _verdict(attrs)
        if kind == TRACE_RULE:
            if NFTA_TRACE_RULE_HANDLE not in attrs:
                return None  # the packet entering the chain (its headers), no rule yet
            handle = struct.unpack("!Q", attrs[NFTA_TRACE_RULE_HANDLE])[0]
            text = self.texts.text(family, table, handle) or f"handle {handle}"
            return NftRuleEvent(time.monotonic_ns(), packet, table, chain, hook, handle, text, verdict)
        if kind == TRACE_POLICY:
            policy = struct.unpack("!I", attrs[NFTA_TRACE_POLICY])[0] if NFTA_TRACE_POLICY in attrs else None
            verdict = VERDICTS.get(policy, verdict)
            return NftRuleEvent(time.monotonic_ns(), packet, table, chain, hook, None, f"policy {verdict}", verdict)
        return NftRuleEvent(time.monotonic_ns(), packet, table, chain, hook, None, f"return ({verdict})", verdict)

    def close(self) -> None:
        self.sock.close()
        if self.owner.poll() is None:
            if self.owner.stdin:
                self.owner.stdin.close()  # nft -i ends at EOF, and its table with it
            self.owner.terminate()
            try:
                self.owner.wait(2)
            except subprocess.TimeoutExpired:
                self.owner.kill()
                self.owner.wait()


def _verdict(attrs: dict[int, bytes]) -> str:
    nested = netlink.attributes(attrs.get(NFTA_TRACE_VERDICT, b""))
    if NFTA_VERDICT_CODE not in nested:
        return "none"
    code = struct.unpack("!i", nested[NFTA_VERDICT_CODE])[0]
    name = VERDICTS.get(code if code < 0 else code & NF_VERDICT_MASK, str(code))
    target = nested.get(NFTA_VERDICT_CHAIN, b"").rstrip(b"\0").decode()
    return f"{name} {target}" if target else name


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

    def open(self, undo, options, state, netns_inode: int, hooks_traced: bool = False) -> NftTraceSource:
        from tracer.trace.kernel import KernelError

        try:  # subscribed before the table exists: no traced packet is missed
            sock = netlink.subscribed_socket(options.netns, (NFNLGRP_NFTRACE,), RECEIVE_BUFFER)
        except OSError as error:
            raise KernelError(f"nftables trace socket: {error.strerror}") from None
        prefix = ["ip", "netns", "exec", options.netns] if options.netns else []
        owner = subprocess.Popen([*prefix, "nft", "-i"], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                 stderr=subprocess.PIPE, text=True,
                                 preexec_fn=functools.partial(netns_mod.die_with_parent, os.getpid()))
        source = NftTraceSource(owner, sock, netns_inode, chain_hooks(state), RuleTexts(state, options.netns))
        undo.callback(source.close)
        owner.stdin.write(table_commands(options))
        owner.stdin.flush()
        # Wait until the table exists (nft -i applies each line as it reads it).
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            listed = subprocess.run([*prefix, "nft", "list", "table", "inet", table_name()], capture_output=True)
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
