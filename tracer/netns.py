"""Network namespaces (`ip netns` names): entering one, creating and removing them, and cleaning up
after ourselves whatever happens.

    with entered("wr-route"): ...          this thread inside the namespace (setns), then back
    create(name) / delete(name)            `ip netns add/del`, with the namespace's own /etc/netns/NAME/iproute2
    with Teardown() as undo: ...           undo actions run on exit, on an exception, on Ctrl-C, SIGTERM, SIGHUP
    owned_name(prefix) / sweep(prefix)     names that carry our pid: a SIGKILLed process's leftovers are
                                           found (orphaned) and removed by the next run

Whoever makes kernel objects for a while (the lint replay's throwaway namespace, a lab being built,
a trace session's BPF links and nft tables) registers their removal on a Teardown, and names the
objects that outlive a SIGKILL with owned_name() so that a later run can sweep them.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import itertools
import os
import re
import shutil
import signal
import subprocess
from collections.abc import Iterable
from pathlib import Path

from tracer.errors import EnvironmentProblem, Terminated, UsageError

CLONE_NEWNET = 0x40000000
NETNS_RUN_DIR = Path("/run/netns")
ETC_NETNS = Path("/etc/netns")
HOST_IPROUTE2 = Path("/etc/iproute2")
# Turned into errors.Terminated inside a Teardown; SIGINT already raises KeyboardInterrupt.
TERMINATING_SIGNALS = (signal.SIGTERM, signal.SIGHUP)
_HELD_DURING_TEARDOWN = {signal.SIGINT, *TERMINATING_SIGNALS}
_names = itertools.count(1)


# --- entering -----------------------------------------------------------------


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


@contextlib.contextmanager
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
    return HOST_IPROUTE2


# --- creating and removing ------------------------------------------------------


def exists(name: str) -> bool:
    return (NETNS_RUN_DIR / name).exists()


def _ip_netns(verb: str, name: str) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(["ip", "netns", verb, name], capture_output=True, text=True,
                              env=dict(os.environ, LC_ALL="C"))
    except FileNotFoundError:
        raise EnvironmentProblem("`ip` (iproute2) not found; install iproute2") from None


def _stderr(result: subprocess.CompletedProcess) -> str:
    return " / ".join(result.stderr.strip().splitlines()) or f"exit status {result.returncode}"


def create(name: str, *, iproute2_without: tuple[str, ...] = ()) -> Path:
    """Create namespace `name` and its /etc/netns/NAME/iproute2: a copy of the host's /etc/iproute2
    less the files matching `iproute2_without` (glob patterns). `ip netns exec` mounts it over
    /etc/iproute2, so what runs there reads and writes the namespace's rt_tables, never the host's.
    Returns that directory. Raises EnvironmentProblem, leaving nothing behind."""
    if exists(name):  # someone else's: never ours to delete on the way out
        raise EnvironmentProblem(f"cannot create network namespace {name}: it exists already")
    etc = ETC_NETNS / name / "iproute2"
    try:
        result = _ip_netns("add", name)
        if result.returncode or not exists(name):
            raise EnvironmentProblem(f"cannot create network namespace {name}: {_stderr(result)}")
        shutil.rmtree(etc.parent, ignore_errors=True)  # left by an earlier namespace of that name
        if HOST_IPROUTE2.is_dir():
            shutil.copytree(HOST_IPROUTE2, etc, symlinks=True, ignore=shutil.ignore_patterns(*iproute2_without))
        else:
            etc.mkdir(parents=True)
    except BaseException:
        delete(name)
        raise
    return etc


def delete(name: str) -> bool:
    """Remove namespace `name` and its /etc/netns directory; idempotent. Whether the namespace existed."""
    existed = exists(name)
    if existed:
        result = _ip_netns("del", name)
        if result.returncode and exists(name):
            raise EnvironmentProblem(f"cannot remove network namespace {name}: {_stderr(result)}")
    shutil.rmtree(ETC_NETNS / name, ignore_errors=True)
    return existed


# --- who owns what ----------------------------------------------------------------


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists (lab builders and owned_name() record theirs)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def owned_name(prefix: str) -> str:
    """A name unique to this process that says which process owns it: PREFIX<pid>-<n>."""
    return f"{prefix}{os.getpid()}-{next(_names)}"


def orphaned(names: Iterable[str], prefix: str) -> list[str]:
    """Those of `names` made by owned_name(prefix) in a process that is gone (it was SIGKILLed)."""
    owner = re.compile(rf"{re.escape(prefix)}(\d+)-\d+")
    found = []
    for name in sorted(set(names)):
        match = owner.fullmatch(name)
        if match and not pid_alive(int(match.group(1))):
            found.append(name)
    return found


def sweep(prefix: str) -> list[str]:
    """Remove the namespaces (and /etc/netns directories) named by owned_name(prefix) whose
    process is gone; returns their names."""
    names: set[str] = set()
    for directory in (NETNS_RUN_DIR, ETC_NETNS):
        with contextlib.suppress(OSError):  # not there yet: nothing to sweep
            names.update(os.listdir(directory))
    removed = orphaned(names, prefix)
    for name in removed:
        delete(name)
    return removed


# --- tearing down -------------------------------------------------------------------


PR_SET_PDEATHSIG = 1


def die_with_parent(parent: int, leave_ctrl_c_to_it: bool = False) -> None:
    """In a child that `parent` just started (preexec_fn, a pool's initializer): end by SIGKILL
    when the parent does, whatever kills it (PR_SET_PDEATHSIG), and at once if it already has;
    with `leave_ctrl_c_to_it`, ignore Ctrl-C, which the parent handles and then stops the child."""
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent:  # the parent died before prctl
        os._exit(1)
    if leave_ctrl_c_to_it:
        signal.signal(signal.SIGINT, signal.SIG_IGN)


def _raise_terminated(signum, _frame):
    raise Terminated(signum)


class Teardown(contextlib.ExitStack):
    """Undo actions (an ExitStack's callbacks and contexts), run last first when the block ends:
    normally, on an exception, on Ctrl-C (KeyboardInterrupt), or on SIGTERM/SIGHUP, which raise
    errors.Terminated for as long as the block lasts (unless someone else already handles them).

    The actions run with SIGINT, SIGTERM and SIGHUP held, so that a second signal cannot leave half
    a teardown; one that arrived meanwhile is delivered afterwards, when there is nothing left to undo.

        with Teardown() as undo:
            undo.namespace(owned_name("wrreplay-"))     # deleted at the end
            undo.callback(os.close, fd)                 # any action; undo.enter_context(cm) too
            ...
            undo.pop_all()                              # keep it all instead (a lab that is up)
    """

    def __init__(self):
        super().__init__()
        self._replaced_handlers: dict[int, object] = {}

    def __enter__(self) -> Teardown:
        super().__enter__()
        try:
            for signum in TERMINATING_SIGNALS:
                if signal.getsignal(signum) in (signal.SIG_DFL, None):
                    self._replaced_handlers[signum] = signal.signal(signum, _raise_terminated)
        except ValueError:
            pass  # not the main thread: only the `with` block and the next run's sweep protect us
        return self

    def __exit__(self, *exc_info) -> bool:
        held = signal.pthread_sigmask(signal.SIG_BLOCK, _HELD_DURING_TEARDOWN)
        try:
            return super().__exit__(*exc_info)
        finally:
            # Handlers first: a SIGTERM held until now then ends the process the default way.
            for signum, handler in self._replaced_handlers.items():
                signal.signal(signum, handler)
            self._replaced_handlers.clear()
            signal.pthread_sigmask(signal.SIG_SETMASK, held)

    def namespace(self, name: str, *, iproute2_without: tuple[str, ...] = ()) -> Path:
        """create() the namespace, and delete it when the teardown runs; returns its iproute2 directory."""
        # Registered first: a signal during `ip netns add` must not leave the namespace behind.
        self.callback(delete, name)
        return create(name, iproute2_without=iproute2_without)
