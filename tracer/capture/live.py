"""`why-route capture`: capture on several interfaces of one namespace into a run directory.

    RUN_DIR/capture.pcapng     one interface description block per interface (if_name = the device,
                               if_description = "DEV in netns NS"), statistics blocks with the drops
    RUN_DIR/conntrack.events   `conntrack -E -p tcp -o timestamp` while capturing (NAT pairing)
    RUN_DIR/snapshot.json      the state at start (why-route snapshot)
    RUN_DIR/capture.json       what was asked and what came out

dumpcap captures (one process, every interface, one pcapng). The children get
PR_SET_PDEATHSIG(SIGKILL): whatever happens to this process — Ctrl-C, SIGTERM,
a crash, SIGKILL — they die with it; Ctrl-C and SIGTERM stop them cleanly first
(tracer.netns.Teardown).

Packets can be lost in two places, counted apart: the kernel's ring of each packet socket
(`-B`, full when dumpcap does not read fast enough: libpcap's ps_drop) and dumpcap's own queue
from its per-interface capture threads to the file writer (full when writing lags). dumpcap's
default queue (1,000 packets) overflows in the bursts a TPACKET_V3 ring hands over at 100k
packets/s, so it gets room for seconds of packets (bench/capture_bench.py). dumpcap writes the sum
of both into the statistics blocks; its closing report on stderr gives each, and the blocks are
rewritten with the kernel's count as isb_ifdrop and dumpcap's as isb_osdrop.

While capturing, the progress line shows the kernel's drops live (`_RingDrops`): dumpcap reports
both counts only when it stops, and neither its sync pipe (packet counts only) nor sock_diag
(SK_MEMINFO_DROPS: a TPACKET_V3 ring's overflow counts in the packet socket's own tp_drops, not
in sk_drops — measured: 0 while 23,552 were dropped) has them. dumpcap's queue drops have no live
source: the line says "at stop".
"""

from __future__ import annotations

import ctypes
import functools
import json
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import time
from dataclasses import dataclass, field

from tracer import netns as netns_mod
from tracer.capture import pcapio
from tracer.errors import EnvironmentProblem, Terminated, UsageError

RAW_FILE = ".dumpcap.pcapng"
BUFFER_MIB = 64  # kernel capture buffer per interface
QUEUE_PACKETS, QUEUE_BYTES = 1_000_000, 256 << 20  # dumpcap's queue to its writer: seconds at 100k packets/s
# dumpcap's closing report, one line per interface
_DUMPCAP_STATS = re.compile(r"Packets received/dropped on interface '(?P<name>[^']*)': \d+/\d+ "
                            r"\(pcap:(?P<kernel>\d+)/dumpcap:(?P<queue>\d+)/flushed:(?P<flushed>\d+)"
                            r"/ps_ifdrop:(?P<interface>\d+)\)")


def routed_interfaces(state) -> list[str]:
    """Interfaces that route: up, not loopback, not a bridge port, with an address."""
    with_address = {a.ifname for a in state.addresses} if state.addresses else set()
    out = []
    for link in state.links:
        if "LOOPBACK" in link.flags or not link.up or link.master:
            continue
        if link.name in with_address or "POINTOPOINT" in link.flags:
            out.append(link.name)
    return out


@dataclass
class Progress:
    packets: dict[str, int] = field(default_factory=dict)
    elapsed: float = 0.0
    kernel_drops: dict[str, int] | None = None  # live, per interface; None: known only when dumpcap stops

    def line(self) -> str:
        if self.kernel_drops is None:
            parts = ", ".join(f"{name} {n}" for name, n in self.packets.items())
            return f"capturing {self.elapsed:5.1f} s: {parts} (drops: at stop)"
        parts = ", ".join(f"{name} {n} (kernel drops {self.kernel_drops.get(name, 0)})"
                          for name, n in self.packets.items())
        return f"capturing {self.elapsed:5.1f} s: {parts}; capture drops: at stop"


SYS_PIDFD_GETFD = 438  # the same number on every architecture (the unified syscall table)
SOL_PACKET, PACKET_STATISTICS = 263, 6
_TPACKET_STATS = struct.Struct("=III")  # tpacket_stats_v3: tp_packets, tp_drops, tp_freeze_q_cnt


