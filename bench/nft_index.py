"""Per-query cost of offline explanations (+ flow findings) on a forward chain of
10,000 `ip saddr A tcp dport N drop` rules.

Builds the namespace `wrnftidx` (two veth ends inside it, nothing linked out),
collects it once, deletes it, then times explain → findings → JSON per query.
Usage: python bench/nft_index.py [QUERIES]
"""

from __future__ import annotations

import random
import subprocess
import sys
import time

from scale import nft_ruleset, sh

NS = "wrnftidx"
NFT_RULES = 10_000


def build() -> None:
    subprocess.run(["ip", "netns", "del", NS], capture_output=True)
    sh("ip", "netns", "add", NS)
    for cmd in ("link add up0 type veth peer name lan0", "link set up0 up", "link set lan0 up",
                "link set lo up", "addr add 10.0.0.1/24 dev up0", "addr add 172.16.0.1/12 dev lan0",
                "route add default via 10.0.0.2"):
        sh("ip", "-n", NS, *cmd.split())
    sh("ip", "netns", "exec", NS, "sysctl", "-qw", "net.ipv4.ip_forward=1")
    sh("ip", "netns", "exec", NS, "nft", "-f", "-", input=nft_ruleset(NFT_RULES))


def main() -> None:
    from tracer.checks.engine import flow_findings
    from tracer.collect.live import collect_state
    from tracer.flow import make_flow
    from tracer.output import json_out
    from tracer.sim.explain import explain
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 200
    build()
    try:
        state = collect_state(NS)
    finally:
        subprocess.run(["ip", "netns", "del", NS], capture_output=True)
    rng = random.Random(7)
    flows = []
    for i in range(n + 1):
        # mostly unlisted sources; every 4th one is a listed address (its rule is evaluated)
        j = rng.randrange(NFT_RULES)
        src = (f"172.17.{j // 250}.{j % 250 + 2}" if i % 4 == 0
               else f"172.16.{rng.randrange(48)}.{rng.randrange(2, 252)}")
        dst = f"{rng.randrange(11, 28)}.{rng.randrange(256)}.{rng.randrange(256)}.{rng.randrange(1, 255)}"
        flows.append(make_flow(dst, src, iif="lan0", proto="tcp", dport=1 + j % 1000))
    first = flows.pop(0)
    t0 = time.perf_counter()
    e = explain(state, first)  # compiles the ruleset (cached on the state)
    e = e.with_findings(flow_findings(e))
    json_out.explanation(e, pretty=False)
    t1 = time.perf_counter()
    for flow in flows:
        e = explain(state, flow)
        e = e.with_findings(flow_findings(e))
        json_out.explanation(e, pretty=False)
    t2 = time.perf_counter()
    print(f"first query (compiles the ruleset) {1000 * (t1 - t0):.0f} ms; "
          f"{n} queries: {1000 * (t2 - t1) / n:.2f} ms per query")


if __name__ == "__main__":
    main()
