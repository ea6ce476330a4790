"""Overhead and start-up of `why-route trace`, each printed with its ratio to a baseline measured
in this same run (issue 11):

    .venv/bin/python bench/trace_bench.py [--seconds S]

1. iperf3 TCP from the MacBook through the lab router (variant `ultimate`, out ppp0 with SNAT) to
   8.8.8.8, without and with `why-route trace --netns <router>` running (every new flow, no
   filter): ratio with/without (target ≥ 0.90).
2. 64-byte UDP packets per second received by internet2 (one flow, from a Python sender: iperf3's
   UDP mode does not start through this lab), without and with (target ≥ 0.80).
3. New flows per second: the MacBook sends one UDP datagram to each of N new ports at a fixed rate
   (each a new flow through the router) with `why-route trace` running (every new flow): how many
   of them it reported, and how many events it lost, per rate (target: 50,000/s, every flow
   reported, lost 0). Kept to a second or two a rate: the flows fill the conntrack table, which
   the kernel shares between namespaces.
4. Start to first event: from starting `why-route trace --count 1` (Python start-up, state
   collection, BTF, probe compilation, load and attach included) to its first flow printed while
   the MacBook pings steadily: against the 2 s target.
Needs root and iperf3 (scripts/setup.sh installs it). The lab is removed at the end.
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
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


# One datagram to each of `count` ports of 8.8.8.8 (each a new flow), paced to `rate` a second.
NEW_FLOWS = """
import socket, sys, time
rate, count = int(sys.argv[1]), int(sys.argv[2])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setblocking(False)
start = time.monotonic()
for i in range(count):
    if i % 100 == 0:
        ahead = start + i / rate - time.monotonic()
        if ahead > 0:
            time.sleep(ahead)
    for _ in range(1000):  # a full socket buffer: try again at once (the flow must go out)
        try:
            s.sendto(b"x", ("8.8.8.8", 1024 + i % 60000))
            break
        except BlockingIOError:
            time.sleep(0.0001)
print(time.monotonic() - start)
"""


def new_flows(rate: int, seconds: float) -> tuple[int, float, dict]:
    """(flows sent, seconds it took, the trace's summary) for `rate` new UDP flows a second."""
    count = int(rate * seconds)
    trace = start_trace("--proto", "udp", "--reply-wait", "0.2")
    try:
        sent = subprocess.run(["ip", "netns", "exec", ns("macbook"), sys.executable, "-c", NEW_FLOWS, str(rate),
                               str(count)], capture_output=True, text=True, check=True, timeout=seconds * 10 + 30)
        time.sleep(2)  # the last flows' reply wait, and the backlog
    finally:
        summary = stop(trace, timeout=600)  # it prints every flow it has, however many
    return count, float(sent.stdout), summary


def start_trace(*args: str) -> subprocess.Popen:
    proc = subprocess.Popen([WHY_ROUTE, "trace", "--json", "--netns", ns("route"), *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 30
    for line in proc.stderr:
        if "Ctrl-C to stop" in line:
            return proc
        if time.monotonic() > deadline:
            break
    proc.kill()
    raise SystemExit("trace did not start")


def stop(proc: subprocess.Popen, timeout: float = 30) -> dict:
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=timeout)
    lines = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    return next(d for d in lines if d["type"] == "summary")


def ratio_line(name: str, without: float, with_trace: float, unit: str, target: float) -> None:
    ratio = with_trace / without
    mark = "ok" if ratio >= target else "BELOW TARGET"
    print(f"{name:<34} without {without:12,.0f} {unit}   with trace {with_trace:12,.0f} {unit}   "
          f"ratio {ratio:.2f} (target ≥ {target:.2f}: {mark})")


def start_to_first_event(runs: int) -> list[float]:
    pinger = subprocess.Popen(["ip", "netns", "exec", ns("macbook"), "ping", "-n", "-i", "0.02", TARGET],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    times = []
    try:
        for _ in range(runs):
            started = time.monotonic()
            proc = subprocess.Popen([WHY_ROUTE, "trace", "--json", "--netns", ns("route"), "--proto", "icmp",
                                     "--count", "1", "--reply-wait", "0"],
                                    stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
            first = proc.stdout.readline()
            times.append(time.monotonic() - started)
            proc.communicate(timeout=30)
            assert first.startswith("{"), first
    finally:
        pinger.kill()
        pinger.wait()
    return times


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=5)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--flow-rates", type=lambda text: [int(r) for r in text.split(",")], default=[10000, 50000],
                        help="new flows a second to try, comma-separated")
    parser.add_argument("--flow-seconds", type=float, default=1.0)
    args = parser.parse_args()
    if shutil.which("iperf3") is None:
        raise SystemExit("iperf3 is not installed (scripts/setup.sh installs it)")
    builder.down(PREFIX)
    builder.up(variant="ultimate", prefix=PREFIX)
    server = subprocess.Popen(["ip", "netns", "exec", ns("internet2"), "iperf3", "-s"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(0.5)
        for measure, name, unit, target in ((iperf_tcp, "iperf3 TCP through the router", "bit/s", 0.90),
                                            (udp_pps, "UDP 64-byte packets through it", "pkt/s", 0.80)):
            without = measure(args.seconds)
            trace = start_trace()
            try:
                with_trace = measure(args.seconds)
            finally:
                summary = stop(trace)
            ratio_line(name, without, with_trace, unit, target)
            print(f"{'':<34} trace: {summary['flows']} flows, {summary['events']} events, {summary['lost']} lost")
        for rate in args.flow_rates:
            count, took, summary = new_flows(rate, args.flow_seconds)
            mark = "ok" if summary["flows"] >= count and summary["lost"] == 0 else "BELOW TARGET"
            print(f"{'new UDP flows through the router':<34} {count:,} sent at {count / took:,.0f}/s   "
                  f"reported {summary['flows']:,} ({summary['flows'] / count:.2f} of them), "
                  f"{summary['events']:,} events, lost {summary['lost']:,} ({mark}); "
                  f"{summary['not_compared']:,} not compared with the simulation, {summary['duration']:.0f} s")
        times = start_to_first_event(args.runs)
        best, worst = min(times), max(times)
        print(f"{'start to first flow printed':<34} {best:.2f} s best, {worst:.2f} s worst of {len(times)}   "
              f"ratio {worst / 2.0:.2f} of the 2 s target ({'ok' if worst <= 2.0 else 'ABOVE TARGET'})")
    finally:
        server.kill()
        server.wait()
        builder.down(PREFIX)
    return 0


if __name__ == "__main__":
    sys.exit(main())
