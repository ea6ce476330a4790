"""Plain explanations (and a corrected line, when one follows) for the messages the real tools print.

`explain(step, message, ctx)` -> (why, fix); both may be None: the tool's own
message is always shown, this only adds what a newcomer would need to know.
"""

from __future__ import annotations

import difflib
import ipaddress
import re
import shlex
from collections.abc import Callable
from dataclasses import dataclass

from tracer.lint.script import Step
from tracer.model import HostState

_IPTABLES_COMMANDS = {"-A", "--append", "-I", "--insert", "-D", "--delete", "-R", "--replace", "-N", "--new-chain",
                      "-X", "--delete-chain", "-F", "--flush", "-P", "--policy", "-L", "--list", "-S",
                      "--list-rules", "-Z", "--zero", "-E", "--rename-chain", "-C", "--check"}
_IPTABLES_OPTIONS = ("--to-source", "--to-destination", "--to-ports", "--set-mark", "--set-xmark", "--mss",
                     "--clamp-mss-to-pmtu", "--state", "--ctstate", "--dport", "--sport", "--dports", "--sports",
                     "--source", "--destination", "--in-interface", "--out-interface", "--jump", "--table",
                     "--match", "--protocol", "--reject-with", "--mark", "--random", "--persistent",
                     "--log-prefix", "--comment", "--tcp-flags", "--icmp-type", "--src-range", "--dst-range")
_WRONG_OPTIONS = {
    ("SNAT", "--to-address"): ("iptables' SNAT target has no --to-address option: it is --to-source", "--to-source"),
    ("DNAT", "--to-address"): ("iptables' DNAT target has no --to-address option: it is --to-destination",
                               "--to-destination"),
    ("SNAT", "--to"): ("iptables' SNAT target spells it --to-source", "--to-source"),
    ("DNAT", "--to"): ("iptables' DNAT target spells it --to-destination", "--to-destination"),
}
_MAIN_TABLES = {"main", "254", "local", "255", "default", "253", "all", "0"}
_IPTABLES_TABLES = ("filter", "nat", "mangle", "raw", "security")
_BUILTIN_CHAINS = ("INPUT", "FORWARD", "OUTPUT", "PREROUTING", "POSTROUTING")
_TARGETS = ("ACCEPT", "DROP", "REJECT", "RETURN", "LOG", "NFLOG", "NFQUEUE", "QUEUE", "SNAT", "DNAT", "MASQUERADE",
            "REDIRECT", "NETMAP", "MARK", "CONNMARK", "TCPMSS", "TOS", "DSCP", "TTL", "HL", "CLASSIFY", "CT",
            "NOTRACK", "TPROXY", "TRACE", "TEE", "AUDIT", "CHECKSUM", "SET", "SYNPROXY", "CONNSECMARK", "SECMARK")
_MATCHES = ("state", "conntrack", "tcp", "udp", "icmp", "multiport", "mark", "connmark", "comment", "limit",
            "hashlimit", "iprange", "mac", "owner", "physdev", "set", "string", "time", "tos", "dscp", "ttl",
            "length", "pkttype", "addrtype", "recent", "connlimit", "policy", "rpfilter", "socket", "statistic",
            "u32", "tcpmss", "helper", "realm", "devgroup", "cgroup", "ipvs", "nfacct", "quota", "sctp", "esp")


@dataclass
class Context:
    """What an explanation may look at: the state before the script, the script, the namespace."""

    state: HostState
    steps: list[Step]
    ask: Callable[[list[str]], str]  # runs a read-only command in the namespace, returns stdout

    def rule_tables(self) -> list[str]:
        """Tables the script's `ip rule add` lines send traffic to, other than the built-in ones."""
        out = []
        for step in self.steps:
            args = list(step.argv)
            if step.tool == "ip" and _ip_object(args)[:2] in (("rule", "add"), ("ru", "add")):
                for key in ("table", "lookup"):
                    if key in args and args.index(key) + 1 < len(args):
                        name = args[args.index(key) + 1]
                        if name not in _MAIN_TABLES and name not in out:
                            out.append(name)
        return out


def explain(step: Step, message: str, ctx: Context) -> tuple[str | None, str | None]:
    tool = step.tool
    if tool.startswith(("iptables", "ip6tables")):
        return _iptables(list(step.argv), message, ctx)
    if tool == "ip":
        return _ip(list(step.argv), message, ctx)
    if tool == "route":
        return _route(list(step.argv), message, ctx)
    if tool == "sysctl" or step.write:
        return _sysctl(message, ctx)
    if tool == "nft" and "No such file or directory" in message:
        return ("the table, chain or set named in this command does not exist yet: create it first "
                "(`nft add table …`, `nft add chain …`)", None)
    return None, None


