"""The wire lab: real packets through a router namespace, and where each one arrives.

    client (c0) --- (r0 10.0.0.1/24) router (r1 10.1.0.1/24) ------------------ (s1)
                                            (r2 10.2.0.1/24, 172.16.2.1/24) --- (s2)  sink
                                            (r3 10.3.0.1/24) ------------------ (s3)

Every link is tracer.lab's `ppp` kind (no ARP, one MAC on both ends), so the router reaches
any next hop without neighbour resolution, and neither the client nor the sink needs an
address. The router's routing is fixed (`ROUTER_SETUP`): marks 0x1 and 0x2 (mask 0x3), the
source 10.0.0.3, and TCP to port 8080 / UDP to port 5353 arriving on r0 select tables 100
and 101, whose routes leave by other interfaces.

A `Probe` is one packet of a flow, built byte by byte. Forwarded probes are injected on c0
with an AF_PACKET socket (the client's own stack never sees them); local-out probes are
sent from the router by an IP_HDRINCL raw socket bound to their source, so they cross the
output and postrouting hooks like any local packet. Each probe carries a tag where NAT
never writes (the TCP sequence number, the UDP / ICMP echo payload), unique for the lab's
life, so that a straggler is never taken for a later probe. AF_PACKET sockets in
the client and the sink read what the router sent out of r0..r3; raw sockets in the router
read what it delivered locally (after the input hook). The client and the sink drop
everything their own stack would send, so only the probes cross the router.

`compare(lab, ruleset, probes)` is the differential step itself: load the ruleset, collect
the router's state (collect_state), explain every probe (tracer.sim.explain.explain), send
them, and pair each explanation with where the kernel put the packet.

Nothing touches the root namespace: the lab is a tracer.lab topology under a fresh prefix
(`w` and four hex digits); `down()` removes it.
"""

from __future__ import annotations

import itertools
import os
import shutil
import socket
import struct
import subprocess
import time
from dataclasses import dataclass, field

from tests.lab.lab_helpers import new_prefix
from tracer import netns
from tracer.collect.live import collect_state
from tracer.flow import Flow, make_flow
from tracer.lab import builder
from tracer.lab import topology as topo
from tracer.sim.explain import explain
from tracer.sim.explanation import Explanation
from tracer.vocab import ICMP, TCP, UDP

CLIENT_SIDE = "r0"
EGRESS = ("r1", "r2", "r3")
ROUTER_INTERFACES = (CLIENT_SIDE, *EGRESS)
SINK_OF = {"r1": "s1", "r2": "s2", "r3": "s3"}
EGRESS_OF = {sink: dev for dev, sink in SINK_OF.items()}
ROUTER_ADDRESSES = {"r0": ("10.0.0.1/24",), "r1": ("10.1.0.1/24",), "r2": ("10.2.0.1/24", "172.16.2.1/24"),
                    "r3": ("10.3.0.1/24",)}
LOCAL = "local"  # where a probe delivered to the router itself is seen
PROTO_NAMES = {TCP: "tcp", UDP: "udp", ICMP: "icmp"}

# ip rules and the routes the topology format has no key for (error routes)
ROUTER_SETUP = (
    "ip route add unreachable 198.51.100.0/24",
    "ip route add blackhole 203.0.113.128/25 table 101",
    # port selectors on forwarded packets only (a raw socket's own lookup carries no ports)
    "ip rule add pref 998 iif r0 ipproto tcp dport 8080 lookup 100",
    "ip rule add pref 999 iif r0 ipproto udp dport 5353 lookup 101",
    "ip rule add pref 1000 fwmark 0x1/0x3 lookup 100",
    "ip rule add pref 1001 fwmark 0x2/0x3 lookup 101",
    "ip rule add pref 1002 from 10.0.0.3 lookup 101",
)
ROUTES = (
    {"to": "default", "via": "10.1.0.254"},
    {"to": "203.0.113.0/24", "via": "10.2.0.254"},
    {"to": "10.0.0.0/24", "dev": "r0", "table": 100},
    {"to": "default", "via": "172.16.2.254", "table": 100},
    {"to": "203.0.113.0/24", "via": "10.3.0.254", "table": 100},
    {"to": "10.0.0.0/24", "dev": "r0", "table": 101},
    {"to": "default", "via": "10.3.0.254", "table": 101},
)
# The client and the sink stay silent: their stacks never answer a probe.
SILENT = """table inet silent {
  chain pre { type filter hook prerouting priority -400; policy drop; }
  chain out { type filter hook output priority -400; policy drop; }
}"""
# iptables tables and their built-in chains
IPT_BUILTINS = {"raw": ("PREROUTING", "OUTPUT"), "mangle": ("PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"),
                "nat": ("PREROUTING", "INPUT", "OUTPUT", "POSTROUTING"), "filter": ("INPUT", "FORWARD", "OUTPUT")}

