"""Build, inspect and remove labs: a topology turned into network namespaces.

Public API (what tests and other features use):

    up(topology=None, variant=None, prefix="wr", replace=True) -> LabState
    down(prefix="wr") -> list[str]                  namespaces removed
    read_state(prefix="wr") -> LabState | None
    labs() -> list[dict]                            every lab on the machine, for `lab list`
    status(prefix="wr") -> dict                     state + live interfaces, for `lab status`
    run_in(namespace, argv, check=True, ...) -> subprocess.CompletedProcess
    exec_in(prefix, node, argv) -> int              stdio passed through
    namespace(prefix, node) -> str                  "<prefix>-<node>"

Everything is done with `ip` (iproute2) and `sysctl` subprocesses. Each node is
a namespace `<prefix>-<node>`; veth pairs are created with both ends directly
in their nodes' namespaces, so no lab interface ever exists in the root
namespace. The state file /run/why-route/labs/<prefix>.json is written before
the first namespace is created, so `down` can always clean up after a crash.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import subprocess
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tracer import netns
from tracer.errors import EnvironmentProblem, UsageError, WhyRouteError
from tracer.lab import topology as topo
from tracer.lab.topology import Topology

DEFAULT_PREFIX = "wr"
PREFIX = re.compile(r"[a-z0-9]{1,5}\Z")
STATE_DIR = Path("/run/why-route/labs")
STATE_VERSION = 1
# tests/lab/lab_helpers.py still reads the paths here; they are tracer.netns's.
NETNS_DIR, ETC_NETNS = netns.NETNS_RUN_DIR, netns.ETC_NETNS

# Every node starts from these, whatever the host's sysctl.conf says (a new
# namespace copies the host's IPv4 all/default settings): the kernel defaults
# of the knobs that change routing decisions. Then ip_forward from the node's
# `forwarding`, then the topology's [sysctl], then the node's own sysctl.
BASE_SYSCTL = {
    f"net.ipv4.conf.{scope}.{knob}": value
    for scope in ("all", "default")
    for knob, value in (("rp_filter", 0), ("accept_local", 0), ("accept_redirects", 1),
                        ("send_redirects", 1), ("proxy_arp", 0), ("arp_ignore", 0),
                        ("arp_announce", 0), ("arp_filter", 0), ("route_localnet", 0),
                        ("src_valid_mark", 0))
}


@dataclass(frozen=True)
class Failure:
    """A variant command that exited non-zero, as the node's shell reported it."""

    node: str
    command: str
    returncode: int
    stderr: str


@dataclass(frozen=True)
class LabState:
    prefix: str
    topology: str  # the topology's name
    source: str  # the file it was loaded from
    variant: str
    nodes: dict[str, str]  # node -> namespace, in topology order
    status: str = "building"  # building, then up
    failures: tuple[Failure, ...] = ()
    pid: int = field(default_factory=os.getpid)
    seconds: float | None = None  # how long `up` took

    def ns(self, node: str) -> str:
        try:
            return self.nodes[node]
        except KeyError:
            raise UsageError(f"no node {node!r} in lab {self.prefix} (nodes: {', '.join(self.nodes)})") from None

    def run(self, node: str, argv: list[str], *, check: bool = True, **kwargs) -> subprocess.CompletedProcess:
        return run_in(self.ns(node), argv, check=check, **kwargs)

    def to_json(self) -> dict:
        return {"version": STATE_VERSION, **asdict(self)}

    @classmethod
    def from_json(cls, data: dict) -> LabState:
        data = {k: v for k, v in data.items() if k != "version"}
        data["failures"] = tuple(Failure(**f) for f in data.get("failures", ()))
        return cls(**data)


class CommandFailed(EnvironmentProblem):
    """A command the lab itself needed (not a variant's) failed."""


def namespace(prefix: str, node: str) -> str:
    return f"{prefix}-{node}"


def state_path(prefix: str) -> Path:
    return STATE_DIR / f"{prefix}.json"


def check_prefix(prefix: str) -> str:
    if not PREFIX.match(prefix or ""):
        raise UsageError(f"bad lab prefix {prefix!r}: 1 to 5 characters, a-z and 0-9")
    return prefix


def require_lab_privileges() -> None:
    if os.geteuid() != 0:
        raise EnvironmentProblem("the lab needs root (it creates network namespaces); run it as root")
    if shutil.which("ip") is None:
        raise EnvironmentProblem("`ip` (iproute2) not found; install iproute2")


