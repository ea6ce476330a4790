"""iptables-save text -> tables, chains and compiled rules (iptables semantics).

Used for iptables-legacy tables, and for iptables-nft tables so that users
see `-A POSTROUTING -o ppp0 -j SNAT --to-source 1.2.3.4` with its rule
number (nft's JSON drops xt parameters; iptables-save keeps them).
"""

from __future__ import annotations

import ipaddress
import re
import shlex
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field

from tracer.sim.nft_expr import AddrEqCond
from tracer.sim.nft_model import (
    CT_STATE_BITS,
    DSCP,
    ICMP_TYPE_CODES,
    ICMP_TYPES,
    ICMPV6_TYPES,
    TCP_FLAGS,
    Cond,
    Miss,
    NatSpec,
    Rule,
    Stmt,
    Unknown,
    Verdict,
    int_addr,
    parse_int,
)
from tracer.vocab import IPPROTO, IPPROTO_NAMES, any_addr_int

# Legacy x_tables priorities per (table, hook).
LEGACY_PRIORITY = {
    "raw": {"prerouting": -300, "output": -300},
    "mangle": {h: -150 for h in ("prerouting", "input", "forward", "output", "postrouting")},
    "nat": {"prerouting": -100, "output": -100, "input": 100, "postrouting": 100},
    "filter": {"input": 0, "forward": 0, "output": 0},
    "security": {"input": 50, "forward": 50, "output": 50},
}
BUILTIN = {"PREROUTING": "prerouting", "INPUT": "input", "FORWARD": "forward",
           "OUTPUT": "output", "POSTROUTING": "postrouting"}


@dataclass
class SavedRule:
    number: int
    text: str  # "-A CHAIN ..." as printed
    tokens: list[str]
    counters: dict | None


@dataclass
class SavedChain:
    name: str
    policy: str | None  # ACCEPT/DROP for builtin chains, None for user chains
    counters: dict | None
    rules: list[SavedRule] = field(default_factory=list)


_COUNTS = re.compile(r"^\[(\d+):(\d+)\]\s*")


def parse_save(text: str | None) -> dict[str, dict[str, SavedChain]]:
    """{table: {chain: SavedChain}} from iptables-save (with or without -c)."""
    tables: dict[str, dict[str, SavedChain]] = {}
    if not text:
        return tables
    cur = None
    for line in text.splitlines():
        line = line.rstrip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("*"):
            cur = tables.setdefault(line[1:].strip(), {})
        elif line == "COMMIT":
            cur = None
        elif line.startswith(":") and cur is not None:
            parts = line[1:].split()
            name, policy = parts[0], parts[1] if len(parts) > 1 else "-"
            counters = None
            if len(parts) > 2:
                m = re.match(r"\[(\d+):(\d+)\]", parts[2])
                if m:
                    counters = {"packets": int(m.group(1)), "bytes": int(m.group(2))}
            cur[name] = SavedChain(name, None if policy == "-" else policy, counters)
        elif cur is not None:
            counters = None
            m = _COUNTS.match(line)
            if m:
                counters = {"packets": int(m.group(1)), "bytes": int(m.group(2))}
                line = line[m.end():]
            try:
                tokens = shlex.split(line)
            except ValueError:
                tokens = line.split()
            if len(tokens) < 2 or tokens[0] != "-A":
                continue
            ch = cur.setdefault(tokens[1], SavedChain(tokens[1], None, None))
            ch.rules.append(SavedRule(len(ch.rules) + 1, line, tokens, counters))
    return tables


# ----------------------------------------------------------------- matches

def _net(text: str, family: str):
    return ipaddress.ip_network(text, strict=False)


def _addr_cond(opt: str, value: str, neg: bool, family: str) -> Cond:
    attr = "src" if opt in ("-s", "--source") else "dst"
    nets = [_net(v, family) for v in value.split(",")]
    ranges = [(int(n.network_address), int(n.broadcast_address)) for n in nets]
    label = "source" if attr == "src" else "destination"
    iattr = attr + "_i"

    def fn(st):
        v = getattr(st, iattr)
        if v is None:
            return None
        hit = any(lo <= v <= hi for lo, hi in ranges)
        return hit != neg
    c = _cond(f"{'! ' if neg else ''}{opt} {value}", fn, f"ip {'saddr' if attr == 'src' else 'daddr'}",
              lambda st: f"{label} is {getattr(st, attr)}")
    if not neg and len(ranges) == 1 and ranges[0][0] == ranges[0][1]:
        # a single address: lets long chains be indexed by address (netfilter._ChainIndex)
        return AddrEqCond(c.text, c.fn, c.field, c.why, iattr, ranges[0][0])
    return c


def _cond(text, fn, field="", why=None) -> Cond:
    if why is None:
        def why(st):
            return text
    else:
        w = why

        def why(st):
            return f"{text} ({w(st)})"
    return Cond(text, fn, field, why)