SO_RCVBUFFORCE = 33  # asm-generic/socket.h; the socket module lacks it
ETH_P_IP = 0x0800
PACKET_OUTGOING = 4
TCP_MAGIC = 0x5752  # high half of a probe's TCP sequence number; the low half is its id
PAYLOAD_MAGIC = b"WRNF"
RECEIVE_BUFFER = 8 << 20
SETTLE = 0.03  # after the expected arrivals: time for any unexpected one to show
PATIENCE = 0.4  # how long expected arrivals are awaited


def can_run() -> str | None:
    if os.geteuid() != 0:
        return "not root: network namespaces need root"
    for tool in ("ip", "nft", "iptables-nft-restore", "iptables-legacy-restore", "conntrack"):
        if shutil.which(tool) is None:
            return f"{tool} not installed"
    return None


def topology() -> topo.Topology:
    no_ipv6 = {f"net.ipv6.conf.{scope}.disable_ipv6": 1 for scope in ("all", "default")}
    return topo.from_dict({
        "name": "nfwire",
        "sysctl": no_ipv6,
        "nodes": {
            "client": {"interfaces": {"c0": {}}},
            "router": {"forwarding": True,
                       "interfaces": {name: {"addresses": list(ROUTER_ADDRESSES[name])} for name in ROUTER_INTERFACES},
                       "routes": list(ROUTES), "run": list(ROUTER_SETUP)},
            "sink": {"interfaces": {sink: {} for sink in SINK_OF.values()}},
        },
        "links": [{"ends": ["client:c0", "router:r0"], "kind": "ppp"},
                  *({"ends": [f"router:{dev}", f"sink:{sink}"], "kind": "ppp"} for dev, sink in SINK_OF.items())],
    }, source=__file__)


# ------------------------------------------------------------------ probes

@dataclass(frozen=True)
class Probe:
    """One packet of a flow: forwarded (injected on c0, it arrives on r0) or local-out (the router sends it)."""

    id: int
    origin: str  # forwarded | local-out
    proto: int
    src: str
    dst: str
    sport: int | None = None
    dport: int | None = None

    def flow(self) -> Flow:
        ports = {"sport": self.sport, "dport": self.dport} if self.proto in (TCP, UDP) else {}
        iif = CLIENT_SIDE if self.origin == "forwarded" else None
        return make_flow(self.dst, self.src, iif=iif, proto=str(self.proto), **ports)

    def packet(self, tag: int) -> bytes:
        """The IPv4 packet, carrying `tag` (16 bits) where NAT never writes; also its IP id and,
        for ICMP, its echo id."""
        if self.proto == TCP:
            # a bare SYN: window 64240, no options
            l4 = struct.pack("!HHIIBBHHH", self.sport, self.dport, TCP_MAGIC << 16 | tag, 0, 5 << 4, 0x02,
                             64240, 0, 0)
        elif self.proto == UDP:
            payload = PAYLOAD_MAGIC + struct.pack("!I", tag)
            l4 = struct.pack("!HHHH", self.sport, self.dport, 8 + len(payload), 0) + payload
        else:
            l4 = struct.pack("!BBHHH", 8, 0, 0, tag, 1) + PAYLOAD_MAGIC + struct.pack("!I", tag)
        src, dst = socket.inet_aton(self.src), socket.inet_aton(self.dst)
        if self.proto == ICMP:
            l4 = _with_checksum(l4, 2, _checksum(l4))
        else:
            pseudo = src + dst + struct.pack("!BBH", 0, self.proto, len(l4))
            total = _checksum(pseudo + l4)
            l4 = _with_checksum(l4, 16 if self.proto == TCP else 6, total or 0xFFFF)
        header = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(l4), tag, 0, 64, self.proto, 0, src, dst)
        return _with_checksum(header, 10, _checksum(header)) + l4

    def __str__(self) -> str:
        ports = f" {self.sport} → {self.dport}" if self.sport is not None else ""
        return f"#{self.id} {self.origin} {PROTO_NAMES[self.proto]} {self.src} → {self.dst}{ports}"


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def _with_checksum(data: bytes, offset: int, value: int) -> bytes:
    return data[:offset] + struct.pack("!H", value) + data[offset + 2:]