class _RingDrops:
    """The kernel's drops in dumpcap's packet rings while it captures, exact and live.

    Each of dumpcap's AF_PACKET sockets is duplicated into this process (pidfd_getfd) and read with
    getsockopt(PACKET_STATISTICS), which hands over the counts since the last read and resets them
    (atomically): what dumpcap reads at stop is the rest. So the kernel's drops are the sum of ours
    and dumpcap's, and so are the packets the ring received (isb_ifrecv)."""

    def __init__(self, pid: int, interfaces: list[str]):
        self.pid, self.wanted = pid, set(interfaces)
        self.sockets: dict[str, socket.socket] = {}
        self.drops = dict.fromkeys(interfaces, 0)
        self.received = dict.fromkeys(interfaces, 0)
        self.failed = False

    @property
    def live(self) -> bool:
        return not self.failed and set(self.sockets) == self.wanted

    def attach(self) -> None:
        """Duplicate the packet sockets once dumpcap has bound one to each interface; gives up for
        good (`failed`) if the kernel refuses (pidfd_getfd needs Linux 5.6 and ptrace rights)."""
        if self.live or self.failed:
            return
        found: dict[str, socket.socket] = {}
        try:
            pidfd = os.pidfd_open(self.pid)
        except OSError:
            self.failed = True
            return
        syscall = ctypes.CDLL(None, use_errno=True).syscall
        try:
            for fd in os.listdir(f"/proc/{self.pid}/fd"):
                try:
                    if not os.readlink(f"/proc/{self.pid}/fd/{fd}").startswith("socket:"):
                        continue
                except OSError:
                    continue
                dup = syscall(SYS_PIDFD_GETFD, pidfd, int(fd), 0)
                if dup < 0:
                    self.failed = ctypes.get_errno() not in (0, 9)  # EBADF: closed meanwhile
                    if self.failed:
                        break
                    continue
                try:
                    sock = socket.socket(fileno=dup)
                except OSError:
                    os.close(dup)
                    continue
                # the name comes from the socket's own namespace (SIOCGIFNAME on it)
                name = sock.getsockname()[0] if sock.family == socket.AF_PACKET else None
                if name in self.wanted and name not in found:
                    found[name] = sock
                else:
                    sock.close()
        except OSError:
            self.failed = True
        finally:
            os.close(pidfd)
        if self.failed or set(found) != self.wanted:
            for sock in found.values():
                sock.close()
            return
        self.sockets = found

    def update(self) -> None:
        # the read resets the kernel's counts: a Ctrl-C between it and the sums would lose them
        held = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, *netns_mod.TERMINATING_SIGNALS})
        try:
            for name, sock in self.sockets.items():
                packets, drops, _frozen = _TPACKET_STATS.unpack(
                    sock.getsockopt(SOL_PACKET, PACKET_STATISTICS, _TPACKET_STATS.size))
                self.received[name] += packets
                self.drops[name] += drops
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, held)

    def close(self) -> None:
        """A last read, then let go (dumpcap's own read at stop counts what comes after)."""
        self.update()
        for sock in self.sockets.values():
            sock.close()
        self.sockets = {}


class _Counter:
    """Counts packets per interface in a pcapng that is still being written (resumes where it stopped)."""

    def __init__(self, path: str):
        self.path, self.offset, self.names, self.counts = path, 0, [], []

    def update(self) -> None:
        try:
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                data = f.read()
        except FileNotFoundError:
            return
        off = 0
        while off + 12 <= len(data):
            btype, blen = struct.unpack_from("<II", data, off)
            if blen < 12 or off + blen > len(data):
                break
            if btype == pcapio.IDB:
                name = f"if{len(self.names)}"
                for code, value in pcapio._options(data, off + 16, off + blen - 4, "<"):
                    if code == pcapio.IF_NAME:
                        name = value.rstrip(b"\0").decode()
                self.names.append(name)
                self.counts.append(0)
            elif btype == pcapio.EPB:
                iface = struct.unpack_from("<I", data, off + 8)[0]
                if iface < len(self.counts):
                    self.counts[iface] += 1
            off += blen
        self.offset += off


