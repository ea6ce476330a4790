"""iptables-save text -> tables, chains and compiled rules (iptables semantics).

Used for iptables-legacy tables, and for iptables-nft tables so that users
see `-A POSTROUTING -o ppp0 -j SNAT --to-source 1.2.3.4` with its rule
number (nft's JSON drops xt parameters; iptables-save keeps them).
"""

from __future__ import annotations

import ipaddress
import re
import shlex
from dataclasses import dataclass, field

from tracer.sim.nft_expr import AddrEqCond
from tracer.sim.nft_model import (
    CT_STATE_BITS, DSCP, ICMP_TYPE_CODES, ICMP_TYPES, ICMPV6_TYPES, IPPROTO, IPPROTO_NAMES,
    TCP_FLAGS, Cond, NatSpec, Rule, Stmt, Unknown, Verdict, parse_int,
)

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
        if mod == "set":
            return _unknown(full, "ipset contents are not collected")
    except (ValueError, KeyError, IndexError) as exc:
        return _unknown(full, str(exc))
    return _unknown(full, f"match -m {mod} {opt} not modelled")


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
    if name in ("SNAT", "DNAT"):
        to = (opts.get("--to-source") or opts.get("--to-destination") or [None])[0]
        addr, port = _split_to(to)
        return [Stmt("nat", t, None, nat=NatSpec(name.lower(), addr, port, family))]
    if name in ("MASQUERADE", "REDIRECT"):
        port = (opts.get("--to-ports") or [None])[0]
        return [Stmt("nat", t, None, nat=NatSpec(name.lower(), None, port and port.replace(":", "-"), family))]
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


def compile_saved_rule(r: SavedRule, family: str, user_chains: frozenset = frozenset()) -> Rule:
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


def compile_saved_chain_rules(chains: dict[str, SavedChain], family: str) -> dict[str, tuple[Rule, ...]]:
    """Compiled rules per chain; `-j NAME` is a jump when NAME is a chain of the table."""
    user = frozenset(n for n, c in chains.items() if c.policy is None and n not in BUILTIN)
    return {n: tuple(compile_saved_rule(r, family, user) for r in c.rules) for n, c in chains.items()}
