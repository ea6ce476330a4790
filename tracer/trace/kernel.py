"""The BPF side of a trace: compile probes/*.c with BCC, with struct offsets from the running
kernel's BTF as constants; fill the filter (`Config`, the mirror of probes/common.h's struct
config); create BPF netfilter links with the bpf(2) syscall; read the ring of flow records.

BCC compiles against the installed kernel headers only for its own helper definitions: no probe
reads a kernel struct through a header (Debian's 6.1 headers do not match newer kernels), and
nothing is written under /lib/modules (BCC_KERNEL_SOURCE points at the headers' tree).
"""

from __future__ import annotations

import bisect
import ctypes
import errno
import functools
import glob
import ipaddress
import mmap
import os
import socket
import struct
from pathlib import Path

from tracer.errors import EnvironmentProblem
from tracer.trace.btf import KernelFacts

PROBES_DIR = Path(__file__).resolve().parents[2] / "probes"
BPF_PROG_TYPE_NETFILTER = 32
BPF_NETFILTER = 45  # attach type
BPF_LINK_CREATE = 28
BPF_PROG_LOAD, BPF_RAW_TRACEPOINT_OPEN = 5, 17
BPF_PROG_TYPE_TRACING, BPF_TRACE_RAW_TP, BPF_TRACE_FENTRY = 26, 23, 24  # tp_btf, fentry: type, attach types
NFPROTO_IPV4, NFPROTO_IPV6 = 2, 10
NF_FAMILIES = {"IPv4": NFPROTO_IPV4, "IPv6": NFPROTO_IPV6}
NF_HOOKS = {"prerouting": 0, "input": 1, "forward": 2, "output": 3, "postrouting": 4}
# INT_MIN and INT_MAX are refused (ERANGE): the first and last priorities a BPF link may take.
PRIORITY_FIRST = -(2**31) + 1
PRIORITY_LAST = 2**31 - 2
_SYS_BPF = 321  # x86_64

# (macro, struct, member path)
OFFSETS = (
    ("OFF_SKB_HEAD", "sk_buff", "head"),
    ("OFF_SKB_NETWORK_HEADER", "sk_buff", "network_header"),
    ("OFF_SKB_MARK", "sk_buff", "mark"),
    ("OFF_SKB_NFCT", "sk_buff", "_nfct"),
    ("OFF_SKB_DEV", "sk_buff", "dev"),
    ("OFF_DEV_ND_NET", "net_device", "nd_net"),
    ("OFF_DEV_IFINDEX", "net_device", "ifindex"),
    ("OFF_NET_INUM", "net", "ns.inum"),
    ("OFF_TASK_NSPROXY", "task_struct", "nsproxy"),
    ("OFF_NSPROXY_NET", "nsproxy", "net_ns"),
    ("OFF_STATE_HOOK", "nf_hook_state", "hook"),
    ("OFF_STATE_IN", "nf_hook_state", "in"),
    ("OFF_STATE_OUT", "nf_hook_state", "out"),
    ("OFF_STATE_NET", "nf_hook_state", "net"),
    ("OFF_CT_TUPLEHASH", "nf_conn", "tuplehash"),
    ("OFF_CT_STATUS", "nf_conn", "status"),
    ("OFF_TUPLEHASH_TUPLE", "nf_conntrack_tuple_hash", "tuple"),
    ("OFF_TUPLE_SRC_U3", "nf_conntrack_tuple", "src.u3"),
    ("OFF_TUPLE_SRC_U", "nf_conntrack_tuple", "src.u"),
    ("OFF_TUPLE_DST_U3", "nf_conntrack_tuple", "dst.u3"),
    ("OFF_TUPLE_DST_U", "nf_conntrack_tuple", "dst.u"),
    ("OFF_TUPLE_DST_PROTONUM", "nf_conntrack_tuple", "dst.protonum"),
    ("OFF_TB_ID", "fib_table", "tb_id"),
    ("OFF_FL4_SADDR", "flowi4", "saddr"),
    ("OFF_FL4_DADDR", "flowi4", "daddr"),
    ("OFF_FL4_IIF", "flowi4", "__fl_common.flowic_iif"),
    ("OFF_FL4_MARK", "flowi4", "__fl_common.flowic_mark"),
    ("OFF_NHC_DEV", "fib_nh_common", "nhc_dev"),
    ("OFF_NHC_GW", "fib_nh_common", "nhc_gw"),
    ("OFF_NHC_GW_FAMILY", "fib_nh_common", "nhc_gw_family"),
)
# Only when probes/fib6.c is compiled in (a kernel without IPv6 has none of these).
FIB6_OFFSETS = (
    ("OFF_FL6_DADDR", "flowi6", "daddr"),
    ("OFF_FL6_SADDR", "flowi6", "saddr"),
    ("OFF_FL6_IIF", "flowi6", "__fl_common.flowic_iif"),
    ("OFF_FL6_MARK", "flowi6", "__fl_common.flowic_mark"),
    ("OFF_TB6_ID", "fib6_table", "tb6_id"),
    ("OFF_RES6_F6I", "fib6_result", "f6i"),
    ("OFF_RES6_NH", "fib6_result", "nh"),
    ("OFF_RES6_TYPE", "fib6_result", "fib6_type"),
    ("OFF_NET_FIB6_NULL_ENTRY", "net", "ipv6.fib6_null_entry"),
    ("OFF_NH6_DEV", "fib6_nh", "nh_common.nhc_dev"),
    ("OFF_NH6_GW", "fib6_nh", "nh_common.nhc_gw"),
    ("OFF_NH6_GW_FAMILY", "fib6_nh", "nh_common.nhc_gw_family"),
)
# Only when probes/fib_rule.c is compiled in.
RULE_OFFSETS = (
    ("OFF_RULE_PREF", "fib_rule", "pref"),
    ("OFF_RULE_TABLE", "fib_rule", "table"),
)


