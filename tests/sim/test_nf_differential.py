"""The netfilter and NAT simulation against the kernel, with real packets.

Random rulesets (tests/sim/nflab_random.py: nft native and iptables-nft syntax, iptables-legacy,
base and regular chains, filter/nat/route chains at every hook they allow, marks selecting ip
rules, snat/masquerade/dnat/redirect with and without ports, sets and verdict maps) are
loaded in the wire lab's router (tests/sim/nfwire.py). For each config the router's state
is collected, every probe is explained, then sent for real: a TCP SYN, a UDP datagram or an
ICMP echo request, forwarded from the client side or sent by the router itself. Where the
kernel put it — out of which interface with which addresses and ports after NAT, delivered
to the router, or nowhere — must be what the explanation says: its verdict, egress device
and egress src/dst/ports (for a local delivery, the addresses after the last hook). An
uncertain explanation counts as a disagreement too: the generator only uses what
docs/netfilter.md says is evaluated.

Seeded: WHYROUTE_NF_SEED=<n> (default 1) draws the configs, WHYROUTE_NF_CONFIGS how many;
WHYROUTE_NF_CONFIG=<config name> replays one config alone and prints every explanation (the
name is the config's seed, `:legacy` when the lab had legacy tables); WHYROUTE_NF_ENABLE=all
(or feature names, comma-separated) also draws the features nflab_random.DISABLED leaves out,
to try a fix. A failure prints the seed, the agreement, every disagreement, and the failing
configs as the shell commands that load them.
"""

from __future__ import annotations

import os
import random
from collections import Counter

from tests.sim import nflab_random
from tests.sim.nfwire import Comparison, compare
from tracer.output.text import render
from tracer.sim.explanation import RerouteStep

SEED = int(os.environ.get("WHYROUTE_NF_SEED", "1"))
CONFIGS = int(os.environ.get("WHYROUTE_NF_CONFIGS", "150"))
ONLY = os.environ.get("WHYROUTE_NF_CONFIG")
TRYING = os.environ.get("WHYROUTE_NF_ENABLE", "")
ENABLED = frozenset(nflab_random.FEATURES) if TRYING == "all" else \
    nflab_random.ENABLED | {name for name in TRYING.split(",") if name in nflab_random.FEATURES}
LEFT_OUT = {name: why for name, why in nflab_random.DISABLED.items() if name not in ENABLED}
SHOWN_CONFIGS = 6  # failing configs printed in full

Results = list[tuple[nflab_random.Config, list[Comparison]]]


def draw_configs() -> list[nflab_random.Config]:
    if ONLY:
        return [nflab_random.config_named(ONLY, ENABLED)]
    master = random.Random(SEED)
    # the legacy tables exist from the second half on: each half keeps its own hook order
    return [nflab_random.random_config(master.randrange(1 << 30), legacy_tables=n >= CONFIGS // 2, enabled=ENABLED)
            for n in range(CONFIGS)]


# the configs that used these are counted in the report (the last defects of issue 9)
COUNTED_FEATURES = ("output-several-reroutes", "nat-chains-without-conntrack", "lo-keeps-conntrack", "jhash")


def coverage(results: Results) -> str:
    """What the probes went through, by why-route's account: verdicts, NAT, policy tables, re-routes,
    nat chains left out for want of conntrack; and how many configs used COUNTED_FEATURES."""
    verdicts: Counter = Counter()
    seen: Counter = Counter()
    features = Counter(name for cfg, _comparisons in results for name in cfg.features)
    for _cfg, comparisons in results:
        for e in (c.explanation for c in comparisons if c.explanation):
            verdicts[e.verdict] += 1
            base_chains = {(v.source, v.family, v.table, v.chain) for hook in e.hooks for v in hook.chains}
            for step in e.nat:
                rewrite = step.rewrite
                seen[rewrite.type] += 1
                seen["with a new port"] += rewrite.to_port != rewrite.from_port
                seen["in a regular chain"] += (rewrite.source, rewrite.family, rewrite.table,
                                               rewrite.chain) not in base_chains
            for table in (100, 101):
                seen[f"table {table}"] += any(d.table_id == table for d in e.decisions)
            reroutes = sum(isinstance(step, RerouteStep) for step in e.steps)
            seen["re-routed after output"] += reroutes > 0
            seen["twice or more"] += reroutes > 1
            seen["nat chains not run: conntrack off"] += any(
                (v.skipped or "").startswith("not run: conntrack is off") for hook in e.hooks for v in hook.chains)

    def listed(counts, names):
        return ", ".join(f"{name} {counts[name]}" for name in names)

    return (f"verdicts: {listed(verdicts, sorted(verdicts))}; "
            f"NAT: {listed(seen, ('dnat', 'redirect', 'snat', 'masquerade'))} "
            f"({listed(seen, ('with a new port', 'in a regular chain'))}); "
            f"routed by {listed(seen, ('table 100', 'table 101'))}; "
            f"{listed(seen, ('re-routed after output', 'twice or more', 'nat chains not run: conntrack off'))}; "
            f"configs with {listed(features, COUNTED_FEATURES)}")


def report(results: Results) -> str:
    compared = sum(len(comparisons) for _cfg, comparisons in results)
    failing = [(cfg, [c for c in comparisons if not c.agrees]) for cfg, comparisons in results]
    failing = [(cfg, bad) for cfg, bad in failing if bad]
    agreed = compared - sum(len(bad) for _cfg, bad in failing)
    lines = [f"WHYROUTE_NF_SEED={SEED}: {agreed}/{compared} probes agree ({100 * agreed / max(compared, 1):.2f} %) "
             f"over {len(results)} configs", f"  {coverage(results)}"]
    if LEFT_OUT:
        lines.append("  generator features left out: " + "; ".join(f"{k} ({v})" for k, v in LEFT_OUT.items()))
    for cfg, bad in failing:
        lines.append(f"  WHYROUTE_NF_CONFIG={cfg.name} (features: {', '.join(sorted(cfg.features))})")
        lines += [f"    {c.describe()}" for c in bad]
    for cfg, bad in failing[:SHOWN_CONFIGS]:
        lines += ["", f"config {cfg.name}: the router's ruleset (in the wire lab, tests/sim/nfwire.py)", cfg.script()]
        first = next((c for c in bad if c.explanation), None)
        if first:
            lines += [f"why-route's explanation of {first.probe}:", render(first.explanation)]
    return "\n".join(lines)


def test_netfilter_and_nat_agree_with_the_kernel(wire_lab):
    configs = draw_configs()
    print(f"WHYROUTE_NF_SEED={SEED}")
    results = [(cfg, compare(wire_lab, cfg, cfg.probes)) for cfg in configs]
    text = report(results)
    print("\n".join(text.splitlines()[:3]))
    if ONLY:
        for comparison in results[0][1]:
            print(comparison.describe())
            if comparison.explanation:
                print(render(comparison.explanation))
    assert all(c.agrees for _cfg, comparisons in results for c in comparisons), text

