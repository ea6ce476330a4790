"""Overhead and start-up of `why-route trace`, each printed with its ratio to a baseline measured
in this same run (issue 11):

    .venv/bin/python bench/trace_bench.py [--rounds N] [--seconds S] [--flow-rates 10000,50000]

1. iperf3 TCP from the MacBook through the lab router (variant `ultimate`, out ppp0 with SNAT) to
   8.8.8.8, without and with `why-route trace --netns <router>` running (every new flow, no
   filter), alternating, N rounds: the best of each side and their ratio (target ≥ 0.90).
2. 64-byte UDP packets per second received by internet2 (one flow, from a Python sender: iperf3's
   UDP mode does not start through this lab), the same way (target ≥ 0.80).
3. New flows: the MacBook sends one UDP datagram to each of many (source port, destination port)
   pairs at a fixed rate (sendmmsg, in batches), each a new flow through the router, with
   `why-route trace` running (every UDP flow): how many flows the router's conntrack created (the
   baseline: nf_conntrack_count in its namespace, before and after), how many of them the trace
   reported, and how many events it lost — 10,000 in 1 s, then 50,000 a second for 5 s (target:
   every flow reported, lost 0). Since the sender's datagrams cross the router in its own context
   (veth), the sender's rate alone (untraced, as fast as it goes) is measured first, and the
   kernel time of each probe per new flow (BPF_ENABLE_STATS, probe_costs.py) printed against
   that datagram's untraced cost.
4. Start to first event: from starting `why-route trace --count 1` (Python start-up, state
   collection, BTF, probe compilation, load and attach included) to its first flow printed while
   the MacBook pings steadily, N runs after one uncounted (which writes the modules' bytecode, as
   an installation has it): against the 2 s target.
The load average is printed before and after: this VM's wall clock moves with it.
Needs root and iperf3 (scripts/setup.sh installs it). The lab is removed at the end.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
import probe_costs  # noqa: E402

from tracer.lab import builder  # noqa: E402

WHY_ROUTE = str(Path(sys.executable).with_name("why-route"))
PREFIX = "wrtb"
TARGET = "8.8.8.8"


def ns(node: str) -> str:
    return builder.namespace(PREFIX, node)


def iperf_tcp(seconds: float) -> float:
    """Bits/s received, iperf3 TCP from the MacBook to 8.8.8.8 (internet2) through the router."""
    argv = ["ip", "netns", "exec", ns("macbook"), "iperf3", "-c", TARGET, "-t", str(seconds), "-J"]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 30)
    data = json.loads(result.stdout)
    if "error" in data:
        raise SystemExit(f"iperf3: {data['error']}")
    return data["end"]["sum_received"]["bits_per_second"]


# iperf3's UDP mode cannot start through this lab (its UDP handshake fails with EAGAIN), so the
# 64-byte UDP figure comes from a sender of our own and an nft counter on the receiving node.
BLASTER = """
import socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setblocking(False)
payload = bytes(64 - 28)  # 64-byte IP packets
end = time.monotonic() + float(sys.argv[1])
while time.monotonic() < end:
    for _ in range(256):
        try:
            s.sendto(payload, ("8.8.8.8", 9))
        except BlockingIOError:
            pass
