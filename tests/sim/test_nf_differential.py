"""The netfilter and NAT simulation against the kernel, with real packets.

Random rulesets (tests/sim/nflab_random.py: nft native and iptables-nft syntax, base and
regular chains, filter/nat/route chains at every hook they allow, marks selecting ip
rules, snat/masquerade/dnat/redirect with and without ports, sets and verdict maps) are
loaded in the wire lab's router (tests/sim/nfwire.py). For each config the router's state
is collected (collect_state), every probe is explained (tracer.sim.explain.explain), then
sent for real: a TCP SYN, a UDP datagram or an ICMP echo request, forwarded from the client
side or sent by the router itself. Where the kernel put it — out of which interface with
which addresses and ports after NAT, delivered to the router, or nowhere — must be what the
explanation says: its verdict, egress device and egress src/dst/ports (or, for a local
delivery, the addresses after the input hook). An explanation that is uncertain counts as
a disagreement too: the generator only uses what docs/netfilter.md says is evaluated.

Seeded: WHYROUTE_NF_SEED=<n> (default 1) draws the configs; WHYROUTE_NF_CONFIGS their
number; WHYROUTE_NF_CONFIG=<config name> replays one config alone, printing every
explanation (the name is the config's seed, `:legacy` when the lab had legacy tables);
WHYROUTE_NF_ENABLE=all (or feature names) draws the features nflab_random.DISABLED leaves
out, to try a fix. A failure prints the seed, agreement, every disagreement and the failing
configs as the shell commands that load them.
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass

import pytest

from tests.sim import nflab_random, nfwire
from tests.sim.nfwire import LOCAL, Arrival, Probe
from tracer.collect.live import collect_state
from tracer.output.text import render
from tracer.sim.explain import explain
from tracer.sim.explanation import Explanation
from tracer.vocab import ICMP

SEED = int(os.environ.get("WHYROUTE_NF_SEED", "1"))
CONFIGS = int(os.environ.get("WHYROUTE_NF_CONFIGS", "150"))
ONLY = os.environ.get("WHYROUTE_NF_CONFIG")
# Disabled generator features to draw anyway ("all", or names): to try a fix before enabling it.
TRYING = os.environ.get("WHYROUTE_NF_ENABLE", "")
ENABLED = frozenset(nflab_random.FEATURES) if TRYING == "all" else \
    nflab_random.ENABLED | {name for name in TRYING.split(",") if name in nflab_random.FEATURES}
SHOWN_CONFIGS = 6  # failing configs printed in full


@dataclass
class Comparison:
    probe: Probe
    explanation: Explanation | None
    expected: Arrival | None
    seen: list[Arrival]
    refused: str | None = None  # sendto's error for a local-out probe
    error: str | None = None  # why-route raised

    @property
    def uncertain(self) -> tuple[str, ...]:
        if self.explanation is None:
            return ()
        return tuple(r for hook in self.explanation.hooks for r in hook.uncertain_reasons)

    @property
    def agrees(self) -> bool:
        if self.error or self.uncertain or len(self.seen) > 1:
            return False
        if self.expected is None or not self.seen:
            return self.expected is None and not self.seen
        return same_place(self.expected, self.seen[0], self.explanation)

    def describe(self) -> str:
        kernel = " and ".join(map(str, self.seen)) or "not seen" + (f" (sendto: {self.refused})" if self.refused else "")
        if self.error:
            said = f"raised {self.error}"
        else:
            e = self.explanation
            said = str(self.expected) if self.expected else f"not seen ({e.verdict}: {e.verdict_reason})"
            if self.uncertain:
                said += f"; uncertain: {'; '.join(self.uncertain)}"
        return f"{self.probe}\n      kernel:    {kernel}\n      why-route: {said}"


def same_place(expected: Arrival, seen: Arrival, e: Explanation) -> bool:
    """The explanation's arrival is the kernel's. A port the explanation leaves out (None on a
    TCP/UDP probe) is one it says the kernel picks at random (tracer.sim.netfilter's NAT
    rewrite with `to_port` None and a note saying so): any port is then the kernel's pick."""
    if (expected.place, expected.src, expected.dst) != (seen.place, seen.src, seen.dst):
        return False
    for name, side in (("sport", "src"), ("dport", "dst")):
        claimed, got = getattr(expected, name), getattr(seen, name)
        if claimed is None and got is not None and _picked_at_random(e, side):
            continue
        if claimed != got:
            return False
    return True


def _picked_at_random(e: Explanation, side: str) -> bool:
    return any(step.rewrite.field == side and step.rewrite.to_port is None and "random" in (step.rewrite.note or "")
               for step in e.nat)


def expected_arrival(e: Explanation) -> Arrival | None:
    """Where the explanation says the probe shows up."""
    if e.leaves:
        out = e.egress
        return Arrival(out.dev, out.src, out.dst, out.sport, out.dport)
    if e.verdict == "delivered-locally":
        packet = e.hooks[-1].packet  # as the last hook (input, or output for a local-out probe) left it
        return Arrival(LOCAL, packet.src, packet.dst, packet.sport, packet.dport)
    return None


