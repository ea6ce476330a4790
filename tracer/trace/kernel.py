"""The BPF side of a trace: compile probes/trace.c with BCC, with struct offsets from the running
kernel's BTF as constants; fill the filter (`Config`, the mirror of probes/common.h's struct
config); create BPF netfilter links with the bpf(2) syscall; turn struct event into events.

BCC compiles against the installed kernel headers only for its own helper definitions: no probe
reads a kernel struct through a header (Debian's 6.1 headers do not match newer kernels), and
nothing is written under /lib/modules (BCC_KERNEL_SOURCE points at the headers' tree).
"""

from __future__ import annotations

import ctypes
import errno
import glob
import ipaddress
import os
import socket
from pathlib import Path

from tracer.errors import EnvironmentProblem
from tracer.trace.btf import Btf

PROBES_DIR = Path(__file__).resolve().parents[2] / "probes"
BPF_PROG_TYPE_NETFILTER = 32
BPF_NETFILTER = 45  # attach type
BPF_LINK_CREATE = 28
NFPROTO_IPV4 = 2
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
    ("OFF_STATE_HOOK", "nf_hook_state", "hook"),
    ("OFF_STATE_PF", "nf_hook_state", "pf"),
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
    ("OFF_TB_ID", "fib_table", "tb_id"),
    ("OFF_FL4_SADDR", "flowi4", "saddr"),
    ("OFF_FL4_DADDR", "flowi4", "daddr"),
    ("OFF_FL4_IIF", "flowi4", "__fl_common.flowic_iif"),
    ("OFF_FL4_MARK", "flowi4", "__fl_common.flowic_mark"),
    ("OFF_NHC_DEV", "fib_nh_common", "nhc_dev"),
    ("OFF_NHC_GW", "fib_nh_common", "nhc_gw"),
    ("OFF_NHC_GW_FAMILY", "fib_nh_common", "nhc_gw_family"),
)


class KernelError(EnvironmentProblem):
    """A probe could not be compiled, loaded or attached; the message says why in plain words
    (exit status 3 when it reaches the command line)."""


# ------------------------------------------------------------------ mirrors of probes/common.h

class Config(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint32), ("netns", ctypes.c_uint32), ("saddr", ctypes.c_uint32),
                ("daddr", ctypes.c_uint32), ("iif", ctypes.c_uint32), ("sport", ctypes.c_uint16),
                ("dport", ctypes.c_uint16), ("proto", ctypes.c_uint8), ("pad", ctypes.c_uint8 * 3)]


F_NETNS, F_SRC, F_DST, F_PROTO, F_SPORT, F_DPORT, F_IIF = (1 << i for i in range(7))
F_READY = 1 << 31  # the filter is written: until then the probes report nothing


class _Key(ctypes.Structure):
    _fields_ = [("netns", ctypes.c_uint32), ("saddr", ctypes.c_uint32), ("daddr", ctypes.c_uint32),
                ("sport", ctypes.c_uint16), ("dport", ctypes.c_uint16), ("proto", ctypes.c_uint8),
                ("pad", ctypes.c_uint8 * 3)]


class _Tuple(ctypes.Structure):
    _fields_ = [("saddr", ctypes.c_uint32), ("daddr", ctypes.c_uint32), ("sport", ctypes.c_uint16),
                ("dport", ctypes.c_uint16)]


class RawEvent(ctypes.Structure):
    _fields_ = [("ts", ctypes.c_uint64), ("skb", ctypes.c_uint64), ("ptr", ctypes.c_uint64),
                ("kind", ctypes.c_uint32), ("cpu", ctypes.c_uint32), ("key", _Key), ("pkt", _Tuple),
                ("orig", _Tuple), ("reply", _Tuple), ("in_ifindex", ctypes.c_uint32),
                ("out_ifindex", ctypes.c_uint32), ("mark", ctypes.c_uint32), ("ct_status", ctypes.c_uint32),
                ("table", ctypes.c_uint32), ("err", ctypes.c_int32), ("gw", ctypes.c_uint32),
                ("reason", ctypes.c_uint32), ("hook", ctypes.c_uint8), ("pos", ctypes.c_uint8),
                ("pf", ctypes.c_uint8), ("ctinfo", ctypes.c_uint8), ("has_ct", ctypes.c_uint8),
                ("gw_family", ctypes.c_uint8), ("pad", ctypes.c_uint8 * 2)]


def ipv4_be(text: str) -> int:
    """An IPv4 address as the kernel stores it (network order) read as a native u32."""
    return int.from_bytes(socket.inet_aton(text), "little")


def ipv4_text(value: int) -> str:
    return str(ipaddress.IPv4Address(value.to_bytes(4, "little")))


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


def offset_defines(btf: Btf) -> list[str]:
    defines = [f"-D{macro}={btf.offset(struct, path)}" for macro, struct, path in OFFSETS]
    defines.append(f"-DSIZE_TUPLEHASH={btf.size('nf_conntrack_tuple_hash')}")
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


def compile_probes(parts: list[str], btf: Btf):
    """The BCC object with the parts (netfilter.c, fib.c, drop.c) compiled in. BCC attaches the
    raw tracepoint programs while loading them."""
    import bcc  # heavy; only here

    env, flags = header_flags()
    os.environ.update(env)
    cflags = [*flags, *offset_defines(btf)]
    try:
        return bcc.BPF(text=probe_source(parts).encode(), cflags=cflags)
    except Exception as error:  # noqa: BLE001 - BCC raises bare Exception for compile and load errors
        raise KernelError(f"compiling/loading the probes failed: {error}") from None


# ------------------------------------------------------------------ netfilter links

class _LinkCreate(ctypes.Structure):
    _fields_ = [("prog_fd", ctypes.c_uint32), ("target_fd", ctypes.c_uint32), ("attach_type", ctypes.c_uint32),
                ("flags", ctypes.c_uint32), ("pf", ctypes.c_uint32), ("hooknum", ctypes.c_uint32),
                ("priority", ctypes.c_int32), ("nf_flags", ctypes.c_uint32), ("pad", ctypes.c_uint8 * 96)]


def netfilter_link(prog_fd: int, hook: str, priority: int, pf: int = NFPROTO_IPV4) -> int:
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
        raise KernelError(f"netfilter link at {hook} priority {priority}: {why}")
    return fd


def netfilter_link_near(prog_fd: int, hook: str, priority: int, step: int, tries: int = 16) -> int:
    """netfilter_link at `priority`, or the next free one in the direction of `step` when another
    BPF link (another trace) holds it."""
    for attempt in range(tries):
        try:
            return netfilter_link(prog_fd, hook, priority + step * attempt)
        except KernelError as error:
            if "another link holds" not in str(error) or attempt == tries - 1:
                raise
    raise AssertionError("unreachable")


def try_fentry() -> str | None:
    """Load (and close at once) probes/fentry_check.c: None when this kernel accepts fentry
    programs, else why not in plain words. For --check only: never attached during a trace."""
    import bcc

    env, flags = header_flags()
    os.environ.update(env)
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)  # BCC and libbpf print the verifier's refusal on stderr
            try:
                bpf = bcc.BPF(text=(PROBES_DIR / "fentry_check.c").read_text().encode(), cflags=flags)
            except Exception as error:  # noqa: BLE001 - BCC raises bare Exception
                text = str(error)
                if "super-user" in text or "not permitted" in text.lower():
                    return "the kernel refuses fentry programs (EPERM when loading one)"
                return f"fentry program not loaded: {text}"
            bpf.cleanup()
            return None
    finally:
        os.dup2(saved, 2)
        os.close(saved)