def _run(argv: list[str], *, check: bool = True, input: str | None = None,
         timeout: float | None = 60) -> subprocess.CompletedProcess:
    try:
        result = subprocess.run(argv, input=input, capture_output=True, text=True, timeout=timeout)
    except FileNotFoundError:
        raise EnvironmentProblem(f"`{argv[0]}` not found") from None
    except subprocess.TimeoutExpired:
        raise CommandFailed(f"`{' '.join(argv)}` did not finish within {timeout} s") from None
    if check and result.returncode != 0:
        detail = (result.stderr.strip() or result.stdout.strip() or f"exit status {result.returncode}")
        raise CommandFailed(f"`{' '.join(argv)}` failed: {' / '.join(detail.splitlines())}")
    return result


def run_in(namespace: str, argv: list[str], *, check: bool = True, input: str | None = None,
           timeout: float | None = 60) -> subprocess.CompletedProcess:
    """Run argv in a lab namespace (`ip netns exec`, so /etc/netns/NS applies), output captured.

    With check=True a non-zero exit raises CommandFailed (an EnvironmentProblem)."""
    return _run(["ip", "netns", "exec", namespace, *argv], check=check, input=input, timeout=timeout)


def read_state(prefix: str = DEFAULT_PREFIX) -> LabState | None:
    path = state_path(check_prefix(prefix))
    try:
        return LabState.from_json(json.loads(path.read_text()))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, TypeError, KeyError) as exc:
        raise EnvironmentProblem(f"unreadable lab state {path} ({exc}); `why-route lab down --prefix {prefix}` "
                                 "removes it") from None


def _write_state(state: LabState) -> None:
    STATE_DIR.mkdir(parents=True, exist_ok=True)
    path = state_path(state.prefix)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(state.to_json(), indent=2) + "\n")
    tmp.replace(path)  # atomic: a crash never leaves half a state file


def up(topology: Topology | str | Path | None = None, variant: str | None = None,
       prefix: str = DEFAULT_PREFIX, *, replace: bool = True) -> LabState:
    """Build `topology` (a Topology, a bundled name or a path; default the seed) with `variant`.

    An existing or half-built lab with the same prefix is torn down first; with replace=False
    (the CLI's default) a lab that is up, or any namespace the lab would take, is a UsageError
    instead (a half-built lab whose builder is gone is always replaced: it is debris).
    Variant commands that fail are recorded in LabState.failures, not raised.
    On any other error (or Ctrl-C, SIGTERM, SIGHUP) what was built is removed, then the error is raised."""
    started = time.monotonic()
    check_prefix(prefix)
    if not isinstance(topology, Topology):
        topology = topo.load(topology)
    chosen = topology.variant(variant)
    require_lab_privileges()
    if not netns.HOST_IPROUTE2.is_dir():
        raise EnvironmentProblem(f"{netns.HOST_IPROUTE2} is missing; the lab copies it per node for rt_tables")
    old = _read_state_leniently(prefix)
    if old and old.status == "building" and old.pid != os.getpid() and netns.pid_alive(old.pid):
        raise UsageError(f"lab {prefix} is being built by process {old.pid}; wait, or use another --prefix")
    wanted = {node: namespace(prefix, node) for node in topology.node_names}
    if not replace:
        _refuse_to_replace(prefix, old, wanted.values())
    _teardown(prefix, old, extra=wanted.values())

    state = LabState(prefix=prefix, topology=topology.name, source=topology.source,
                     variant=chosen.name, nodes=wanted)
    _write_state(state)  # before the first namespace exists
    try:
        # Ctrl-C, SIGTERM, SIGHUP or an error: what was built is removed, with the state file.
        with netns.Teardown() as undo:
            undo.callback(_teardown, prefix, state)
            failures = _Build(topology, state).run(chosen)
            undo.pop_all()  # built: the lab stays
    except WhyRouteError as exc:
        raise type(exc)(f"lab up failed, nothing left behind: {exc}") from None
    except OSError as exc:
        raise EnvironmentProblem(f"lab up failed, nothing left behind: {exc}") from None
    state = dataclasses.replace(state, status="up", failures=failures, seconds=round(time.monotonic() - started, 3))
    _write_state(state)
    return state


def _refuse_to_replace(prefix: str, old: LabState | None, wanted) -> None:
    """UsageError if building lab `prefix` would remove someone's lab or namespaces."""
    crashed = old is not None and old.status == "building" and not netns.pid_alive(old.pid)
    if old is not None and not crashed:
        raise UsageError(f"lab {prefix} already exists (topology {old.topology}, variant {old.variant}, "
                         f"{old.status}); `--replace` rebuilds it, `--prefix` picks another, "
                         f"`why-route lab list` shows the labs")
    ours = set(old.nodes.values()) if old else set()
    taken = [ns for ns in wanted if ns not in ours and netns.exists(ns)]
    if taken:
        raise UsageError(f"namespace {taken[0]} already exists and is not a lab's"
                         + (f" (and {len(taken) - 1} more)" if len(taken) > 1 else "")
                         + "; `--replace` deletes it, `--prefix` picks another")


