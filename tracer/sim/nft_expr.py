"""nftables JSON (libnftables-json(5)) -> compiled Cond / Stmt / Verdict items.

Also: reading nft's own text listing (`nft -a list ruleset`) to find each
rule's text by handle, and recovering the parameters of iptables-nft `xt`
targets from that text when no iptables-save output is available.
"""

from __future__ import annotations

import bisect
import dataclasses
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from tracer.sim.nft_model import (
    CT_DIR,
    CT_STATE_BITS,
    DSCP,
    ETHERTYPE,
    FIB_TYPES,
    ICMP_CODES,
    ICMP_TYPES,
    ICMPV6_CODES,
    ICMPV6_TYPES,
    NFPROTO,
    TCP_FLAGS,
    Cond,
    EvalState,
    Getter,
    Miss,
    NatSpec,
    Rule,
    Stmt,
    Unknown,
    Verdict,
    flag_bits,
    int_addr,
    parse_int,
)
from tracer.vocab import IPPROTO, IPPROTO_NAMES, PORT_PROTOCOLS, any_addr_int

SERVICES = {"ftp": 21, "ssh": 22, "telnet": 23, "smtp": 25, "domain": 53, "bootps": 67,
            "bootpc": 68, "http": 80, "pop3": 110, "ntp": 123, "imap": 143, "snmp": 161,
            "ldap": 389, "https": 443, "submission": 587, "imaps": 993, "pop3s": 995,
            "openvpn": 1194, "mysql": 3306, "rdp": 3389, "postgresql": 5432}

FLAG_KINDS = {"ct_state": CT_STATE_BITS, "tcp_flag": TCP_FLAGS}


class Scope:
    """Named sets and maps of one table."""

    def __init__(self, sets: dict[str, dict]):
        self.sets = sets

    def elements(self, ref: str) -> list:
        name = ref[1:]
        if name not in self.sets:
            raise KeyError(f"set {ref} not found in the ruleset")
        elem = self.sets[name].get("elem") or []
        return elem if isinstance(elem, list) else [elem]


# ------------------------------------------------------------------ render

def render(e: Any) -> str:
    """Short nft-like text for an expression (used in reasons)."""
    if e is None:
        return ""
    if isinstance(e, (int, str)):
        return str(e)
    if isinstance(e, list):
        return ",".join(render(x) for x in e)
    if not isinstance(e, dict) or not e:
        return str(e)
    (k, v), = list(e.items())[:1]
    if k == "match":
        op = v.get("op", "==")
        binop = isinstance(v["left"], dict) and any(k in v["left"] for k in ("&", "|", "^"))
        op = "" if op == "in" or (op == "==" and not binop) else f"{op} "
        return f"{render(v['left'])} {op}{render(v['right'])}"
    if k == "payload":
        if "protocol" in v:
            return f"{v['protocol']} {v['field']}"
        return f"@{v.get('base')},{v.get('offset')},{v.get('len')}"
    if k == "meta":
        return f"meta {v['key']}"
    if k == "ct":
        d = f" {v['dir']}" if v.get("dir") else ""
        return f"ct{d} {v['key']}"
    if k == "fib":
        return f"fib {' . '.join(v.get('flags', []))} {v.get('result')}"
    if k == "rt":
        return f"rt {v.get('key')}"
    if k == "numgen":
        offset = f" offset {v['offset']}" if v.get("offset") else ""
        return f"numgen {v.get('mode', 'random')} mod {v.get('mod')}{offset}"
    if k in ("jhash", "symhash"):
        source = f" {render(v['expr'])}" if "expr" in v else ""
        seed = f" seed {v['seed']:#x}" if "seed" in v else ""
        offset = f" offset {v['offset']}" if v.get("offset") else ""
        return f"{k}{source} mod {v.get('mod')}{seed}{offset}"
    if k in ("&", "|", "^", ">>", "<<"):
        return f"{render(v[0])} {k} {render(v[1])}"
    if k == "prefix":
        return f"{v['addr']}/{v['len']}"
    if k == "range":
        return f"{render(v[0])}-{render(v[1])}"
    if k == "set":
        items = v if isinstance(v, list) else [v]
        return "{ " + ", ".join(_render_elem(x) for x in items) + " }"
    if k == "concat":
        return " . ".join(render(x) for x in v)
    if k in ("map", "vmap"):
        return f"{render(v['key'])} {k} {render(v['data'])}"
    if k == "elem":
        return render(v.get("val"))
    if k == "mangle":
        return f"{render(v['key'])} set {render(v['value'])}"
    if k == "tcp option":
        return f"tcp option {v.get('name')} {v.get('field', '')}".rstrip()
    if k in ("accept", "drop", "continue", "return"):
        return k
    if k in ("jump", "goto"):
        return f"{k} {v['target']}"
    if k == "xt":
        return f"xt {v.get('type')} {v.get('name')}"
    if k in ("snat", "dnat"):
        return f"{k} to {_nat_to_text(v or {})}"
    if k in ("masquerade", "redirect"):
        port = (v or {}).get("port")
        return k + (f" to :{render(port)}" if port is not None else "")
    return k if v is None else f"{k} {render(v) if not isinstance(v, dict) else ''}".rstrip()


def _render_elem(x):
    if isinstance(x, list) and len(x) == 2:
        return f"{render(x[0])} : {render(x[1])}"
    return render(x)


def _nat_to_text(v: dict) -> str:
    addr = v.get("addr")
    port = v.get("port")
    text = render(addr) if addr is not None else ""
    if port is not None:
        text += f":{render(port)}"
    return text


# ----------------------------------------------------------------- convert