class KernelError(EnvironmentProblem):
    """A probe could not be compiled, loaded or attached; the message says why in plain words
    (exit status 3 when it reaches the command line)."""


# ------------------------------------------------------------------ mirrors of probes/common.h

_Address = ctypes.c_uint8 * 16  # network order; IPv4 in the first 4 bytes, the rest zero


class Config(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint32), ("netns", ctypes.c_uint32), ("saddr", _Address), ("daddr", _Address),
                ("iif", ctypes.c_uint32), ("sport", ctypes.c_uint16), ("dport", ctypes.c_uint16),
                ("proto", ctypes.c_uint8), ("family", ctypes.c_uint8), ("pad", ctypes.c_uint8 * 2)]


F_NETNS, F_SRC, F_DST, F_PROTO, F_SPORT, F_DPORT, F_IIF, F_FAMILY = (1 << i for i in range(8))
F_READY = 1 << 31  # the filter is written: until then the probes report nothing


class _Key(ctypes.Structure):
    _fields_ = [("netns", ctypes.c_uint32), ("saddr", _Address), ("daddr", _Address), ("sport", ctypes.c_uint16),
                ("dport", ctypes.c_uint16), ("proto", ctypes.c_uint8), ("family", ctypes.c_uint8),
                ("pad", ctypes.c_uint8 * 2)]


class _Tuple(ctypes.Structure):
    _fields_ = [("saddr", _Address), ("daddr", _Address), ("sport", ctypes.c_uint16), ("dport", ctypes.c_uint16)]


class _HookPosition(ctypes.Structure):
    _fields_ = [("pkt", _Tuple), ("in_ifindex", ctypes.c_uint32), ("out_ifindex", ctypes.c_uint32),
                ("mark", ctypes.c_uint32)]


class _Lookup(ctypes.Structure):
    _fields_ = [("flowi", ctypes.c_uint64), ("table", ctypes.c_uint32), ("err", ctypes.c_int32),
                ("in_ifindex", ctypes.c_uint32), ("out_ifindex", ctypes.c_uint32), ("mark", ctypes.c_uint32),
                ("cpu", ctypes.c_uint32), ("saddr", _Address), ("daddr", _Address), ("gw", _Address),
                ("gw_family", ctypes.c_uint8), ("reverse", ctypes.c_uint8), ("rule_known", ctypes.c_uint8),
                ("pad", ctypes.c_uint8), ("rule_pref", ctypes.c_uint32)]