# --- iptables -------------------------------------------------------------

def _user_chains(ctx: Context | None, table: str) -> list[str]:
    """User chains of iptables table `table` before the script, and those the script creates (-N)."""
    chains: list[str] = []
    if ctx is not None:
        for kind in ("iptables_nft", "iptables_legacy"):
            for family in ("ip", "ip6"):
                save = ((ctx.state.netfilter.get(kind) or {}).get(family) or {}).get("save") or ""
                current = None
                for line in save.splitlines():
                    if line.startswith("*"):
                        current = line[1:].strip()
                    elif line.startswith(":") and current == table:
                        chains.append(line[1:].split()[0])
        for step in ctx.steps:
            args = list(step.argv)
            if step.tool.startswith(("iptables", "ip6tables")) and (_option_value(args, "-t", "--table") or
                                                                     "filter") == table:
                new = _option_value(args, "-N", "--new-chain")
                if new:
                    chains.append(new)
    return [c for c in dict.fromkeys(chains) if c not in _BUILTIN_CHAINS]


def _unknown_name(argv: list[str], fixed: list[str], flags: tuple[str, str], name: str, known, what: str,
                  where: str) -> str:
    """"there is no target DROPP …; did you mean DROP?" and, when a guess exists, the fixed argv."""
    close = difflib.get_close_matches(name, list(known), n=1, cutoff=0.6) or \
        difflib.get_close_matches(name.upper(), [k.upper() for k in known], n=1, cutoff=0.6)
    guess = next((k for k in known if close and k.upper() == close[0].upper()), None)
    if guess:
        for flag in flags:
            if flag in fixed and fixed.index(flag) + 1 < len(fixed) and fixed[fixed.index(flag) + 1] == name:
                fixed[fixed.index(flag) + 1] = guess
    return f"there is no {what} {name} ({where}){f'; did you mean {guess}?' if guess else ''}"


