"""Collect one namespace's whole network state from the live kernel into a HostState.

Netlink dumps (links, addresses, rules, routes of every table, neighbours), the
sysctls routing depends on, rt_tables names, the netfilter ruleset and the
conntrack table. Read-only: nothing here changes the system.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import time
from pathlib import Path

from tracer import netns as netns_mod
from tracer.collect.netfilter import collect_netfilter
from tracer.collect.netlink import RtnlSocket
from tracer.model import ConntrackEntry, HostState, Provenance, RtTablesEntry
from tracer.vocab import AF_INET, AF_INET6

# Per-interface conf keys that decide forwarding, rp_filter and source checks.
_CONF_KEYS = {
    "ipv4": ("forwarding", "rp_filter", "src_valid_mark", "accept_local", "route_localnet",
             "ignore_routes_with_linkdown", "arp_ignore", "proxy_arp"),
    "ipv6": ("forwarding", "ignore_routes_with_linkdown", "disable_ipv6"),
}
_GLOBAL_KEYS = ("net/ipv4/ip_forward", "net/ipv4/fib_multipath_hash_policy",
                "net/ipv4/fib_multipath_use_neigh", "net/ipv6/fib_multipath_hash_policy",
                "net/ipv4/ip_nonlocal_bind", "net/ipv4/tcp_mtu_probing",
                "net/ipv4/ip_no_pmtu_disc", "net/netfilter/nf_conntrack_max",
                # br_netfilter's, per namespace; they exist only while the module is loaded
                "net/bridge/bridge-nf-call-iptables", "net/bridge/bridge-nf-call-ip6tables",
                "net/bridge/bridge-nf-call-arptables")


def read_sysctls(root: Path = Path("/proc/sys")) -> dict[str, str]:
    """The routing-relevant sysctls of the current namespace, keyed like `sysctl` prints them."""
    values: dict[str, str] = {}

    def read(rel: str) -> None:
        try:
            values[rel.replace("/", ".")] = (root / rel).read_text().strip()
        except OSError:
            pass  # absent on this kernel (or module not loaded)

    for rel in _GLOBAL_KEYS:
        read(rel)
    for family, keys in _CONF_KEYS.items():
        conf = root / "net" / family / "conf"
        try:
            interfaces = sorted(os.listdir(conf))
        except OSError:
            continue
        for ifname in interfaces:
            for key in keys:
                read(f"net/{family}/conf/{ifname}/{key}")
    return values


def rt_tables_files(directory: Path) -> list[Path]:
    main = directory / "rt_tables"
    if not main.exists():  # iproute2 >= 6.5 keeps the defaults under /usr/share
        main = Path("/usr/share/iproute2/rt_tables")
    extra = directory / "rt_tables.d"
    return [main, *sorted(extra.glob("*.conf"))] if extra.is_dir() else [main]


def read_rt_tables(files: list[Path]) -> tuple[dict[int, str], list[RtTablesEntry]]:
    """(id → name as `ip` shows it, every entry).

    Like iproute2's rtnl_tab_initialize, a later line for the same id wins; the
    full entry list keeps the duplicates for the checks."""
    names: dict[int, str] = {}
    entries: list[RtTablesEntry] = []
    for path in files:
        try:
            lines = path.read_text().splitlines()
        except OSError:
            continue
        for line in lines:
            fields = line.split("#", 1)[0].split()
            if len(fields) < 2:
                continue
            try:
                table = int(fields[0], 0)
            except ValueError:
                continue
            names[table] = fields[1]
            entries.append(RtTablesEntry(table, fields[1], str(path)))
    return names, entries


_CT_PAIR = re.compile(r"(\w+)=(\S+)")


def parse_conntrack(text: str) -> tuple[ConntrackEntry, ...]:
    """Parse `conntrack -L` lines: the first src/dst/sport/dport set is the
    original direction, the second the reply direction."""
    entries = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) < 3 or not fields[1].isdigit():
            continue
        proto = int(fields[1])
        state = fields[3] if len(fields) > 3 and fields[3].isupper() and "=" not in fields[3] else None
        orig: dict[str, str] = {}
        reply: dict[str, str] = {}
        extra: dict[str, str] = {}
        for key, value in _CT_PAIR.findall(line):
            if key in ("src", "dst", "sport", "dport"):
                (reply if key in orig else orig).setdefault(key, value)
            else:
                extra.setdefault(key, value)
        if "src" not in orig or "src" not in reply:
            continue

        def port(d, key):
            return int(d[key]) if key in d else None

        entries.append(ConntrackEntry(
            proto=proto, orig_src=orig["src"], orig_dst=orig["dst"],
            reply_src=reply["src"], reply_dst=reply["dst"],
            orig_sport=port(orig, "sport"), orig_dport=port(orig, "dport"),
            reply_sport=port(reply, "sport"), reply_dport=port(reply, "dport"),
            mark=int(extra.get("mark", "0"), 0), state=state, text=line.strip(),
        ))
    return tuple(entries)


def read_conntrack(warnings: list[str]) -> tuple[ConntrackEntry, ...]:
    if not shutil.which("conntrack"):
        warnings.append("conntrack tool not installed: existing connections not read")
        return ()
    entries = []
    for family in ("ipv4", "ipv6"):
        result = subprocess.run(["conntrack", "-L", "-f", family], capture_output=True, text=True)
        if result.returncode:
            message = result.stderr.strip().splitlines()[-1:] or ["unknown error"]
            warnings.append(f"conntrack -L -f {family}: {message[0]}")
            continue
        entries.extend(parse_conntrack(result.stdout))
    return tuple(entries)


def ipv4_table_sizes(text: str) -> dict[int, int]:
    """Prefix count per IPv4 table from /proc/net/fib_triestat (fib_table_print names
    tables "Local:", "Main:" or "Id N:"): a table's size without dumping it."""
    sizes: dict[int, int] = {}
    table = None
    for line in text.splitlines():
        if line.endswith(":") and not line.startswith((" ", "\t")):
            head = line[:-1]
            table = {"Local": 255, "Main": 254}.get(head)
            if head.startswith("Id "):
                table = int(head[3:])
        elif table is not None and line.strip().startswith("Prefixes:"):
            sizes[table] = int(line.split()[1])
    return sizes