POSITIONS, LOOKUPS_MAX = 10, 8
KIND_FLOW, KIND_REPLY, KIND_REPLY_DROP, KIND_ICMP_ERROR, KIND_PATH_CHANGE, KIND_LATER_DROP = 1, 4, 5, 6, 7, 8


class RawRecord(ctypes.Structure):
    """struct flowrec: a flow's first packet, every hook position and table lookup of it."""

    _fields_ = [("ts", ctypes.c_uint64), ("location", ctypes.c_uint64), ("kind", ctypes.c_uint32),
                ("cpu", ctypes.c_uint32), ("key", _Key), ("seen", ctypes.c_uint32), ("ct_status", ctypes.c_uint32),
                ("orig", _Tuple), ("reply", _Tuple), ("reason", ctypes.c_uint32), ("drop_ifindex", ctypes.c_uint32),
                ("has_ct", ctypes.c_uint8), ("nlookups", ctypes.c_uint8), ("complete", ctypes.c_uint8),
                ("npositions", ctypes.c_uint8), ("order", ctypes.c_uint8 * POSITIONS), ("pad", ctypes.c_uint8 * 2),
                ("hooks", _HookPosition * POSITIONS), ("lookups", _Lookup * LOOKUPS_MAX)]


class RawNote(ctypes.Structure):
    """struct note: a change about a flow (its first reply, a reply dropped, an ICMP error about it,
    a later packet leaving by another device, or dropped)."""

    _fields_ = [("ts", ctypes.c_uint64), ("location", ctypes.c_uint64), ("kind", ctypes.c_uint32),
                ("cpu", ctypes.c_uint32), ("key", _Key), ("hook", ctypes.c_uint32), ("reason", ctypes.c_uint32),
                ("ifindex", ctypes.c_uint32), ("from_", _Address), ("icmp_type", ctypes.c_uint8),
                ("icmp_code", ctypes.c_uint8), ("icmp_error", ctypes.c_uint8), ("after", ctypes.c_uint8),
                ("mark", ctypes.c_uint32)]


KIND_OFFSET = RawRecord.kind.offset  # the same in both

# struct flowrec as `struct` formats: a record is decoded with a few unpacks, where reading it through
# the ctypes mirror costs a microsecond or so a field (tens of thousands of records a second). The
# mirror stays the reference: the formats are checked against its layout here.
RECORD_HEAD = struct.Struct("=QQII I16s16sHHBB2x II 16s16sHH 16s16sHH II BBBB10s2x")  # spaced by part
HOOK_POSITION = struct.Struct("=16s16sHHIII")
LOOKUP = struct.Struct("=QIiIIII16s16s16sBBBxI")
HOOKS_OFFSET, LOOKUPS_OFFSET = RawRecord.hooks.offset, RawRecord.lookups.offset
if (RECORD_HEAD.size, HOOK_POSITION.size, LOOKUP.size) != (HOOKS_OFFSET, ctypes.sizeof(_HookPosition),
                                                          ctypes.sizeof(_Lookup)):
    raise AssertionError("the struct formats of struct flowrec differ from its ctypes mirror")


class Ring:
    """The BPF ring buffer read through its own mmap (as libbpf's consumer does): each read() copies
    out every committed record at once, with no callback per record (BCC's reader calls back into
    Python for each, which needs the GIL each time). x86-64 loads and stores are ordered enough for
    the producer/consumer positions (libbpf uses plain ones there too)."""

    BUSY, DISCARD, HEADER = 1 << 31, 1 << 30, 8

    def __init__(self, map_fd: int, size: int):
        page = mmap.PAGESIZE
        self.size, self.page = size, page
        self._consumer = mmap.mmap(map_fd, page, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE, offset=0)
        self._data = mmap.mmap(map_fd, page + 2 * size, mmap.MAP_SHARED, mmap.PROT_READ, offset=page)

    def read(self) -> list[bytes]:
        """Every record committed since the last read, in order (stops at one still being written)."""
        (consumer,) = _U64.unpack_from(self._consumer, 0)
        (producer,) = _U64.unpack_from(self._data, 0)
        records, data, mask, base = [], self._data, self.size - 1, self.page
        while consumer < producer:
            at = base + (consumer & mask)
            (length,) = _U32.unpack_from(data, at)
            if length & self.BUSY:
                break
            size = length & ~(self.BUSY | self.DISCARD)
            if not length & self.DISCARD:
                records.append(data[at + self.HEADER:at + self.HEADER + size])  # mapped twice: never wraps
            consumer += (self.HEADER + size + 7) & ~7
        _U64.pack_into(self._consumer, 0, consumer)
        return records

    def close(self) -> None:
        self._consumer.close()
        self._data.close()