def _stop(proc: subprocess.Popen, timeout: float = 5.0) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def capture(run_dir: str, *, netns: str | None = None, interfaces: list[str] | None = None,
            bpf: str | None = None, duration: float | None = None, count: int | None = None,
            progress=None, snapshot: bool = True, buffer_mib: int = BUFFER_MIB) -> dict:
    """Capture into run_dir; returns what capture.json holds. `progress(Progress)` is called twice a second;
    `buffer_mib` is the kernel's capture buffer per interface."""
    if buffer_mib < 1:
        raise UsageError(f"--buffer {buffer_mib}: the capture buffer is at least 1 MiB")
    for tool in ("dumpcap", "conntrack"):
        if shutil.which(tool) is None:
            raise EnvironmentProblem(f"`{tool}` is not installed (scripts/setup.sh installs it)")
    if os.geteuid() != 0:
        raise EnvironmentProblem("capturing needs root")
    if netns:
        netns_mod.check_name(netns)
    from tracer.collect import snapshot as snapshots
    from tracer.collect.live import collect_state

    os.makedirs(run_dir, exist_ok=True)
    state = collect_state(netns)
    names = {link.name for link in state.links}
    wanted = interfaces or routed_interfaces(state)
    unknown = [i for i in wanted if i not in names]
    if unknown:
        raise UsageError(f"no interface {', '.join(unknown)} in {'netns ' + netns if netns else 'this host'} "
                         f"(interfaces: {', '.join(sorted(names))})")
    if not wanted:
        raise UsageError("no routed interface to capture on: name them with -i")
    if snapshot:
        snapshots.save(state, os.path.join(run_dir, "snapshot.json"))
    raw = os.path.join(run_dir, RAW_FILE)
    if os.path.exists(raw):
        os.unlink(raw)
    prefix = ["ip", "netns", "exec", netns] if netns else []
    argv = [*prefix, "dumpcap", "-q", "-n", "-w", raw, "-N", str(QUEUE_PACKETS), "-C", str(QUEUE_BYTES)]
    # dumpcap applies -B and -f to the -i before them (its default buffer, 2 MiB, drops on a busy host)
    for name in wanted:
        argv += ["-i", name, "-B", str(buffer_mib)] + (["-f", bpf] if bpf else [])
    if duration is not None:
        argv += ["-a", f"duration:{max(1, int(round(duration)))}"]
    if count is not None:
        argv += ["-c", str(count)]
    events_path = os.path.join(run_dir, "conntrack.events")
    started = time.time()
    meta = {"version": 1, "netns": netns, "interfaces": wanted, "filter": bpf, "duration": duration,
            "count": count, "buffer_mib": buffer_mib, "started": started}
    with netns_mod.Teardown() as undo, open(events_path, "w") as events:
        # the children end with why-route whatever kills it; Ctrl-C is why-route's, which then
        # stops them itself (the capture is then complete)
        child_setup = functools.partial(netns_mod.die_with_parent, os.getpid(), True)
        ct = subprocess.Popen([*prefix, "conntrack", "-E", "-p", "tcp", "-o", "timestamp"], stdout=events,
                              stderr=subprocess.DEVNULL, preexec_fn=child_setup)
        undo.callback(_stop, ct)
        dump = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, preexec_fn=child_setup)
        undo.callback(_stop, dump)
        counter = _Counter(raw)
        rings = _RingDrops(dump.pid, wanted)
        undo.callback(rings.close)
        interrupted = terminated = False
        try:
            while dump.poll() is None:
                time.sleep(0.5)
                if progress:
                    counter.update()
                    rings.attach()
                    rings.update()
                    progress(Progress(dict(zip(counter.names, counter.counts, strict=False)),
                                      time.time() - started, dict(rings.drops) if rings.live else None))
        except KeyboardInterrupt:
            interrupted = True
        except Terminated as exc:  # SIGTERM/SIGHUP: finish the run directory too, then end as asked
            interrupted = terminated = exc
        rings.close()
        _stop(dump)
        time.sleep(0.2)  # the last conntrack events
        _stop(ct)
        error = dump.stderr.read().decode(errors="replace") if dump.stderr else ""
    if dump.returncode not in (0, -signal.SIGTERM, 143) and not os.path.exists(raw):
        raise EnvironmentProblem(f"dumpcap failed: {error.strip()}")
    final = os.path.join(run_dir, "capture.pcapng")
    drops = dumpcap_drops(error)
    for name, counts in drops.items():  # what the live reads took from the kernel's counters
        counts["kernel_drops"] += rings.drops.get(name, 0)
    stats = describe_interfaces(raw, final, netns, drops, rings.received)
    os.unlink(raw)
    meta.update({"stopped": time.time(), "interrupted": interrupted, "statistics": stats})
    meta["interrupted"] = bool(interrupted)
    with open(os.path.join(run_dir, "capture.json"), "w") as f:
        json.dump(meta, f, indent=2)
    if terminated:
        raise terminated
    return meta


