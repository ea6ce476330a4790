"""`why-route postmortem` on a generated 1,000,000-packet capture vs tshark's own TCP analysis.

    .venv/bin/python bench/postmortem_bench.py [--packets N] [--keep FILE]

Generates many bulk TCP transfers (a quarter without loss, the rest with 1 % loss, fast
retransmissions, timeouts, every fifth with a slow reader's zero window), headers only,
then times, in this one run, end to end and start-up included:
  why-route postmortem FILE --json          (our streaming reader and analysis)
  tshark -r FILE -q -z expert               (tshark's TCP analysis, the baseline)
and prints packets/s of each and the ratio (target: ≥ 2×, i.e. ≥ 600k packets/s here).
Also the peak memory (max RSS) of each, and that it does not grow with the packets.
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


def timed(argv: list[str]) -> tuple[float, int]:
    """Wall time and the child's peak RSS (KiB)."""
    start = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _pid, status, usage = os.wait4(proc.pid, 0)
    elapsed = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode not in (0, 1):  # 1: postmortem found slow connections
        raise SystemExit(f"{argv[0]} failed with status {proc.returncode}")
    return elapsed, usage.ru_maxrss


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--packets", type=int, default=1_000_000)
    parser.add_argument("--keep", help="write the capture here (and keep it)")
    args = parser.parse_args()
    segments = 250
    connections = max(1, args.packets // (2 * segments + 8))
    path = args.keep or os.path.join(tempfile.mkdtemp(prefix="pmbench"), "bench.pcap")
    start = time.perf_counter()
    count = synth.capture(path, connections=connections, segments=segments, seed=12, loss=0.01, concurrent=64)
    print(f"generated {count} packets, {connections} connections, {os.path.getsize(path) / 1e6:.0f} MB "
          f"in {time.perf_counter() - start:.1f} s: {path}")
    why_route = [str(ROOT / ".venv" / "bin" / "why-route"), "postmortem", path, "--json"]
    ours, ours_rss = timed(why_route)
    theirs, theirs_rss = timed(["tshark", "-r", path, "-q", "-z", "expert"])
    print(f"why-route postmortem: {ours:6.2f} s  {count / ours / 1000:7.0f}k packets/s  "
          f"(max RSS {ours_rss / 1024:.0f} MB)")
    print(f"tshark -q -z expert:  {theirs:6.2f} s  {count / theirs / 1000:7.0f}k packets/s  "
          f"(max RSS {theirs_rss / 1024:.0f} MB)")
    print(f"ratio: {theirs / ours:.2f}× faster than tshark (target ≥ 2×)")
    if not args.keep:
        os.unlink(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