_U64, _U32 = struct.Struct("=Q"), struct.Struct("=I")


def address_bytes(text: str) -> _Address:
    """An address as the probes keep it: 16 bytes in network order, IPv4 in the first four."""
    packed = ipaddress.ip_address(text).packed
    return _Address(*packed.ljust(16, b"\0"))


def address_text(raw, family: int) -> str:
    """The text of a probe's address (family 4 or 6)."""
    return _address_text(bytes(raw), family)


_TEXTS: dict[int, dict[bytes, str]] = {4: {}, 6: {}}


def packed_text(packed: bytes, family: int) -> str:
    """address_text of a probe's 16 address bytes, remembered (the router's own addresses recur in
    every record), without lru_cache's cost per call."""
    texts = _TEXTS[family]
    text = texts.get(packed)
    if text is None:
        if len(texts) >= 65536:
            texts.clear()
        text = texts[packed] = socket.inet_ntoa(packed[:4]) if family == 4 else str(ipaddress.IPv6Address(packed))
    return text


@functools.lru_cache(maxsize=65536)  # a flow's addresses recur in each of its events
def _address_text(packed: bytes, family: int) -> str:
    return str(ipaddress.IPv4Address(packed[:4]) if family == 4 else ipaddress.IPv6Address(packed))


# ------------------------------------------------------------------ kernel addresses

class KernelSymbols:
    """Kernel text addresses → `function+0xoffset`, from /proc/kallsyms (read once, when the first
    address is asked for: a drop's location). Without root the addresses read as zero: None."""

    def __init__(self, path: Path = Path("/proc/kallsyms")):
        self.path = path
        self._starts: list[int] | None = None
        self._names: list[str] = []

    def _load(self) -> None:
        symbols = []
        try:
            with open(self.path) as lines:
                for line in lines:
                    address, kind, name = line.split()[:3]
                    if kind in "tT":
                        symbols.append((int(address, 16), name))
        except OSError:
            pass
        symbols.sort()
        self._starts = [address for address, _name in symbols]
        self._names = [name for _address, name in symbols]

    def name(self, address: int) -> str | None:
        if self._starts is None:
            self._load()
        i = bisect.bisect_right(self._starts, address) - 1
        if i < 0 or not self._starts[i]:
            return None
        return f"{self._names[i]}+{address - self._starts[i]:#x}"


# ------------------------------------------------------------------ compiling

def header_flags() -> tuple[dict[str, str], list[str]]:
    """BCC's environment and include flags for the installed headers (BCC needs some kernel
    headers for its helper definitions; which ones does not matter: no struct is read through them)."""
    builds = sorted(glob.glob("/usr/src/linux-headers-*-amd64")) or sorted(glob.glob("/usr/src/linux-headers-*"))
    commons = sorted(glob.glob("/usr/src/linux-headers-*-common"))
    if not builds:
        raise KernelError("no kernel headers under /usr/src (BCC needs them for its helpers): "
                          "install linux-headers-amd64")
    build = builds[-1]
    common = commons[-1] if commons else build
    flags = [f"-I{build}/arch/x86/include/generated", f"-I{build}/include",
             f"-I{build}/arch/x86/include/generated/uapi", f"-I{build}/include/generated/uapi"]
    autoconf = Path(build) / "include/generated/autoconf.h"
    if autoconf.exists():
        flags += ["-include", str(autoconf)]
    return {"BCC_KERNEL_SOURCE": common}, flags


