"""The real-tools corpus: labs where a widely used tool's configuration is
installed as the tool itself writes it, real packets, and why-route's answers.

Each tool module has a topology file (topologies/<tool>.toml: the network,
nothing of the tool), an `install(lab, state)` that writes the tool's rules,
ip rules and routes into the namespaces as the tool would (the module header
names the tool's source file and version), and flows. A flow's truth (`Path`)
is written once and checked against the kernel (a real packet, the sinks that
see it, `ip route get`), against `why-route --json` live, and offline: from a
`why-route snapshot` of the router (one per tool state), every flow must get
the live answers.

Every node gets a sink: an nft table that records, per input interface, the
5-tuple of every TCP/UDP packet that arrives (prerouting, priority -400, so
before conntrack and NAT). Tests only send between the lab's namespaces.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path as FilePath

import pytest

from tests.helpers.cli import why_route_in_process
from tests.lab.lab_helpers import leftovers, missing_requirements, new_prefix
from tracer.lab import builder
from tracer.lab import topology as topo

TOPOLOGIES = FilePath(__file__).resolve().parent / "topologies"
MISSING = missing_requirements()
SINK_TABLE = "wrsink"


# ------------------------------------------------------------------ lab

class ToolLab:
    """One topology built under a fresh prefix, then configured by the tool's `install`."""

    def __init__(self, topology_name: str):
        self.topology = topo.load(TOPOLOGIES / f"{topology_name}.toml")
        self.prefix = new_prefix("r")
        self.state: builder.LabState | None = None

    def up(self) -> ToolLab:
        self.state = builder.up(self.topology, prefix=self.prefix)
        for node in self.topology.nodes:
            self.nft(node.name, _sink_ruleset(node))
        self._wait_for_carrier()
        return self

    def _wait_for_carrier(self, seconds: float = 5.0) -> None:
        # A veth has a working qdisc only once linkwatch has seen its carrier
        # (operstate UP), up to a second after `ip link set up`; until then
        # the first packets of a test would be dropped.
        deadline = time.monotonic() + seconds
        for node in self.topology.nodes:
            while True:
                links = json.loads(self.run(node.name, ["ip", "-j", "link", "show"]).stdout)
                waiting = [link["ifname"] for link in links
                           if link["ifname"] != "lo" and link.get("operstate") not in ("UP", "UNKNOWN")]
                if not waiting:
                    break
                assert time.monotonic() < deadline, f"{node.name}: no carrier on {waiting}"
                time.sleep(0.05)

    def down(self) -> None:
        builder.down(self.prefix)
        assert not leftovers(self.prefix), leftovers(self.prefix)

    def ns(self, node: str) -> str:
        return self.state.ns(node)

    def run(self, node: str, argv: list[str], *, input: str | None = None,
            check: bool = True) -> subprocess.CompletedProcess:
        return builder.run_in(self.ns(node), argv, input=input, check=check)

    def sh(self, node: str, script: str) -> None:
        """Shell lines run in `node`, stopping at the first that fails."""
        self.run(node, ["sh", "-ec", script])

    def nft(self, node: str, script: str) -> None:
        self.run(node, ["nft", "-f", "-"], input=script)

    def iptables_restore(self, node: str, save: str) -> None:
        """Load iptables-save text with iptables-nft (what `iptables` is on Debian 12, OpenWrt 22.03+)."""
        self.run(node, ["iptables-nft-restore"], input=save)

    # -- the sinks
    def clear_sinks(self) -> None:
        for node in self.topology.nodes:
            script = "".join(f"flush set ip {SINK_TABLE} {_set_name(i)}\n" for i in _sink_interfaces(node))
            self.nft(node.name, script)

    def arrivals(self, node: str) -> list[Arrival]:
        data = json.loads(self.run(node, ["nft", "-j", "list", "table", "ip", SINK_TABLE]).stdout)["nftables"]
        names = {_set_name(i): i for i in _sink_interfaces(self.topology.node(node))}
        seen = []
        for item in data:
            found = item.get("set")
            if not found or found["name"] not in names:
                continue
            for element in found.get("elem", []):
                src, sport, dst, dport, proto = element["concat"]
                seen.append(Arrival(names[found["name"]], src, sport, dst, dport, proto))
        return seen

    # -- real packets
    def tcp_connect(self, node: str, dst: str, dport: int, *, src: str | None = None, sport: int | None = None,
                    timeout: float = 1.0) -> str:
        """One TCP connection attempt: "connected", "refused" (an RST came back), "timeout", or an errno name."""
        return self.tcp_connects(node, [(dst, dport, sport)], src=src, timeout=timeout)[0]

    def tcp_connects(self, node: str, attempts: list[tuple[str, int, int | None]], *, src: str | None = None,
                     timeout: float = 1.0) -> list[str]:
        """Connection attempts to (dst, dport, sport) one after the other, from one process."""
        return self._python(node, _TCP_CONNECT, attempts, src, timeout)

    def udp_send(self, node: str, dst: str, dport: int, *, src: str | None = None, sport: int | None = None,
                 mark: int = 0) -> str:
        """One UDP datagram (with SO_MARK `mark`, as a tunnel daemon marks its own packets): "sent" or an errno name."""
        return self.udp_sends(node, [(dst, dport, sport)], src=src, mark=mark)[0]

    def udp_sends(self, node: str, datagrams: list[tuple[str, int, int | None]], *, src: str | None = None,
                  mark: int = 0) -> list[str]:
        """Datagrams to (dst, dport, sport), each from a socket of its own, from one process."""
        return self._python(node, _UDP_SEND, datagrams, src, mark)

    def _python(self, node: str, program: str, items: list, src: str | None, option: float) -> list[str]:
        argv = ["python3", "-c", program, json.dumps(items), src or "", str(option)]
        result = self.run(node, argv, check=False)
        assert result.returncode == 0, result.stderr
        return result.stdout.split()

    def route_get(self, node: str, dst: str, *, src: str | None = None, iif: str | None = None, mark: int = 0,
                  proto: str | None = None, dport: int | None = None, sport: int | None = None) -> dict:
        """The kernel's route (`ip -j -d route get`), or {"error": "..."} when it refuses."""
        argv = ["ip", "-j", "-d", "route", "get", dst]
        for key, value in (("from", src), ("iif", iif), ("mark", mark or None), ("ipproto", proto),
                           ("sport", sport), ("dport", dport)):
            if value is not None:
                argv += [key, str(value)]
        result = self.run(node, argv, check=False)
        if result.returncode:
            return {"error": result.stderr.strip()}
        return json.loads(result.stdout)[0]


