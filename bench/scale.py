"""Scale figures: a router with a full internet table, 10,000 ip rules and 10,000 nft rules.

Built in an isolated namespace (two veth ends inside it, nothing linked out),
removed afterwards. Prints each figure and its ratio to the issue's target:
live explain < 1 s, snapshot taken and loaded < 30 s, 10,000 offline batch
queries < 10 s.
"""

from __future__ import annotations

import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

NS = "wrbscale"
ROUTES, RULES, NFT_RULES, QUERIES = 1_000_000, 10_000, 10_000, 10_000
WHY_ROUTE = [str(Path(sys.executable).with_name("why-route"))]


def sh(*argv: str, input: str | None = None) -> None:
    result = subprocess.run(argv, input=input, text=True, capture_output=True)
    if result.returncode:
        raise SystemExit(f"{' '.join(argv)}: {result.stderr.strip()[:500]}")


def nft_ruleset(count: int) -> str:
    """A forward chain of `count` per-address drop rules and a MASQUERADE out up0."""
    nft = ["table inet filter {", " chain forward { type filter hook forward priority 0; policy accept;"]
    nft += [f"  ip saddr 172.17.{i // 250}.{i % 250 + 2} tcp dport {1 + i % 1000} drop" for i in range(count)]
    nft += [" }", "}", "table ip nat {",
            " chain postrouting { type nat hook postrouting priority 100; oifname \"up0\" masquerade; }", "}"]
    return "\n".join(nft) + "\n"


def build(workdir: Path) -> None:
    subprocess.run(["ip", "netns", "del", NS], capture_output=True)
    sh("ip", "netns", "add", NS)
    setup = ["link add up0 type veth peer name lan0", "link set up0 up", "link set lan0 up",
             "link set lo up", "addr add 10.0.0.1/24 dev up0", "addr add 172.16.0.1/12 dev lan0"]
    for table in range(1000, 1050):  # per-customer uplink tables
        setup.append(f"route add default via 10.0.0.{2 + table % 5} table {table}")
    for i in range(RULES):  # one rule per customer address, before main
        setup.append(f"rule add from 172.16.{i // 250}.{i % 250 + 2} lookup {1000 + i % 50} pref {1000 + i}")
    setup.append("route add default via 10.0.0.2")
    # /24s from 11.0.0.0 upwards: clear of the connected 10.0.0.0/24 and the LAN.
    routes = [f"route add {n >> 16}.{n >> 8 & 255}.{n & 255}.0/24 via 10.0.0.{2 + n % 5}"
              for n in range(11 << 16, (11 << 16) + ROUTES)]
    batch = workdir / "setup.batch"
    batch.write_text("\n".join(setup + routes) + "\n")
    sh("ip", "-n", NS, "-batch", str(batch))
    sh("ip", "netns", "exec", NS, "sysctl", "-qw", "net.ipv4.ip_forward=1")
    sh("ip", "netns", "exec", NS, "nft", "-f", "-", input=nft_ruleset(NFT_RULES))


def queries(path: Path) -> None:
    rng = random.Random(7)
    lines = []
    for _ in range(QUERIES):
        src = f"172.16.{rng.randrange(48)}.{rng.randrange(2, 252)}"
        dst = f"{rng.randrange(11, 28)}.{rng.randrange(256)}.{rng.randrange(256)}.{rng.randrange(1, 255)}"
        lines.append(f"{src} {dst} --iif lan0 --proto tcp --dport 443")
    path.write_text("\n".join(lines) + "\n")


def timed(argv: list[str]) -> float:
    started = time.perf_counter()
    result = subprocess.run(argv, capture_output=True, text=True)
    if result.returncode not in (0, 1):
        raise SystemExit(f"{' '.join(argv[:4])}…: {result.stderr.strip()}")
    return time.perf_counter() - started


def line(name: str, seconds: float, target: float) -> None:
    verdict = "OK" if seconds <= target else "OVER TARGET"
    print(f"{name:<46} {seconds:8.2f} s    {seconds / target:5.2f}× the {target:g} s target  {verdict}")


def run() -> None:
    print(f"== scale: {ROUTES:,} routes, {RULES:,} ip rules, {NFT_RULES:,} nft rules")
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        started = time.perf_counter()
        try:
            build(workdir)
            print(f"{'(building the namespace)':<46} {time.perf_counter() - started:8.2f} s")
            line("live explain", timed([*WHY_ROUTE, "172.16.3.7", "12.34.56.78", "--netns", NS, "--json"]), 1.0)
            snap = workdir / "scale.json"
            took = timed([*WHY_ROUTE, "snapshot", "--netns", NS, "-o", str(snap)])
            load = ("from tracer.__main__ import tune_gc; tune_gc(); from tracer.collect import snapshot; "
                    f"snapshot.load({str(snap)!r})")
            loaded = timed([sys.executable, "-c", load])
            line("snapshot taken", took, 30.0)
            line("snapshot loaded", loaded, 30.0)
            line("snapshot taken + loaded", took + loaded, 30.0)
            line("check on the snapshot", timed([*WHY_ROUTE, "check", "--snapshot", str(snap)]), 20.0)
            qfile = workdir / "queries.txt"
            queries(qfile)
            batch = timed([*WHY_ROUTE, "batch", "--snapshot", str(snap), str(qfile)])
            # The batch command loads the snapshot first; the queries are what the target is about.
            line(f"batch of {QUERIES:,} offline queries, with loading", batch, 10.0 + loaded)
            line(f"batch of {QUERIES:,} offline queries, queries only", batch - loaded, 10.0)
        finally:
            subprocess.run(["ip", "netns", "del", NS], capture_output=True)


if __name__ == "__main__":
    run()
