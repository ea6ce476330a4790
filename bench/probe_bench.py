"""Speed of `--probe` on the seed router (the committed snapshot of variant ultimate's Route node).

    .venv/bin/python bench/probe_bench.py [--runs N]

Times, as medians: the plain explanation (`why-route 192.168.1.169 8.8.8.8 --snapshot … --json`,
the baseline) and the same command with `--probe`, each a whole process; then, in this process,
one probe with its own replica (replay, sinks, packet, teardown), and one probe more in a replica
reused (batch, verify). Prints each against the 0.5 s target of issue 10, and the probe command's
ratio to the plain explanation. Root needed (the replica is a network namespace).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
SNAPSHOT = ROOT / "tests/explain/fixtures/ultimate-route.json"
FLOW = ["192.168.1.169", "8.8.8.8"]
TARGET = 0.5


def _command(extra: list[str], runs: int) -> float:
    argv = [sys.executable, "-m", "tracer", *FLOW, "--snapshot", str(SNAPSHOT), "--json", *extra]
    times = []
    for _ in range(runs):
        started = time.monotonic()
        result = subprocess.run(argv, capture_output=True, text=True, cwd=ROOT)
        times.append(time.monotonic() - started)
        if result.returncode:
            raise SystemExit(f"{' '.join(argv)} failed: {result.stderr.strip()}")
    return statistics.median(times)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=7)
    runs = parser.parse_args().runs

    from tracer.collect import snapshot
    from tracer.flow import make_flow
    from tracer.lint import probe
    from tracer.sim.explain import explain

    plain = _command([], runs)
    probed = _command(["--probe"], runs)

    explanation = explain(snapshot.load(str(SNAPSHOT)), make_flow(FLOW[1], FLOW[0]))
    own = []
    for _ in range(runs):
        started = time.monotonic()
        result = probe.probe(explanation)
        own.append(time.monotonic() - started)
        assert result.agrees, result.differences
    with probe.Replica(explanation.state) as replica:
        reused = []
        for _ in range(runs):
            started = time.monotonic()
            replica.probe(explanation)
            reused.append(time.monotonic() - started)

    print(f"plain explain (baseline), whole command:   {plain:.3f} s")
    print(f"explain --probe, whole command:            {probed:.3f} s  ({probed / plain:.2f}× the plain explain; "
          f"the probe adds {probed - plain:.3f} s = {(probed - plain) / TARGET:.2f}× the {TARGET} s target)")
    print(f"one probe, its own replica (in process):   {statistics.median(own):.3f} s  "
          f"({statistics.median(own) / TARGET:.2f}× the {TARGET} s target)")
    print(f"one more probe in a reused replica:        {statistics.median(reused):.3f} s  "
          f"({statistics.median(reused) / TARGET:.2f}× the target)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
