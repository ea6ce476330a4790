"""Run collection code inside a named network namespace (`ip netns` names).

setns(2) on the calling thread, then back: netlink sockets opened, /proc/sys/net
files read and subprocesses started inside the block all see the namespace.
"""

from __future__ import annotations

import ctypes
import errno
import os
from contextlib import contextmanager
from pathlib import Path

from tracer.errors import EnvironmentProblem, UsageError

CLONE_NEWNET = 0x40000000
NETNS_RUN_DIR = Path("/run/netns")
ETC_NETNS = Path("/etc/netns")


def _setns(fd: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(fd, CLONE_NEWNET) != 0:
        code = ctypes.get_errno()
        if code == errno.EPERM:
            raise EnvironmentProblem("entering a network namespace needs root (CAP_SYS_ADMIN)")
        raise EnvironmentProblem(f"setns failed: {os.strerror(code)}")


def check_name(name: str) -> Path:
    if not name or "/" in name or name in (".", ".."):
        raise UsageError(f"invalid network namespace name {name!r}")
    path = NETNS_RUN_DIR / name
    if not path.exists():
        raise UsageError(f"network namespace {name!r} does not exist (see `ip netns list`)")
    return path


@contextmanager
def entered(name: str | None):
    """Inside the block the current thread lives in namespace `name` (None: stay)."""
    if not name:
        yield
        return
    path = check_name(name)
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    try:
        try:
            target = os.open(path, os.O_RDONLY)
        except PermissionError:
            raise EnvironmentProblem(f"cannot open {path}: needs root") from None
        try:
            _setns(target)
        finally:
            os.close(target)
        try:
            yield
        finally:
            _setns(own)
    finally:
        os.close(own)


def iproute2_dir(name: str | None) -> Path:
    """Where `ip` reads rt_tables for this namespace: `ip netns exec` bind-mounts
    /etc/netns/NAME/iproute2 over /etc/iproute2 when it exists."""
    if name and (ETC_NETNS / name / "iproute2").is_dir():
        return ETC_NETNS / name / "iproute2"
    return Path("/etc/iproute2")