"""
COUNTER = ("table ip wrbench { counter udp9 { }\n chain arriving { type filter hook prerouting priority -300;\n"
           "  udp dport 9 counter name udp9\n }\n}\n")


def udp_pps(seconds: float) -> float:
    """64-byte UDP packets per second that reached internet2."""
    subprocess.run(["ip", "netns", "exec", ns("internet2"), "nft", "-f", "-"], input=COUNTER, text=True, check=True)
    try:
        subprocess.run(["ip", "netns", "exec", ns("macbook"), sys.executable, "-c", BLASTER, str(seconds)],
                       check=True, timeout=seconds + 30)
        out = subprocess.run(["ip", "netns", "exec", ns("internet2"), "nft", "-j", "list", "counter", "ip",
                              "wrbench", "udp9"], capture_output=True, text=True, check=True).stdout
        packets = next(i["counter"]["packets"] for i in json.loads(out)["nftables"] if "counter" in i)
    finally:
        subprocess.run(["ip", "netns", "exec", ns("internet2"), "nft", "delete", "table", "ip", "wrbench"])
    return packets / seconds


# One datagram from each of `sockets` sockets (each its own source port) to each of `count / sockets`
# ports of 8.8.8.8 — every datagram a new flow — paced to `rate` a second, with sendmmsg (a Python
# loop of sendto tops out near 20,000 a second here).
NEW_FLOWS = r"""
import ctypes, socket, struct, sys, time
rate, count, sockets = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
libc = ctypes.CDLL(None, use_errno=True)
class Iovec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]
class Msghdr(ctypes.Structure):
    _fields_ = [("name", ctypes.c_void_p), ("namelen", ctypes.c_uint32), ("iov", ctypes.c_void_p),
                ("iovlen", ctypes.c_size_t), ("control", ctypes.c_void_p), ("controllen", ctypes.c_size_t),
                ("flags", ctypes.c_int), ("pad", ctypes.c_int), ("len", ctypes.c_uint)]  # struct mmsghdr
ports = count // sockets
dst = socket.inet_aton("8.8.8.8")
names = ctypes.create_string_buffer(b"".join(  # struct sockaddr_in: family in host order, port in network order
    struct.pack("=H", socket.AF_INET) + struct.pack("!H4s8x", 1024 + i, dst) for i in range(ports)))
payload = ctypes.create_string_buffer(b"x", 1)
iov = Iovec(ctypes.addressof(payload), 1)
messages = (Msghdr * ports)()
for i in range(ports):
    messages[i] = Msghdr(ctypes.addressof(names) + 16 * i, 16, ctypes.addressof(iov), 1, None, 0, 0, 0, 0)
socks = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(sockets)]
for s in socks:
    s.bind(("0.0.0.0", 0))
BATCH, size = 256, ctypes.sizeof(Msghdr)
start, sent = time.monotonic(), 0
for s in socks:
    fd, first = s.fileno(), 0
    while first < ports:
        ahead = start + sent / rate - time.monotonic()
        if ahead > 0:
            time.sleep(ahead)
        n = libc.sendmmsg(fd, ctypes.c_void_p(ctypes.addressof(messages) + first * size), min(BATCH, ports - first), 0)
        if n < 0:
            raise SystemExit("sendmmsg: " + __import__("os").strerror(ctypes.get_errno()))
        first += n
        sent += n