def _iptables(argv: list[str], message: str, ctx: Context | None = None) -> tuple[str | None, str | None]:
    problems: list[str] = []
    fixed = list(argv)
    target = _option_value(argv, "-j", "--jump")
    table = _option_value(argv, "-t", "--table") or "filter"
    missing_chain = re.search(r"Chain '([^']+)' does not exist|Couldn't load target `([^']+)'", message)
    missing_match = re.search(r"Couldn't load match `([^']+)'", message)
    missing_table = re.search(r"table '([^']+)' does not exist|table `([^']+)': Table does not exist", message)
    unknown = re.search(r'unknown option "([^"]+)"', message)
    if unknown:
        option = unknown.group(1)
        known = _WRONG_OPTIONS.get((target, option))
        if known:
            problems.append(known[0])
            fixed[fixed.index(option)] = known[1]
        else:
            close = difflib.get_close_matches(option, _IPTABLES_OPTIONS, n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            problems.append(f"iptables has no option {option} here{hint}; options of a target or match "
                            "come after its -j/-m")
    if not any(a in _IPTABLES_COMMANDS for a in argv) and not argv[0].endswith(("-save", "-restore")):
        chain = _chain_for(table, target, argv)
        problems.append(f"the line has no command, so iptables does not know what to do with the rule: "
                        f"add `-A {chain}` to append it" + (f" ({target} rules belong in the {table} table's "
                                                            f"{chain} chain)" if target else ""))
        flag = next((f for f in ("-t", "--table") if f in fixed), None)
        at = fixed.index(flag) + 2 if flag else 1
        fixed[at:at] = ["-A", chain]
    if missing_table:
        name = missing_table.group(1) or missing_table.group(2)
        problems.append(_unknown_name(argv, fixed, ("-t", "--table"), name, _IPTABLES_TABLES, "iptables table",
                                      "the tables are " + ", ".join(_IPTABLES_TABLES)))
    elif missing_chain and (missing_chain.group(1) or missing_chain.group(2)) == target:
        chains = _user_chains(ctx, table)
        where = (f"not a built-in target, nor a chain of table {table}" +
                 (f" ({', '.join(chains)})" if chains else "") + "; a chain must be created first with -N")
        problems.append(_unknown_name(argv, fixed, ("-j", "--jump"), target, (*_TARGETS, *chains), "target",
                                      where))
    elif missing_match:
        problems.append(_unknown_name(argv, fixed, ("-m", "--match"), missing_match.group(1), _MATCHES,
                                      "match (-m)", "not a match module of iptables"))
    elif "No chain/target/match by that name" in message:
        chain = next((_option_value(argv, f, f) for f in ("-A", "--append", "-I", "--insert", "-D", "--delete",
                                                          "-F", "--flush", "-L", "--list", "-P", "--policy")
                      if _option_value(argv, f, f)), None)
        chains = _user_chains(ctx, table)
        if chain and chain not in _BUILTIN_CHAINS and chain not in chains:
            problems.append(_unknown_name(argv, fixed, ("-A", "--append", "-I", "--insert", "-D", "--delete"),
                                          chain, (*_BUILTIN_CHAINS, *chains), "chain",
                                          f"in table {table}; user chains are created first with -N, built-in "
                                          "chains are upper-case"))
        else:
            problems.append("a chain, target (-j) or match (-m) named here does not exist: user chains must be "
                            "created first with -N, and built-in chains are upper-case (POSTROUTING)")
    must = re.search(r'option "(--[\w-]+)" must be specified', message)
    if must:
        problems.append(f"the {target} target needs {must.group(1)}")
    if not problems:
        return None, None
    fix = shlex.join(fixed) if fixed != argv else None
    return "; ".join(problems), fix


def _option_value(argv: list[str], short: str, long: str) -> str | None:
    for flag in (short, long):
        if flag in argv and argv.index(flag) + 1 < len(argv):
            return argv[argv.index(flag) + 1]
    return None


def _chain_for(table: str, target: str | None, argv: list[str]) -> str:
    if table == "nat":
        return "PREROUTING" if target in ("DNAT", "REDIRECT") or "-i" in argv else "POSTROUTING"
    if table in ("mangle", "raw"):
        return "PREROUTING"
    if "-i" in argv and "-o" in argv:
        return "FORWARD"
    return "OUTPUT" if "-o" in argv else "INPUT"


# --- ip ---------------------------------------------------------------------

def _ip_object(argv: list[str]) -> tuple[str, ...]:
    words = [a for a in argv[1:] if not a.startswith("-")]
    return tuple(words[:2])


def _ip(argv: list[str], message: str, ctx: Context) -> tuple[str | None, str | None]:
    bad = re.search(r'(?:address|prefix) is expected rather than "([^"]+)"', message)
    if bad:
        return _bad_address(argv, bad.group(1), ctx)
    obj = _ip_object(argv)
    is_route = bool(obj) and "route".startswith(obj[0])
    if "File exists" in message and is_route:
        return _route_exists(argv, ctx)
    if "already assigned" in message or ("File exists" in message and obj[:1] and "address".startswith(obj[0])):
        return "this address is already configured on that interface", None
    if '"table" value is invalid' in message or "invalid table ID" in message:
        name = _option_value(argv, "table", "lookup") or "?"
        if name.isdigit():
            return f"table ids are 1 to {2**32 - 1}", None
        known = [f.split()[1] for f in ctx.ask(["cat", "/etc/iproute2/rt_tables"]).splitlines()
                 if len(f.split()) > 1 and not f.startswith("#")]
        close = difflib.get_close_matches(name, known, n=1)
        if close:
            fixed = [close[0] if a == name else a for a in argv]
            return f"there is no table named {name!r} in rt_tables; did you mean {close[0]}?", shlex.join(fixed)
        return (f"there is no table named {name!r} in rt_tables: name it first, e.g. "
                f"`echo '100 {name}' >> /etc/iproute2/rt_tables` (any unused id), or use a number",
                None)
    device = re.search(r'Cannot find device "([^"]+)"', message)
    if device:
        return _no_device(device.group(1), ctx)
    if "Nexthop has invalid gateway" in message or "Network is unreachable" in message:
        return _gateway_not_onlink(argv, ctx)
    if "Invalid prefsrc" in message:
        src = _option_value(argv, "src", "src")
        return f"src {src} is not an address of this host: a route's src must be one of its own addresses", None
    if "No such process" in message or "No such file or directory" in message:
        return "there is nothing like this to delete or change (no such route or rule)", None
    if "Device for nexthop is not up" in message or "Network is down" in message:
        return "the interface is down: bring it up first (`ip link set dev … up`)", None
    return None, None


def _bad_address(argv: list[str], text: str, ctx: Context) -> tuple[str, str | None]:
    address, _, length = text.partition("/")
    parts = address.split(".")
    if len(parts) == 4 and all(p.isdigit() for p in parts):
        too_big = [p for p in parts if int(p) > 255]
        why = f"{address} is not an IPv4 address: {too_big[0]} is more than 255" if too_big \
            else f"{address} is not a valid IPv4 address"
        guess = _closest_address(address, argv, ctx)
        if guess:
            fixed = [a.replace(address, guess) if a in (text, address) else a for a in argv]
            return f"{why}; did you mean {guess}?", shlex.join(fixed)
        return why, None
    return f"{text!r} is not an IP address or prefix", None


def _closest_address(address: str, argv: list[str], ctx: Context) -> str | None:
    """A one-character typo fix that lands on an address this host can reach directly (a peer, a subnet)."""
    dev = _option_value(argv, "dev", "oif")
    candidates = set()
    for i in range(len(address)):
        for replacement in ("", *"0123456789"):
            text = address[:i] + replacement + address[i + 1:]
            try:
                candidates.add(ipaddress.IPv4Address(text))
            except ValueError:
                pass
    nets = []
    for a in ctx.state.addresses:
        if a.family == 4 and (dev is None or a.ifname == dev):
            nets.append(ipaddress.ip_network(f"{a.network_address}/{a.prefixlen}", strict=False))
    near = sorted(str(c) for c in candidates if any(c in n for n in nets))
    # Dropping a character (a doubled key) is the likelier typo; prefer it.
    dropped = [c for c in near if len(c) == len(address) - 1]
    return (dropped or near or [None])[0]


def _route_exists(argv: list[str], ctx: Context) -> tuple[str, str | None]:
    words = argv[1:]
    table = _option_value(argv, "table", "table") or "main"
    verb_at = next((i for i, w in enumerate(words) if w in ("add", "append", "a")), None)
    prefix = words[verb_at + 1] if verb_at is not None and verb_at + 1 < len(words) else "default"
    if prefix in ("unicast", "local", "blackhole", "unreachable", "prohibit", "throw", "broadcast"):
        prefix = words[verb_at + 2] if verb_at + 2 < len(words) else "default"
    existing = ctx.ask(["ip", *[w for w in argv[1:] if w in ("-4", "-6")], "route", "show", "table", table,
                        "exact", prefix]).strip()
    where = f"table {table}" + (f" (`{existing.splitlines()[0].strip()}`)" if existing else "")
    why = f"a route for {prefix} already exists in {where}"
    if "table" not in argv:
        tables = ctx.rule_tables()
        if tables:
            return (f"{why}; without `table`, ip route add writes to main: did you mean `table {tables[0]}` "
                    f"(the table your ip rule uses)?", shlex.join([*argv, "table", tables[0]]))
    return f"{why}; use `ip route replace` to change it, or add `table NAME` for another table", None


def _no_device(name: str, ctx: Context) -> tuple[str, None]:
    names = [link.name for link in ctx.state.links if link.name != "lo"]
    close = difflib.get_close_matches(name, names, n=1)
    hint = f"; did you mean {close[0]}?" if close else ""
    return f"this host has no interface {name} (it has {', '.join(names) or 'none'}){hint}", None


def _gateway_not_onlink(argv: list[str], ctx: Context) -> tuple[str, None]:
    gateway = _option_value(argv, "via", "gw")
    dev = _option_value(argv, "dev", "dev")
    prefixes = [f"{a.network_address}/{a.prefixlen}" for a in ctx.state.addresses
                if a.family == 4 and (dev is None or a.ifname == dev) and a.ifname != "lo"]
    on = f" on {dev}" if dev else ""
    return (f"gateway {gateway} is not on a network directly connected{on} "
            f"({', '.join(prefixes) or 'no addresses'}): the kernel cannot reach it without another router", None)


# --- route (net-tools) and sysctl ---------------------------------------------

def _route(argv: list[str], message: str, ctx: Context) -> tuple[str | None, str | None]:
    args = argv[1:]
    if "gw" not in args and "default" in args:
        addresses = [a for a in args if re.fullmatch(r"\d+\.\d+\.\d+\.\d+", a)]
        if addresses:
            at = args.index(addresses[0])
            fixed = ["route", *args[:at], "gw", *args[at:]]
            return (f"Linux `route` needs `gw` before a gateway (`route add default {addresses[0]}` is BSD/macOS "
                    "syntax), so it took the address for an interface name", shlex.join(fixed))
    if "File exists" in message:
        return "this route already exists in table main; `route` cannot write other tables (use `ip route`)", None
    if "Network is unreachable" in message:
        return _gateway_not_onlink(["route", *["via" if a == "gw" else a for a in args]], ctx)
    if "No such device" in message:
        dev = _option_value(argv, "dev", "dev")
        if dev:
            return _no_device(dev, ctx)
    return None, None


def _sysctl(message: str, ctx: Context) -> tuple[str | None, str | None]:
    missing = re.search(r"/proc/sys/net/ipv[46]/(?:conf|neigh)/([^/]+)/", message)
    if missing and "No such file" in message:
        return _no_device(missing.group(1), ctx)
    if "No such file" in message:
        return "there is no such setting on this kernel (check the spelling)", None
    if re.search(r'key "net\.core\.', message):
        return "net.core limits are not per network namespace on this kernel: set them on the host", None
    return None, None