@dataclass(frozen=True)
class Arrival:
    """A TCP/UDP packet that arrived at a node, as its sink recorded it."""

    iif: str
    src: str
    sport: int
    dst: str
    dport: int
    proto: str


def _sink_interfaces(node: topo.Node) -> list[str]:
    return [i.name for i in node.interfaces if i.kind != "loopback" and i.master is None]


def _set_name(ifname: str) -> str:
    return "in_" + re.sub(r"[^A-Za-z0-9]", "_", ifname)


def _sink_ruleset(node: topo.Node) -> str:
    sets = rules = ""
    for ifname in _sink_interfaces(node):
        name = _set_name(ifname)
        sets += (f"  set {name} {{ type ipv4_addr . inet_service . ipv4_addr . inet_service . inet_proto; "
                 "flags dynamic; size 4096; }\n")
        rules += (f'    iifname "{ifname}" meta l4proto {{ tcp, udp }} '
                  f"add @{name} {{ ip saddr . th sport . ip daddr . th dport . meta l4proto }}\n")
    return (f"table ip {SINK_TABLE} {{\n{sets}"
            "  chain arrive { type filter hook prerouting priority -400; policy accept;\n"
            f"{rules}  }}\n}}\n")


_TCP_CONNECT = """
import errno, json, socket, sys
src, timeout = sys.argv[2], float(sys.argv[3])
for dst, dport, sport in json.loads(sys.argv[1]):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.settimeout(timeout)
    try:
        s.bind((src, sport or 0))
        s.connect((dst, dport))
        print("connected")
    except socket.timeout:
        print("timeout")
    except ConnectionRefusedError:
        print("refused")
    except OSError as exc:
        print(errno.errorcode.get(exc.errno, "OSError"))
    s.close()
"""

_UDP_SEND = """
import errno, json, socket, sys
src, mark = sys.argv[2], int(float(sys.argv[3]))
for dst, dport, sport in json.loads(sys.argv[1]):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        if mark:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, mark)
        s.bind((src, sport or 0))
        s.sendto(b"why-route", (dst, dport))
        print("sent")
    except OSError as exc:
        print(errno.errorcode.get(exc.errno, "OSError"))
    s.close()
"""


