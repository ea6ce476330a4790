"""Speed figures for issue 3, each printed with its ratio to its baseline or target.

    .venv/bin/python bench/explain_bench.py [--runs N] [--skip-scale]

1. start-up: `why-route --help` against `python -c pass`; heavy modules must not load.
2. a live explanation on the seed router (lab variant `ultimate`) against
   (a) a minimal pyroute2 script making the same kernel queries (target ≤ 1.5×)
   and (b) the manual `ip rule show; ip route get …; nft list ruleset`.
3. scale (bench/scale.py): 1,000,000 routes, 10,000 ip rules, 10,000 nft rules.
All runs happen in this script, so the ratios compare like with like.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
WHY_ROUTE = [str(Path(PYTHON).with_name("why-route"))]
PREFIX = "wrbn"


def median_seconds(argv: list[str], runs: int) -> float:
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        subprocess.run(argv, check=True, capture_output=True)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def report(name: str, seconds: float, versus: str, baseline: float, target: float | None = None) -> None:
    ratio = seconds / baseline
    verdict = ""
    if target is not None:
        verdict = "  OK" if ratio <= target else f"  OVER TARGET ({target}×)"
    print(f"{name:<46} {seconds * 1000:8.1f} ms   {ratio:5.2f}× {versus}{verdict}")


def startup(runs: int) -> None:
    print("== start-up")
    bare = median_seconds([PYTHON, "-c", "pass"], runs)
    helped = median_seconds([*WHY_ROUTE, "--help"], runs)
    report("python -c pass", bare, "itself", bare)
    report("why-route --help", helped, "python -c pass", bare)
    probe = subprocess.run([PYTHON, "-c", "import sys, tracer.cli; print(' '.join(m for m in "
                            "('pyroute2', 'bcc', 'scapy', 'pyshark') if m in sys.modules))"],
                           capture_output=True, text=True, check=True).stdout.strip()
    print(f"{'heavy modules loaded by the CLI':<46} {probe or 'none'}")


def live_seed(runs: int) -> None:
    print("== live explanation on the seed router (lab variant ultimate)")
    subprocess.run([*WHY_ROUTE, "lab", "up", "--variant", "ultimate", "--prefix", PREFIX],
                   check=True, capture_output=True)
    try:
        ns = f"{PREFIX}-route"
        ours = median_seconds([*WHY_ROUTE, "192.168.1.169", "8.8.8.8", "--netns", ns, "--json"], runs)
        floor = median_seconds([PYTHON, str(ROOT / "bench" / "pyroute2_floor.py"), ns,
                                "192.168.1.169", "8.8.8.8", "br-lan"], runs)
        manual = median_seconds(["ip", "netns", "exec", ns, "sh", "-c",
                                 "ip rule show; ip route get 8.8.8.8 from 192.168.1.169 iif br-lan; "
                                 "nft list ruleset"], runs)
        report("minimal pyroute2 script (floor)", floor, "itself", floor)
        report("manual ip rule; ip route get; nft list", manual, "itself", manual)
        report("why-route 192.168.1.169 8.8.8.8 --netns", ours, "the pyroute2 floor", floor, target=1.5)
        report("", ours, "the manual commands", manual)
    finally:
        subprocess.run([*WHY_ROUTE, "lab", "down", "--prefix", PREFIX], capture_output=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=9)
    parser.add_argument("--skip-scale", action="store_true")
    args = parser.parse_args()
    startup(args.runs)
    live_seed(args.runs)
    if not args.skip_scale:
        sys.path.insert(0, str(ROOT / "bench"))
        import scale
        scale.run()


if __name__ == "__main__":
    main()