def _unknown(text: str, reason: str) -> Cond:
    msg = f"cannot evaluate {text}: {reason}"
    return Cond(text, lambda st: None, "", lambda st: msg)


def _iface_cond(opt: str, value: str, neg: bool) -> Cond:
    attr = "iif" if opt in ("-i", "--in-interface") else "oif"
    if value.endswith("+"):
        pre = value[:-1]

        def test(name):
            return name.startswith(pre)
    else:
        def test(name):
            return name == value

    def fn(st):
        name = getattr(st, attr)
        if name is None:
            return None if st.probe else neg  # no device: iptables compares an empty name
        return test(name) != neg
    return _cond(f"{'! ' if neg else ''}{opt} {value}", fn, f"meta {attr}name",
                 lambda st: f"{attr} is {getattr(st, attr)}")


def _proto_num(p: str) -> int | None:
    p = p.lower()
    if p in ("all", "0"):
        return None
    if p.isdigit():
        return int(p)
    return IPPROTO.get(p, IPPROTO.get(p.replace("ipv6-", ""), -1))


def _proto_cond(value: str, neg: bool) -> Cond:
    num = _proto_num(value)

    def fn(st):
        if num is None:
            return not neg
        if st.proto is None:
            return None
        return (st.proto == num) != neg
    return _cond(f"{'! ' if neg else ''}-p {value}", fn, "meta l4proto",
                 lambda st: f"protocol is {IPPROTO_NAMES.get(st.proto, st.proto)}")


def _ports(spec: str) -> list[tuple[int, int]]:
    out = []
    for part in spec.split(","):
        if ":" in part:
            a, b = part.split(":")
            out.append((int(a or 0), int(b or 65535)))
        else:
            out.append((int(part), int(part)))
    return out


def _port_cond(text: str, which: str, spec: str, neg: bool) -> Cond:
    ranges = _ports(spec)
    attrs = ("sport", "dport") if which == "any" else (which,)

    def fn(st):
        vals = [getattr(st, a) for a in attrs]
        if st.proto is not None and st.proto not in (6, 17, 33, 132, 136):
            return False
        if any(v is None for v in vals):
            return None
        hit = any(lo <= v <= hi for v in vals for lo, hi in ranges)
        return hit != neg
    return _cond(text, fn, f"th {which}", lambda st: f"ports {st.sport}->{st.dport}")


def _flag_bits(names: str) -> int:
    if names.upper() == "ALL":
        return 0x3F
    if names.upper() == "NONE":
        return 0
    return sum(TCP_FLAGS.get(n.lower(), 0) for n in names.split(","))


def _tcp_flags_cond(text: str, mask: int, comp: int, neg: bool) -> Cond:
    def fn(st):
        if st.proto != 6:
            return False if st.proto is not None else None
        if st.tcp_flags is None:
            return None
        return ((st.tcp_flags & mask) == comp) != neg
    return _cond(text, fn, "tcp flags", lambda st: f"tcp flags {st.tcp_flags}")


def _icmp_cond(text: str, spec: str, neg: bool, v6: bool) -> Cond:
    table = ICMPV6_TYPES if v6 else ICMP_TYPES
    code = None
    if spec.lower() == "any":
        return _cond(text, lambda st: not neg)
    if not v6 and spec in ICMP_TYPE_CODES:
        typ, code = ICMP_TYPE_CODES[spec]
    elif "/" in spec:
        a, b = spec.split("/")
        typ, code = int(a), int(b)
    elif spec.isdigit():
        typ = int(spec)
    elif spec in table:
        typ = table[spec]
    else:
        return _unknown(text, f"unknown icmp type {spec}")
    want = 58 if v6 else 1

    def fn(st):
        if st.proto != want:
            return False if st.proto is not None else None
        if st.icmp_type is None or (code is not None and st.icmp_code is None):
            return None
        hit = st.icmp_type == typ and (code is None or st.icmp_code == code)
        return hit != neg
    return _cond(text, fn, "icmp type", lambda st: f"icmp {st.icmp_type}/{st.icmp_code}")


def _state_cond(text: str, spec: str, neg: bool) -> Cond:
    bits = 0
    for s in spec.split(","):
        s = s.strip().lower()
        if s in ("snat", "dnat"):
            return _unknown(text, "ctstate SNAT/DNAT not modelled")
        bits |= CT_STATE_BITS.get(s, 0)

    def fn(st):
        s = st.ct_state_now()
        if isinstance(s, Unknown):
            return None
        return bool(CT_STATE_BITS.get(s, 0) & bits) != neg
    return _cond(text, fn, "ct state", lambda st: f"ct state {st.ct_state_now()}")


def _mark_cond(text: str, spec: str, neg: bool, ct: bool) -> Cond:
    val, _, mask = spec.partition("/")
    v, m = parse_int(val), parse_int(mask) if mask else 0xFFFFFFFF

    def fn(st):
        if ct:
            if st.untracked or not st.ct_attached:
                return False
            cur = st.ct_mark
        else:
            cur = st.mark
        return ((cur & m) == v) != neg
    return _cond(text, fn, "ct mark" if ct else "meta mark",
                 lambda st: f"{'ct ' if ct else ''}mark {(st.ct_mark if ct else st.mark):#x}")