def offset_defines(btf: KernelFacts, parts: list[str]) -> list[str]:
    offsets = OFFSETS + (FIB6_OFFSETS if "fib6.c" in parts else ()) + (RULE_OFFSETS if "fib_rule.c" in parts else ())
    defines = [f"-D{macro}={btf.offset(struct, path)}" for macro, struct, path in offsets]
    defines.append(f"-DSIZE_TUPLEHASH={btf.size('nf_conntrack_tuple_hash')}")
    defines.append(f"-DSIZE_TUPLE={btf.size('nf_conntrack_tuple')}")
    reasons = btf.enum("skb_drop_reason")
    # fib_table_lookup's first argument: the table (older kernels) or its id (newer ones).
    if btf.has_typedef("btf_trace_fib_table_lookup") and btf.tracepoint_args("fib_table_lookup")[0] == "int":
        defines.append("-DWR_FIB_TB_IS_ID=1")
    defines.append(f"-DWR_REASON_NOT_DROPPED_MAX={reasons.get('SKB_CONSUMED', 1)}")
    return defines


def probe_source(parts: list[str]) -> str:
    """probes/common.h followed by the enabled parts, as one translation unit: BCC rewrites map
    calls only in its main file, so the parts cannot be #included."""
    return "\n".join((PROBES_DIR / name).read_text() for name in ("common.h", *parts))


TRACEPOINTS = {"fib.c": "fib_table_lookup", "fib6.c": "fib6_table_lookup", "drop.c": "kfree_skb"}


class Probes:
    """The compiled probes: BCC's object (its maps by name, `load_func`) and each tracepoint probe
    loaded — as a tp_btf program (its fd, linked by attach_tracepoint) or, raw, attached by BCC — so
    that the verifier's work is done while the host's state is collected."""

    def __init__(self, bpf, tp_btf: bool, parts: tuple[str, ...] = ()):
        self.bpf, self.tp_btf, self.parts = bpf, tp_btf, parts
        self.programs: dict[str, int] = {}  # tracepoint -> tp_btf program fd

    def __getitem__(self, name: str):
        return self.bpf[name]

    def load_func(self, *args, **kwargs):
        return self.bpf.load_func(*args, **kwargs)

    def cleanup(self) -> None:
        for fd in self.programs.values():
            os.close(fd)
        self.programs.clear()
        self.bpf.cleanup()


def compile_probes(parts: list[str], btf: KernelFacts, *, tp_btf: bool = True) -> Probes:
    """The parts (netfilter.c, fib.c, fib6.c, drop.c, fib_rule.c) compiled in one BCC object, their tracepoint
    probes built as tp_btf programs or as raw tracepoints, and loaded."""
    import bcc  # heavy; only here

    env, flags = header_flags()
    os.environ.update(env)
    cflags = [*flags, *offset_defines(btf, parts), f"-DWR_TP_BTF={int(tp_btf)}"]
    try:
        probes = Probes(bcc.BPF(text=probe_source(parts).encode(), cflags=cflags), tp_btf, tuple(parts))
    except Exception as error:  # noqa: BLE001 - BCC raises bare Exception for compile and load errors
        raise KernelError(f"compiling/loading the probes failed: {error}") from None
    try:
        for part in parts:
            if part in TRACEPOINTS:
                _load_tracepoint(probes, TRACEPOINTS[part], btf)
    except BaseException:
        probes.cleanup()
        raise
    return probes


def _load_tracepoint(probes: Probes, tracepoint: str, btf: KernelFacts) -> None:
    name = f"wr_tp__{tracepoint}"
    if not probes.tp_btf:
        probes.bpf.attach_raw_tracepoint(tp=tracepoint.encode(), fn_name=name.encode())
        return
    try:
        probes.programs[tracepoint] = _tracing_program(probes.bpf.dump_func(name.encode()), f"wr_{tracepoint}",
                                                      btf.typedef_id(f"btf_trace_{tracepoint}"))
    except OSError as error:
        raise KernelError(f"the kernel refused the tp_btf program on {tracepoint} ({error.strerror}); "
                          "--without tp_btf builds raw tracepoints") from None