def _routes(rtnl: RtnlSocket, large_table: int | None) -> tuple[list, dict[int, int]]:
    """All routes, or (with `large_table`) all but the IPv4 tables holding more
    prefixes than that, which are returned as {table: size} instead."""
    if large_table is None:
        return rtnl.routes(), {}
    sizes = ipv4_table_sizes(Path("/proc/thread-self/net/fib_triestat").read_text())
    large = {t: n for t, n in sizes.items() if n > large_table}
    if not large:
        return rtnl.routes(), {}
    routes = rtnl.routes(family=AF_INET6)
    for table in sizes:
        if table not in large:
            routes += rtnl.routes(family=AF_INET, table=table)
    return routes, large


def collect_state(netns: str | None = None, *, netfilter: bool = True, conntrack: bool = True,
                  large_table: int | None = None) -> HostState:
    """Everything an explanation needs, from the namespace `netns` (None: this one).

    `large_table`: leave out IPv4 tables with more prefixes than this (their size
    goes to `partial_tables`); collect.kernel.augment then asks the kernel for the
    routes a flow needs, so one live explanation never dumps a full internet table."""
    warnings: list[str] = []
    kernel: dict = {}

    def read_kernel() -> None:
        with RtnlSocket() as rtnl:
            kernel["links"] = rtnl.links()
            kernel["addresses"] = rtnl.addresses()
            kernel["rules"] = rtnl.rules()
            kernel["routes"], kernel["partial"] = _routes(rtnl, large_table)
            kernel["neighbours"] = rtnl.neighbours()
        kernel["sysctls"] = read_sysctls()
        kernel["br_netfilter"] = Path("/proc/sys/net/bridge").is_dir()
        kernel["conntrack"] = read_conntrack(warnings) if conntrack else ()

    with netns_mod.entered(netns):
        # Subprocesses inherit the namespace we are in; no `ip netns exec` needed.
        raw_netfilter = collect_netfilter(None, while_running=read_kernel) if netfilter else {}
        if not netfilter:
            read_kernel()
    links, addresses, rules, routes, partial, neighbours, sysctls, entries = (
        kernel[k] for k in ("links", "addresses", "rules", "routes", "partial", "neighbours", "sysctls", "conntrack"))
    table_names, table_entries = read_rt_tables(rt_tables_files(netns_mod.iproute2_dir(netns)))
    if raw_netfilter:
        raw_netfilter["netns"] = netns
    provenance = Provenance(hostname=socket.gethostname(), netns=netns, kernel=os.uname().release,
                            taken_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    return HostState(links=tuple(links), addresses=tuple(addresses), rules=tuple(rules),
                     routes=tuple(routes), table_names=table_names, neighbours=tuple(neighbours),
                     sysctls=sysctls, netfilter=raw_netfilter, conntrack=entries, provenance=provenance,
                     rt_tables_entries=tuple(table_entries), partial_tables=dict(partial),
                     warnings=tuple(warnings), br_netfilter=kernel["br_netfilter"])