def _addrtype_cond(text: str, which: str, spec: str, neg: bool, limited: bool) -> Cond:
    if limited:
        return _unknown(text, "--limit-iface-in/out not modelled")
    want = {t.lower() for t in spec.split(",")}

    def fn(st):
        a = st.src if which == "src" else st.dst
        if a is None or st.addresses is None:
            return None
        t = st.addresses.address_type(a)
        if t is None:
            return None
        return (t in want) != neg
    return _cond(text, fn, f"addrtype {which}", lambda st: f"{which} {st.src if which == 'src' else st.dst}")


def _iprange_cond(text: str, which: str, spec: str, neg: bool) -> Cond:
    a, _, b = spec.partition("-")
    lo, hi = int(ipaddress.ip_address(a)), int(ipaddress.ip_address(b or a))
    attr = "src_i" if which == "src" else "dst_i"

    def fn(st):
        v = getattr(st, attr)
        if v is None:
            return None
        return (lo <= v <= hi) != neg
    return _cond(text, fn, f"ip {which[0]}addr")


def _dscp_cond(text: str, value: int, neg: bool) -> Cond:
    return _cond(text, lambda st: None if st.dscp is None else (st.dscp == value) != neg, "ip dscp",
                 lambda st: f"dscp {st.dscp}")


def _length_cond(text: str, spec: str, neg: bool) -> Cond:
    a, _, b = spec.partition(":")
    lo, hi = int(a or 0), int(b or a or 65535)

    def fn(st):
        if st.length is None:
            return None
        return (lo <= st.length <= hi) != neg
    return _cond(text, fn, "meta length")


def _owner_cond(text: str, attr: str, spec: str, neg: bool) -> Cond:
    a, _, b = spec.partition("-")
    if not a.isdigit():
        return _unknown(text, "user/group names are not resolved")
    lo, hi = int(a), int(b or a)

    def fn(st):
        v = getattr(st, attr)
        if v is None:
            return None if st.hook in ("output", "postrouting") else False
        return (lo <= v <= hi) != neg
    return _cond(text, fn, f"meta sk{attr}")


def _statistic_cond(text: str, opt: str, value: str, neg: bool) -> Cond:
    """`-m statistic`: a random pick (--mode random --probability P) or every Nth packet
    (--mode nth --every N --packet K, for one new flow as likely as 1/N). The walk's
    `choose` decides which way this outcome goes; without it the match is unknown."""
    if opt == "--mode":
        if value in ("random", "nth"):
            return _cond(text, lambda st: True)
        return _unknown(text, f"statistic mode {value} not modelled")
    if opt == "--packet":
        return _cond(text, lambda st: True)
    if opt not in ("--probability", "--every"):
        return _unknown(text, f"statistic {opt} not modelled")
    chance = float(value) if opt == "--probability" else 1 / int(value)
    pick = f"-m statistic --mode random --probability {chance:g}" if opt == "--probability" else \
        f"-m statistic --mode nth --every {value}"
    if neg:
        chance, pick = 1 - chance, f"! {pick}"

    def fn(st):
        return None if st.choose is None else st.choose(pick, (chance, 1 - chance), ("matches", "does not match")) == 0

    def why(st):
        if st.choose is None:
            return f"cannot evaluate {text}: the kernel picks at random for each new connection"
        return f"{text}: random pick ({chance:.0%}), not taken in this outcome"
    return Cond(text, fn, "statistic", why)


