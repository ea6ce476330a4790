"""Topology files: TOML in, validated frozen dataclasses out.

The whole file is checked before the lab touches the kernel; the first problem
found is reported as one line (a `TopologyError`, which is a `UsageError`).
Besides shape and values, validation is the lab's isolation guard: a topology
may only wire its own nodes to each other, never a namespace to the root
namespace or to a real interface. docs/lab.md describes every key.
"""

from __future__ import annotations

import ipaddress
import re
import shlex
import tomllib
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from tracer.errors import UsageError

DEFAULT_TOPOLOGY = "seed"

NODE_NAME = re.compile(r"[a-z][a-z0-9]{0,8}\Z")  # with a 5-char prefix: "<prefix>-<node>" <= 15
IFNAME = re.compile(r"[A-Za-z0-9_.-]{1,15}\Z")
SYSCTL_KEY = re.compile(r"net(\.[A-Za-z0-9_/-]+)+\Z")
RESERVED_NODES = {"host", "root", "init", "default", "all", "self", "none", "lo"}
RESERVED_IFNAMES = {"all", "default", ".", ".."}
OUTSIDE_KINDS = {"macvlan", "macvtap", "ipvlan", "ipvtap", "vlan", "vxlan", "physical", "phys", "host"}
OUTSIDE_KEYS = {"netns", "parent", "link", "physdev", "host", "namespace"}
# Where a command may redirect output: the node's own rt_tables copy, its
# per-namespace sysctls, and the usual pseudo files.
WRITABLE = ("/etc/iproute2/", "/proc/sys/net/", "/dev/null", "/dev/stdout", "/dev/stderr")
ESCAPE_WORDS = {"nsenter", "unshare", "setns", "chroot", "ip-netns"}
ESCAPE_PATHS = ("/run/netns", "/var/run/netns", "/etc/netns", "/proc/1/")


class TopologyError(UsageError):
    """A topology file that cannot be built, or that the isolation guard refuses."""


@dataclass(frozen=True)
class Address:
    local: str  # "192.168.1.1/24", or a bare address when `peer` is set
    peer: str | None = None

    def ip_args(self) -> list[str]:
        return [self.local, "peer", self.peer] if self.peer else [self.local]

    def __str__(self) -> str:
        return f"{self.local} peer {self.peer}" if self.peer else self.local


@dataclass(frozen=True)
class Interface:
    name: str
    kind: str = "veth"  # veth (one end of a link), bridge, loopback
    addresses: tuple[Address, ...] = ()
    master: str | None = None
    mtu: int | None = None


@dataclass(frozen=True)
class Route:
    to: str
    via: str | None = None
    dev: str | None = None
    src: str | None = None
    metric: int | None = None
    table: str | None = None

    def ip_args(self) -> list[str]:
        args = [self.to]
        for key in ("via", "dev", "src", "metric", "table"):
            value = getattr(self, key)
            if value is not None:
                args += [key, str(value)]
        return args


@dataclass(frozen=True)
class Node:
    name: str
    description: str = ""
    forwarding: bool = False
    sysctl: tuple[tuple[str, str], ...] = ()
    interfaces: tuple[Interface, ...] = ()
    routes: tuple[Route, ...] = ()
    run: tuple[str, ...] = ()

    def interface(self, name: str) -> Interface | None:
        return next((i for i in self.interfaces if i.name == name), None)


@dataclass(frozen=True)
class LinkEnd:
    node: str
    interface: str

    def __str__(self) -> str:
        return f"{self.node}:{self.interface}"


@dataclass(frozen=True)
class Link:
    ends: tuple[LinkEnd, LinkEnd]
    kind: str = "veth"  # veth, or ppp: point-to-point, no ARP, one MAC on both ends
    mtu: int | None = None


@dataclass(frozen=True)
class Command:
    node: str
    run: str


@dataclass(frozen=True)
class Variant:
    name: str
    description: str = ""
    commands: tuple[Command, ...] = ()


