"""Kernel time spent in why-route's BPF programs, from the kernel's own run-time statistics
(BPF_ENABLE_STATS: counted while the returned descriptor is open, nothing to restore afterwards).

    with run_time_stats():
        before = program_costs()
        ...  # traffic
        spent = costs_since(before)   # {program name: (runs, nanoseconds)}

Used by trace_bench.py to say what each probe costs a new flow. Root needed.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import struct

_SYS_BPF = 321  # x86_64
BPF_PROG_GET_NEXT_ID, BPF_PROG_GET_FD_BY_ID, BPF_OBJ_GET_INFO_BY_FD, BPF_ENABLE_STATS = 11, 13, 15, 32
BPF_STATS_RUN_TIME = 0
PROG_INFO_SIZE = 232  # struct bpf_prog_info on 6.x; the kernel fills what it has
NAME, RUN_TIME_NS, RUN_CNT = 64, 192, 200  # its members' offsets (stable uapi)
PREFIX = "wr_"  # why-route's programs (BPF keeps the first 15 characters of a name)

_libc = ctypes.CDLL(None, use_errno=True)


def _bpf(command: int, attr: ctypes.Array) -> int:
    result = _libc.syscall(_SYS_BPF, command, attr, len(attr))
    if result < 0:
        raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))
    return result


@contextlib.contextmanager
def run_time_stats():
    attr = ctypes.create_string_buffer(struct.pack("=I", BPF_STATS_RUN_TIME), 16)
    fd = _bpf(BPF_ENABLE_STATS, attr)
    try:
        yield
    finally:
        os.close(fd)


def program_costs() -> dict[tuple[int, str], tuple[int, int]]:
    """{(program id, name): (runs, nanoseconds)} of every loaded program named wr_…"""
    costs, prog_id = {}, 0
    while True:
        attr = ctypes.create_string_buffer(struct.pack("=I", prog_id), 16)
        try:
            _bpf(BPF_PROG_GET_NEXT_ID, attr)
        except OSError:
            return costs
        prog_id = struct.unpack_from("=I", attr, 4)[0]
        try:
            fd = _bpf(BPF_PROG_GET_FD_BY_ID, ctypes.create_string_buffer(struct.pack("=I", prog_id), 16))
        except OSError:
            continue  # unloaded meanwhile
        try:
            info = ctypes.create_string_buffer(PROG_INFO_SIZE)
            _bpf(BPF_OBJ_GET_INFO_BY_FD, ctypes.create_string_buffer(
                struct.pack("=IIQ", fd, PROG_INFO_SIZE, ctypes.addressof(info)), 16))
        finally:
            os.close(fd)
        name = info.raw[NAME:NAME + 16].split(b"\0")[0].decode()
        if name.startswith(PREFIX):
            costs[prog_id, name] = struct.unpack_from("=QQ", info, RUN_TIME_NS)[::-1]


def costs_since(before: dict) -> dict[str, tuple[int, int]]:
    """{name: (runs, nanoseconds)} since `before`, programs of one name (a hook's links) summed."""
    spent: dict[str, tuple[int, int]] = {}
    for key, (runs, ns) in program_costs().items():
        runs0, ns0 = before.get(key, (0, 0))
        total = spent.get(key[1], (0, 0))
        spent[key[1]] = (total[0] + runs - runs0, total[1] + ns - ns0)
    return spent