def _module_cond(mod: str, opt: str, args: list[str], neg: bool, family: str) -> Cond:
    text = f"{'! ' if neg else ''}{opt} {' '.join(args)}".strip()
    full = f"-m {mod} {text}"
    a0 = args[0] if args else ""
    try:
        if mod in ("tcp", "udp", "sctp", "dccp", "udplite"):
            if opt in ("--sport", "--source-port", "--dport", "--destination-port"):
                which = "sport" if opt in ("--sport", "--source-port") else "dport"
                proto = IPPROTO[mod]
                inner = _port_cond(full, which, a0, neg)

                def fn(st, inner=inner, proto=proto):
                    if st.proto is not None and st.proto != proto:
                        return False
                    return inner.fn(st)
                return Cond(full, fn, inner.field, inner.why)
            if mod == "tcp" and opt == "--tcp-flags":
                return _tcp_flags_cond(full, _flag_bits(args[0]), _flag_bits(args[1]), neg)
            if mod == "tcp" and opt == "--syn":
                return _tcp_flags_cond(full, 0x17, 0x02, neg)
        if mod == "multiport" and opt in ("--dports", "--destination-ports", "--sports",
                                          "--source-ports", "--ports"):
            which = "dport" if "d" in opt[2:4] else "sport" if "s" == opt[2] else "any"
            return _port_cond(full, which, a0, neg)
        if mod == "icmp" and opt == "--icmp-type":
            return _icmp_cond(full, a0, neg, False)
        if mod in ("icmp6", "icmpv6", "ipv6-icmp") and opt == "--icmpv6-type":
            return _icmp_cond(full, a0, neg, True)
        if mod == "conntrack" and opt == "--ctstate" or mod == "state" and opt == "--state":
            return _state_cond(full, a0, neg)
        if mod == "conntrack" and opt == "--ctdir":
            want = a0.lower()

            def fn(st):
                if st.untracked or not st.ct_attached:
                    return False
                return ((st.ct_direction or "original") == want) != neg
            return _cond(full, fn, "ct direction")
        if mod == "mark" and opt == "--mark":
            return _mark_cond(full, a0, neg, False)
        if mod == "connmark" and opt == "--mark":
            return _mark_cond(full, a0, neg, True)
        if mod == "addrtype" and opt in ("--src-type", "--dst-type"):
            return _addrtype_cond(full, opt[2:5], a0, neg, False)
        if mod == "addrtype" and opt.startswith("--limit-iface"):
            return _unknown(full, "--limit-iface-in/out not modelled")
        if mod == "iprange" and opt in ("--src-range", "--dst-range"):
            return _iprange_cond(full, opt[2:5], a0, neg)
        if mod == "comment":
            return _cond(full, lambda st: True)
        if mod == "dscp" and opt == "--dscp":
            return _dscp_cond(full, parse_int(a0), neg)
        if mod == "dscp" and opt == "--dscp-class":
            return _dscp_cond(full, DSCP[a0.lower()], neg)
        if mod == "length" and opt == "--length":
            return _length_cond(full, a0, neg)
        if mod == "owner" and opt in ("--uid-owner", "--gid-owner"):
            return _owner_cond(full, "uid" if opt == "--uid-owner" else "gid", a0, neg)
        if mod == "statistic":
            return _statistic_cond(full, opt, a0, neg)
    except (ValueError, KeyError, IndexError) as exc:
        return _unknown(full, str(exc))
    return _unknown(full, f"match -m {mod} {opt} not modelled")


# ------------------------------------------------------------------ ipsets

# Set types `-m set` is evaluated against, by their dimensions. A set type not
# listed here (hash:mac, hash:ip,mark, hash:net,net, …) evaluates to None.
IPSET_DIMENSIONS = {
    "hash:ip": ("ip",), "bitmap:ip": ("ip",), "hash:net": ("net",),
    "hash:ip,port": ("ip", "port"), "hash:net,port": ("net", "port"),
    "hash:ip,port,ip": ("ip", "port", "ip"), "hash:ip,port,net": ("ip", "port", "net"),
    "hash:net,iface": ("net", "iface"),
}
# `ipset save` names of ICMP / ICMPv6 type/code pairs (ipset's own table, not iptables').
IPSET_ICMP = {
    "echo-reply": (0, 0), "network-unreachable": (3, 0), "host-unreachable": (3, 1),
    "protocol-unreachable": (3, 2), "port-unreachable": (3, 3), "fragmentation-needed": (3, 4),
    "source-route-failed": (3, 5), "network-unknown": (3, 6), "host-unknown": (3, 7),
    "network-prohibited": (3, 9), "host-prohibited": (3, 10), "TOS-network-unreachable": (3, 11),
    "TOS-host-unreachable": (3, 12), "communication-prohibited": (3, 13),
    "host-precedence-violation": (3, 14), "precedence-cutoff": (3, 15), "source-quench": (4, 0),
    "network-redirect": (5, 0), "host-redirect": (5, 1), "TOS-network-redirect": (5, 2),
    "TOS-host-redirect": (5, 3), "echo-request": (8, 0), "router-advertisement": (9, 0),
    "router-solicitation": (10, 0), "ttl-zero-during-transit": (11, 0),
    "ttl-zero-during-reassembly": (11, 1), "ip-header-bad": (12, 0), "required-option-missing": (12, 1),
    "timestamp-request": (13, 0), "timestamp-reply": (14, 0), "address-mask-request": (17, 0),
    "address-mask-reply": (18, 0),
}
IPSET_ICMPV6 = {
    "no-route": (1, 0), "communication-prohibited": (1, 1), "address-unreachable": (1, 3),
    "port-unreachable": (1, 4), "packet-too-big": (2, 0), "ttl-zero-during-transit": (3, 0),
    "ttl-zero-during-reassembly": (3, 1), "bad-header": (4, 0), "unknown-header-type": (4, 1),
    "unknown-option": (4, 2), "echo-request": (128, 0), "echo-reply": (129, 0),
    "router-solicitation": (133, 0), "router-advertisement": (134, 0),
    "neighbour-solicitation": (135, 0), "neighbour-advertisement": (136, 0), "redirect": (137, 0),
}
_PORT_PROTOCOLS_IPSET = frozenset({6, 17, 132, 136})  # ip_set_get_port reads ports of these
_ICMP_PROTO = {"ip": 1, "ip6": 58}
_BITS = {"ip": 32, "ip6": 128}