def conv(kind: str, v: Any):
    """A scalar right-hand value converted to the representation the getter returns."""
    if isinstance(v, dict) and "elem" in v:
        v = v["elem"].get("val")
    if kind in ("ipv4_addr", "ipv6_addr"):
        return any_addr_int(v)
    if kind in ("ifname", "iface", "fib_addrtype", "ifkind", "string"):
        return str(v)
    if isinstance(v, bool):
        return int(v)
    if isinstance(v, int):
        return v
    if isinstance(v, list):
        if kind in FLAG_KINDS:
            return flag_bits(v, FLAG_KINDS[kind])
        raise ValueError(f"list value for {kind}")
    if isinstance(v, dict) and "|" in v:
        out = 0
        for x in v["|"]:
            out |= conv(kind, x)
        return out
    s = str(v)
    table = {
        "inet_proto": IPPROTO, "inet_service": SERVICES, "ct_state": CT_STATE_BITS,
        "ct_dir": CT_DIR, "tcp_flag": TCP_FLAGS, "dscp": DSCP, "icmp_type": ICMP_TYPES,
        "icmp_code": ICMP_CODES, "icmpv6_type": ICMPV6_TYPES, "icmpv6_code": ICMPV6_CODES,
        "nfproto": NFPROTO, "ether_type": ETHERTYPE,
    }.get(kind)
    if table and s in table:
        return table[s]
    return parse_int(s)


def fmt(kind: str, v: Any) -> str:
    if isinstance(v, (Miss, Unknown)):
        return v.why
    if isinstance(v, tuple):
        return " . ".join(fmt(k, x) for k, x in zip(kind.split("."), v, strict=False))
    if kind == "ipv4_addr":
        return int_addr(v, "ip")
    if kind == "ipv6_addr":
        return int_addr(v, "ip6")
    if kind == "inet_proto":
        return IPPROTO_NAMES.get(v, str(v))
    if kind in FLAG_KINDS:
        names = [n for n, b in FLAG_KINDS[kind].items() if v & b]
        return ",".join(names) or "0"
    if kind == "ifname":
        return f'"{v}"'
    if kind in ("mark", "int") and isinstance(v, int):
        return hex(v)
    return str(v)


# ---------------------------------------------------------------- getters

def _need_fam(fam: str, attr: str, label: str) -> Callable:
    def get(st: EvalState):
        if st.family != fam:
            return Miss(f"packet is not {'IPv4' if fam == 'ip' else 'IPv6'}")
        v = getattr(st, attr)
        return Unknown(f"{label} not known") if v is None else v
    return get


def _need_l4(protos: frozenset, name: str, attr: str, label: str, fam: str | None = None):
    def get(st: EvalState):
        if fam and st.family != fam:
            return Miss(f"packet is not {'IPv4' if fam == 'ip' else 'IPv6'}")
        if st.proto is None:
            return Unknown("protocol not known")
        if st.proto not in protos:
            return Miss(f"packet is not {name} ({IPPROTO_NAMES.get(st.proto, st.proto)})")
        v = getattr(st, attr)
        return Unknown(f"{label} not known") if v is None else v
    return get


def _const_unknown(why: str):
    u = Unknown(why)
    return lambda st: u


def _iface(attr: str):
    def get(st: EvalState):
        v = getattr(st, attr)
        if v is None:
            if st.probe:
                return Unknown(f"{attr} not known")
            # no such device at this hook: nft stores an empty name (iifname) or index 0 (iif),
            # so `!=` any interface matches and `==` none
            return ""
        return v
    return get


def _meta(key: str):
    if key in ("iif", "oif"):
        return "iface", _iface(key)
    if key in ("iifname", "oifname"):
        return "ifname", _iface(key[:3])
    if key in ("iifkind", "oifkind"):
        attr = key
        return "ifkind", lambda st: getattr(st, attr) or Unknown(f"{attr} not known")
    if key in ("iiftype", "oiftype"):
        attr = key[:3] + "kind"

        def get(st):
            k = getattr(st, attr)
            if k is None:
                return Unknown(f"{key} not known")
            return {"ppp": "ppp", "loopback": "loopback", "tun": "none", "wireguard": "none"}.get(k, "ether")
        return "string", get
    if key == "l4proto":
        return "inet_proto", lambda st: st.proto if st.proto is not None else Unknown("protocol not known")
    if key == "nfproto":
        return "nfproto", lambda st: NFPROTO[st.family]
    if key == "protocol":
        return "ether_type", lambda st: ETHERTYPE[st.family]
    if key == "mark":
        return "mark", lambda st: st.mark
    if key == "length":
        return "int", lambda st: st.length if st.length is not None else Unknown("length not known")
    if key == "nftrace":
        return "int", lambda st: int(st.nftrace)
    if key in ("skuid", "skgid"):
        attr = "uid" if key == "skuid" else "gid"

        def get(st):
            v = getattr(st, attr)
            if v is not None:
                return v
            if st.hook in ("output", "postrouting") or st.probe:
                return Unknown(f"socket {attr} not known")
            return Miss("no local socket at this hook")
        return "int", get
    return "int", _const_unknown(f"meta {key} not modelled")


def _ct(key: str, direction: str | None):
    if direction:
        return "int", _const_unknown(f"ct {direction} {key} not modelled")
    if key == "state":
        def get(st):
            s = st.ct_state_now()
            if isinstance(s, Unknown):
                return s
            return CT_STATE_BITS.get(s, 0)
        return "ct_state", get

    def attached(st):
        if st.untracked or not st.ct_attached:
            return Miss("no conntrack entry at this point")
        return None
    if key == "direction":
        def get(st):
            return attached(st) or CT_DIR.get(st.ct_direction or "original", 0)
        return "ct_dir", get
    if key == "mark":
        def get(st):
            return attached(st) or st.ct_mark
        return "mark", get
    return "int", _const_unknown(f"ct {key} not modelled")


def _fib(v: dict):
    flags = v.get("flags") or []
    result = v.get("result")
    if result != "type" or any(f in flags for f in ("iif", "oif")):
        return "fib_addrtype", _const_unknown(f"fib {' . '.join(flags)} {result} not modelled")
    use_src = "saddr" in flags

    def get(st):
        a = st.src if use_src else st.dst
        if a is None:
            return Unknown("address not known")
        t = st.addresses.address_type(a) if st.addresses else None
        return t if t is not None else Unknown(f"address type of {a} not known")
    return "fib_addrtype", get