# ------------------------------------------------------------------ tracepoints

class _ProgLoad(ctypes.Structure):
    """union bpf_attr for BPF_PROG_LOAD, up to attach_btf_id (the rest zero)."""

    _fields_ = [("prog_type", ctypes.c_uint32), ("insn_cnt", ctypes.c_uint32), ("insns", ctypes.c_uint64),
                ("license", ctypes.c_uint64), ("log_level", ctypes.c_uint32), ("log_size", ctypes.c_uint32),
                ("log_buf", ctypes.c_uint64), ("kern_version", ctypes.c_uint32), ("prog_flags", ctypes.c_uint32),
                ("prog_name", ctypes.c_char * 16), ("prog_ifindex", ctypes.c_uint32),
                ("expected_attach_type", ctypes.c_uint32), ("prog_btf_fd", ctypes.c_uint32),
                ("func_info_rec_size", ctypes.c_uint32), ("func_info", ctypes.c_uint64),
                ("func_info_cnt", ctypes.c_uint32), ("line_info_rec_size", ctypes.c_uint32),
                ("line_info", ctypes.c_uint64), ("line_info_cnt", ctypes.c_uint32), ("attach_btf_id", ctypes.c_uint32),
                ("attach_prog_fd", ctypes.c_uint32), ("pad", ctypes.c_uint8 * 64)]


class _RawTracepointOpen(ctypes.Structure):
    _fields_ = [("name", ctypes.c_uint64), ("prog_fd", ctypes.c_uint32), ("pad", ctypes.c_uint32),
                ("cookie", ctypes.c_uint64)]


def attach_tracepoint(probes: Probes, tracepoint: str) -> int | None:
    """Attach the probe of `tracepoint` (probes/*.c, WR_TRACEPOINT) as it was built: a tp_btf
    program is linked (the link's fd, closed by the caller); a raw tracepoint BCC attached when it
    loaded it, and detaches at cleanup (None)."""
    prog = probes.programs.pop(tracepoint, None)
    if prog is None:
        return None
    libc = ctypes.CDLL(None, use_errno=True)
    try:
        opened = _RawTracepointOpen(name=0, prog_fd=prog)  # no name: the program's attach_btf_id says which
        link = libc.syscall(_SYS_BPF, BPF_RAW_TRACEPOINT_OPEN, ctypes.byref(opened), ctypes.sizeof(opened))
        if link < 0:
            err = ctypes.get_errno()
            raise KernelError(f"linking the program on {tracepoint}: {os.strerror(err)}")
    finally:
        os.close(prog)  # the link holds the program
    os.set_inheritable(link, False)
    return link


def _tracing_program(insns: bytes, name: str, btf_type_id: int, attach_type: int = BPF_TRACE_RAW_TP) -> int:
    """A BPF_PROG_TYPE_TRACING program from BCC's instructions: a tp_btf one (`btf_type_id` the
    tracepoint's btf_trace_ typedef) or an fentry one (BPF_TRACE_FENTRY, the function's id)."""
    libc = ctypes.CDLL(None, use_errno=True)
    code = ctypes.create_string_buffer(insns, len(insns))  # (its map references are BCC's map fds)
    license = ctypes.create_string_buffer(b"GPL")
    attr = _ProgLoad(prog_type=BPF_PROG_TYPE_TRACING, insn_cnt=len(insns) // 8, insns=ctypes.addressof(code),
                     license=ctypes.addressof(license), prog_name=name[:15].encode(),
                     expected_attach_type=attach_type, attach_btf_id=btf_type_id)
    prog = libc.syscall(_SYS_BPF, BPF_PROG_LOAD, ctypes.byref(attr), ctypes.sizeof(attr))
    if prog < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return prog


# r0 = 0; exit: the smallest program, to ask whether the kernel loads tp_btf programs at all
_RETURN_ZERO = bytes([0xB7, 0, 0, 0, 0, 0, 0, 0, 0x95, 0, 0, 0, 0, 0, 0, 0])