def _prefix_mask(length: int, bits: int) -> int:
    return ((1 << bits) - 1) ^ ((1 << (bits - length)) - 1)


_CREATE_FLAGS = frozenset({"counters", "comment", "skbinfo", "forceadd"})  # options without a value


def _create_options(words: list[str]) -> dict[str, str]:
    """`family inet hashsize 1024 counters comment netmask 24` -> {"family": "inet", …}"""
    opts, i = {}, 0
    while i < len(words):
        if words[i] in _CREATE_FLAGS:
            i += 1
            continue
        opts[words[i]] = words[i + 1] if i + 1 < len(words) else ""
        i += 2
    return opts


class IpSet:
    """One ipset from `ipset save`, indexed for `-m set --match-set` lookups.

    Elements are keyed per dimension: an address (masked by the set's netmask),
    a network address of the element's prefix length, (protocol, port) — ICMP
    type/code as type << 8 | code, as ipset stores them — or an interface name.
    A lookup tries the element prefix lengths from the most specific one down,
    as the kernel's hash:net* types do: the first element found decides, and a
    `nomatch` element means "not in the set" (or, with --return-nomatch, "in")."""

    def __init__(self, name: str, set_type: str, options: list[str]):
        self.name, self.type = name, set_type
        self.dims = IPSET_DIMENSIONS.get(set_type, ())
        self.members: list[str] = []  # list:set
        self.unsupported = None if self.dims or set_type == "list:set" else f"set type {set_type} not modelled"
        opts = _create_options(options)
        family = opts.get("family", "inet")
        self.family = None if set_type == "list:set" else "ip6" if family == "inet6" else "ip"
        bits = _BITS.get(self.family or "ip")
        self.mask = (1 << bits) - 1
        if "netmask" in opts:
            self.mask = _prefix_mask(int(opts["netmask"]), bits)
        if "bitmask" in opts:
            self.mask = any_addr_int(opts["bitmask"])
        self.net_dim = self.dims.index("net") if "net" in self.dims else None
        # prefix length of the net dimension (None: no net dimension) -> key -> nomatch
        self.entries: dict[int | None, dict[tuple, bool]] = {}
        self.lengths: list[int | None] = []

    def add(self, element: str, options: list[str]) -> None:
        if self.type == "list:set":
            self.members.append(element)
            return
        if self.unsupported:
            return
        parts = element.split(",")
        key, length = [], None
        for dim, part in zip(self.dims, parts, strict=True):
            if dim == "ip":
                key.append(any_addr_int(part) & self.mask)
            elif dim == "net":
                addr, _, plen = part.partition("/")
                length = int(plen) if plen else _BITS[self.family]
                key.append(any_addr_int(addr) & _prefix_mask(length, _BITS[self.family]))
            elif dim == "port":
                key.append(self._port_element(part))
            else:  # iface; physdev elements only match bridged packets (never a routed one)
                key.append(("physdev", part[8:]) if part.startswith("physdev:") else part)
        table = self.entries.get(length)
        if table is None:
            table = self.entries[length] = {}
            self.lengths = sorted(self.entries, key=lambda n: -1 if n is None else -n)
        table[tuple(key)] = "nomatch" in options

    def _port_element(self, text: str) -> tuple[int, int]:
        proto_name, sep, value = text.rpartition(":")
        if not sep:
            return 6, int(value)  # a bare port is TCP
        proto = IPPROTO.get(proto_name)
        if proto is None:
            proto = socket.getprotobyname(proto_name)
        if proto in (1, 58):
            names = IPSET_ICMP if proto == 1 else IPSET_ICMPV6
            typ, code = names[value] if value in names else map(int, value.split("/"))
            return proto, typ << 8 | code
        return proto, int(value)

    # -- lookups
    def match(self, st, directions: tuple[bool, ...], return_nomatch: bool,
              registry: Mapping[str, IpSet]) -> tuple[bool | None, str]:
        """(in the set?, what decided it). `directions[i]` is True for `src`."""
        if self.type == "list:set":
            return self._match_members(st, directions, return_nomatch, registry)
        if self.unsupported:
            return None, self.unsupported
        if self.family != st.family:
            return False, f"{self.name} holds {'IPv6' if self.family == 'ip6' else 'IPv4'} entries"
        if len(directions) < len(self.dims):
            return False, (f"{self.name} ({self.type}) needs {len(self.dims)} directions, "
                           f"the rule gives {len(directions)}")
        key = []
        for dim, src in zip(self.dims, directions, strict=False):
            value = self._packet_value(st, dim, src)
            if isinstance(value, (Miss, Unknown)):
                return (None if isinstance(value, Unknown) else False), value.why
            key.append(value)
        shown = ",".join(self._show(dim, v) for dim, v in zip(self.dims, key, strict=True))
        for length in self.lengths:
            probe = tuple(key)
            if length is not None:
                i = self.net_dim
                probe = probe[:i] + (probe[i] & _prefix_mask(length, _BITS[self.family]),) + probe[i + 1:]
            nomatch = self.entries[length].get(probe)
            if nomatch is None:
                continue
            found = (f"{self.name} has {shown} as nomatch" if nomatch else f"{self.name} contains {shown}") \
                + (f" (a /{length} element)" if length is not None else "")
            if return_nomatch and self.net_dim is not None:  # --return-nomatch inverts the element found
                return nomatch, f"{found}, --return-nomatch {'matches' if nomatch else 'does not match'} it"
            return not nomatch, found
        return False, f"{self.name} has no element for {shown}"

    def _match_members(self, st, directions, return_nomatch, registry):
        unknown = []
        for name in self.members:
            member = registry.get(name)
            if member is None:
                unknown.append(f"member {name} not collected")
                continue
            hit, why = member.match(st, directions, return_nomatch, registry)
            if hit:
                return True, f"{self.name}: {why}"
            if hit is None:
                unknown.append(why)
        if unknown:
            return None, f"{self.name}: " + "; ".join(unknown)
        return False, f"no member of {self.name} ({', '.join(self.members) or 'empty'}) matches"

    def _packet_value(self, st, dim: str, src: bool):
        """The packet's value for one dimension; Unknown when the model cannot
        know it, Miss when the kernel has none (the lookup fails)."""
        if dim in ("ip", "net"):
            value = st.src_i if src else st.dst_i
            return Unknown("address not known") if value is None else value & self.mask
        if dim == "iface":
            name = st.iif if src else st.oif
            if name is None:
                return Unknown("interface not known") if st.probe else \
                    Miss(f"no {'input' if src else 'output'} interface at this hook")
            return name
        if st.proto is None:
            return Unknown("protocol not known")
        if st.proto == _ICMP_PROTO[st.family]:
            if st.icmp_type is None or st.icmp_code is None:
                return Unknown("icmp type/code not known")
            return st.proto, st.icmp_type << 8 | st.icmp_code
        if st.proto in _PORT_PROTOCOLS_IPSET:
            port = st.sport if src else st.dport
            return Unknown("port not known") if port is None else (st.proto, port)
        return st.proto, 0  # other protocols have port 0 in ipset

    def _show(self, dim: str, value) -> str:
        if dim in ("ip", "net"):
            return int_addr(value, self.family)
        if dim == "port":
            proto, port = value
            name = IPPROTO_NAMES.get(proto, str(proto))
            return f"{name}:{port >> 8}/{port & 0xFF}" if proto in (1, 58) else f"{name}:{port}"
        return str(value)


