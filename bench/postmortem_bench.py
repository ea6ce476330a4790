"""`why-route postmortem` on a generated 1,000,000-packet capture vs tshark's own TCP analysis.

    .venv/bin/python bench/postmortem_bench.py [--packets N] [--rounds N] [--keep FILE]

Generates many bulk TCP transfers (a quarter without loss, the rest with 1 % loss, fast
retransmissions, timeouts, every fifth with a slow reader's zero window), headers only,
then times, in this one run, end to end and start-up included:
  why-route postmortem FILE --json          (our streaming reader and analysis)
  tshark -r FILE -q -z expert               (tshark's TCP analysis, the baseline)
in `--rounds` rounds (default 3), each running both, alternating which goes first, and
prints for each: packets/s in wall-clock and in CPU time (user + system), the best and the
median round, the ratio (target: ≥ 2× and ≥ 600k packets/s in the median), the peak memory
(max RSS) and the load average around the runs (on a machine others load, wall time measures
them too; CPU time less so). The peak memory of why-route is also measured on a capture a
quarter of the size: it grows with the connections of a batch, not the packets.
`--packets 100000 --rounds 1` is a quick run.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.postmortem import synth  # noqa: E402

SEGMENTS = 250


@dataclass
class Run:
    wall: float
    cpu: float  # user + system
    rss: int  # KiB


def timed(argv: list[str]) -> Run:
    """One run of `argv`: its wall and CPU time and peak RSS (of the child alone)."""
    start = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _pid, status, usage = os.wait4(proc.pid, 0)
    elapsed = time.perf_counter() - start
    code = os.waitstatus_to_exitcode(status)
    if code not in (0, 1):  # 1: postmortem found slow connections
        raise SystemExit(f"{argv[0]} failed with status {code}")
    return Run(elapsed, usage.ru_utime + usage.ru_stime, usage.ru_maxrss)


def write_capture(path: str, packets: int) -> int:
    connections = max(1, packets // (2 * SEGMENTS + 8))
    return synth.capture(path, connections=connections, segments=SEGMENTS, seed=12, loss=0.01, concurrent=64)


def generate(path: str, packets: int) -> int:
    """The capture, written by a child process: the generator's memory would otherwise count in the
    peak RSS of every program this one starts (a forked child's maximum includes its parent's pages)."""
    start = time.perf_counter()
    out = subprocess.run([sys.executable, __file__, "--write-capture", path, "--packets", str(packets)],
                         capture_output=True, text=True, check=True).stdout
    count = int(out)
    print(f"generated {count} packets, {max(1, packets // (2 * SEGMENTS + 8))} connections, "
          f"{os.path.getsize(path) / 1e6:.0f} MB in {time.perf_counter() - start:.1f} s: {path}")
    return count


def report(name: str, count: int, runs: list[Run]) -> None:
    walls, cpus = sorted(r.wall for r in runs), sorted(r.cpu for r in runs)
    for label, wall, cpu in (("best", walls[0], cpus[0]),
                             ("median", statistics.median(walls), statistics.median(cpus))):
        print(f"{name:21s} {label:6s} {wall:6.2f} s wall {count / wall / 1000:6.0f}k packets/s   "
              f"{cpu:6.2f} s CPU {count / cpu / 1000:6.0f}k packets/s")
    print(f"{name:21s} max RSS {max(r.rss for r in runs) / 1024:.0f} MB")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--packets", type=int, default=1_000_000, help="the capture's size (default 1,000,000)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of both programs (default 3)")
    parser.add_argument("--keep", help="write the capture here (and keep it)")
    parser.add_argument("--write-capture", metavar="FILE", help=argparse.SUPPRESS)  # (generate's child)
    args = parser.parse_args()
    if args.write_capture:
        print(write_capture(args.write_capture, args.packets))
        return 0
    if args.packets < 1000 or args.rounds < 1:
        parser.error("--packets must be at least 1000 and --rounds at least 1")
    work = tempfile.mkdtemp(prefix="pmbench")
    path = args.keep or os.path.join(work, "bench.pcap")
    count = generate(path, args.packets)
    small = os.path.join(work, "quarter.pcap")
    small_count = generate(small, args.packets // 4)
    commands = {"why-route postmortem": [str(ROOT / ".venv" / "bin" / "why-route"), "postmortem", path, "--json"],
                "tshark -q -z expert": ["tshark", "-r", path, "-q", "-z", "expert"]}
    runs: dict[str, list[Run]] = {name: [] for name in commands}
    load_before = os.getloadavg()
    for round_ in range(args.rounds):
        names = list(commands) if round_ % 2 == 0 else list(reversed(commands))
        for name in names:
            runs[name].append(timed(commands[name]))
        done = ", ".join(f"{name} {runs[name][-1].wall:.2f} s wall / {runs[name][-1].cpu:.2f} s CPU"
                         for name in commands)
        print(f"round {round_ + 1}: {done}; load {os.getloadavg()[0]:.1f}")
    quarter = timed([*commands["why-route postmortem"][:2], small, "--json"])
    load_after = os.getloadavg()
    print(f"load average (1, 5 min) {load_before[0]:.1f}, {load_before[1]:.1f} before, {load_after[0]:.1f}, "
          f"{load_after[1]:.1f} after ({os.cpu_count()} CPUs); {count} packets, {args.rounds} round(s):")
    for name in commands:
        report(name + ":", count, runs[name])
    ours, theirs = runs["why-route postmortem"], runs["tshark -q -z expert"]
    for label, pick in (("best", min), ("median", statistics.median)):
        wall = pick(r.wall for r in theirs) / pick(r.wall for r in ours)
        cpu = pick(r.cpu for r in theirs) / pick(r.cpu for r in ours)
        print(f"ratio ({label}): {wall:.2f}× faster than tshark in wall time, {cpu:.2f}× in CPU time")
    ours_median, theirs_median = statistics.median(r.wall for r in ours), statistics.median(r.wall for r in theirs)
    met = count / ours_median >= 600_000 and theirs_median >= 2 * ours_median
    print(f"target (≥ 2× and ≥ 600k packets/s in the median): {count / ours_median / 1000:.0f}k packets/s, "
          f"{theirs_median / ours_median:.2f}×: {'met' if met else 'NOT met'}")
    size, small_size = os.path.getsize(path) / 2**20, os.path.getsize(small) / 2**20
    print(f"memory: why-route max RSS {max(r.rss for r in ours) / 1024:.0f} MB on {count} packets ({size:.0f} MB file, "
          f"mapped), {quarter.rss / 1024:.0f} MB on {small_count} ({small_size:.0f} MB); tshark "
          f"{max(r.rss for r in theirs) / 1024:.0f} MB")
    os.unlink(small)
    if not args.keep:
        os.unlink(path)
    os.rmdir(work)
    return 0


if __name__ == "__main__":
    sys.exit(main())
