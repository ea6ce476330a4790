"""`why-route postmortem` on a generated 1,000,000-packet capture vs tshark's own TCP analysis.

    .venv/bin/python bench/postmortem_bench.py [--packets N] [--keep FILE]

Generates many bulk TCP transfers (a quarter without loss, the rest with 1 % loss, fast
retransmissions, timeouts, every fifth with a slow reader's zero window), headers only,
then times, in this one run, end to end and start-up included:
  why-route postmortem FILE --json          (our streaming reader and analysis)
  tshark -r FILE -q -z expert               (tshark's TCP analysis, the baseline)
each `--repeat` times (default 3, alternating; the best of each counts: on a machine others
load, the slower runs measure them), and prints packets/s of each in wall-clock and in CPU time
(user + system), the ratio (target: ≥ 2×, and ≥ 600k packets/s), the load average around the
runs, and the peak memory (max RSS) of each — for why-route also on a capture a quarter of the
size: it grows with the connections of a batch, not the packets.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.postmortem import synth  # noqa: E402

SEGMENTS = 250


def timed(argv: list[str]) -> tuple[float, float, int]:
    """Wall time, CPU time (user + system) and the child's peak RSS (KiB)."""
    start = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _pid, status, usage = os.wait4(proc.pid, 0)
    elapsed = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode not in (0, 1):  # 1: postmortem found slow connections
        raise SystemExit(f"{argv[0]} failed with status {proc.returncode}")
    return elapsed, usage.ru_utime + usage.ru_stime, usage.ru_maxrss


def best(runs: list[tuple]) -> tuple[float, float, int]:
    """The shortest wall and CPU times of the runs, and the largest peak RSS."""
    return min(r[0] for r in runs), min(r[1] for r in runs), max(r[2] for r in runs)


def generate(path: str, packets: int) -> int:
    connections = max(1, packets // (2 * SEGMENTS + 8))
    start = time.perf_counter()
    count = synth.capture(path, connections=connections, segments=SEGMENTS, seed=12, loss=0.01, concurrent=64)
    print(f"generated {count} packets, {connections} connections, {os.path.getsize(path) / 1e6:.0f} MB "
          f"in {time.perf_counter() - start:.1f} s: {path}")
    return count


def line(name: str, count: int, wall: float, cpu: float, rss: int) -> None:
    print(f"{name:22s} {wall:6.2f} s wall {count / wall / 1000:6.0f}k packets/s   {cpu:6.2f} s CPU "
          f"{count / cpu / 1000:6.0f}k packets/s   (max RSS {rss / 1024:.0f} MB)")


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--packets", type=int, default=1_000_000)
    parser.add_argument("--keep", help="write the capture here (and keep it)")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    work = tempfile.mkdtemp(prefix="pmbench")
    path = args.keep or os.path.join(work, "bench.pcap")
    count = generate(path, args.packets)
    small = os.path.join(work, "quarter.pcap")
    small_count = generate(small, args.packets // 4)
    why_route = [str(ROOT / ".venv" / "bin" / "why-route"), "postmortem"]
    load_before = os.getloadavg()[0]
    runs: dict[str, list] = {"ours": [], "theirs": []}
    for _ in range(max(1, args.repeat)):
        runs["ours"].append(timed([*why_route, path, "--json"]))
        runs["theirs"].append(timed(["tshark", "-r", path, "-q", "-z", "expert"]))
    quarter = timed([*why_route, small, "--json"])
    load_after = os.getloadavg()[0]
    print("runs (wall s / CPU s): why-route " + ", ".join(f"{w:.2f}/{c:.2f}" for w, c, _ in runs["ours"])
          + "; tshark " + ", ".join(f"{w:.2f}/{c:.2f}" for w, c, _ in runs["theirs"]))
    ours, theirs = best(runs["ours"]), best(runs["theirs"])
    print(f"load average {load_before:.1f} before, {load_after:.1f} after (2 cores here); the best of each:")
    line("why-route postmortem:", count, *ours)
    line("tshark -q -z expert:", count, *theirs)
    print(f"ratio: {theirs[0] / ours[0]:.2f}× faster than tshark in wall time, {theirs[1] / ours[1]:.2f}× in CPU time "
          f"(target ≥ 2×, ≥ 600k packets/s)")
    size, small_size = os.path.getsize(path) / 2**20, os.path.getsize(small) / 2**20
    print(f"memory: max RSS {ours[2] / 1024:.0f} MB on {count} packets ({size:.0f} MB file, mapped), "
          f"{quarter[2] / 1024:.0f} MB on {small_count} ({small_size:.0f} MB)")
    os.unlink(small)
    if not args.keep:
        os.unlink(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
