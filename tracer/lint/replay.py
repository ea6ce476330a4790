"""Replay a HostState into a throwaway network namespace; run a script there; read the result.

    with Replay(state) as replay:              # namespace wrreplay-<pid>-<n>
        replay.run(["ip", "rule"])             # the real tool, inside the namespace
        after = replay.collect()               # HostState, read back from the kernel

The namespace is isolated: it is never linked to the root namespace or to a
real interface (every device is created inside it: ifb for Ethernet-like
links, tun for point-to-point ones), and its rt_tables live in
/etc/netns/<ns>/iproute2, which `ip netns exec` mounts over /etc/iproute2.
Everything is removed on exit, Ctrl-C, SIGTERM/SIGHUP or an exception (a
tracer.netns.Teardown); a namespace left by a killed process (SIGKILL) is
swept by the next replay. What is replayed and what is not: docs/lint.md.

`Replay(state, sinks=True)` (the probe, tracer/lint/probe.py) makes every interface but lo one end
of a veth pair instead, whose peer, `sink`, sits alone in a namespace of its own (also named
wrreplay-<pid>-<n>, so swept alike): a packet the replica sends out of an interface arrives in that
interface's sink, and a frame written in the sink arrives on the interface. A link without carrier
keeps its sink's end down. The sinks hold no address and no IPv6: they never answer by themselves.
"""

from __future__ import annotations

import atexit
import dataclasses
import fcntl
import itertools
import json
import os
import re
import shutil
import socket
import struct
import subprocess
import time
from pathlib import Path

from tracer import netns
from tracer.collect.live import collect_state
from tracer.collect.netlink import ROUTE_PROTOCOLS, RtnlSocket
from tracer.errors import EnvironmentProblem
from tracer.model import Address, HostState, Route, RtTablesEntry, Rule
from tracer.vocab import AF_INET, AF_INET6

NAME_PREFIX = "wrreplay-"
# tests/lint/lint_helpers.py still reads the paths here; they are tracer.netns's.
NETNS_RUN_DIR, ETC_NETNS = netns.NETNS_RUN_DIR, netns.ETC_NETNS
_PROTOCOL_NUMBERS = {name: number for number, name in ROUTE_PROTOCOLS.items()}

TUNSETIFF = 0x400454CA
IFF_TUN, IFF_NO_PI = 0x0001, 0x1000
SIOCGIFFLAGS, SIOCSIFFLAGS, IFF_UP = 0x8913, 0x8914, 0x1
ETH_P_ALL = 0x0003
SINK_DEV = "sink"  # the peer's name, in each sink namespace
_FAMILY_FLAG = {AF_INET: "-4", AF_INET6: "-6"}
_ENV = dict(os.environ, LC_ALL="C")


def require_root() -> None:
    if os.geteuid() != 0:
        raise EnvironmentProblem("the replay needs root: it builds a throwaway network namespace")
    for tool in ("ip", "nft"):
        if shutil.which(tool) is None:
            raise EnvironmentProblem(f"`{tool}` not found; the replay needs iproute2 and nftables")


def sweep_stale() -> list[str]:
    """Remove replay namespaces whose process is gone (it was SIGKILLed)."""
    return netns.sweep(NAME_PREFIX)


def _sysctl_path(key: str) -> str:
    """net.ipv4.conf.eth0.2.rp_filter → net/ipv4/conf/eth0.2/rp_filter (interface names keep their dots)."""
    parts = key.split(".")
    if len(parts) > 4 and parts[2] in ("conf", "neigh"):
        return "/".join([*parts[:3], ".".join(parts[3:-1]), parts[-1]])
    return "/".join(parts)


def _sysctl_rank(key: str) -> int:
    # ip_forward resets every conf.*.forwarding, and all/default propagate: write those first.
    parts = key.split(".")
    if key.endswith("ip_forward"):
        return 0
    if len(parts) > 4 and parts[2] in ("conf", "neigh"):
        return {"all": 1, "default": 2}.get(".".join(parts[3:-1]), 3)
    return 0


