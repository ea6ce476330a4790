"""Speed of `why-route check` (issue 4): on the seed router, the work beyond
start-up against the 0.5 s target; the 1,000,000-route scale snapshot is timed
by bench/scale.py (target 20 s).

    .venv/bin/python bench/check_bench.py [--runs N]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from explain_bench import WHY_ROUTE, median_seconds

PREFIX = "wrbc"
TARGET = 0.5


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args()
    subprocess.run([*WHY_ROUTE, "lab", "up", "--variant", "ultimate", "--prefix", PREFIX],
                   check=True, capture_output=True)
    try:
        startup = median_seconds([*WHY_ROUTE, "--help"], args.runs)
        check = median_seconds([*WHY_ROUTE, "check", "--netns", f"{PREFIX}-route"], args.runs)
    finally:
        subprocess.run([*WHY_ROUTE, "lab", "down", "--prefix", PREFIX], capture_output=True)
    work = check - startup
    verdict = "OK" if work <= TARGET else "OVER TARGET"
    print(f"why-route --help (start-up)          {startup * 1000:8.1f} ms")
    print(f"why-route check --netns (seed)       {check * 1000:8.1f} ms")
    print(f"work beyond start-up                 {work * 1000:8.1f} ms   "
          f"{work / TARGET:5.2f}× the {TARGET} s target  {verdict}")


if __name__ == "__main__":
    main()