@dataclass(frozen=True)
class Topology:
    name: str
    source: str
    description: str = ""
    default_variant: str = ""
    sysctl: tuple[tuple[str, str], ...] = ()
    nodes: tuple[Node, ...] = ()
    links: tuple[Link, ...] = ()
    variants: tuple[Variant, ...] = ()

    def node(self, name: str) -> Node:
        for node in self.nodes:
            if node.name == name:
                return node
        raise UsageError(f"no node {name!r} in topology {self.name} (nodes: {', '.join(self.node_names)})")

    def variant(self, name: str | None) -> Variant:
        name = name or self.default_variant
        for variant in self.variants:
            if variant.name == name:
                return variant
        known = ", ".join(v.name for v in self.variants)
        raise UsageError(f"no variant {name!r} in topology {self.name} (variants: {known})")

    @property
    def node_names(self) -> tuple[str, ...]:
        return tuple(node.name for node in self.nodes)


def bundled_names() -> list[str]:
    return sorted(p.name[:-5] for p in _bundled().iterdir() if p.name.endswith(".toml"))


def _bundled():
    return resources.files("tracer.lab").joinpath("topologies")


def load(ref: str | Path | None = None) -> Topology:
    """A bundled topology by name (default `seed`), or a topology file by path."""
    ref = str(ref or DEFAULT_TOPOLOGY)
    if "/" in ref or ref.endswith(".toml") or Path(ref).is_file():
        path = Path(ref)
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise UsageError(f"cannot read topology {ref}: {getattr(exc, 'strerror', None) or exc}") from None
        return parse(text, str(path.resolve()))
    if ref not in bundled_names():
        raise UsageError(f"no bundled topology {ref!r} (bundled: {', '.join(bundled_names())}; or give a path)")
    resource = _bundled().joinpath(f"{ref}.toml")
    return parse(resource.read_text(encoding="utf-8"), str(resource))


def parse(text: str, source: str = "<string>") -> Topology:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise TopologyError(f"topology {source}: not valid TOML: {exc}") from None
    return from_dict(data, source)


def from_dict(data: dict, source: str = "<dict>") -> Topology:
    """A topology given as the tables a TOML file would hold (for code that
    builds one), validated exactly like a file."""
    try:
        return _Parser(data).topology(source)
    except _Invalid as exc:
        where, problem = exc.args
        raise TopologyError(f"topology {source}: {where}: {problem}") from None


class _Invalid(Exception):
    """(where, problem): turned into one TopologyError line by parse()."""


def _fail(where: str, problem: str):
    raise _Invalid(where, problem)


def _table(where: str, value: Any, required: set[str], optional: set[str]) -> dict:
    """A TOML table with exactly the allowed keys (outside-pointing keys get the guard's wording)."""
    if not isinstance(value, dict):
        _fail(where, f"must be a table, not {_noun(type(value))}")
    for key in value:
        if key in OUTSIDE_KEYS:
            _fail(f"{where}.{key}", "refused: the lab never refers to namespaces or interfaces outside the topology")
        if key not in required | optional:
            _fail(f"{where}.{key}", f"unknown key (allowed: {', '.join(sorted(required | optional))})")
    for key in sorted(required):
        if key not in value:
            _fail(where, f"missing required key {key!r}")
    return value


def _typed(where: str, value: Any, kind: type | tuple[type, ...]):
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
        _fail(where, f"must be {' or '.join(map(_noun, kinds))}, not {_noun(type(value))}")
    return value


def _noun(kind: type) -> str:
    nouns = {dict: "a table", list: "a list", str: "a string", bool: "true or false", int: "an integer"}
    return nouns.get(kind, kind.__name__)


def _strings(where: str, value: Any) -> tuple[str, ...]:
    _typed(where, value, list)
    return tuple(_typed(f"{where}[{i}]", item, str) for i, item in enumerate(value))


def _ifname(where: str, name: Any) -> str:
    _typed(where, name, str)
    if len(name) > 15:
        _fail(where, f"interface name {name!r} is {len(name)} characters; Linux allows at most 15")
    if not IFNAME.match(name) or name in RESERVED_IFNAMES:
        _fail(where, f"{name!r} is not a usable interface name (letters, digits, '_', '.', '-')")
    return name


