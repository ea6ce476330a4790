"""The scale figures of this tree against another revision's, alternating in one run.

    .venv/bin/python bench/scale_versus.py [--against REV] [--rounds N]

This VM's wall clock swings by a third between runs with the host's load, so a figure
measured today is only comparable with one measured in the same run. REV (default HEAD~1)
is checked out in a temporary git worktree; both trees run each figure in turn on
bench/scale.py's namespace (built if absent, removed afterwards unless --keep) and the
ratios are printed.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import scale

REPO = Path(__file__).resolve().parent.parent
PYTHON = sys.executable


def _env(tree: Path) -> dict:
    env = dict(os.environ, PYTHONPATH=str(tree))
    env.pop("PYTHONDONTWRITEBYTECODE", None)  # every start would recompile the package
    return env


def _timed(tree: Path, *argv: str) -> float:
    started = time.perf_counter()
    result = subprocess.run([PYTHON, "-m", "tracer", *argv], cwd=tree, env=_env(tree), capture_output=True, text=True)
    if result.returncode not in (0, 1):
        raise SystemExit(f"{tree}: why-route {' '.join(argv[:3])}…: {result.stderr.strip()[-400:]}")
    return time.perf_counter() - started


def _loaded(tree: Path, snap: Path) -> float:
    code = ("from tracer.__main__ import tune_gc; tune_gc(); from tracer.collect import snapshot; "
            f"snapshot.load({str(snap)!r})")
    started = time.perf_counter()
    subprocess.run([PYTHON, "-c", code], cwd=tree, env=_env(tree), check=True)
    return time.perf_counter() - started


def _readable_by(tree: Path, snap: Path, workdir: Path) -> Path:
    """The snapshot as `tree` reads it: an older format lacks newer optional fields."""
    code = f"from tracer.collect import snapshot; snapshot.load({str(snap)!r})"
    if subprocess.run([PYTHON, "-c", code], cwd=tree, env=_env(tree), capture_output=True).returncode == 0:
        return snap
    doc = json.loads(snap.read_text())
    doc.get("meta", {}).pop("br_netfilter", None)
    for link in doc.get("links", []):
        link.pop("nf_call", None)
    older = workdir / f"{tree.name}.json"
    older.write_text(json.dumps(doc))
    return older


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--against", default="HEAD~1")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--keep", action="store_true", help="leave the scale namespace for the next run")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        other = workdir / "other"
        subprocess.run(["git", "-C", str(REPO), "worktree", "add", "-q", "--detach", str(other), args.against],
                       check=True)
        built = not Path(f"/run/netns/{scale.NS}").exists()  # else: kept from an earlier run (--keep)
        try:
            if built:
                scale.build(workdir)
            queries = workdir / "queries.txt"
            scale.queries(queries)
            snap = workdir / "scale.json"
            subprocess.run([PYTHON, "-m", "tracer", "snapshot", "--netns", scale.NS, "-o", str(snap)], cwd=REPO,
                           env=_env(REPO), check=True, capture_output=True)
            trees = {args.against: (other, _readable_by(other, snap, workdir)), "this tree": (REPO, snap)}
            figures: dict[str, dict[str, list[float]]] = {name: {} for name in trees}
            for _ in range(args.rounds):
                for name, (tree, its_snap) in trees.items():
                    got = figures[name]
                    got.setdefault("live explain", []).extend(
                        _timed(tree, "172.16.3.7", "12.34.56.78", "--netns", scale.NS, "--json") for _ in range(3))
                    got.setdefault("snapshot taken", []).append(
                        _timed(tree, "snapshot", "--netns", scale.NS, "-o", str(workdir / "taken.json")))
                    loaded = _loaded(tree, its_snap)
                    got.setdefault("snapshot loaded", []).append(loaded)
                    got.setdefault("batch of 10,000 queries", []).append(
                        _timed(tree, "batch", "--snapshot", str(its_snap), str(queries)) - loaded)
                    got.setdefault("check", []).append(_timed(tree, "check", "--snapshot", str(its_snap)))
            print(f"== scale, this tree against {args.against} (best of each, seconds)")
            for figure in figures["this tree"]:
                before, now = min(figures[args.against][figure]), min(figures["this tree"][figure])
                print(f"{figure:<28} {args.against} {before:7.2f}   this tree {now:7.2f}   {now / before:5.2f}×")
        finally:
            subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(other)], check=False)
            if built and not args.keep:
                subprocess.run(["ip", "netns", "del", scale.NS], capture_output=True)


if __name__ == "__main__":
    main()