class ToolLabs:
    """A module's labs: `labs(state)` builds the topology with the tool installed
    in `state` (once), `close()` removes them all (and their snapshots)."""

    def __init__(self, topology_name: str, install):
        self.topology_name = topology_name
        self.install = install
        self.labs: dict[str, ToolLab] = {}
        self.replays: dict[tuple[str, str], Replay] = {}
        self.workdir = FilePath(tempfile.mkdtemp(prefix="wr-realtools-"))

    def __call__(self, state: str = "healthy") -> ToolLab:
        if state not in self.labs:
            lab = self.labs[state] = ToolLab(self.topology_name)
            lab.up()
            self.install(lab, state)
        return self.labs[state]

    def replay(self, capsys, state: str, router: str, flows: dict[str, Flow]) -> Replay:
        """`why-route snapshot` of `router` in `state` (taken once), and the live answers for
        `flows` asked right after it, while conntrack holds what the snapshot holds."""
        key = (state, router)
        if key not in self.replays:
            lab = self(state)
            path = self.workdir / f"{state}-{router}.json"
            status, _, err = why_route_in_process(capsys, "snapshot", "--netns", lab.ns(router), "-o", str(path))
            assert status == 0, err
            live = {name: explain_flow(capsys, lab, flow) for name, flow in flows.items()}
            self.replays[key] = Replay(str(path), live)
        return self.replays[key]

    def close(self) -> None:
        shutil.rmtree(self.workdir, ignore_errors=True)
        for lab in self.labs.values():
            lab.down()


@dataclass(frozen=True)
class Replay:
    """A snapshot of one router and the live explanations it must reproduce offline."""

    snapshot: str
    live: dict[str, dict]


# ------------------------------------------------------------------ flows and their truth

@dataclass(frozen=True)
class Flow:
    """One flow as a user asks why-route about it on `router`, and as `sender` really sends it."""

    router: str
    dst: str
    proto: str  # tcp | udp
    dport: int
    sport: int
    src: str | None = None  # None: a locally generated flow with source selection; the sender binds it
    iif: str | None = None  # forwarded flows: the interface it arrives on
    mark: int = 0
    sender: str | None = None  # default: the router itself (local-out)

    def argv(self) -> list[str]:
        argv = [*([self.src] if self.src else []), self.dst, "--proto", self.proto, "--dport", str(self.dport),
                "--sport", str(self.sport)]
        if self.iif:
            argv += ["--iif", self.iif]
        if self.mark:
            argv += ["--mark", hex(self.mark)]
        return argv


@dataclass(frozen=True)
class Path:
    """Where the kernel takes a flow: what `why-route --json` must say, and what the lab must show."""

    verdict: str  # forwarded | sent | delivered-locally | dropped | unreachable | …
    rule: int | None = None  # priority of the ip rule that decided
    table: str | None = None  # name as why-route prints it (main, 52, T1 …)
    dev: str | None = None
    gateway: str | None = None
    wire: tuple[str, str, int] | None = None  # (src, dst, dport) as the packet leaves dev
    nat: tuple[tuple, ...] = ()  # ((type, field, to address[, to port]), …) in the kernel's order
    sink: str | None = None  # the node where the packet arrives next
    sink_iif: str | None = None
    absent_from: tuple[str, ...] = ()  # nodes the packet must never reach
    outcome: str | None = None  # what the sender's socket reports (see ToolLab.tcp_connect/udp_send)
    error: str | None = None  # routing error (ENETUNREACH …) when the kernel refuses to route


def send(lab: ToolLab, flow: Flow) -> str:
    sender = flow.sender or flow.router
    if flow.proto == "tcp":
        return lab.tcp_connect(sender, flow.dst, flow.dport, src=flow.src, sport=flow.sport)
    return lab.udp_send(sender, flow.dst, flow.dport, src=flow.src, sport=flow.sport, mark=flow.mark)


def kernel_mismatches(lab: ToolLab, flow: Flow, path: Path) -> list[str]:
    """How the kernel's handling of one real packet of `flow` differs from `path` (empty: it follows it)."""
    lab.clear_sinks()
    outcome = send(lab, flow)
    problems = []
    if path.outcome and outcome != path.outcome:
        problems.append(f"the sender's socket says {outcome!r}, expected {path.outcome!r}")
    if path.sink:
        src, dst, dport = path.wire
        seen = [a for a in lab.arrivals(path.sink) if (a.dst, a.dport, a.proto) == (dst, dport, flow.proto)]
        if not any(a.src == src and (path.sink_iif is None or a.iif == path.sink_iif) for a in seen):
            problems.append(f"{path.sink} did not see {src} → {dst}:{dport} on {path.sink_iif or 'any interface'}; "
                            f"it saw {seen or 'nothing for that destination'}")
    for node in path.absent_from:
        reached = [a for a in lab.arrivals(node) if a.sport == flow.sport or (a.dport, a.proto) == (
            (path.wire[2] if path.wire else flow.dport), flow.proto)]
        if reached:
            problems.append(f"{node} saw {reached}, expected nothing")
    if path.dev or path.error:
        problems += _route_mismatches(lab, flow, path)
    return problems