print(sent, time.monotonic() - start)
"""


def conntrack_count() -> int:
    return int(subprocess.run(["ip", "netns", "exec", ns("route"), "cat", "/proc/sys/net/netfilter/nf_conntrack_count"],
                              capture_output=True, text=True, check=True).stdout)


def send_new_flows(rate: int, count: int) -> tuple[int, float]:
    """(datagrams sent, seconds it took): `count` new UDP flows at `rate` a second (as fast as the
    sender can, when it cannot keep the rate)."""
    sockets = max(1, -(-count // 50_000))
    sent = subprocess.run(["ip", "netns", "exec", ns("macbook"), sys.executable, "-c", NEW_FLOWS, str(rate),
                           str(count), str(sockets)], capture_output=True, text=True, check=True,
                          timeout=count / 1000 + 30)
    datagrams, took = sent.stdout.split()
    return int(datagrams), float(took)


def new_flows(rate: int, seconds: float) -> tuple[int, int, float, dict, collections.Counter, dict]:
    """(flows the router's conntrack created, datagrams sent, seconds it took, the trace's summary, the
    reported flows' verdicts, the kernel time each probe spent {name: (runs, ns)}) for `rate` new UDP
    flows a second during `seconds`."""
    count = int(rate * seconds)
    subprocess.run(["ip", "netns", "exec", ns("route"), "conntrack", "-F"], capture_output=True)
    with probe_costs.run_time_stats():
        trace = Trace("--proto", "udp", "--reply-wait", "0.2")
        before, costs_before = conntrack_count(), probe_costs.program_costs()
        try:
            datagrams, took = send_new_flows(rate, count)
            spent = probe_costs.costs_since(costs_before)
            created = conntrack_count() - before
            time.sleep(2)  # the last flows' reply wait
        finally:
            summary = trace.stop(timeout=900)  # it prints every flow it has, however many
    subprocess.run(["ip", "netns", "exec", ns("route"), "conntrack", "-F"], capture_output=True)
    return created, datagrams, took, summary, trace.verdicts, spent


class Trace:
    """`why-route trace --json` on the router; its output read as it comes (a trace whose reader
    stops reading would block writing, as it would with a user's pager)."""

    def __init__(self, *args: str):
        self.proc = subprocess.Popen([WHY_ROUTE, "trace", "--json", "--netns", ns("route"), *args],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.flows, self.summary, self.errors = 0, None, []
        self.verdicts: collections.Counter[str] = collections.Counter()
        deadline = time.monotonic() + 30
        for line in self.proc.stderr:
            if "Ctrl-C to stop" in line:
                break
            if time.monotonic() > deadline:
                self.proc.kill()
                raise SystemExit("trace did not start")
        else:
            raise SystemExit("trace did not start")
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        threading.Thread(target=lambda: self.errors.extend(self.proc.stderr), daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            doc = json.loads(line)
            if doc["type"] == "summary":
                self.summary = doc
            else:
                self.flows += 1
                self.verdicts[doc["verdict"]] += 1

    def stop(self, timeout: float = 60) -> dict:
        self.proc.send_signal(signal.SIGINT)
        self.proc.wait(timeout)
        self._reader.join(timeout)
        if self.summary is None:
            raise SystemExit(f"the trace printed no summary (exit status {self.proc.returncode}): "
                             + "".join(self.errors[-5:]))
        return self.summary


def ratio_line(name: str, without: list[float], with_trace: list[float], unit: str, target: float) -> None:
    """Best of each side (the VM's noise only ever slows a run down), and every round's ratio."""
    ratio = max(with_trace) / max(without)
    mark = "ok" if ratio >= target else "BELOW TARGET"
    rounds = ", ".join(f"{w / b:.2f}" for b, w in zip(without, with_trace, strict=True))
    print(f"{name:<34} without {max(without):12,.0f} {unit}   with trace {max(with_trace):12,.0f} {unit}   "
          f"ratio {ratio:.2f} (target ≥ {target:.2f}: {mark}); round by round {rounds}")


def start_to_first_event(runs: int) -> list[float]:
    pinger = subprocess.Popen(["ip", "netns", "exec", ns("macbook"), "ping", "-n", "-i", "0.02", TARGET],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    # As installed: with its modules' bytecode (pip compiles it; a shell with PYTHONDONTWRITEBYTECODE
    # would have every start compile them again), after a first start (uncounted) that writes it.
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    times = []
    try:
        for _ in range(runs + 1):
            started = time.monotonic()
            proc = subprocess.Popen([WHY_ROUTE, "trace", "--json", "--netns", ns("route"), "--proto", "icmp",
                                     "--count", "1", "--reply-wait", "0"],
                                    stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
            first = proc.stdout.readline()
            times.append(time.monotonic() - started)
            proc.communicate(timeout=30)
            assert first.startswith("{"), first
        del times[0]
    finally:
        pinger.kill()
        pinger.wait()
    return times


def load() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds (without, with) per figure")
    parser.add_argument("--seconds", type=float, default=5, help="length of each throughput measurement")
    parser.add_argument("--flow-rates", type=lambda text: [int(r) for r in text.split(",")], default=[10000, 50000],
                        help="new flows a second to try, comma-separated")
    parser.add_argument("--flow-seconds", type=lambda text: [float(r) for r in text.split(",")], default=[1.0, 5.0],
                        help="how long each rate is sent, comma-separated (the last one repeats)")
    parser.add_argument("--skip", default="", help="figures to leave out, comma-separated: tcp,udp,flows,start")
    args = parser.parse_args()
    skip = set(filter(None, args.skip.split(",")))
    if shutil.which("iperf3") is None:
        raise SystemExit("iperf3 is not installed (scripts/setup.sh installs it)")
    print(f"load average at start: {load()}")
    builder.down(PREFIX)
    builder.up(variant="ultimate", prefix=PREFIX)
    server = subprocess.Popen(["ip", "netns", "exec", ns("internet2"), "iperf3", "-s"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(0.5)
        for figure, measure, name, unit, target in (
                ("tcp", iperf_tcp, "iperf3 TCP through the router", "bit/s", 0.90),
                ("udp", udp_pps, "UDP 64-byte packets through it", "pkt/s", 0.80)):
            if figure in skip:
                continue
            without, with_trace, summaries = [], [], []
            for _ in range(args.rounds):
                without.append(measure(args.seconds))
                trace = Trace()
                try:
                    with_trace.append(measure(args.seconds))
                finally:
                    summaries.append(trace.stop())
            ratio_line(name, without, with_trace, unit, target)
            print(f"{'':<34} traces: {sum(s['flows'] for s in summaries)} flows, "
                  f"{sum(s['events'] for s in summaries)} events, {sum(s['lost'] for s in summaries)} lost")
        if "flows" not in skip:
            # The sender shares this VM's two cores with the router's packet path, which runs in its
            # context (veth): its own cost per datagram, untraced, is the baseline of the probes' cost.
            alone, alone_took = send_new_flows(10**6, 100_000)
            subprocess.run(["ip", "netns", "exec", ns("route"), "conntrack", "-F"], capture_output=True)
            sender_ns = alone_took / alone * 1e9
            print(f"{'new UDP flows, no trace':<34} {alone / alone_took:,.0f}/s at most: {sender_ns:,.0f} ns a "
                  "datagram (sender, router and the hosts behind it)")
            for i, rate in enumerate(args.flow_rates):
                seconds = args.flow_seconds[min(i, len(args.flow_seconds) - 1)]
                created, sent, took, summary, verdicts, spent = new_flows(rate, seconds)
                probes_ns = sum(ns for _, ns in spent.values()) / max(sent, 1)
                each = ", ".join(f"{name} {ns / max(sent, 1):,.0f} ({runs / max(sent, 1):.1f} runs)"
                                 for name, (runs, ns) in sorted(spent.items()) if runs)
                print(f"{'':<34} probes' kernel time per new flow {probes_ns:,.0f} ns, ratio "
                      f"{probes_ns / sender_ns:.2f} of the untraced datagram's: {each}")
                reported = summary["flows"]
                # A flow known from conntrack alone ("confirmed") lacks its kernel path: not reported in full.
                mark = "ok" if reported == created == verdicts["forwarded"] and summary["lost"] == 0 else "BELOW TARGET"
                print(f"{'new UDP flows through the router':<34} {sent:,} sent in {took:.1f} s ({sent / took:,.0f}/s), "
                      f"{created:,} new conntrack entries (the baseline)   reported {reported:,} "
                      f"({reported / created:.3f} of them), {summary['events']:,} events, lost {summary['lost']:,} "
                      f"{summary.get('lost_by', {})}, {summary.get('deferred', 0)} deferred, verdicts {dict(verdicts)} "
                      f"({mark}); {summary['not_compared']:,} not compared with the simulation; "
                      f"trace ended {summary['duration']:.0f} s after its start")
        if "start" not in skip:
            times = start_to_first_event(args.rounds)
            best, worst = min(times), max(times)
            print(f"{'start to first flow printed':<34} {best:.2f} s best, {worst:.2f} s worst of {len(times)}   "
                  f"ratio {best / 2.0:.2f} (best), {worst / 2.0:.2f} (worst) of the 2 s target "
                  f"({'ok' if worst <= 2.0 else 'ABOVE TARGET'})")
    finally:
        server.kill()
        server.wait()
        builder.down(PREFIX)
        print(f"load average at end: {load()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