PAYLOAD_L4 = {"tcp": 6, "udp": 17, "udplite": 136, "sctp": 132, "dccp": 33}


# (protocol, field) -> (kind, family, EvalState attribute, label) for L3 fields
_L3_FIELDS = {
    ("ip", "saddr"): ("ipv4_addr", "src_i", "source"),
    ("ip", "daddr"): ("ipv4_addr", "dst_i", "destination"),
    ("ip", "protocol"): ("inet_proto", "proto", "protocol"),
    ("ip", "dscp"): ("dscp", "dscp", "dscp"),
    ("ip", "length"): ("int", "length", "length"),
    ("ip6", "saddr"): ("ipv6_addr", "src_i", "source"),
    ("ip6", "daddr"): ("ipv6_addr", "dst_i", "destination"),
    ("ip6", "nexthdr"): ("inet_proto", "proto", "next header"),
    ("ip6", "dscp"): ("dscp", "dscp", "dscp"),
}


def _payload(v: dict):
    proto, fld = v.get("protocol"), v.get("field")
    if (proto, fld) in _L3_FIELDS:
        kind, attr, label = _L3_FIELDS[(proto, fld)]
        return kind, _need_fam(proto, attr, label)
    if proto in PAYLOAD_L4 and fld in ("sport", "dport"):
        return "inet_service", _need_l4(frozenset({PAYLOAD_L4[proto]}), proto, fld, fld)
    elif proto == "th" and fld in ("sport", "dport"):
        return "inet_service", _need_l4(PORT_PROTOCOLS, "a port protocol", fld, fld)
    elif proto == "tcp" and fld == "flags":
        return "tcp_flag", _need_l4(frozenset({6}), "tcp", "tcp_flags", "tcp flags")
    elif proto == "icmp" and fld in ("type", "code"):
        return f"icmp_{fld}", _need_l4(frozenset({1}), "icmp", f"icmp_{fld}", f"icmp {fld}", "ip")
    elif proto == "icmpv6" and fld in ("type", "code"):
        return f"icmpv6_{fld}", _need_l4(frozenset({58}), "icmpv6", f"icmp_{fld}", f"icmpv6 {fld}", "ip6")
    return "int", _const_unknown(f"payload {render({'payload': v})} not modelled")


def _binop(op: str, left, right, scope):
    kind, get, field = left_expr(left, scope)
    if isinstance(kind, str) and kind in FLAG_KINDS and isinstance(right, (list, str)):
        mask = flag_bits(right, FLAG_KINDS[kind])
    else:
        mask = conv(kind, right)
    f = {"&": lambda a, b: a & b, "|": lambda a, b: a | b, "^": lambda a, b: a ^ b,
         ">>": lambda a, b: a >> b, "<<": lambda a, b: a << b}[op]

    def get2(st):
        v = get(st)
        if isinstance(v, (Miss, Unknown)):
            return v
        return f(v, mask)
    return kind, get2, field


def left_expr(e: Any, scope: Scope):
    """(kind, getter, field) for the left-hand side of a match."""
    if not isinstance(e, dict) or not e:
        return "int", _const_unknown(f"cannot evaluate {render(e)}"), ""
    k, v = next(iter(e.items()))
    if k == "payload":
        kind, get = _payload(v)
        return kind, get, render(e)
    if k == "meta":
        kind, get = _meta(v["key"])
        return kind, get, f"meta {v['key']}"
    if k == "ct":
        kind, get = _ct(v["key"], v.get("dir"))
        return kind, get, render(e)
    if k == "fib":
        kind, get = _fib(v)
        return kind, get, render(e)
    if k in ("&", "|", "^", ">>", "<<"):
        return _binop(k, v[0], v[1], scope)
    if k == "numgen" or _random_hash(e):
        return "int", _numgen(v, render(e)), render(e)
    if k == "jhash":
        return "int", _jhash(v, scope, render(e)), render(e)
    if k == "concat":
        parts = [left_expr(x, scope) for x in v]
        kinds = ".".join(p[0] for p in parts)
        getters = [p[1] for p in parts]

        def get(st):
            out = []
            for g in getters:
                x = g(st)
                if isinstance(x, (Miss, Unknown)):
                    return x
                out.append(x)
            return tuple(out)
        return kinds, get, render(e)
    return "int", _const_unknown(f"cannot evaluate {render(e)}"), render(e)


# ------------------------------------------------------------------- sets

def _unwrap(x):
    if isinstance(x, dict) and "elem" in x:
        return x["elem"].get("val")
    return x


def _interval(kind: str, x) -> tuple[Any, Any] | None:
    """(lo, hi) for a prefix/range element, None for a scalar."""
    if isinstance(x, dict) and "prefix" in x:
        p = x["prefix"]
        lo = any_addr_int(p["addr"])
        bits = 32 if kind == "ipv4_addr" else 128
        span = (1 << (bits - p["len"])) - 1
        return lo & ~span, (lo & ~span) | span
    if isinstance(x, dict) and "range" in x:
        a, b = x["range"]
        return conv(kind, a), conv(kind, b)
    return None


def _component_test(kind: str, x) -> Callable[[Any], bool]:
    iv = _interval(kind, x)
    if iv:
        lo, hi = iv
        return lambda v: lo <= v <= hi
    if kind == "ifname" and isinstance(x, str) and x.endswith("*") and not x.endswith("\\*"):
        pre = x[:-1]
        return lambda v: isinstance(v, str) and v.startswith(pre)
    c = conv(kind, x.replace("\\*", "*") if kind == "ifname" and isinstance(x, str) else x)
    return lambda v: v == c