def tp_btf_refused(btf_type_id: int | None) -> str | None:
    """Whether this kernel loads a tp_btf program (on skb:kfree_skb, `btf_type_id` its btf_trace_
    typedef): None if it does, else why not. Loaded and closed at once, never attached: asked
    before the probes are compiled, which are then built for it (or as raw tracepoints)."""
    if btf_type_id is None:
        return "the kernel's BTF has no btf_trace_kfree_skb type"
    try:
        os.close(_tracing_program(_RETURN_ZERO, "wr_kfree_skb", btf_type_id))
    except OSError as error:
        return f"the kernel refuses tp_btf programs ({error.strerror} when loading one)"
    return None


# ------------------------------------------------------------------ netfilter links

class _LinkCreate(ctypes.Structure):
    _fields_ = [("prog_fd", ctypes.c_uint32), ("target_fd", ctypes.c_uint32), ("attach_type", ctypes.c_uint32),
                ("flags", ctypes.c_uint32), ("pf", ctypes.c_uint32), ("hooknum", ctypes.c_uint32),
                ("priority", ctypes.c_int32), ("nf_flags", ctypes.c_uint32), ("pad", ctypes.c_uint8 * 96)]


def netfilter_link(prog_fd: int, hook: str, priority: int, pf: int) -> int:
    """A BPF netfilter link (fd) in the calling thread's network namespace; closing it detaches."""
    libc = ctypes.CDLL(None, use_errno=True)
    attr = _LinkCreate(prog_fd=prog_fd, attach_type=BPF_NETFILTER, pf=pf, hooknum=NF_HOOKS[hook],
                       priority=priority)
    fd = libc.syscall(_SYS_BPF, BPF_LINK_CREATE, ctypes.byref(attr), ctypes.sizeof(attr))
    if fd >= 0:
        os.set_inheritable(fd, False)
    if fd < 0:
        code = ctypes.get_errno()
        why = {errno.EOPNOTSUPP: "the kernel has no BPF netfilter links (CONFIG_NETFILTER_BPF_LINK, kernel >= 6.4)",
               errno.EINVAL: "the kernel refused the netfilter link (kernel < 6.4?)",
               errno.EPERM: "not permitted (needs root: CAP_BPF and CAP_NET_ADMIN)",
               errno.EBUSY: "another link holds that hook priority"}.get(code, os.strerror(code))
        family = next(name for name, number in NF_FAMILIES.items() if number == pf)
        raise KernelError(f"netfilter link at {family} {hook} priority {priority}: {why}")
    return fd


def netfilter_link_near(prog_fd: int, hook: str, priority: int, step: int, pf: int, tries: int = 16) -> int:
    """netfilter_link at `priority`, or the next free one in the direction of `step` when another
    BPF link (another trace) holds it."""
    for attempt in range(tries):
        try:
            return netfilter_link(prog_fd, hook, priority + step * attempt, pf)
        except KernelError as error:
            if "another link holds" not in str(error) or attempt == tries - 1:
                raise
    raise AssertionError("unreachable")


def fentry_refused(function: str, btf_func_id: int | None) -> str | None:
    """Whether this kernel loads an fentry program on `function` (`btf_func_id` its BTF id): None if
    it does, else why not. The smallest program, loaded and closed at once, never attached."""
    if btf_func_id is None:
        return f"the kernel's BTF has no function {function}"
    try:
        os.close(_tracing_program(_RETURN_ZERO, f"wr_{function}", btf_func_id, BPF_TRACE_FENTRY))
    except OSError as error:
        code = errno.errorcode.get(error.errno, error.strerror)
        return f"the kernel refuses fentry programs ({code} when loading one)"
    return None


def attach_fentry(probes: Probes, name: str, function: str, btf_func_id: int) -> int:
    """Load the compiled program `name` as an fentry program on `function` and link it: the link's
    fd (closing it detaches)."""
    try:
        prog = _tracing_program(probes.bpf.dump_func(name.encode()), name, btf_func_id, BPF_TRACE_FENTRY)
    except OSError as error:
        raise KernelError(f"the kernel refused the fentry program on {function} ({error.strerror})") from None
    probes.programs[function] = prog
    return attach_tracepoint(probes, function)