def _route_mismatches(lab: ToolLab, flow: Flow, path: Path) -> list[str]:
    # After a DNAT the kernel routes the rewritten destination.
    dnat = [to for kind, _, to, *_ in path.nat if kind in ("dnat", "redirect")]
    dst = dnat[-1] if dnat else flow.dst
    route = lab.route_get(flow.router, dst, src=flow.src, iif=flow.iif,
                          mark=flow.mark, proto=flow.proto, dport=path.wire[2] if path.wire else flow.dport,
                          sport=flow.sport)
    if path.error:
        expected = os.strerror(getattr(errno, path.error))  # as `ip` prints it: "RTNETLINK answers: <strerror>"
        return [] if expected in route.get("error", "") else [f"ip route get gave {route}, expected {expected}"]
    if "error" in route:
        return [f"ip route get failed: {route['error']}"]
    problems = []
    if route.get("dev") != path.dev:
        problems.append(f"ip route get: dev {route.get('dev')}, expected {path.dev}")
    if route.get("gateway") != path.gateway:
        problems.append(f"ip route get: gateway {route.get('gateway')}, expected {path.gateway}")
    if str(route.get("table", "main")) != str(path.table) and path.table is not None:
        problems.append(f"ip route get: table {route.get('table', 'main')}, expected {path.table}")
    return problems


# ------------------------------------------------------------------ why-route

def explain(capsys, ns: str, *argv: str) -> dict:
    """`why-route ARGV --netns NS --json`, parsed. Exit 1 (the kernel disagrees) still prints the document."""
    status, out, err = why_route_in_process(capsys, *argv, "--netns", ns, "--json")
    assert status in (0, 1), f"why-route exited {status}: {err}"
    return json.loads(out)


def explain_flow(capsys, lab: ToolLab, flow: Flow) -> dict:
    return explain(capsys, lab.ns(flow.router), *flow.argv())


def explain_offline(capsys, snapshot_file: str, flow: Flow) -> dict:
    """`why-route ARGV --snapshot FILE --json`, parsed."""
    status, out, err = why_route_in_process(capsys, *flow.argv(), "--snapshot", snapshot_file, "--json")
    assert status == 0, f"why-route --snapshot exited {status}: {err}"
    return json.loads(out)


def answers(doc: dict) -> dict:
    """What an explanation answers, live or offline alike: for each outcome (the explanation and
    its alternatives, in any order: live, the kernel's pick of a multipath route comes first)
    the verdict, deciding rule, table, route, gateway, device, error, NAT, packet on the wire;
    and the findings that concern the flow."""
    def one(doc):
        decision = doc["decision"] or {}
        return {"verdict": doc["verdict"], "rule": (decision.get("rule") or {}).get("priority"),
                **{key: decision.get(key) for key in ("table", "route", "gateway", "dev", "error")},
                "nat": [(n["type"], n["field"], n["to"], n.get("to_port")) for n in doc["nat"]],
                "egress": doc["egress"], "share": doc.get("share")}
    return {"outcomes": sorted((one(d) for d in (doc, *doc.get("alternatives", []))), key=repr),
            "findings": sorted((f["id"], f["message"]) for f in doc["findings"])}


def check(capsys, ns: str) -> dict:
    status, out, err = why_route_in_process(capsys, "check", "--netns", ns, "--json")
    assert status in (0, 1), f"why-route check exited {status}: {err}"
    return json.loads(out)


def why_route_mismatches(doc: dict, path: Path) -> list[str]:
    """Every field of why-route's explanation that differs from the kernel's `path`."""
    problems = []

    def differs(what, got, want):
        if got != want:
            problems.append(f"{what}: why-route says {got!r}, the kernel {want!r}")

    differs("verdict", doc["verdict"], path.verdict)
    decision = doc["decision"] or {}
    if path.rule is not None:
        differs("deciding rule", (decision.get("rule") or {}).get("priority"), path.rule)
    if path.table is not None:
        differs("table", decision.get("table"), path.table)
    if path.dev is not None:
        differs("device", decision.get("dev"), path.dev)
        differs("gateway", decision.get("gateway"), path.gateway)
    if path.error is not None:
        differs("routing error", decision.get("error"), path.error)
    if path.wire is not None:
        egress = doc["egress"] or {}
        differs("on the wire", (egress.get("dev"), egress.get("src"), egress.get("dst"), egress.get("dport")),
                (path.dev, *path.wire))
    # An expected rewrite names its port only when the rule sets one (DNAT to ADDR:PORT).
    rewrites = [(n["type"], n["field"], n["to"], n.get("to_port")) for n in doc["nat"]]
    differs("NAT", [r[:len(want)] for r, want in zip(rewrites, path.nat, strict=False)] + rewrites[len(path.nat):],
            list(path.nat))
    kernel = doc.get("kernel")
    if kernel is not None and not kernel["agrees"]:
        problems.append(f"why-route's own kernel cross-check disagrees: {kernel['differences']}")
    return problems