class ElementSet:
    """Fast membership for one set's elements as seen through a key kind."""

    def __init__(self, kind: str, elements: list, values: list | None = None):
        self.exact: dict = {}
        self.starts: list = []
        self.ivals: list = []  # (lo, hi, value) sorted by lo
        self.other: list = []  # (test, value) for concatenations/wildcards
        for i, raw in enumerate(elements):
            x = _unwrap(raw)
            val = values[i] if values is not None else True
            if "." in kind:
                kinds = kind.split(".")
                comps = x["concat"] if isinstance(x, dict) and "concat" in x else [x]
                tests = [_component_test(k, c) for k, c in zip(kinds, comps, strict=False)]
                self.other.append((lambda v, tests=tests: all(t(a) for t, a in zip(tests, v, strict=False)), val))
                continue
            iv = _interval(kind, x)
            if iv:
                self.ivals.append((iv[0], iv[1], val))
            elif kind == "ifname" and isinstance(x, str) and x.endswith("*") and not x.endswith("\\*"):
                self.other.append((_component_test(kind, x), val))
            else:
                key = x.replace("\\*", "*") if isinstance(x, str) and kind == "ifname" else x
                self.exact.setdefault(conv(kind, key), val)
        self.ivals.sort(key=lambda t: t[0])
        self.starts = [t[0] for t in self.ivals]
        # an interval set may overlap only in odd hand-made cases; keep the max end seen so far
        self.maxhi = []
        m = None
        for _lo, hi, _ in self.ivals:
            m = hi if m is None or hi > m else m
            self.maxhi.append(m)

    def lookup(self, v):
        """The element's value (True for plain sets), or None when absent."""
        if v in self.exact:
            return self.exact[v]
        if self.ivals and not isinstance(v, tuple):
            i = bisect.bisect_right(self.starts, v) - 1
            while i >= 0 and self.maxhi[i] >= v:
                lo, hi, val = self.ivals[i]
                if lo <= v <= hi:
                    return val
                i -= 1
        for test, val in self.other:
            if test(v):
                return val
        return None


def _elements(rhs, scope: Scope) -> list:
    if isinstance(rhs, str) and rhs.startswith("@"):
        return scope.elements(rhs)
    items = rhs["set"]
    return items if isinstance(items, list) else [items]


# ------------------------------------------------------------------ match

@dataclass(frozen=True, eq=False)
class AddrEqCond(Cond):
    """A match that is true only when one address field equals one value
    (`ip saddr 1.2.3.4`, `-s 1.2.3.4`): lets a long chain be indexed by address."""

    eq_attr: str = ""  # "src_i" | "dst_i"
    eq_value: int = 0


def _addr_eq(m: dict, op: str, kind: str) -> tuple[str, int] | None:
    """(attr, value) when the match is `ip[6] saddr|daddr == ADDRESS`, else None."""
    left, right = m.get("left"), m.get("right")
    if op != "==" or kind not in ("ipv4_addr", "ipv6_addr") or not isinstance(right, str):
        return None
    if not isinstance(left, dict) or set(left) != {"payload"}:
        return None
    pl = left["payload"]
    if pl.get("protocol") not in ("ip", "ip6") or pl.get("field") not in ("saddr", "daddr"):
        return None
    if right.startswith("@") or "/" in right or "-" in right:
        return None
    try:
        value = conv(kind, right)
    except (ValueError, TypeError):
        return None
    return ("src_i" if pl["field"] == "saddr" else "dst_i"), value


# Statements compile_item makes a Cond of (one that cannot be evaluated): they do not end a
# rule's leading matches.
COND_STATEMENTS = frozenset({"limit", "quota", "ct count", "connlimit", "numgen", "synproxy"})
# A rule whose leading matches only compiling can classify (compile_nft_rule rewrites xt items).
ASK_THE_COMPILER = "compile"


def leading_address_key(rj: dict) -> tuple[str, int] | None | str:
    """The (attr, value) of the AddrEqCond that compile_nft_rule would find first among the
    rule's leading matches, read from its JSON without compiling it; None when it finds none;
    ASK_THE_COMPILER when only compiling tells (xt expressions)."""
    for x in rj.get("expr") or []:
        if not isinstance(x, dict) or not x:
            return ASK_THE_COMPILER
        k, v = next(iter(x.items()))
        if k == "xt":
            return ASK_THE_COMPILER
        if k in COND_STATEMENTS:
            continue
        if k != "match":
            return None  # a statement or verdict ends the leading matches
        left = v.get("left") if isinstance(v, dict) else None
        if not isinstance(left, dict) or "numgen" in left or _random_hash(left) or set(left) != {"payload"}:
            continue
        payload = left["payload"]
        l3 = _L3_FIELDS.get((payload.get("protocol"), payload.get("field")))
        found = _addr_eq(v, v.get("op", "=="), l3[0]) if l3 else None
        if found is not None:
            return found
    return None


def _random_hash(e: dict) -> bool:
    """`symhash` (the skb's flow hash, keyed at random per boot) and a `jhash` without a seed
    (nft_jhash_init draws one at load and never shows it): as good as random per connection."""
    return "symhash" in e or ("jhash" in e and "seed" not in e["jhash"])


# What a jhash key component puts in its register (its bytes, its length), by its kind:
# addresses, ports, protocol in network order; the mark in the CPU's order (little-endian
# on x86, assumed).
_JHASH_BYTES = {"ipv4_addr": (4, "big"), "ipv6_addr": (16, "big"), "inet_service": (2, "big"),
                "inet_proto": (1, "big"), "mark": (4, "little")}