def summary(meta: dict, run_dir: str) -> str:
    """The line `why-route capture` ends with: packets and drops per interface."""
    parts = []
    for s in meta["statistics"]:
        if s["kernel_drops"] is None:
            drops = "drops not reported"
        else:
            drops = f"drops: kernel {s['kernel_drops']}, capture {s['capture_drops']}"
        parts.append(f"{s['interface']} {s['packets']} ({drops})")
    return f"captured {', '.join(parts)} into {run_dir}" + (" (interrupted)" if meta["interrupted"] else "")


def dumpcap_drops(report: str) -> dict[str, dict]:
    """Per interface, from dumpcap's closing report: the packets the kernel dropped (its ring full), those
    dumpcap dropped (its queue full, or flushed), and the interface's own drop counter while capturing
    (packets it dropped may still have reached the capture)."""
    return {m["name"]: {"kernel_drops": int(m["kernel"]),
                        "capture_drops": int(m["queue"]) + int(m["flushed"]), "interface_drops": int(m["interface"])}
            for m in _DUMPCAP_STATS.finditer(report)}


def _statistics_block(block: bytes, counts: dict, received_live: int = 0) -> bytes:
    """An interface statistics block with the drops split: isb_ifdrop the kernel's, isb_osdrop dumpcap's;
    isb_ifrecv with the packets the live reads took from dumpcap's count (`received_live`)."""
    iface, high, low = struct.unpack_from("<III", block, 8)
    options = b""
    for code, value in pcapio._options(block, 20, len(block) - 4, "<"):
        if code == pcapio.ISB_IFRECV and len(value) == 8:
            value = struct.pack("<Q", struct.unpack("<Q", value)[0] + received_live)
        if code not in (0, pcapio.ISB_IFDROP, pcapio.ISB_OSDROP):
            options += pcapio._option(code, value)
    for code, key in ((pcapio.ISB_IFDROP, "kernel_drops"), (pcapio.ISB_OSDROP, "capture_drops")):
        options += pcapio._option(code, struct.pack("<Q", counts[key]))
    options += pcapio._option(0, b"")
    return pcapio._block(pcapio.ISB, struct.pack("<III", iface, high, low) + options)


def describe_interfaces(src: str, dst: str, netns: str | None, drops: dict[str, dict] | None = None,
                        received_live: dict[str, int] | None = None) -> list[dict]:
    """Copy dumpcap's pcapng, its interface blocks rewritten: if_name the device, if_description
    "DEV in netns NS", and the statistics blocks' drops split as `drops` (dumpcap_drops) has them
    (and isb_ifrecv plus `received_live`, _RingDrops's packets). Returns per interface: packets,
    kernel drops, capture drops (None: not reported)."""
    drops, received_live = drops or {}, received_live or {}
    where = f"netns {netns}" if netns else "the host's namespace"
    stats: list[dict] = []
    with open(src, "rb") as f:
        data = f.read()
    out = []
    off = 0
    while off + 12 <= len(data):
        btype, blen = struct.unpack_from("<II", data, off)
        if blen < 12 or off + blen > len(data):
            break
        block = data[off:off + blen]
        if btype == pcapio.IDB:
            linktype, _res, snaplen = struct.unpack_from("<HHI", block, 8)
            name, keep = f"if{len(stats)}", b""
            for code, value in pcapio._options(block, 16, blen - 4, "<"):
                if code == pcapio.IF_NAME:
                    name = value.rstrip(b"\0").decode()
                elif code not in (pcapio.IF_DESCRIPTION,):
                    keep += pcapio._option(code, value)
            options = (pcapio._option(pcapio.IF_NAME, name.encode())
                       + pcapio._option(pcapio.IF_DESCRIPTION, f"{name} in {where}".encode()) + keep
                       + pcapio._option(0, b""))
            block = pcapio._block(pcapio.IDB, struct.pack("<HHI", linktype, 0, snaplen) + options)
            stats.append({"interface": name, "packets": 0, "kernel_drops": None, "capture_drops": None,
                          "interface_drops": None})
        elif btype == pcapio.EPB:
            iface = struct.unpack_from("<I", block, 8)[0]
            if iface < len(stats):
                stats[iface]["packets"] += 1
        elif btype == pcapio.ISB:
            iface = struct.unpack_from("<I", block, 8)[0]
            counts = drops.get(stats[iface]["interface"]) if iface < len(stats) else None
            if counts is not None:
                block = _statistics_block(block, counts, received_live.get(stats[iface]["interface"], 0))
                stats[iface].update(counts)
        out.append(block)
        off += blen
    with open(dst, "wb") as f:
        f.write(b"".join(out))
    return stats
