"""Overhead and start-up of `why-route trace`, each printed with its ratio to a baseline measured
in this same run (issue 11):

    .venv/bin/python bench/trace_bench.py [--seconds S]

1. iperf3 TCP from the MacBook through the lab router (variant `ultimate`, out ppp0 with SNAT) to
   8.8.8.8, without and with `why-route trace --netns <router>` running (every new flow, no
   filter): ratio with/without (target ≥ 0.90).
2. 64-byte UDP packets per second received by internet2 (one flow, from a Python sender: iperf3's
   UDP mode does not start through this lab), without and with (target ≥ 0.80).
3. Start to first event: from starting `why-route trace --count 1` (Python start-up, state
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


def stop(proc: subprocess.Popen) -> dict:
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=30)
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