def _jhash(v: dict, scope: Scope, text: str) -> Getter:
    """`jhash EXPR mod N seed S offset K` (nft_jhash_eval): jhash() over EXPR's register bytes —
    a concatenation's components each padded to 4 bytes — scaled into N (reciprocal_scale),
    plus K. Deterministic: the same value for every packet of the flow."""
    mod, seed, offset = int(v["mod"]), int(v["seed"]), int(v.get("offset", 0))
    source = v["expr"]
    concat = isinstance(source, dict) and "concat" in source
    parts = [left_expr(x, scope) for x in (source["concat"] if concat else [source])]
    layout = []
    for kind, _get, _field in parts:
        if kind not in _JHASH_BYTES:
            return _const_unknown(f"{text}: a hash over {render(source)} is not modelled")
        size, order = _JHASH_BYTES[kind]
        layout.append((size, order, -size % 4 if concat else 0))

    def get(st):
        key = b""
        for (_kind, part, _field), (size, order, padding) in zip(parts, layout, strict=True):
            value = part(st)
            if isinstance(value, (Miss, Unknown)):
                return value
            key += value.to_bytes(size, order) + bytes(padding)
        return offset + (jhash(key, seed) * mod >> 32)
    return get


def _rol32(x: int, r: int) -> int:
    return (x << r | x >> (32 - r)) & 0xFFFFFFFF


_U32 = 0xFFFFFFFF


def _jhash_mix(v: list[int]) -> None:
    """__jhash_mix(a, b, c): six rounds of `x -= z; x ^= rol32(z, r); z += y`, x going a, b, c, …"""
    for i, r in enumerate((4, 6, 8, 16, 19, 4)):
        x, y, z = i % 3, (i + 1) % 3, (i + 2) % 3
        v[x] = ((v[x] - v[z]) & _U32) ^ _rol32(v[z], r)
        v[z] = (v[z] + v[y]) & _U32


def _jhash_final(v: list[int]) -> int:
    """__jhash_final(a, b, c) -> c: seven rounds of `x ^= y; x -= rol32(y, r)`, x going c, a, b, …"""
    for i, r in enumerate((14, 11, 25, 16, 4, 14, 24)):
        x = (2 + i) % 3
        y = (x + 2) % 3
        v[x] = ((v[x] ^ v[y]) - _rol32(v[y], r)) & _U32
    return v[2]


def jhash(key: bytes, initval: int) -> int:
    """include/linux/jhash.h jhash(): Bob Jenkins' lookup3 over `key`, words read little-endian
    (the CPU order of x86, where nft_jhash_eval runs)."""
    v = [(0xDEADBEEF + len(key) + initval) & _U32] * 3
    while len(key) > 12:
        _jhash_add(v, key[:12])
        _jhash_mix(v)
        key = key[12:]
    if not key:
        return v[2]
    _jhash_add(v, key.ljust(12, b"\0"))  # the tail's fall-through switch adds the bytes present
    return _jhash_final(v)


def _jhash_add(v: list[int], block: bytes) -> None:
    for i in range(3):
        v[i] = (v[i] + int.from_bytes(block[4 * i:4 * i + 4], "little")) & _U32


def _numgen(v: dict, text: str) -> Getter:
    """`numgen random|inc mod N offset K`, `symhash` and a seedless `jhash`: for one new
    connection each of the N values is as likely (random; inc counts packets, which one a
    new flow meets is as good as random; a hash keyed at random); the walk's `choose`
    picks the value of this outcome."""
    mod, offset = int(v["mod"]), int(v.get("offset", 0))
    shares, labels = (1 / mod,) * mod, tuple(f"= {offset + i}" for i in range(mod))

    def get(st):
        if st.choose is None:
            return Unknown(f"{text} picks at random for each new connection")
        return offset + st.choose(text, shares, labels)
    return get


def _numgen_match(m: dict, text: str, scope: Scope) -> Cond:
    """`numgen … mod N OP VALUE`: one fork between holding and not, with the share of the
    N values for which it holds (`numgen random mod 100 < 3` holds for 3 %)."""
    v = next(iter(m["left"].values()))
    mod, offset = int(v["mod"]), int(v.get("offset", 0))
    test = _rhs_test("int", m.get("op", "=="), m["right"], scope)
    share = sum(1 for value in range(offset, offset + mod) if test(value)) / mod

    def fn(st):
        if st.choose is None:
            return None
        return st.choose(text, (share, 1 - share), ("holds", "does not hold")) == 0

    def why(st):
        if st.choose is None:
            return f"cannot evaluate {text}: a random pick for each new connection"
        return f"{text}: random pick ({share:.0%}), not taken in this outcome"
    return Cond(text, fn, "numgen", why)


def compile_match(m: dict, scope: Scope) -> Cond:
    text = render({"match": m})
    op = m.get("op", "==")
    try:
        if isinstance(m.get("left"), dict) and ("numgen" in m["left"] or _random_hash(m["left"])):
            return _numgen_match(m, text, scope)
        kind, get, field = left_expr(m["left"], scope)
        test = _rhs_test(kind, op, m["right"], scope)
    except (KeyError, ValueError, TypeError) as exc:
        reason = f"cannot evaluate {text}: {exc}"
        return Cond(text, lambda st: None, "", lambda st: reason)

    def fn(st):
        v = get(st)
        if isinstance(v, Miss):
            return False
        if isinstance(v, Unknown):
            return None
        return test(v)

    def why(st):
        v = get(st)
        if isinstance(v, Unknown):
            return f"cannot evaluate {text}: {v.why}"
        if isinstance(v, Miss):
            return f"{text}: {v.why}"
        return f"{text}: packet has {fmt(kind, v)}"
    eq = _addr_eq(m, op, kind)
    if eq is not None:
        return AddrEqCond(text, fn, field, why, eq[0], eq[1])
    return Cond(text, fn, field, why)