@dataclass(frozen=True)
class IpSets:
    """The collected ipsets; `missing` says why their contents are unknown."""

    sets: Mapping[str, IpSet]
    missing: str | None = None


NO_IPSETS = IpSets({}, "ipset contents were not collected")


def parse_ipset_save(text: str | None, missing: str | None = None) -> IpSets:
    """IpSets from `ipset save` (= `ipset list -o save`) output."""
    if text is None:
        return IpSets({}, missing or NO_IPSETS.missing)
    sets: dict[str, IpSet] = {}
    for line in text.splitlines():
        try:
            words = shlex.split(line)
        except ValueError:
            words = line.split()
        if len(words) >= 3 and words[0] == "create":
            sets[words[1]] = IpSet(words[1], words[2], words[3:])
        elif len(words) >= 3 and words[0] == "add" and words[1] in sets:
            try:
                sets[words[1]].add(words[2], words[3:])
            except (ValueError, KeyError, OSError) as exc:
                sets[words[1]].unsupported = f"element {words[2]!r} not understood ({exc})"
    return IpSets(sets)


def _set_match(text: str, name: str, flags: str, neg: bool, return_nomatch: bool, ipsets: IpSets) -> Cond:
    """-m set [!] --match-set NAME src|dst[,src|dst…]"""
    if ipsets.missing:
        return _unknown(text, ipsets.missing)
    ipset = ipsets.sets.get(name)
    if ipset is None:
        return _unknown(text, f"set {name} is not in the collected ipsets")
    directions = tuple(f == "src" for f in flags.split(","))
    registry = ipsets.sets

    def fn(st):
        hit = ipset.match(st, directions, return_nomatch, registry)[0]
        return None if hit is None else hit != neg

    def why(st):
        hit, reason = ipset.match(st, directions, return_nomatch, registry)
        return f"cannot evaluate {text}: {reason}" if hit is None else f"{text} ({reason})"
    return Cond(text, fn, f"set {name}", why)