@dataclass(frozen=True)
class Arrival:
    """Where a probe showed up: out of a router interface (r0..r3) or delivered to the router
    (`local`), with its addresses and ports there. ICMP carries no ports."""

    place: str
    src: str
    dst: str
    sport: int | None = None
    dport: int | None = None

    def __str__(self) -> str:
        ports = f" ports {self.sport} → {self.dport}" if self.sport is not None else ""
        where = "delivered locally" if self.place == LOCAL else f"out {self.place}"
        return f"{where}: {self.src} → {self.dst}{ports}"


def read_probe(data: bytes) -> tuple[int, Arrival] | None:
    """(tag, addresses and ports) of an IPv4 packet that is one of our probes, else None."""
    if len(data) < 20 or data[0] >> 4 != 4:
        return None
    ihl = (data[0] & 0xF) * 4
    proto = data[9]
    src, dst = socket.inet_ntoa(data[12:16]), socket.inet_ntoa(data[16:20])
    l4 = data[ihl:]
    if proto == TCP and len(l4) >= 20:
        sport, dport, seq = struct.unpack("!HHI", l4[:8])
        if seq >> 16 == TCP_MAGIC and l4[13] == 0x02:
            return seq & 0xFFFF, Arrival("", src, dst, sport, dport)
    elif proto == UDP and len(l4) >= 16 and l4[8:12] == PAYLOAD_MAGIC:
        sport, dport = struct.unpack("!HH", l4[:4])
        return struct.unpack("!I", l4[12:16])[0], Arrival("", src, dst, sport, dport)
    elif proto == ICMP and len(l4) >= 16 and l4[0] == 8 and l4[8:12] == PAYLOAD_MAGIC:
        return struct.unpack("!I", l4[12:16])[0], Arrival("", src, dst)
    return None


# ------------------------------------------------------------------ rulesets

# {table: {chain: (policy, [rule, …])}}: policy None for a user chain, a rule is what follows `-A CHAIN`
IptTables = dict[str, dict[str, tuple[str | None, list[str]]]]


@dataclass
class Ruleset:
    """Everything the router loads: nft's native tables (an `nft -f` script), iptables-nft's
    tables, and rules for the iptables-legacy tables, which exist when `legacy_tables`."""

    nft: str = ""
    iptables_nft: IptTables = field(default_factory=dict)
    iptables_legacy: IptTables = field(default_factory=dict)
    nft_first: bool = True  # load order: registration order decides between equal priorities
    legacy_tables: bool = False

    def script(self) -> str:
        """The ruleset as shell commands run in the router, in load order (a human's replay)."""
        nft = f"nft -f - <<'EOF'\n{self.nft}EOF\n" if self.nft.strip() else ""
        ipt = f"iptables-nft-restore <<'EOF'\n{restore_text(self.iptables_nft)}EOF\n" if self.iptables_nft else ""
        legacy = ""
        if self.legacy_tables:
            tables = restore_text({**empty_legacy_tables(), **self.iptables_legacy})
            legacy = f"iptables-legacy-restore <<'EOF'\n{tables}EOF\n"
        return legacy + (nft + ipt if self.nft_first else ipt + nft)