def _rhs_test(kind: str, op: str, rhs, scope: Scope) -> Callable[[Any], bool]:
    is_set = (isinstance(rhs, str) and rhs.startswith("@")) or (isinstance(rhs, dict) and "set" in rhs)
    if is_set:
        es = ElementSet(kind, _elements(rhs, scope))
        if op == "!=":
            return lambda v: es.lookup(v) is None
        return lambda v: es.lookup(v) is not None
    if kind in FLAG_KINDS and (op == "in" or isinstance(rhs, list)):
        bits = flag_bits(rhs, FLAG_KINDS[kind])
        if op == "!=":
            return lambda v: (v & bits) == 0
        return lambda v: (v & bits) != 0
    if isinstance(rhs, list):  # a list on the right of a non-flag key: any of them
        es = ElementSet(kind, rhs)
        return (lambda v: es.lookup(v) is None) if op == "!=" else (lambda v: es.lookup(v) is not None)
    if op in ("<", ">", "<=", ">="):
        c = conv(kind, rhs)
        return {"<": lambda v: v < c, ">": lambda v: v > c,
                "<=": lambda v: v <= c, ">=": lambda v: v >= c}[op]
    t = _component_test(kind, rhs) if not isinstance(rhs, dict) or "prefix" in rhs or "range" in rhs \
        else (lambda c: (lambda v: v == c))(conv(kind, rhs))
    if op == "!=":
        return lambda v: not t(v)
    return t


# ------------------------------------------------------------- values

def value_expr(e: Any, scope: Scope, kind_hint: str = "int") -> Callable[[EvalState], Any]:
    """A statement's value: returns an int/str, a tuple (concat), Miss or Unknown."""
    if isinstance(e, (int, str)) and not (isinstance(e, str) and e.startswith("@")):
        try:
            c = conv(kind_hint, e)
        except (ValueError, TypeError):
            c = e
        return lambda st: c
    if isinstance(e, dict) and e:
        k, v = next(iter(e.items()))
        if k in ("meta", "ct", "payload", "fib", "numgen", "jhash", "symhash"):
            _, get, _ = left_expr(e, scope)
            return get
        if k in ("&", "|", "^", ">>", "<<"):
            a = value_expr(v[0], scope, kind_hint)
            b = value_expr(v[1], scope, kind_hint)
            f = {"&": lambda x, y: x & y, "|": lambda x, y: x | y, "^": lambda x, y: x ^ y,
                 ">>": lambda x, y: x >> y, "<<": lambda x, y: x << y}[k]

            def get(st):
                x, y = a(st), b(st)
                for z in (x, y):
                    if isinstance(z, (Miss, Unknown)):
                        return z
                return f(x, y)
            return get
        if k == "map":
            kind, key_get, _ = left_expr(v["key"], scope)
            pairs = _elements(v["data"], scope)
            keys = [p[0] if isinstance(p, list) else _unwrap(p) for p in pairs]
            vals = [p[1] if isinstance(p, list) else None for p in pairs]
            es = ElementSet(kind, keys, vals)
            text = render(e)

            def get(st):
                x = key_get(st)
                if isinstance(x, (Miss, Unknown)):
                    return x
                r = es.lookup(x)
                if r is None:
                    return Miss(f"{text}: no element for the packet")
                if isinstance(r, dict) and "concat" in r:
                    return tuple(r["concat"])
                try:
                    return conv(kind_hint, r)
                except (ValueError, TypeError):
                    return r
            return get
    text = render(e)
    return _const_unknown(f"cannot evaluate {text}")


# ------------------------------------------------------------- statements

def _setter(kind: str, text: str, attr: str, label: str, get, need_ct: bool, mask: int) -> Stmt:
    """A statement that stores a computed value into one EvalState field."""
    def apply(st):
        if need_ct and (st.untracked or not st.ct_attached):
            # nft_ct_set_eval returns without NFT_BREAK: the rule goes on
            why = "the packet is untracked" if st.untracked else "conntrack has not run yet"
            return f"{label} set: no effect, {why}"
        x = get(st)
        if isinstance(x, (Miss, Unknown)):
            return x
        setattr(st, attr, x & mask)
        return f"{label} set {x & mask:#x}"
    return Stmt(kind, text, apply)


def _mangle(v: dict, scope: Scope) -> Stmt:
    key = v["key"]
    text = render({"mangle": v})
    kk, kv = next(iter(key.items()))
    if kk == "meta" and kv["key"] == "mark":
        return _setter("mark", text, "mark", "mark", value_expr(v["value"], scope, "mark"), False, 0xFFFFFFFF)
    if kk == "ct" and kv["key"] == "mark" and not kv.get("dir"):
        return _setter("ctmark", text, "ct_mark", "ct mark", value_expr(v["value"], scope, "mark"), True, 0xFFFFFFFF)
    if kk == "meta" and kv["key"] == "nftrace":
        def apply(st):
            st.nftrace = True
            return "nftrace set 1"
        return Stmt("nftrace", text, apply)
    if kk == "tcp option" and kv.get("name") == "maxseg":
        val = v["value"]
        mss = "pmtu" if isinstance(val, dict) and "rt" in val else str(render(val))
        return Stmt("tcpmss", text, lambda st: f"TCP MSS clamp ({mss})", mss=mss)
    if kk == "payload" and kv.get("field") == "dscp":
        return _setter("dscp", text, "dscp", "dscp", value_expr(v["value"], scope, "dscp"), False, 0x3F)
    if kk == "payload" and kv.get("field") in ("saddr", "daddr", "sport", "dport"):
        return Stmt("unknown", text, lambda st: Unknown(f"stateless rewrite {text} not modelled"))
    return Stmt("other", text, lambda st: text)


def _nat(kind: str, v: dict | None, scope: Scope, family: str | None) -> Stmt:
    v = v or {}
    text = render({kind: v or None})
    addr = v.get("addr")
    port = v.get("port")
    addr_text = port_text = None
    addr_fn = None
    if isinstance(addr, dict) and ("map" in addr):
        addr_fn = value_expr(addr, scope, "string")
    elif addr is not None:
        addr_text = render(addr)
    if port is not None:
        port_text = render(port)
    flags = v.get("flags") or ()
    flags = (flags,) if isinstance(flags, str) else flags
    random_port = any(f in ("random", "fully-random") for f in flags)
    spec = NatSpec(kind, addr_text, port_text, v.get("family") or family, addr_fn, random_port)
    return Stmt("nat", text, None, nat=spec)