def _prefix(address: str, length: int) -> str:
    return f"{address}/{length}"


def _proto(name: str | None) -> str:
    return str(_PROTOCOL_NUMBERS.get(name, name)) if name else ""


class Replay:
    """A namespace holding `state`: a context manager, removed with everything it made on exit."""

    def __init__(self, state: HostState, *, sinks: bool = False):
        self.state = state
        self.name = netns.owned_name(NAME_PREFIX)
        self.etc = netns.ETC_NETNS / self.name / "iproute2"
        self.notes: list[str] = []  # what could not be replayed exactly
        self.seconds: float | None = None
        # sinks=True: {interface: the namespace holding its veth peer SINK_DEV}
        self.sinks: dict[str, str] | None = {} if sinks else None
        self._teardown = netns.Teardown()

    # --- lifetime -----------------------------------------------------------

    def __enter__(self) -> Replay:
        require_root()
        sweep_stale()
        started = time.monotonic()
        self._teardown.__enter__()
        # A signal can land in an outer __exit__ before this one is reached (a batch ending as its
        # SIGTERM arrives): then the interpreter's exit still removes everything.
        atexit.register(self.close)
        try:
            # rt_tables are left out: the state's own are written by _Build.rt_tables.
            self._teardown.namespace(self.name, iproute2_without=("rt_tables*",))
            if self.sinks is not None:
                self._make_sinks()
            _Build(self).run()
        except BaseException:
            self.close()
            raise
        self.seconds = time.monotonic() - started
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self) -> None:
        """Remove the namespace, its /etc/netns directory and the devices held open; idempotent."""
        atexit.unregister(self.close)
        self._teardown.close()

    # --- use ----------------------------------------------------------------

    def run(self, argv: list[str], *, input: str | None = None, timeout: float = 10) -> subprocess.CompletedProcess:
        """argv inside the namespace, via `ip netns exec` (so /etc/iproute2 is the namespace's copy)."""
        try:
            return subprocess.run(["ip", "netns", "exec", self.name, *argv], input=input, capture_output=True,
                                  text=True, timeout=timeout, env=_ENV,
                                  stdin=None if input is not None else subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            return subprocess.CompletedProcess(argv, 124, "", f"did not finish within {timeout:g} s")

    def ip_batch(self, commands: list[str]) -> dict[int, str]:
        """Run `ip -batch` lines ("-4 …"/"-6 …" pick the family); returns {index of a failed line: the error}."""
        failed: dict[int, str] = {}
        start = 0
        # A batch line cannot carry -4/-6: one `ip -batch` per run of lines of one family.
        for flag, group in itertools.groupby(commands, key=lambda c: c[:2] if c[:2] in ("-4", "-6") else ""):
            group = [c[len(flag):].lstrip() for c in group]
            result = subprocess.run(["ip", "-n", self.name, *([flag] if flag else []), "-force", "-batch", "-"],
                                    input="\n".join(group) + "\n", capture_output=True, text=True, env=_ENV)
            message: list[str] = []
            for line in result.stderr.splitlines():
                match = re.match(r"Command failed -:(\d+)", line)
                if match:
                    failed[start + int(match.group(1)) - 1] = " / ".join(message) or "failed"
                    message = []
                elif line.strip():
                    message.append(line.strip())
            start += len(group)
        return failed

    def write_sysctl(self, values: dict[str, str]) -> dict[str, str]:
        """Write net.* sysctls inside the namespace; returns {key: error} for those refused."""
        errors = {}
        with netns.entered(self.name):
            for key in sorted(values, key=_sysctl_rank):
                try:
                    Path("/proc/sys", _sysctl_path(key)).write_text(f"{values[key]}\n")
                except OSError as exc:
                    errors[key] = exc.strerror or str(exc)
        return errors

    def collect(self) -> HostState:
        state = collect_state(self.name, conntrack=False)
        # The state is the source host's, as the script left it: not the replay's bookkeeping.
        source = self.state.provenance
        return state.replace(provenance=dataclasses.replace(state.provenance, netns=source.netns,
                                                            hostname=source.hostname, replayed_in=self.name))

    def on_close(self, action, *args) -> None:
        """Run `action(*args)` when the replay is removed (before what was made earlier is undone)."""
        self._teardown.callback(action, *args)

    # --- sinks (sinks=True) -------------------------------------------------

    def _make_sinks(self) -> None:
        """One empty namespace per interface (lo aside), made in one `ip -batch`, IPv6 off."""
        names = {link.name: netns.owned_name(NAME_PREFIX) for link in self.state.links if "LOOPBACK" not in link.flags}
        if not names:
            return
        self._teardown.callback(_delete_all, list(names.values()))  # registered first, as Teardown.namespace does
        result = subprocess.run(["ip", "-batch", "-"], input="".join(f"netns add {n}\n" for n in names.values()),
                                capture_output=True, text=True, env=_ENV)
        missing = [n for n in names.values() if not netns.exists(n)]
        if missing:
            raise EnvironmentProblem(f"cannot create the probe's sink namespaces: {_first_line(result.stderr)}")
        for name in names.values():
            with netns.entered(name):
                for key in ("all", "default"):
                    Path(f"/proc/sys/net/ipv6/conf/{key}/disable_ipv6").write_text("1\n")
        self.sinks.update(names)

    def sink_up(self, ifname: str, up: bool = True) -> None:
        """Set the sink end of `ifname` up (the replica's end gets a carrier) or down."""
        with netns.entered(self.sinks[ifname]), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            request = struct.pack("16sH", SINK_DEV.encode(), 0)
            flags = struct.unpack("16sH", fcntl.ioctl(s, SIOCGIFFLAGS, request))[1]
            flags = flags | IFF_UP if up else flags & ~IFF_UP
            fcntl.ioctl(s, SIOCSIFFLAGS, struct.pack("16sH", SINK_DEV.encode(), flags))

    def sink_socket(self, ifname: str) -> socket.socket:
        """A raw AF_PACKET socket on the sink end of `ifname`: every frame the replica sends out of
        `ifname` is read here, and a frame sent here arrives on `ifname`. Non-blocking; the caller closes it."""
        with netns.entered(self.sinks[ifname]):
            # protocol 0 until bound: a packet socket bound with its protocol already hooked waits for RCU
            s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
        try:
            s.bind((SINK_DEV, ETH_P_ALL))
            s.setblocking(False)
        except OSError:
            s.close()
            raise
        return s

    def attach_tun(self, name: str) -> None:
        """Create the point-to-point device `name` and keep it open, so it has a carrier like a live PPP link."""
        with netns.entered(self.name):
            fd = os.open("/dev/net/tun", os.O_RDWR | os.O_CLOEXEC)
            try:
                fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", name.encode(), IFF_TUN | IFF_NO_PI))
            except OSError:
                os.close(fd)
                raise
        self._teardown.callback(os.close, fd)


def _delete_all(names: list[str]) -> None:
    """Remove namespaces in one `ip -batch` (one process, not one each); any left, one by one."""
    subprocess.run(["ip", "-force", "-batch", "-"], input="".join(f"netns del {n}\n" for n in names if netns.exists(n)),
                   capture_output=True, text=True, env=_ENV)
    for name in names:
        netns.delete(name)


class _Build:
    """The steps of a replay, in the order the kernel needs them."""

    def __init__(self, replay: Replay):
        self.r = replay
        self.state = replay.state
        self.note = replay.notes.append

    def run(self) -> None:
        self.rt_tables()
        sysctls = {k: v for k, v in self.state.sysctls.items() if k.startswith("net.")}
        early = {k: v for k, v in sysctls.items() if _sysctl_rank(k) < 3}
        self.sysctls(early)  # before the links, so that they inherit default.*
        self.links()
        self.addresses()
        self.sysctls({k: v for k, v in sysctls.items() if k not in early})
        self.kernel_routes()
        self.rules()
        self.routes()
        self.netfilter()

    # iproute2's names for tables: the state's rt_tables, in the namespace's own copy.
    def rt_tables(self) -> None:
        etc = self.r.etc
        entries = self.state.rt_tables_entries or \
            [RtTablesEntry(table, name, "rt_tables") for table, name in sorted(self.state.table_names.items())]
        (etc / "rt_tables").write_text("".join(f"{e.table}\t{e.name}\n" for e in entries))

    def sysctls(self, values: dict[str, str]) -> None:
        for key, error in self.r.write_sysctl(values).items():
            if "Permission denied" not in error:  # read-only in a namespace (global knobs): nothing to replay
                self.note(f"sysctl {key}={values[key]} not replayed: {error}")

    def links(self) -> None:
        commands = []
        for link in self.state.links:
            if "LOOPBACK" in link.flags:
                commands.append(f"link set dev {link.name} mtu {link.mtu}" + (" up" if link.up else ""))
                continue
            options = [f"mtu {link.mtu}"]
            mac = f" address {link.mac}" if link.mac and link.mac != "00:00:00:00:00:00" else ""
            if self.r.sinks is not None:
                # a veth whose peer sits in the link's sink; carrier comes from the peer (sink_up)
                commands.append(f"link add {link.name}{mac} mtu {link.mtu} type veth peer name {SINK_DEV} "
                                f"mtu {max(link.mtu, 1500)} netns {self.r.sinks[link.name]}")
                options.append("arp off" if link.noarp else "arp on")
            elif link.pointopoint:
                if link.up and "LOWER_UP" in link.flags:
                    try:
                        self.r.attach_tun(link.name)
                    except OSError as exc:
                        self.note(f"link {link.name}: point-to-point device not created: {exc.strerror}")
                        continue
                else:
                    commands.append(f"tuntap add dev {link.name} mode tun")
            else:
                if link.up and "LOWER_UP" not in link.flags:
                    commands.append(f"tuntap add dev {link.name} mode tap")  # no carrier, like the source
                    options.append(mac.strip())
                else:
                    commands.append(f"link add {link.name}{mac} type ifb")  # ifb takes a MAC only when created
                options.append("arp off" if link.noarp else "arp on")
            if link.group:
                options.append(f"group {link.group}")
            # The source's IPv6 link-local addresses are added as they are (nodad), not generated anew.
            commands.append(f"link set dev {link.name} addrgenmode none")
            commands.append(f"link set dev {link.name} {' '.join(options)}" + (" up" if link.up else ""))
        for index, error in self.r.ip_batch(commands).items():
            self.note(f"`ip {commands[index]}`: {error}")
        if self.r.sinks is not None:
            for link in self.state.links:
                # a link up without carrier on the source keeps its sink end down
                if link.name in self.r.sinks and (not link.up or "LOWER_UP" in link.flags):
                    try:
                        self.r.sink_up(link.name)
                    except OSError as exc:
                        self.note(f"link {link.name}: its sink could not be set up: {exc.strerror}")

    def addresses(self) -> None:
        commands = [self._address_command("add", a) for a in self.state.addresses]
        for index, error in self.r.ip_batch(commands).items():
            if "File exists" not in error and "already assigned" not in error:  # made by the kernel itself
                self.note(f"`ip {commands[index]}`: {error}")
        wanted = {self._address_key(a) for a in self.state.addresses}
        with netns.entered(self.r.name), RtnlSocket() as rtnl:
            rtnl.links()
            extra = [a for a in rtnl.addresses() if self._address_key(a) not in wanted]
        self.r.ip_batch([self._address_command("del", a) for a in extra])

    @staticmethod
    def _address_key(a: Address) -> tuple:
        return a.family, a.ifname, a.local, a.prefixlen, a.peer

    @staticmethod
    def _address_command(verb: str, a: Address) -> str:
        where = f"{a.local} peer {_prefix(a.peer, a.prefixlen)}" if a.peer else _prefix(a.local, a.prefixlen)
        extra = f" scope {a.scope}" if verb == "add" else ""
        if verb == "add" and a.family == AF_INET6:
            extra += " nodad"
        return f"{_FAMILY_FLAG[a.family]} addr {verb} {where} dev {a.ifname}{extra}"

    def kernel_routes(self) -> None:
        """Make the kernel's own routes (connected, local, broadcast) those of the source."""
        wanted = {_route_key(r) for r in self.state.routes if r.protocol == "kernel"}
        with netns.entered(self.r.name), RtnlSocket() as rtnl:
            rtnl.links()
            have = {_route_key(r): r for r in rtnl.routes() if r.protocol == "kernel"}
        commands = [route_command("del", r) for key, r in have.items() if key not in wanted]
        commands += [route_command("add", r) for r in self.state.routes
                     if r.protocol == "kernel" and _route_key(r) not in have]
        for index, error in self.r.ip_batch(commands).items():
            self.note(f"`ip {commands[index]}`: {error}")

    def rules(self) -> None:
        with netns.entered(self.r.name), RtnlSocket() as rtnl:
            defaults = rtnl.rules()
        commands = [rule_command("del", r) for r in defaults]
        commands += [rule_command("add", r) for r in self.state.rules]
        for index, error in self.r.ip_batch(commands).items():
            self.note(f"`ip {commands[index]}`: {error}")

    def routes(self) -> None:
        # Device routes first: a gateway must be reachable when its route is added.
        pending = sorted((r for r in self.state.routes if r.protocol != "kernel"),
                         key=lambda r: any(nh.gateway for nh in r.nexthops))
        errors: dict[int, str] = {}
        while pending:
            commands = [route_command("add", r) for r in pending]
            errors = self.r.ip_batch(commands)
            retry = [pending[i] for i in sorted(errors)]
            if len(retry) == len(pending):
                break
            pending = retry
        for index, error in errors.items():
            self.note(f"`ip {route_command('add', pending[index])}`: {error}")

    def netfilter(self) -> None:
        raw = self.state.netfilter or {}
        sets = (raw.get("ipset") or {}).get("save") or ""
        if sets.strip():  # before the iptables rules: `-m set` refuses a set that does not exist
            self._restore("ipset", sets, "restore")
        managed = set()
        for family, key in (("ip", "ip"), ("ip6", "ip6")):
            save = ((raw.get("iptables_nft") or {}).get(key) or {}).get("save") or ""
            managed.update((family, name) for name in re.findall(r"^\*(\S+)", save, re.M))
            if save.strip():
                self._restore(f"{'ip6' if family == 'ip6' else 'ip'}tables-nft-restore", save)
        ruleset = ((raw.get("nft") or {}).get("ruleset") or {}).get("nftables") or []
        if managed:
            self._prune_chains(managed, ruleset)
        native = [obj for obj in ruleset if "metainfo" not in obj and _nft_table(obj) not in managed]
        if native:
            result = self.r.run(["nft", "-j", "-f", "-"], input=json.dumps({"nftables": native}))
            if result.returncode:
                self.note(f"nftables ruleset not replayed: {_first_line(result.stderr)}")
        for key, tool in (("ip", "iptables-legacy-restore"), ("ip6", "ip6tables-legacy-restore")):
            save = ((raw.get("iptables_legacy") or {}).get(key) or {}).get("save") or ""
            if "*" in save:
                self._restore(tool, save)

    def _prune_chains(self, managed: set, source: list[dict]) -> None:
        """iptables-restore creates every built-in chain of a table; iptables-nft only those it used."""
        wanted = {(*_nft_table(obj), obj["chain"]["name"]) for obj in source if "chain" in obj}
        listing = self.r.run(["nft", "-j", "list", "chains"])
        try:
            chains = [obj["chain"] for obj in json.loads(listing.stdout or "{}").get("nftables", []) if "chain" in obj]
        except ValueError:
            return
        extra = [c for c in chains if (c["family"], c["table"]) in managed
                 and (c["family"], c["table"], c["name"]) not in wanted]
        if extra:
            self.r.run(["nft", "-f", "-"], input="".join(
                f"delete chain {c['family']} {c['table']} {c['name']}\n" for c in extra))

    def _restore(self, tool: str, save: str, *args: str) -> None:
        """Load `save` with `tool` (iptables-*-restore -c by default, keeping the counters)."""
        if shutil.which(tool) is None:
            self.note(f"{tool} not installed: those rules are not replayed")
            return
        result = self.r.run([tool, *(args or ("-c",))], input=save)
        if result.returncode:
            self.note(f"{tool}: {_first_line(result.stderr)}")


def _nft_table(obj: dict) -> tuple[str, str]:
    """(family, table) an object of `nft -j list ruleset` belongs to."""
    kind, body = next(iter(obj.items()))
    if not isinstance(body, dict):
        return "", ""
    return body.get("family", ""), body.get("name" if kind == "table" else "table", "")


def _first_line(text: str) -> str:
    lines = [line.strip() for line in (text or "").splitlines() if line.strip()]
    return lines[0] if lines else "failed"


def _route_key(route: Route) -> tuple:
    """A route without the kernel's nexthop state flags (dead, linkdown)."""
    hops = tuple((nh.gateway, nh.dev, nh.weight, nh.onlink) for nh in route.nexthops)
    return (route.family, route.table, route.type, route.dst, route.dst_len, route.tos, route.metric,
            route.protocol, route.scope, route.prefsrc, route.src, route.src_len, hops)


def route_command(verb: str, r: Route) -> str:
    """An `ip -batch` line adding or deleting exactly this route."""
    words = [_FAMILY_FLAG[r.family], "route", verb, r.type, _prefix(r.dst, r.dst_len)]
    if r.src:
        words += ["from", _prefix(r.src, r.src_len)]
    if r.tos:
        words += ["tos", hex(r.tos)]
    words += ["table", str(r.table)]
    if verb == "add":
        words += ["proto", _proto(r.protocol), "scope", str(r.scope)]
    if r.metric or verb == "add":
        words += ["metric", str(r.metric)]
    if r.prefsrc and verb == "add":
        words += ["src", r.prefsrc]
    multipath = len(r.nexthops) > 1
    for nh in r.nexthops:
        if multipath:
            words.append("nexthop")
        if nh.gateway:
            words += ["via", *(["inet6"] if r.family == AF_INET and ":" in nh.gateway else []), nh.gateway]
        if nh.dev:
            words += ["dev", nh.dev]
        if multipath:
            words += ["weight", str(nh.weight)]
        if nh.onlink:
            words.append("onlink")
    return " ".join(words)


def rule_command(verb: str, r: Rule) -> str:
    """An `ip -batch` line adding or deleting exactly this rule."""
    words = [_FAMILY_FLAG[r.family], "rule", verb]
    if r.invert:
        words.append("not")
    words += ["pref", str(r.priority), "from", _prefix(r.src, r.src_len) if r.src else "all"]
    if r.dst:
        words += ["to", _prefix(r.dst, r.dst_len)]
    if r.tos:
        words += ["tos", hex(r.tos)]
    if r.fwmask:
        words += ["fwmark", f"{r.fwmark:#x}/{r.fwmask:#x}"]
    for word, value in (("iif", r.iif), ("oif", r.oif)):
        if value:
            words += [word, value]
    if r.ipproto:
        words += ["ipproto", str(r.ipproto)]
    for word, value in (("sport", r.sport), ("dport", r.dport), ("uidrange", r.uidrange)):
        if value:
            words += [word, f"{value[0]}-{value[1]}"]
    if r.l3mdev:
        words.append("l3mdev")
    if r.suppress_prefixlength != -1:
        words += ["suppress_prefixlength", str(r.suppress_prefixlength)]
    if r.suppress_ifgroup != -1:
        words += ["suppress_ifgroup", str(r.suppress_ifgroup)]
    if r.protocol and verb == "add":
        words += ["protocol", _proto(r.protocol)]
    if r.action == "lookup":
        if r.table or not r.l3mdev:
            words += ["table", str(r.table)]
    elif r.action == "goto":
        words += ["goto", str(r.goto)]
    else:
        words.append(r.action)
    return " ".join(words)