def _ip(where: str, value: Any, *, network: bool = False) -> str:
    _typed(where, value, str)
    try:
        return str(ipaddress.ip_interface(value) if network else ipaddress.ip_address(value))
    except ValueError:
        _fail(where, f"{value!r} is not an IP {'address/prefix' if network else 'address'}")


def _sysctl(where: str, value: Any) -> tuple[tuple[str, str], ...]:
    _typed(where, value, dict)
    pairs = []
    for key, setting in value.items():
        if not SYSCTL_KEY.match(key):
            _fail(f"{where}.{key}", "refused: only per-namespace net.* sysctls (others would change the host)")
        _typed(f"{where}.{key}", setting, (int, str))
        pairs.append((key, str(setting)))
    return tuple(pairs)


def command_escape(command: str) -> str | None:
    """Why `command` could reach outside its node's namespace, or None.

    A best-effort guard for the commands a topology runs (they run as root):
    it refuses namespace switching (`ip netns`, `ip -n`, `… netns 1`,
    nsenter, unshare, /proc/1/…) and redirections to files the node does not own.
    """
    try:
        lexer = shlex.shlex(command, posix=True, punctuation_chars=True)
        lexer.whitespace_split = True
        tokens = list(lexer)
    except ValueError as exc:
        return f"cannot be parsed as a shell command ({exc})"
    for i, token in enumerate(tokens):
        word = token.rsplit("/", 1)[-1]
        if token == "netns" or word in ESCAPE_WORDS:
            return f"{token!r} would leave the node's network namespace"
        if any(token.startswith(p) for p in ESCAPE_PATHS):
            return f"{token!r} refers to another namespace"
        if word == "ip":
            for flag in tokens[i + 1 :]:
                if not flag.startswith("-"):
                    break
                if len(flag) > 2 and "-netns".startswith(flag) or flag in ("-n", "--netns"):
                    return f"'ip {flag}' would leave the node's network namespace"
        if token in (">", ">>", ">|", "&>", "&>>") and i + 1 < len(tokens):
            target = tokens[i + 1]
            if not target.startswith(WRITABLE) and not target.startswith("&"):
                return f"writes to {target}, outside what a node owns ({', '.join(WRITABLE)})"
    return None