def waves(probes: list[Probe], expected: dict[int, Arrival | None]) -> list[list[Probe]]:
    """The probes in sending rounds, no two of a round expected to end with the same addresses
    and ports: the second would meet the first's conntrack entry and the kernel would pick
    another port (or drop it), which no single-flow explanation can foresee. Sports are unique
    per config, so only NAT to a fixed port can make two probes collide."""
    rounds: list[tuple[list[Probe], set]] = []
    for probe in probes:
        arrival = expected.get(probe.id)
        key = (probe.proto, arrival.src, arrival.sport, arrival.dst, arrival.dport) \
            if arrival and probe.proto != ICMP else None
        for members, keys in rounds:
            if key is None or key not in keys:
                members.append(probe)
                keys.add(key)
                break
        else:
            rounds.append(([probe], {key}))
    return [members for members, _keys in rounds]


def run_config(lab: nfwire.WireLab, cfg: nflab_random.Config) -> list[Comparison]:
    if cfg.legacy_tables and not lab.legacy:
        lab.load_legacy_tables()
    lab.load(cfg.nft, cfg.iptables_nft, cfg.iptables_legacy, cfg.nft_first)
    state = collect_state(lab.router)
    comparisons: dict[int, Comparison] = {}
    for probe in cfg.probes:
        try:
            e = explain(state, probe.flow())
            comparisons[probe.id] = Comparison(probe, e, expected_arrival(e), [])
        except Exception as exc:  # noqa: BLE001 - a crash is a disagreement to report, not the end of the run
            comparisons[probe.id] = Comparison(probe, None, None, [], error=f"{type(exc).__name__}: {exc}")
    for n, batch in enumerate(waves(cfg.probes, {i: c.expected for i, c in comparisons.items()})):
        if n:
            lab.forget_connections()
        refused = lab.send(batch)
        seen = lab.arrivals({p.id for p in batch if comparisons[p.id].expected})
        for probe in batch:
            comparisons[probe.id].seen = seen.get(probe.id, [])
            comparisons[probe.id].refused = refused.get(probe.id)
    return list(comparisons.values())


def report(seed: int, results: list[tuple[nflab_random.Config, list[Comparison]]]) -> str:
    compared = sum(len(c) for _cfg, c in results)
    failing = [(cfg, [c for c in comps if not c.agrees]) for cfg, comps in results]
    failing = [(cfg, bad) for cfg, bad in failing if bad]
    wrong = sum(len(bad) for _cfg, bad in failing)
    lines = [f"WHYROUTE_NF_SEED={seed}: {compared - wrong}/{compared} probes agree "
             f"({100 * (compared - wrong) / max(compared, 1):.2f} %) over {len(results)} configs"]
    if DISABLED_NOTE:
        lines.append(DISABLED_NOTE)
    for cfg, bad in failing:
        lines.append(f"  WHYROUTE_NF_CONFIG={cfg.name} (features: {', '.join(sorted(cfg.features))})")
        lines += [f"    {c.describe()}" for c in bad]
    for cfg, bad in failing[:SHOWN_CONFIGS]:
        lines += ["", f"config {cfg.name}: the router's ruleset", cfg.script()]
        first = next((c for c in bad if c.explanation), None)
        if first:
            lines += [f"why-route's explanation of {first.probe}:", render(first.explanation)]
    return "\n".join(lines)


LEFT_OUT = {k: v for k, v in nflab_random.DISABLED.items() if k not in ENABLED}
DISABLED_NOTE = "generator features left out: " + "; ".join(f"{k} ({v})" for k, v in LEFT_OUT.items()) \
    if LEFT_OUT else ""


@pytest.fixture(scope="module")
def wire_lab():
    why = nfwire.can_run()
    if why:
        print(f"skipping kernel test: {why}")
        pytest.skip(why)
    with nfwire.WireLab() as lab:
        yield lab


def test_netfilter_and_nat_agree_with_the_kernel(wire_lab):
    if ONLY:
        configs = [nflab_random.config_named(ONLY, ENABLED)]
    else:
        master = random.Random(SEED)
        # the legacy tables exist from the second half on: both halves keep their own hook order
        configs = [nflab_random.random_config(master.randrange(1 << 30), legacy_tables=n >= CONFIGS // 2,
                                              enabled=ENABLED) for n in range(CONFIGS)]
    print(f"WHYROUTE_NF_SEED={SEED}")
    results = [(cfg, run_config(wire_lab, cfg)) for cfg in configs]
    text = report(SEED, results)
    print(text.splitlines()[0])
    if ONLY:
        for comparison in results[0][1]:
            print(comparison.describe())
            if comparison.explanation:
                print(render(comparison.explanation))
    assert sum(len(c) for _cfg, c in results) == len(configs) * nflab_random.PROBES_PER_CONFIG
    assert all(c.agrees for _cfg, comps in results for c in comps), text