class _Build:
    """The steps of `up`, in order; every kernel object is made inside a lab namespace."""

    def __init__(self, topology: Topology, state: LabState):
        self.topology = topology
        self.ns = state.nodes

    def run(self, variant: topo.Variant) -> tuple[Failure, ...]:
        for node in self.topology.nodes:
            self.namespace(node)
        for node in self.topology.nodes:
            self.sysctl(node, early=True)
        for node in self.topology.nodes:
            for interface in node.interfaces:
                if interface.kind == "bridge":
                    _run(["ip", "-n", self.ns[node.name], "link", "add", "name", interface.name, "type", "bridge"])
        for index, link in enumerate(self.topology.links):
            self.link(index, link)
        for node in self.topology.nodes:
            self.configure(node)
            self.sysctl(node, early=False)
            for command in node.run:
                result = self.shell(node.name, command)
                if result.returncode:
                    raise CommandFailed(f"{node.name}: `{command}` failed: "
                                        f"{' / '.join(result.stderr.strip().splitlines())}")
        failures = []
        for command in variant.commands:
            result = self.shell(command.node, command.run)
            if result.returncode:
                failures.append(Failure(command.node, command.run, result.returncode, result.stderr.rstrip("\n")))
        return tuple(failures)

    def namespace(self, node: topo.Node) -> None:
        # With the node's own rt_tables (/etc/netns/NS/iproute2), so variants never write the host's.
        netns.create(self.ns[node.name])

    def sysctl(self, node: topo.Node, *, early: bool) -> None:
        settings = {**BASE_SYSCTL, "net.ipv4.ip_forward": int(node.forwarding),
                    **dict(self.topology.sysctl), **dict(node.sysctl)}
        # Per-interface keys wait for their interface; all/default come first
        # so that the lab's interfaces inherit them.
        chosen = [f"{k}={v}" for k, v in settings.items() if _per_interface(k) != early]
        if chosen:
            run_in(self.ns[node.name], ["sysctl", "-q", "-w", *chosen])

    def link(self, index: int, link: topo.Link) -> None:
        a, b = link.ends
        options = []
        if link.mtu:
            options += ["mtu", str(link.mtu)]
        if link.kind == "ppp":
            # PPP-like: no ARP, and one MAC on both ends. With IFF_NOARP the kernel
            # addresses frames to the device's own MAC, which the peer then accepts.
            mac = f"02:77:72:{index >> 16 & 255:02x}:{index >> 8 & 255:02x}:{index & 255:02x}"
            options += ["address", mac, "arp", "off"]
        _run(["ip", "-n", self.ns[a.node], "link", "add", "name", a.interface, *options,
              "type", "veth", "peer", "name", b.interface, "netns", self.ns[b.node], *options])

    def configure(self, node: topo.Node) -> None:
        ip = ["ip", "-n", self.ns[node.name]]
        for interface in node.interfaces:
            if interface.master:
                _run([*ip, "link", "set", "dev", interface.name, "master", interface.master])
            if interface.mtu:
                _run([*ip, "link", "set", "dev", interface.name, "mtu", str(interface.mtu)])
            for address in interface.addresses:
                _run([*ip, "addr", "add", *address.ip_args(), "dev", interface.name])
        for name in ["lo", *(i.name for i in node.interfaces if i.name != "lo")]:
            _run([*ip, "link", "set", "dev", name, "up"])
        for route in node.routes:
            _run([*ip, "route", "add", *route.ip_args()])

    def shell(self, node: str, command: str) -> subprocess.CompletedProcess:
        return run_in(self.ns[node], ["sh", "-c", command], check=False)


def _per_interface(key: str) -> bool:
    parts = key.split(".")
    return len(parts) > 4 and parts[1] in ("ipv4", "ipv6") and parts[2] in ("conf", "neigh") \
        and parts[3] not in ("all", "default")


def _read_state_leniently(prefix: str) -> LabState | None:
    try:
        return read_state(prefix)
    except EnvironmentProblem:
        return None  # unreadable: the topology's own names are torn down instead