def _set_option(opt: str, args: list[str], neg: bool, rest: list[str], ipsets: IpSets) -> Cond:
    """One option of `-m set`; `rest` holds the options after it in the same match."""
    text = f"-m set {'! ' if neg else ''}{opt} {' '.join(args)}".strip()
    if opt in ("--match-set", "--set") and len(args) == 2:
        return _set_match(text, args[0], args[1], neg, "--return-nomatch" in rest, ipsets)
    if opt in ("--return-nomatch", "--update-counters", "--update-subcounters"):
        return _cond(text, lambda st: True)  # modifies --match-set / side effects only
    if opt.startswith(("--packets-", "--bytes-")):
        return _unknown(text, "ipset element counters are not collected")
    return _unknown(text, f"option {opt} not modelled")


# ----------------------------------------------------------------- targets

def _mark_apply(kind: str, value: int, mask: int):
    def apply(st):
        if kind == "xset":
            st.mark = (st.mark & ~mask & 0xFFFFFFFF) ^ value
        elif kind == "and":
            st.mark &= value
        elif kind == "or":
            st.mark |= value
        elif kind == "xor":
            st.mark ^= value
        return f"mark set {st.mark:#x}"
    return apply


def _vm(spec: str, default_mask: int = 0xFFFFFFFF) -> tuple[int, int]:
    v, _, m = spec.partition("/")
    return parse_int(v), parse_int(m) if m else default_mask


def _target(name: str, opts: dict[str, list[str]], family: str, text: str) -> list:
    """Stmts/Verdicts for -j NAME with its options."""
    t = f"-j {name}" + "".join(f" {k} {' '.join(v)}".rstrip() for k, v in opts.items())
    if name in ("ACCEPT", "DROP", "RETURN"):
        return [Verdict(name.lower(), None, t)]
    if name == "REJECT":
        return [Verdict("reject", None, t)]
    if name in ("QUEUE", "NFQUEUE"):
        return [Verdict("queue", None, t)]
    if name in ("LOG", "NFLOG", "ULOG"):
        return [Stmt("log", t, lambda st: "logged")]
    if name == "TRACE":
        def apply(st):
            st.nftrace = True
            return "trace on"
        return [Stmt("nftrace", t, apply)]
    if name == "MARK":
        if "--set-xmark" in opts:
            v, m = _vm(opts["--set-xmark"][0])
            return [Stmt("mark", t, _mark_apply("xset", v, m))]
        if "--set-mark" in opts:
            v, m = _vm(opts["--set-mark"][0])
            return [Stmt("mark", t, _mark_apply("xset", v, m))]
        for o, k in (("--and-mark", "and"), ("--or-mark", "or"), ("--xor-mark", "xor")):
            if o in opts:
                return [Stmt("mark", t, _mark_apply(k, parse_int(opts[o][0]), 0))]
    if name == "CONNMARK":
        nfmask = parse_int(opts.get("--nfmask", ["0xffffffff"])[0])
        ctmask = parse_int(opts.get("--ctmask", ["0xffffffff"])[0])
        if "--mask" in opts:
            nfmask = ctmask = parse_int(opts["--mask"][0])
        restore = "--restore-mark" in opts
        if restore or "--save-mark" in opts:
            def apply(st):
                if st.untracked or not st.ct_attached:
                    return "no conntrack entry: nothing copied"
                if restore:
                    st.mark = (st.mark & ~nfmask & 0xFFFFFFFF) ^ (st.ct_mark & ctmask)
                    return f"mark set {st.mark:#x} (restored from ct mark)"
                st.ct_mark = (st.ct_mark & ~ctmask & 0xFFFFFFFF) ^ (st.mark & nfmask)
                return f"ct mark set {st.ct_mark:#x}"
            return [Stmt("mark" if restore else "ctmark", t, apply)]
        key = "--set-xmark" if "--set-xmark" in opts else "--set-mark" if "--set-mark" in opts else None
        if key:
            v, m = _vm(opts[key][0])

            def apply(st):
                if st.untracked or not st.ct_attached:
                    return "no conntrack entry"
                st.ct_mark = (st.ct_mark & ~m & 0xFFFFFFFF) ^ v
                return f"ct mark set {st.ct_mark:#x}"
            return [Stmt("ctmark", t, apply)]
    random_port = "--random" in opts or "--random-fully" in opts
    if name in ("SNAT", "DNAT"):
        to = (opts.get("--to-source") or opts.get("--to-destination") or [None])[0]
        addr, port = _split_to(to)
        return [Stmt("nat", t, None, nat=NatSpec(name.lower(), addr, port, family, random_port=random_port))]
    if name in ("MASQUERADE", "REDIRECT"):
        port = (opts.get("--to-ports") or [None])[0]
        return [Stmt("nat", t, None, nat=NatSpec(name.lower(), None, port and port.replace(":", "-"), family,
                                                 random_port=random_port))]
    if name == "TCPMSS":
        mss = "pmtu" if "--clamp-mss-to-pmtu" in opts else (opts.get("--set-mss") or ["?"])[0]
        return [Stmt("tcpmss", t, lambda st: f"TCP MSS clamp ({mss})", mss=mss)]
    if name in ("NOTRACK",) or (name == "CT" and "--notrack" in opts):
        def apply(st):
            st.untracked = True
            return "notrack"
        return [Stmt("notrack", t, apply)]
    if name == "DSCP":
        val = None
        if "--set-dscp" in opts:
            val = parse_int(opts["--set-dscp"][0])
        elif "--set-dscp-class" in opts:
            val = DSCP.get(opts["--set-dscp-class"][0].lower())
        if val is not None:
            def apply(st, val=val):
                st.dscp = val
                return f"dscp set {val}"
            return [Stmt("dscp", t, apply)]
    if name in ("CT", "CLASSIFY", "CHECKSUM", "TTL", "HL", "TOS", "SECMARK", "CONNSECMARK", "TEE"):
        return [Stmt("other", t, lambda st: t)]
    return [Stmt("unknown", t, lambda st: Unknown(f"target {name} not modelled")),
            Verdict("unknown", None, t)]