def errors(report: dict) -> list[dict]:
    return [f for f in report["findings"] if f["severity"] == "error"]


def findings_naming(report: dict, *words: str) -> list[dict]:
    """Warning- or error-level findings whose text names every one of `words`."""
    found = []
    for finding in report["findings"]:
        text = " ".join([finding["title"], finding["message"], *finding["fix"]["commands"]])
        if finding["severity"] in ("warning", "error") and all(w in text for w in words):
            found.append(finding)
    return found


def outcomes(doc: dict, *fields: str) -> dict[tuple, float]:
    """Every outcome why-route gives for a flow whose path forks (`-m statistic`,
    multipath): {(egress field, …): share}. The explanation is one outcome;
    `alternatives` holds the others."""
    def key(egress):
        return tuple((egress or {}).get(f) for f in fields)
    found = {key(doc["egress"]): doc.get("share", 1.0)}
    for alternative in doc.get("alternatives", []):
        found[key(alternative["egress"])] = found.get(key(alternative["egress"]), 0) + alternative["share"]
    return found


def cases(table: dict, defects: dict) -> list:
    """The keys of `table` as test parameters, those in `defects` marked as why-route's known
    defects (strict: a fix makes the test pass, and then the mark must go)."""
    return [pytest.param(key, marks=pytest.mark.xfail(strict=True, reason=defects[key])) if key in defects
            else key for key in table]



def path_tests(healthy: dict, broken: dict, defects: dict) -> dict:
    """The four tests of every tool module, for its HEALTHY and BROKEN flows: the kernel takes the
    expected path, and why-route names it (strict xfail for the flows in `defects`). A module runs
    them with `globals().update(path_tests(HEALTHY, BROKEN, WHY_ROUTE_DEFECTS))`."""

    @pytest.mark.parametrize("name", list(healthy))
    def test_the_kernel_takes_the_path(tool_lab, name):
        flow, path = healthy[name]
        assert kernel_mismatches(tool_lab("healthy"), flow, path) == []

    @pytest.mark.parametrize("name", cases(healthy, defects))
    def test_why_route_names_the_path(tool_lab, capsys, name):
        flow, path = healthy[name]
        assert why_route_mismatches(explain_flow(capsys, tool_lab("healthy"), flow), path) == []

    @pytest.mark.parametrize("key", list(broken), ids="/".join)
    def test_the_breakage_is_real(tool_lab, key):
        flow, path = broken[key]
        assert kernel_mismatches(tool_lab(key[0]), flow, path) == []

    @pytest.mark.parametrize("key", cases(broken, defects), ids="/".join)
    def test_why_route_explains_the_breakage(tool_lab, capsys, key):
        flow, path = broken[key]
        assert why_route_mismatches(explain_flow(capsys, tool_lab(key[0]), flow), path) == []

    # Offline: one snapshot per (tool state, router), every flow of that state explained from it.
    flows_of: dict[tuple[str, str], dict[str, Flow]] = {}
    for key, (flow, _) in [*((("healthy", name), case) for name, case in healthy.items()), *broken.items()]:
        flows_of.setdefault((key[0], flow.router), {})["/".join(key)] = flow

    @pytest.mark.parametrize("key", [("healthy", name) for name in healthy] + list(broken), ids="/".join)
    def test_a_snapshot_gives_the_live_answers(tool_lab, capsys, key):
        flow, path = healthy[key[1]] if key[0] == "healthy" else broken[key]
        replay = tool_lab.replay(capsys, key[0], flow.router, flows_of[(key[0], flow.router)])
        offline = explain_offline(capsys, replay.snapshot, flow)
        assert answers(offline) == answers(replay.live["/".join(key)])
        if key[1] not in defects and key not in defects:
            assert why_route_mismatches(offline, path) == []

    return {test.__name__: test for test in (test_the_kernel_takes_the_path, test_why_route_names_the_path,
                                            test_the_breakage_is_real, test_why_route_explains_the_breakage,
                                            test_a_snapshot_gives_the_live_answers)}