def restore_text(tables: IptTables) -> str:
    """iptables-restore input that replaces each of `tables` whole."""
    out = []
    for table, chains in tables.items():
        out.append(f"*{table}")
        out += [f":{chain} {policy or '-'} [0:0]" for chain, (policy, _rules) in chains.items()]
        out += [f"-A {chain} {rule}" for chain, (_policy, rules) in chains.items() for rule in rules]
        out.append("COMMIT")
    return "\n".join(out) + "\n" if out else ""


def empty_legacy_tables() -> IptTables:
    return {table: {chain: ("ACCEPT", []) for chain in chains} for table, chains in IPT_BUILTINS.items()}


# ------------------------------------------------------------------ the lab

class WireLab:
    """The namespaces, the sockets that send probes and the sockets that see them arrive."""

    def __init__(self):
        self.prefix = new_prefix("w")
        self.client, self.router, self.sink = (builder.namespace(self.prefix, n) for n in ("client", "router", "sink"))
        self.built = False
        self.legacy = False
        self._sockets: list[socket.socket] = []
        self._senders: dict[str, socket.socket] = {}
        # Each probe sent gets a tag unique for the lab's life: a straggler of an earlier config
        # is never taken for a probe of this one. tag -> probe id, and what arrived, for this config.
        self._tags = itertools.count(1)
        self._sent: dict[int, int] = {}
        self._seen: dict[int, list[Arrival]] = {}

    def up(self) -> WireLab:
        self.built = True  # from here on down() removes whatever up() made
        builder.up(topology(), prefix=self.prefix)
        for ns in (self.client, self.sink):
            builder.run_in(ns, ["nft", "-f", "-"], input=SILENT)
        self.injector = self._socket(self.client, socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(ETH_P_IP))
        self.injector.bind(("c0", ETH_P_IP))
        self.client_mac = self.injector.getsockname()[4]
        self.watchers = {ns: self._socket(ns, socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(ETH_P_IP))
                         for ns in (self.client, self.sink)}
        self.deliveries = [self._socket(self.router, socket.AF_INET, socket.SOCK_RAW, proto)
                           for proto in (TCP, UDP, ICMP)]
        for sock in self._sockets:
            sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, RECEIVE_BUFFER)
            sock.setblocking(False)
        return self

    def down(self) -> None:
        for sock in self._sockets:
            sock.close()
        self._sockets.clear()
        self._senders.clear()
        if self.built:
            builder.down(self.prefix)
            self.built = False

    def __enter__(self) -> WireLab:
        try:
            return self.up()
        except BaseException:
            self.down()
            raise

    def __exit__(self, *exc) -> None:
        self.down()

    def _socket(self, ns: str, *args) -> socket.socket:
        with netns.entered(ns):  # a socket belongs to the namespace it was made in
            sock = socket.socket(*args)
        self._sockets.append(sock)
        return sock

    def run(self, argv: list[str], *, input: str | None = None, check: bool = True) -> str:
        """argv's stdout, run in the router (a child of this thread inside the namespace: cheaper
        than `ip netns exec`, which matters at five commands per config)."""
        with netns.entered(self.router):
            result = subprocess.run(argv, input=input, capture_output=True, text=True, timeout=60)
        if check and result.returncode:
            raise builder.CommandFailed(f"`{' '.join(argv)}` in {self.router} failed: {result.stderr.strip()}")
        return result.stdout

    # -- rulesets
    def load_legacy_tables(self) -> None:
        """Create the iptables-legacy tables, empty. Once made they stay (for the lab's life) and
        were registered before any nft chain loaded afterwards: what tracer.sim.netfilter assumes."""
        self.run(["nft", "flush", "ruleset"])
        self.run(["iptables-legacy-restore"], input=restore_text(empty_legacy_tables()))
        self.legacy = True

    def load(self, ruleset: Ruleset) -> None:
        """Replace the router's ruleset (making the legacy tables first if it wants them, which
        then stay); then forget every connection."""
        if ruleset.legacy_tables and not self.legacy:
            self.load_legacy_tables()
        if ruleset.iptables_legacy and not self.legacy:
            raise ValueError("iptables-legacy rules for a ruleset without legacy_tables")
        self.run(["nft", "flush", "ruleset"])
        if self.legacy:
            tables = {**empty_legacy_tables(), **ruleset.iptables_legacy}
            self.run(["iptables-legacy-restore"], input=restore_text(tables))
        steps = [(["nft", "-f", "-"], ruleset.nft), (["iptables-nft-restore"], restore_text(ruleset.iptables_nft))]
        for argv, text in steps if ruleset.nft_first else steps[::-1]:
            if text.strip():
                self.run(argv, input=text)
        self.forget_connections()
        self._sent.clear()
        self._seen.clear()

    def forget_connections(self) -> None:
        self.run(["conntrack", "-F"], check=False)  # exits 1 when the table is already empty

    # -- traffic
    def send(self, probes: list[Probe]) -> dict[int, str]:
        """Send every probe; returns the errors sendto reported for local-out ones (by id)."""
        refused = {}
        for probe in probes:
            tag = next(self._tags) % 0xFFFF + 1
            self._sent[tag] = probe.id
            data = probe.packet(tag)
            if probe.origin == "forwarded":
                self.injector.sendto(data, ("c0", ETH_P_IP, 0, 0, self.client_mac))
                continue
            try:
                self._sender(probe.src).sendto(data, (probe.dst, 0))
            except OSError as exc:  # the output hook dropped it, or routing failed
                refused[probe.id] = exc.strerror
        return refused

    def _sender(self, src: str) -> socket.socket:
        if src not in self._senders:
            sock = self._socket(self.router, socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
            sock.bind((src, 0))  # the route lookup then uses this source, as a bound socket's would
            self._senders[src] = sock
        return self._senders[src]

    def arrivals(self, awaited: set[int]) -> dict[int, list[Arrival]]:
        """Where each probe sent since the ruleset was loaded arrived, by probe id: first wait
        until the `awaited` ids have shown up (or PATIENCE ran out), then SETTLE more for any
        unexpected one."""
        deadline = time.monotonic() + PATIENCE
        while True:
            self._drain()
            if awaited <= self._seen.keys() or time.monotonic() > deadline:
                break
            time.sleep(0.003)
        time.sleep(SETTLE)
        self._drain()
        return {probe_id: list(seen) for probe_id, seen in self._seen.items()}

    def _drain(self) -> None:
        for ns, sock in self.watchers.items():
            for data, address in _pending(sock):
                ifname, pkttype = address[0], address[2]
                if pkttype != PACKET_OUTGOING:  # not the client's own injections
                    self._note(data, CLIENT_SIDE if ns == self.client else EGRESS_OF[ifname])
        for sock in self.deliveries:
            for data, _address in _pending(sock):
                self._note(data, LOCAL)

    def _note(self, data: bytes, place: str) -> None:
        found = read_probe(data)
        if found and found[0] in self._sent:
            arrival = found[1]
            self._seen.setdefault(self._sent[found[0]], []).append(
                Arrival(place, arrival.src, arrival.dst, arrival.sport, arrival.dport))


def _pending(sock: socket.socket):
    while True:
        try:
            yield sock.recvfrom(65535)
        except BlockingIOError:
            return


# ------------------------------------------------------------------ why-route against the wire

@dataclass
class Comparison:
    """One probe: what why-route said, and where the kernel put it."""

    probe: Probe
    explanation: Explanation | None
    expected: Arrival | None  # where the explanation says it shows up (None: nowhere)
    seen: list[Arrival] = field(default_factory=list)
    refused: str | None = None  # sendto's error for a local-out probe
    error: str | None = None  # why-route raised

    @property
    def uncertain(self) -> tuple[str, ...]:
        if self.explanation is None:
            return ()
        return tuple(reason for hook in self.explanation.hooks for reason in hook.uncertain_reasons)

    @property
    def agrees(self) -> bool:
        if self.error or self.uncertain or len(self.seen) > 1:
            return False
        if self.expected is None or not self.seen:
            return self.expected is None and not self.seen
        return same_place(self.expected, self.seen[0], self.explanation)

    def describe(self) -> str:
        refused = f" (sendto: {self.refused})" if self.refused else ""
        kernel = " and ".join(map(str, self.seen)) or f"not seen{refused}"
        if self.error:
            said = f"raised {self.error}"
        else:
            e = self.explanation
            said = str(self.expected) if self.expected else f"not seen ({e.verdict}: {e.verdict_reason})"
            if self.uncertain:
                said += f"; uncertain: {'; '.join(self.uncertain)}"
        return f"{self.probe}\n      kernel:    {kernel}\n      why-route: {said}"


def same_place(expected: Arrival, seen: Arrival, e: Explanation) -> bool:
    """The explanation's arrival is the kernel's. A port the explanation leaves out (None on a
    TCP/UDP probe) is one it says the kernel picks at random (tracer.sim.netfilter's NAT
    rewrite with `to_port` None and a note saying so): any port is then the kernel's pick."""
    if (expected.place, expected.src, expected.dst) != (seen.place, seen.src, seen.dst):
        return False
    for name, side in (("sport", "src"), ("dport", "dst")):
        claimed, got = getattr(expected, name), getattr(seen, name)
        if claimed is None and got is not None and _picked_at_random(e, side):
            continue
        if claimed != got:
            return False
    return True


def _picked_at_random(e: Explanation, side: str) -> bool:
    return any(step.rewrite.field == side and step.rewrite.to_port is None and "random" in (step.rewrite.note or "")
               for step in e.nat)


def expected_arrival(e: Explanation) -> Arrival | None:
    """Where the explanation says the probe shows up."""
    if e.leaves:
        out = e.egress
        return Arrival(out.dev, out.src, out.dst, out.sport, out.dport)
    if e.verdict == "delivered-locally":
        packet = e.hooks[-1].packet  # as the last hook (input, or output for a local-out probe) left it
        return Arrival(LOCAL, packet.src, packet.dst, packet.sport, packet.dport)
    return None


def waves(probes: list[Probe], expected: dict[int, Arrival | None]) -> list[list[Probe]]:
    """The probes in sending rounds, no two of a round expected to end with the same addresses
    and ports: the second would meet the first's conntrack entry and the kernel would pick
    another port (or drop it), which no single-flow explanation can foresee. Source ports are
    unique among the probes, so only NAT to a fixed port makes two of them collide."""
    rounds: list[tuple[list[Probe], set]] = []
    for probe in probes:
        arrival = expected.get(probe.id)
        key = (probe.proto, arrival.src, arrival.sport, arrival.dst, arrival.dport) \
            if arrival and probe.proto != ICMP else None
        for members, keys in rounds:
            if key is None or key not in keys:
                members.append(probe)
                keys.add(key)
                break
        else:
            rounds.append(([probe], {key}))
    return [members for members, _keys in rounds]


def compare(lab: WireLab, ruleset: Ruleset, probes: list[Probe]) -> list[Comparison]:
    """Load `ruleset`, explain every probe from the collected state, send them, and pair each
    explanation with the probe's arrivals."""
    lab.load(ruleset)
    state = collect_state(lab.router)
    comparisons: dict[int, Comparison] = {}
    for probe in probes:
        try:
            e = explain(state, probe.flow())
            comparisons[probe.id] = Comparison(probe, e, expected_arrival(e))
        except Exception as exc:  # noqa: BLE001 - a crash is a disagreement to report, not the end of the run
            comparisons[probe.id] = Comparison(probe, None, None, error=f"{type(exc).__name__}: {exc}")
    refused: dict[int, str] = {}
    seen: dict[int, list[Arrival]] = {}
    for n, batch in enumerate(waves(probes, {i: c.expected for i, c in comparisons.items()})):
        if n:
            lab.forget_connections()
        refused.update(lab.send(batch))
        seen = lab.arrivals({p.id for p in batch if comparisons[p.id].expected})
    for probe in probes:  # the last round's arrivals include stragglers of earlier ones
        comparisons[probe.id].seen = seen.get(probe.id, [])
        comparisons[probe.id].refused = refused.get(probe.id)
    return [comparisons[p.id] for p in probes]