def _split_to(to: str | None) -> tuple[str | None, str | None]:
    if not to:
        return None, None
    if to.startswith("["):
        addr, _, rest = to[1:].partition("]")
        return addr, (rest[1:] or None) if rest.startswith(":") else None
    if to.count(":") == 1:
        addr, port = to.split(":")
        return addr or None, port or None
    return to, None


# -------------------------------------------------------------------- rule

_GENERIC = {"-s", "--source", "-d", "--destination", "-i", "--in-interface", "-o",
            "--out-interface", "-p", "--protocol", "-f", "--fragment"}


def _match_options(toks: list[str], start: int) -> list[str]:
    """The tokens of the current `-m` match from `start` on (up to the next match or target)."""
    end = start
    while end < len(toks) and toks[end] not in ("-m", "--match", "-j", "--jump", "-g", "--goto") \
            and toks[end] not in _GENERIC:
        end += 1
    return toks[start:end]


def compile_saved_rule(r: SavedRule, family: str, user_chains: frozenset = frozenset(),
                       ipsets: IpSets = NO_IPSETS) -> Rule:
    toks = r.tokens[2:]
    items: list = []
    mod = None
    neg = False
    i = 0
    target = None
    goto = False
    while i < len(toks):
        t = toks[i]
        if t == "!":
            neg = True
            i += 1
            continue
        if t in ("-j", "--jump", "-g", "--goto"):
            target = toks[i + 1] if i + 1 < len(toks) else None
            goto = t in ("-g", "--goto")
            i += 2
            break
        if t in ("-m", "--match"):
            mod = toks[i + 1]
            i += 2
            continue
        args = []
        j = i + 1
        while j < len(toks) and not (toks[j].startswith("-") and len(toks[j]) > 1 and not toks[j][1:].isdigit()) \
                and toks[j] != "!":
            args.append(toks[j])
            j += 1
        try:
            if t in ("-s", "--source", "-d", "--destination"):
                items.append(_addr_cond(t, args[0], neg, family))
            elif t in ("-i", "--in-interface", "-o", "--out-interface"):
                items.append(_iface_cond(t, args[0], neg))
            elif t in ("-p", "--protocol"):
                items.append(_proto_cond(args[0], neg))
                if mod is None:
                    mod = args[0].lower()
            elif t in ("-f", "--fragment"):
                items.append(_unknown(t, "fragments not modelled"))
            elif mod == "set":
                items.append(_set_option(t, args, neg, _match_options(toks, j), ipsets))
            elif mod is not None:
                items.append(_module_cond(mod, t, args, neg, family))
            else:
                items.append(_unknown(t, "option not understood"))
        except (ValueError, IndexError) as exc:
            items.append(_unknown(f"{t} {' '.join(args)}", str(exc)))
        neg = False
        i = j
    # target options
    opts: dict[str, list[str]] = {}
    key = None
    for t in toks[i:]:
        if t.startswith("--"):
            key = t
            opts[key] = []
        elif key is not None:
            opts[key].append(t)
    if target is None:
        pass  # a rule without target only counts
    elif goto:
        items.append(Verdict("goto", target, f"-g {target}"))
    elif target not in user_chains:
        items.extend(_target(target, opts, family, r.text))
    else:
        items.append(Verdict("jump", target, f"-j {target}"))
    return Rule(r.number, r.text, tuple(items), r.counters)


def compile_saved_chain_rules(chains: dict[str, SavedChain], family: str,
                              ipsets: IpSets = NO_IPSETS) -> dict[str, tuple[Rule, ...]]:
    """Compiled rules per chain; `-j NAME` is a jump when NAME is a chain of the table."""
    user = frozenset(n for n, c in chains.items() if c.policy is None and n not in BUILTIN)
    return {n: tuple(compile_saved_rule(r, family, user, ipsets) for r in c.rules) for n, c in chains.items()}