def compile_item(x: dict, scope: Scope, family: str) -> Cond | Stmt | Verdict:
    k, v = next(iter(x.items()))
    if k == "match":
        return compile_match(v, scope)
    if k in ("accept", "drop", "continue", "return"):
        return Verdict(k, None, k)
    if k in ("jump", "goto"):
        return Verdict(k, v["target"], f"{k} {v['target']}")
    if k == "reject":
        detail = ""
        if v:
            detail = " with " + " ".join(str(v.get(f)) for f in ("type", "expr") if v.get(f))
        return Verdict("reject", None, "reject" + detail)
    if k == "queue":
        return Verdict("queue", None, "queue" + (f" num {render(v.get('num'))}" if v and "num" in v else ""))
    if k == "vmap":
        return _vmap(v, scope, family)
    if k == "counter":
        return Stmt("counter", "counter")
    if k == "log":
        return Stmt("log", "log" + (f' prefix "{v.get("prefix")}"' if v and v.get("prefix") else ""),
                    lambda st: "logged")
    if k == "notrack":
        def apply(st):
            st.untracked = True
            return "notrack: conntrack will not track this packet"
        return Stmt("notrack", "notrack", apply)
    if k == "mangle":
        return _mangle(v, scope)
    if k in ("snat", "dnat", "masquerade", "redirect"):
        return _nat(k, v, scope, family)
    if k in COND_STATEMENTS:
        text = f"{k} {render(v) if not isinstance(v, dict) else ''}".strip()
        reason = f"cannot evaluate {k}: depends on state outside the packet"
        return Cond(text, lambda st: None, k, lambda st: reason)
    if k == "xt":
        name = v.get("name")
        if v.get("type") == "match":
            reason = f"cannot evaluate iptables match -m {name}: its parameters are not in nft's JSON"
            return Cond(f"xt match {name}", lambda st: None, f"xt {name}", lambda st: reason)
        if v.get("type") == "target":
            return Stmt("unknown", f"xt target {name}",
                        lambda st: Unknown(f"iptables target {name}: parameters unknown"))
        return Stmt("other", f"xt {v.get('type')} {name}")
    if k == "flow":
        return Stmt("other", f"flow add {v.get('flowtable')}",
                    lambda st: "flow offload: later packets of this connection bypass the hooks")
    if k in ("set", "map") and isinstance(v, dict) and "op" in v:
        return Stmt("other", f"{v.get('op')} {v.get('set') or v.get('map')}", lambda st: "set updated")
    if k in ("dup", "ct helper", "ct timeout", "ct expectation", "secmark", "tproxy"):
        return Stmt("other", k, lambda st: k)
    if k == "fwd":
        return Verdict("unknown", None, "fwd")
    text = render(x)
    return Stmt("unknown", text, lambda st: Unknown(f"statement {k} not modelled"))


def compile_verdict_json(x: Any) -> Verdict:
    if isinstance(x, dict) and x:
        k, v = next(iter(x.items()))
        if k in ("jump", "goto"):
            return Verdict(k, v["target"], f"{k} {v['target']}")
        if k in ("accept", "drop", "continue", "return", "queue"):
            return Verdict(k, None, k)
    if isinstance(x, str) and x in ("accept", "drop", "continue", "return"):
        return Verdict(x, None, x)
    return Verdict("unknown", None, render(x))


def _vmap(v: dict, scope: Scope, family: str) -> Verdict:
    kind, key_get, _ = left_expr(v["key"], scope)
    pairs = _elements(v["data"], scope)
    keys = [p[0] for p in pairs]
    vals = [compile_verdict_json(p[1]) for p in pairs]
    es = ElementSet(kind, keys, vals)
    text = render({"vmap": v})
    targets = tuple(dict.fromkeys(x.target for x in vals if x.kind in ("jump", "goto")))

    def lookup(st):
        x = key_get(st)
        if isinstance(x, (Miss, Unknown)):
            return x
        r = es.lookup(x)
        return r if r is not None else Miss(f"{text}: no element for {fmt(kind, x)}")
    return Verdict("vmap", None, text, lookup, targets)


def _implicit_tcp_dependency() -> Cond:
    """`reject with tcp reset` only works on TCP: nft puts `meta l4proto tcp` first
    in the rule's bytecode, and its listing may omit it (a bare `reject with tcp reset`)."""
    text = "meta l4proto tcp (implied by reject with tcp reset)"

    def fn(st):
        return None if st.proto is None else st.proto == 6

    def why(st):
        if st.proto is None:
            return f"cannot evaluate {text}: protocol not known"
        return f"{text}: packet has {fmt('inet_proto', st.proto)}"
    return Cond(text, fn, "meta l4proto", why)


_IMPLICIT_TCP = _implicit_tcp_dependency()


def _requires_tcp(item) -> bool:
    return isinstance(item, Cond) and (item.text in ("meta l4proto tcp", "ip protocol tcp", "ip6 nexthdr tcp")
                                       or item.field.startswith("tcp "))


def compile_nft_rule(rj: dict, scope: Scope, family: str, text: str | None) -> Rule:
    items = []
    counters = None
    for x in rj.get("expr") or []:
        try:
            item = compile_item(x, scope, family)
        except (KeyError, ValueError, TypeError, StopIteration) as exc:
            t = render(x)
            item = Stmt("unknown", t, (lambda why: (lambda st: Unknown(why)))(f"cannot evaluate {t}: {exc}"))
        if isinstance(x, dict) and "counter" in x and isinstance(x["counter"], dict):
            counters = {"packets": x["counter"].get("packets", 0), "bytes": x["counter"].get("bytes", 0)}
        if isinstance(x, dict) and (x.get("reject") or {}).get("type") == "tcp reset" \
                and not any(_requires_tcp(i) for i in items):
            items.insert(0, _IMPLICIT_TCP)
        items.append(item)
    if text is None:
        text = " ".join(render(x) for x in rj.get("expr") or [])
    return Rule(rj.get("handle"), text, tuple(items), counters, rj.get("handle"))