def down(prefix: str = DEFAULT_PREFIX) -> list[str]:
    """Remove the lab `prefix` (also a half-built one); idempotent. Returns the namespaces removed.

    Without a state file, the bundled seed's `<prefix>-<node>` namespaces are removed."""
    check_prefix(prefix)
    require_lab_privileges()
    state = _read_state_leniently(prefix)
    seed = () if state else (namespace(prefix, n) for n in topo.load().node_names)
    return _teardown(prefix, state, extra=seed)


def _teardown(prefix: str, state: LabState | None, extra=()) -> list[str]:
    names = dict.fromkeys([*(state.nodes.values() if state else ()), *extra])
    removed = [ns for ns in names if netns.delete(ns)]
    state_path(prefix).unlink(missing_ok=True)  # last: an interrupted down can be run again
    return removed


def interfaces(ns: str) -> list[dict]:
    """The interfaces of a namespace: name, state, master, addresses ("A/len" or "A peer P/len")."""
    data = json.loads(_run(["ip", "-n", ns, "-j", "addr", "show"]).stdout or "[]")
    result = []
    for link in data:
        addresses = [f"{a['local']} peer {a['address']}/{a['prefixlen']}" if "address" in a
                     else f"{a['local']}/{a['prefixlen']}" for a in link.get("addr_info", [])]
        result.append({"name": link["ifname"], "state": link.get("operstate", "UNKNOWN"),
                       "master": link.get("master"), "addresses": addresses})
    return result


def _existing_lab(prefix: str) -> LabState:
    require_lab_privileges()
    state = read_state(prefix)
    if state is None:
        raise UsageError(f"no lab with prefix {prefix!r} (`why-route lab up --prefix {prefix}` builds one)")
    return state


def status(prefix: str = DEFAULT_PREFIX) -> dict:
    """The lab's state file plus, per node, whether its namespace exists and its interfaces."""
    state = _existing_lab(prefix)
    report = state.to_json()
    report["nodes"] = {
        node: {"namespace": ns, "present": netns.exists(ns), "interfaces": interfaces(ns) if netns.exists(ns) else []}
        for node, ns in state.nodes.items()
    }
    return report


def labs() -> list[dict]:
    """Every lab on the machine (a state file in STATE_DIR), by prefix: its record and how many of its
    namespaces exist; `status` says `up`, `building` (its builder is alive), `crashed` (a half-built lab
    whose builder is gone) or `broken` (up, but namespaces are missing)."""
    found = []
    paths = sorted(STATE_DIR.glob("*.json")) if STATE_DIR.is_dir() else []
    for path in paths:
        prefix = path.stem
        if not PREFIX.match(prefix):
            continue
        try:
            state = read_state(prefix)
        except EnvironmentProblem:
            found.append({"prefix": prefix, "topology": None, "variant": None, "status": "unreadable",
                          "namespaces": 0, "nodes": 0})
            continue
        if state is None:  # removed meanwhile
            continue
        present = sum(netns.exists(ns) for ns in state.nodes.values())
        status = state.status
        if status == "building" and not netns.pid_alive(state.pid):
            status = "crashed"
        elif status == "up" and present < len(state.nodes):
            status = "broken"
        found.append({"prefix": prefix, "topology": state.topology, "variant": state.variant, "status": status,
                      "namespaces": present, "nodes": len(state.nodes), "pid": state.pid})
    return found


def _node_hint(prefix: str, node: str) -> str | None:
    """`wr-route` given as a node: "did you mean node route of lab wr?" when that lab has that node."""
    for at in [i for i, c in enumerate(node) if c == "-"]:
        guess_prefix, guess_node = node[:at], node[at + 1:]
        if not PREFIX.match(guess_prefix):
            continue
        state = _read_state_leniently(guess_prefix)
        if state is not None and guess_node in state.nodes:
            option = "" if guess_prefix == DEFAULT_PREFIX else f" --prefix {guess_prefix}"
            return (f"{node} is a namespace, not a node: did you mean node {guess_node} of lab {guess_prefix}? "
                    f"(`why-route lab exec {guess_node}{option} -- …`)")
    return None


def exec_in(prefix: str, node: str, argv: list[str]) -> int:
    """Run argv in a lab node with the terminal's stdio; its exit status (128+N for signal N)."""
    require_lab_privileges()
    state = read_state(prefix)
    if state is None or node not in state.nodes:
        hint = _node_hint(prefix, node)
        if hint:
            raise UsageError(hint)
    ns = _existing_lab(prefix).ns(node)
    if not netns.exists(ns):
        raise UsageError(f"node {node} of lab {prefix} has no namespace {ns} (half-built? run lab up again)")
    code = subprocess.call(["ip", "netns", "exec", ns, *argv])
    return 128 - code if code < 0 else code
