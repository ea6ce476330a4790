"""`why-route capture` on the lab router's three routed interfaces at its forwarding rate (issue 12):

    .venv/bin/python bench/capture_bench.py [--rate PPS[,PPS…]] [--seconds S]

The seed lab (variant `ultimate`): the MacBook (out ppp0, SNAT) and ArchLinux (out eth0.2,
MASQUERADE) each send half of RATE 64-byte UDP packets per second to 8.8.8.8:9 (a paced
`sendmmsg` sender, below), which internet1 and internet2 count and drop. For each rate, in this
one run:
  1. no capture: what the router forwards (the baseline: sent vs arrived);
  2. dumpcap as why-route ran it before (one process, `-B 64` per interface, dumpcap's default
     queue of 1,000 packets between its capture threads and its writer);
  3. `why-route capture --netns ROUTER -i br-lan,ppp0,eth0.2 udp`.
Per interface: the packets that crossed it (br-lan: every packet that arrived beyond the router;
ppp0 and eth0.2: those that arrived at internet2 and internet1), those in the capture, the drops
the capture reports (kernel: the socket ring full; capture: dumpcap's queue full), and the share
captured; the rate the senders achieved (the forwarding runs on the senders' CPU, so a starved
machine slows them rather than dropping) and dumpcap's CPU time. Then the load average: the
machine may be shared. Needs root and dumpcap.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.postmortem import pmlab  # noqa: E402
from tracer.capture import live  # noqa: E402
from tracer.lab import builder  # noqa: E402

PREFIX = "wrcb"
INTERFACES = ("br-lan", "ppp0", "eth0.2")
SENDERS = {"macbook": "ppp0", "archlinux": "eth0.2"}  # sender → the uplink its packets leave by
FAR_END = {"ppp0": "internet2", "eth0.2": "internet1"}
SINK = ("table ip wrcbsink {\n counter arrived { }\n chain arriving {\n  type filter hook prerouting priority -300;\n"
        "  udp dport 9 counter name arrived drop\n }\n}\n")
BATCH = 256


class _Iovec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]


class _Msghdr(ctypes.Structure):
    _fields_ = [("name", ctypes.c_void_p), ("namelen", ctypes.c_uint32), ("iov", ctypes.POINTER(_Iovec)),
                ("iovlen", ctypes.c_size_t), ("control", ctypes.c_void_p), ("controllen", ctypes.c_size_t),
                ("flags", ctypes.c_int)]


class _Mmsghdr(ctypes.Structure):
    _fields_ = [("hdr", _Msghdr), ("len", ctypes.c_uint)]


def send(rate: float, seconds: float, address: str) -> None:
    """Paced 64-byte UDP packets to address:9, BATCH per sendmmsg(2); prints what was sent."""
    import socket

    libc = ctypes.CDLL(None, use_errno=True)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.connect((address, 9))
    payload = ctypes.create_string_buffer(64 - 28)
    iov = _Iovec(ctypes.addressof(payload), len(payload))
    messages = (_Mmsghdr * BATCH)()
    for m in messages:
        m.hdr.iov, m.hdr.iovlen = ctypes.pointer(iov), 1
    total, sent = int(rate * seconds), 0
    start = time.monotonic()
    while sent < total:
        due = min(int((time.monotonic() - start) * rate), total) - sent
        if due <= 0:
            time.sleep(0.0005)
            continue
        n = libc.sendmmsg(sock.fileno(), messages, min(due, BATCH), 0)
        if n < 0:
            raise SystemExit(f"sendmmsg: {os.strerror(ctypes.get_errno())}")
        sent += n
    print(json.dumps({"sent": sent, "seconds": time.monotonic() - start}))


def traffic(lab, rate: float, seconds: float) -> dict:
    """Both senders at rate/2 each; returns the packets sent, arrived at each far end, and the send time."""
    for node in FAR_END.values():
        lab.run(node, ["nft", "reset", "counters", "table", "ip", "wrcbsink"])
    procs = [subprocess.Popen(["ip", "netns", "exec", lab.ns(node), sys.executable, __file__, "--send", str(rate / 2),
                               str(seconds)], stdout=subprocess.PIPE, text=True) for node in SENDERS]
    results = [json.loads(p.communicate(timeout=seconds * 4 + 30)[0]) for p in procs]
    arrived = {}
    for uplink, node in FAR_END.items():
        out = lab.run(node, ["nft", "-j", "list", "counter", "ip", "wrcbsink", "arrived"]).stdout
        arrived[uplink] = next(i["counter"]["packets"] for i in json.loads(out)["nftables"] if "counter" in i)
    crossed = {"br-lan": sum(arrived.values()), **arrived}
    return {"sent": sum(r["sent"] for r in results), "seconds": max(r["seconds"] for r in results),
            "crossed": crossed}


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a live process."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def old_dumpcap(lab, rate: float, seconds: float, path: str) -> tuple[dict, dict]:
    """dumpcap as why-route ran it before this bench: the default queue."""
    if os.path.exists(path):
        os.unlink(path)
    argv = ["ip", "netns", "exec", lab.ns("route"), "dumpcap", "-q", "-n", "-w", path]
    for name in INTERFACES:
        argv += ["-i", name, "-B", str(live.BUFFER_MIB), "-f", "udp"]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    counter = live._Counter(path)
    while len(counter.names) < len(INTERFACES) and proc.poll() is None:  # every interface open
        time.sleep(0.05)
        counter.update()
    time.sleep(0.5)
    try:
        result = traffic(lab, rate, seconds)
        time.sleep(1)
        result["dumpcap_cpu"] = cpu_seconds(proc.pid)  # (`ip netns exec` became dumpcap)
    finally:
        proc.send_signal(signal.SIGINT)
        report = proc.communicate(timeout=60)[1]
    counter.update()
    captured = dict(zip(counter.names, counter.counts, strict=True))
    stats = {name: {"packets": captured[name], **drops} for name, drops in live.dumpcap_drops(report).items()}
    return result, stats


def why_route_capture(lab, rate: float, seconds: float, run_dir: Path) -> tuple[dict, dict]:
    proc = pmlab.start_capture(lab, run_dir, INTERFACES, "udp")
    dumpcap = int(subprocess.run(["pgrep", "-P", str(proc.pid), "-x", "dumpcap"], capture_output=True, text=True,
                                 check=True).stdout.split()[0])
    try:
        result = traffic(lab, rate, seconds)
        time.sleep(1)
        result["dumpcap_cpu"] = cpu_seconds(dumpcap)
    finally:
        pmlab.stop_capture(proc)
    meta = json.loads((run_dir / "capture.json").read_text())
    return result, {s["interface"]: s for s in meta["statistics"]}


def report(name: str, result: dict, stats: dict | None) -> None:
    rate = result["sent"] / result["seconds"]
    cpu = f", dumpcap used {result['dumpcap_cpu']:.2f} s of CPU" if "dumpcap_cpu" in result else ""
    print(f"  {name}: sent {result['sent']:,} in {result['seconds']:.2f} s ({rate / 1000:.0f}k pkt/s){cpu}")
    for iface in INTERFACES:
        crossed = result["crossed"][iface]
        if stats is None:
            print(f"    {iface:<7} crossed {crossed:>9,}")
            continue
        s = stats[iface]
        missing = crossed - s["packets"] - s["kernel_drops"] - s["capture_drops"]
        print(f"    {iface:<7} crossed {crossed:>9,}  captured {s['packets']:>9,}  drops: kernel "
              f"{s['kernel_drops']:,}, capture {s['capture_drops']:,}  → {s['packets'] / crossed:.4f} captured"
              + (f"  ({missing:,} missing and not counted as drops)" if missing else ""))


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rate", default="100000", help="packets/s the router forwards (comma-separated: several)")
    parser.add_argument("--seconds", type=float, default=5)
    parser.add_argument("--send", nargs=2, metavar=("RATE", "SECONDS"), help=argparse.SUPPRESS)  # a sender
    args = parser.parse_args()
    if args.send:
        send(float(args.send[0]), float(args.send[1]), "8.8.8.8")
        return 0
    lab = builder.up(variant="ultimate", prefix=PREFIX)
    work = Path(tempfile.mkdtemp(prefix="capbench"))
    try:
        for node in FAR_END.values():
            lab.run(node, ["nft", "-f", "-"], input=SINK)
        traffic(lab, 1000, 0.5)  # neighbours resolved, conntrack entries made
        for rate in (float(r) for r in args.rate.split(",")):
            load = os.getloadavg()
            print(f"rate {rate / 1000:.0f}k pkt/s for {args.seconds:.0f} s, load average before "
                  f"{load[0]:.2f} {load[1]:.2f} {load[2]:.2f} on {os.cpu_count()} CPUs")
            report("no capture (baseline)", traffic(lab, rate, args.seconds), None)
            report("dumpcap, default queue (before)", *old_dumpcap(lab, rate, args.seconds, str(work / "old.pcapng")))
            report("why-route capture", *why_route_capture(lab, rate, args.seconds, work / f"run{int(rate)}"))
            load = os.getloadavg()
            print(f"  load average after {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    finally:
        subprocess.run(["rm", "-rf", str(work)], check=False)
        builder.down(PREFIX)
    return 0


if __name__ == "__main__":
    sys.exit(main())