# ------------------------------------------------------- nft text listing

_HANDLE = re.compile(r"\s*# handle (\d+)\s*$")
_TABLE = re.compile(r"^table (\S+) (\S+) \{")
_CHAIN = re.compile(r"^\s*chain (\S+) \{")


def nft_text_index(text: str | None) -> dict[tuple[str, str, str, int], str]:
    """(family, table, chain, handle) -> rule text as nft prints it (without the handle comment)."""
    out: dict = {}
    if not text:
        return out
    family = table = chain = None
    buf = ""
    for line in text.splitlines():
        m = _TABLE.match(line)
        if m:
            family, table, chain = m.group(1), m.group(2).strip('"'), None
            continue
        if table is None:
            continue
        m = _CHAIN.match(line)
        if m and chain is None:
            chain, buf = m.group(1).strip('"'), ""
            continue
        if chain is None:
            if line.startswith("}"):
                table = None
            continue
        s = line.strip()
        if s == "}" and not buf:
            chain = None
            continue
        h = _HANDLE.search(line)
        if h:
            body = (buf + " " + line[: h.start()].strip()).strip()
            out[(family, table, chain, int(h.group(1)))] = body
            buf = ""
        elif s and not s.startswith(("type ", "policy ", "comment ", "devices ")):
            buf = (buf + " " + s).strip()
    return out


# --------------------------------------- xt targets recovered from nft text

_MARK_XOR = re.compile(r"meta mark set mark and (0x[0-9a-f]+) xor (0x[0-9a-f]+)")
_MARK_SET = re.compile(r"meta mark set (0x[0-9a-f]+|\d+)(?:\s|$)")


def xt_target_from_text(name: str, text: str) -> list:
    """Items for an iptables-nft target whose parameters only the nft text shows."""
    def nat(kind, pattern):
        m = re.search(pattern, text)
        if not m:
            return None
        to = m.group(1) if m.groups() else None
        addr, port = _split_hostport(to) if to else (None, None)
        random_port = re.match(r"\s+(fully-)?random\b", text[m.end():]) is not None  # nat flags follow
        return [Stmt("nat", f"{kind} {to or ''}".strip(), None,
                     nat=NatSpec(kind, addr, port, random_port=random_port))]
    if name == "SNAT":
        r = nat("snat", r"snat (?:ip6? )?to (\S+)")
    elif name == "DNAT":
        r = nat("dnat", r"dnat (?:ip6? )?to (\S+)")
    elif name == "MASQUERADE":
        r = nat("masquerade", r"masquerade(?: to :(\S+))?")
        if r and r[0].nat.addr:  # "to :port"
            r = [Stmt("nat", r[0].text, None, nat=dataclasses.replace(r[0].nat, addr=None, port=r[0].nat.addr))]
    elif name == "REDIRECT":
        r = nat("redirect", r"redirect(?: to :(\S+))?")
        if r and r[0].nat.addr:
            r = [Stmt("nat", r[0].text, None, nat=dataclasses.replace(r[0].nat, addr=None, port=r[0].nat.addr))]
    elif name == "TCPMSS":
        m = re.search(r"tcp option maxseg size set (rt mtu|\d+)", text)
        mss = "pmtu" if not m or m.group(1) == "rt mtu" else m.group(1)
        r = [Stmt("tcpmss", f"TCPMSS {mss}", lambda st: f"TCP MSS clamp ({mss})", mss=mss)]
    elif name == "MARK":
        m = _MARK_XOR.search(text)
        if m:
            keep, xor = int(m.group(1), 16), int(m.group(2), 16)

            def apply(st):
                st.mark = (st.mark & keep) ^ xor
                return f"mark set {st.mark:#x}"
            r = [Stmt("mark", m.group(0), apply)]
        elif _MARK_SET.search(text):
            val = int(_MARK_SET.search(text).group(1), 0)

            def apply(st):
                st.mark = val
                return f"mark set {val:#x}"
            r = [Stmt("mark", f"meta mark set {val:#x}", apply)]
        else:
            r = None
    elif name == "CONNMARK" and ("meta mark set ct mark" in text or "ct mark set mark" in text):
        to_ct = "ct mark set mark" in text

        def apply(st):
            if st.untracked or not st.ct_attached:
                return "no conntrack entry: nothing copied"  # xt_connmark: XT_CONTINUE
            if to_ct:
                st.ct_mark = st.mark
                return f"ct mark set {st.ct_mark:#x}"
            st.mark = st.ct_mark
            return f"mark set {st.mark:#x} (from ct mark)"
        r = [Stmt("ctmark" if to_ct else "mark", "ct mark set mark" if to_ct else "meta mark set ct mark", apply)]
    elif name in ("LOG", "NFLOG"):
        r = [Stmt("log", "log", lambda st: "logged")]
    elif name == "TRACE":
        def apply(st):
            st.nftrace = True
            return "nftrace set 1"
        r = [Stmt("nftrace", "meta nftrace set 1", apply)]
    elif name == "REJECT":
        r = [Verdict("reject", None, "reject")]
    else:
        r = None
    if r is None:
        return [Stmt("unknown", f"xt target {name}", lambda st: Unknown(f"iptables target {name}: parameters unknown"))]
    return r


def _split_hostport(to: str) -> tuple[str | None, str | None]:
    """'1.2.3.4:80' / '[2001:db8::1]:80' / '1.2.3.4-1.2.3.9' / ':3128' -> (addr, port)."""
    if to.startswith("["):
        addr, _, rest = to[1:].partition("]")
        return addr or None, rest[1:] or None if rest.startswith(":") else None
    if to.count(":") == 1:
        addr, port = to.split(":")
        return addr or None, port or None
    return to or None, None


__all__ = ["Scope", "compile_nft_rule", "nft_text_index", "xt_target_from_text", "render",
           "ElementSet", "AddrEqCond", "conv", "fmt", "left_expr", "value_expr", "IPPROTO", "FIB_TYPES"]