class _Parser:
    def __init__(self, data: dict):
        self.data = data

    def topology(self, source: str) -> Topology:
        data = _table("top level", self.data, {"name", "nodes"},
                      {"description", "default_variant", "sysctl", "links", "variants"})
        nodes_table = _typed("nodes", data["nodes"], dict)
        if not nodes_table:
            _fail("nodes", "a topology needs at least one node")
        nodes = tuple(self.node(name, spec) for name, spec in nodes_table.items())
        links = tuple(self.link(f"links[{i}]", spec, nodes)
                      for i, spec in enumerate(_typed("links", data.get("links", []), list)))
        self.check_wiring(nodes, links)
        variants = tuple(self.variant(name, spec, nodes)
                         for name, spec in _typed("variants", data.get("variants", {}), dict).items())
        if not variants:
            variants = (Variant("base", "the topology as written, nothing added"),)
        default = _typed("default_variant", data.get("default_variant", variants[0].name), str)
        if default not in {v.name for v in variants}:
            _fail("default_variant", f"{default!r} is not one of the variants")
        return Topology(
            name=_typed("name", data["name"], str), source=source,
            description=_typed("description", data.get("description", ""), str),
            default_variant=default, sysctl=_sysctl("sysctl", data.get("sysctl", {})),
            nodes=nodes, links=links, variants=variants,
        )

    def node(self, name: str, spec: Any) -> Node:
        where = f"nodes.{name}"
        if name.lower() in RESERVED_NODES:
            _fail(where, f"refused: {name!r} would stand for the host; name lab nodes after their role")
        if not NODE_NAME.match(name):
            _fail(where, "a node name is a lowercase letter then up to 8 lowercase letters or digits")
        spec = _table(where, spec, set(), {"description", "forwarding", "sysctl", "interfaces", "routes", "run"})
        interface_specs = _typed(f"{where}.interfaces", spec.get("interfaces", {}), dict)
        interfaces = tuple(self.interface(f"{where}.interfaces.{ifname}", ifname, ifspec)
                           for ifname, ifspec in interface_specs.items())
        names = {i.name for i in interfaces}
        for interface in interfaces:
            if interface.master is not None and interface.master not in {
                    i.name for i in interfaces if i.kind == "bridge"}:
                _fail(f"{where}.interfaces.{interface.name}.master",
                      f"{interface.master!r} is not a bridge of node {name}")
        routes = tuple(self.route(f"{where}.routes[{i}]", r, names)
                       for i, r in enumerate(_typed(f"{where}.routes", spec.get("routes", []), list)))
        run = _strings(f"{where}.run", spec.get("run", []))
        for i, command in enumerate(run):
            self.check_command(f"{where}.run[{i}]", command)
        return Node(
            name=name, description=_typed(f"{where}.description", spec.get("description", ""), str),
            forwarding=_typed(f"{where}.forwarding", spec.get("forwarding", False), bool),
            sysctl=_sysctl(f"{where}.sysctl", spec.get("sysctl", {})),
            interfaces=interfaces, routes=routes, run=run,
        )

    def interface(self, where: str, name: str, spec: Any) -> Interface:
        _ifname(where, name)
        spec = _table(where, spec, set(), {"kind", "addresses", "master", "mtu"})
        kind = _typed(f"{where}.kind", spec.get("kind", "loopback" if name == "lo" else "veth"), str)
        if kind in OUTSIDE_KINDS:
            _fail(f"{where}.kind", f"refused: a {kind} interface attaches to a real interface; "
                                   "the lab only makes veth pairs, bridges and loopback")
        if kind not in ("veth", "bridge", "loopback"):
            _fail(f"{where}.kind", f"unknown kind {kind!r} (veth, bridge, loopback)")
        if (kind == "loopback") != (name == "lo"):
            _fail(f"{where}.kind", "the loopback interface is 'lo', and 'lo' is the loopback")
        addresses = []
        for i, item in enumerate(_typed(f"{where}.addresses", spec.get("addresses", []), list)):
            at = f"{where}.addresses[{i}]"
            if isinstance(item, dict):
                item = _table(at, item, {"local", "peer"}, set())
                addresses.append(Address(_ip(f"{at}.local", item["local"]),
                                         _ip(f"{at}.peer", item["peer"], network=True)))
            else:
                addresses.append(Address(_ip(at, item, network=True)))
        if len(set(addresses)) != len(addresses):
            _fail(f"{where}.addresses", "the same address is listed twice")
        master = spec.get("master")
        if master is not None:
            _ifname(f"{where}.master", master)
            if kind != "veth":
                _fail(f"{where}.master", "only a link end (veth) can be a bridge port")
        mtu = spec.get("mtu")
        if mtu is not None and not 68 <= _typed(f"{where}.mtu", mtu, int) <= 65535:
            _fail(f"{where}.mtu", "must be between 68 and 65535")
        return Interface(name=name, kind=kind, addresses=tuple(addresses), master=master, mtu=mtu)

    def route(self, where: str, spec: Any, interfaces: set[str]) -> Route:
        spec = _table(where, spec, {"to"}, {"via", "dev", "src", "metric", "table"})
        to = _typed(f"{where}.to", spec["to"], str)
        if to != "default":
            to = _ip(f"{where}.to", to, network=True)
        dev = spec.get("dev")
        if dev is not None and _typed(f"{where}.dev", dev, str) not in interfaces:
            _fail(f"{where}.dev", f"refused: {dev!r} is not an interface of this node")
        if "via" not in spec and dev is None:
            _fail(where, "a route needs 'via' or 'dev'")
        metric = spec.get("metric")
        if metric is not None:
            _typed(f"{where}.metric", metric, int)
        table = spec.get("table")
        if table is not None:
            _typed(f"{where}.table", table, (int, str))
            if table not in ("main", "local", "default") and not (isinstance(table, int) and 0 < table < 2**32):
                _fail(f"{where}.table", "must be main, local, default or a number (names come from variants)")
            table = str(table)
        return Route(to=to, via=_ip(f"{where}.via", spec["via"]) if "via" in spec else None, dev=dev,
                     src=_ip(f"{where}.src", spec["src"]) if "src" in spec else None, metric=metric, table=table)

    def link(self, where: str, spec: Any, nodes: tuple[Node, ...]) -> Link:
        spec = _table(where, spec, {"ends"}, {"kind", "mtu"})
        kind = _typed(f"{where}.kind", spec.get("kind", "veth"), str)
        if kind in OUTSIDE_KINDS:
            _fail(f"{where}.kind", f"refused: a {kind} link attaches to a real interface")
        if kind not in ("veth", "ppp"):
            _fail(f"{where}.kind", f"unknown kind {kind!r} (veth, ppp)")
        raw = _strings(f"{where}.ends", spec["ends"])
        if len(raw) != 2:
            _fail(f"{where}.ends", "a link has exactly two ends")
        ends = []
        by_name = {n.name: n for n in nodes}
        for i, end in enumerate(raw):
            at = f"{where}.ends[{i}]"
            node_name, sep, ifname = end.partition(":")
            if not sep:
                _fail(at, f"{end!r} is not NODE:INTERFACE")
            if node_name not in by_name:
                _fail(at, f"refused: {node_name!r} is not a node of this topology "
                          "(the lab never links to the root namespace or other namespaces)")
            interface = by_name[node_name].interface(_ifname(at, ifname))
            if interface is None:
                _fail(at, f"node {node_name} declares no interface {ifname!r}")
            if interface.kind != "veth":
                _fail(at, f"{end} is a {interface.kind}, not a link end")
            ends.append(LinkEnd(node_name, ifname))
        mtu = spec.get("mtu", 1400 if kind == "ppp" else None)
        if mtu is not None and not 68 <= _typed(f"{where}.mtu", mtu, int) <= 65535:
            _fail(f"{where}.mtu", "must be between 68 and 65535")
        return Link(ends=(ends[0], ends[1]), kind=kind, mtu=mtu)

    @staticmethod
    def check_wiring(nodes: tuple[Node, ...], links: tuple[Link, ...]) -> None:
        used: dict[LinkEnd, int] = {}
        for i, link in enumerate(links):
            for end in link.ends:
                if end in used:
                    _fail(f"links[{i}]", f"{end} is already an end of links[{used[end]}]")
                used[end] = i
        for node in nodes:
            for interface in node.interfaces:
                if interface.kind == "veth" and LinkEnd(node.name, interface.name) not in used:
                    _fail(f"nodes.{node.name}.interfaces.{interface.name}", "is not an end of any link")

    def variant(self, name: str, spec: Any, nodes: tuple[Node, ...]) -> Variant:
        where = f"variants.{name}"
        if not re.fullmatch(r"[a-z0-9][a-z0-9-]*", name):
            _fail(where, "a variant name is lowercase letters, digits and '-'")
        spec = _table(where, spec, set(), {"description", "run"})
        commands = []
        for node_name, lines in _typed(f"{where}.run", spec.get("run", {}), dict).items():
            at = f"{where}.run.{node_name}"
            if node_name not in {n.name for n in nodes}:
                _fail(at, f"refused: commands must be scoped to a node of this topology, and {node_name!r} is not one")
            for i, command in enumerate(_strings(at, lines)):
                self.check_command(f"{at}[{i}]", command)
                commands.append(Command(node_name, command))
        return Variant(name, _typed(f"{where}.description", spec.get("description", ""), str), tuple(commands))

    @staticmethod
    def check_command(where: str, command: str) -> None:
        problem = command_escape(command)
        if problem:
            _fail(where, f"refused: {problem}")
