"""Speed of `why-route lint` on the seed: the blog's script on the Route node (variant `slow`).

    .venv/bin/python bench/lint_bench.py [--runs N]

Builds the seed lab (prefix `wrlb`), snapshots Route, tears the lab down, then
times the whole command (start-up, namespace replay, the script's lines,
reading the result back, before → after flows, rules engine) and prints the
median with its ratio to the 3 s target of issue 4. Root needed.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
TARGET = 3.0
PREFIX = "wrlb"


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=5)
    runs = parser.parse_args().runs

    from tracer.collect import snapshot
    from tracer.collect.live import collect_state
    from tracer.lab import builder

    with tempfile.TemporaryDirectory() as directory:
        snap = str(Path(directory) / "route.json")
        try:
            lab = builder.up(variant="slow", prefix=PREFIX)
            snapshot.save(collect_state(lab.ns("route")), snap)
        finally:
            builder.down(PREFIX)
        argv = [sys.executable, "-m", "tracer", "lint", str(ROOT / "tests/lint/fixtures/seed-blog.sh"),
                "--snapshot", snap, "--json"]
        times, replay = [], []
        for _ in range(runs):
            started = time.monotonic()
            result = subprocess.run(argv, capture_output=True, text=True, cwd=ROOT)
            times.append(time.monotonic() - started)
            if result.returncode != 1:  # the blog's script has two failing lines
                print(f"unexpected exit {result.returncode}: {result.stderr.strip()}", file=sys.stderr)
                return 1
            replay.append(json.loads(result.stdout)["replay"]["seconds"])
    seconds = statistics.median(times)
    print(f"lint of the seed blog's script on Route (slow), median of {runs}: {seconds:.3f} s "
          f"(replay {statistics.median(replay):.3f} s) = {seconds / TARGET:.2f} of the {TARGET:g} s target")
    return 0 if seconds <= TARGET else 1


if __name__ == "__main__":
    sys.exit(main())
