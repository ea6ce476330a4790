"""The per-chain address index (netfilter._ChainIndex) changes nothing but speed:
the same verdict, packet, NAT and matched rules with and without it."""

import dataclasses
import random

from tracer.output.json_out import rule_visit_doc
from tracer.sim.netfilter import (
    INDEX_MIN_RULES,
    AddressInfo,
    LazyRules,
    PacketView,
    _ChainIndex,
    load_ruleset,
    traverse,
)

ADDRS = [f"10.{a}.{b}.{c}" for a in (1, 2) for b in range(3) for c in range(1, 9)]  # 48 addresses
ADDR = AddressInfo.simple(["192.0.2.1"], interfaces={"up0": ["192.0.2.1"]})


def _m(left, right, op="=="):
    return {"match": {"op": op, "left": left, "right": right}}


def _pl(proto, field):
    return {"payload": {"protocol": proto, "field": field}}


def _rule(chain, handle, expr, table="filter", family="ip"):
    return {"rule": {"family": family, "table": table, "chain": chain, "handle": handle, "expr": expr}}


def _generated(n_rules: int, seed: int = 1) -> dict:
    """A forward chain of `n_rules` mixed rules, a jumped-to chain, and a big prerouting nat chain."""
    rng = random.Random(seed)
    objs = [{"table": {"family": "ip", "name": "filter", "handle": 1}},
            {"table": {"family": "ip", "name": "nat", "handle": 2}},
            {"chain": {"family": "ip", "table": "filter", "name": "forward", "handle": 1, "type": "filter",
                       "hook": "forward", "prio": 0, "policy": "accept"}},
            {"chain": {"family": "ip", "table": "filter", "name": "sub", "handle": 2}},
            {"chain": {"family": "ip", "table": "nat", "name": "pre", "handle": 3, "type": "nat",
                       "hook": "prerouting", "prio": -100, "policy": "accept"}}]
    h = 10
    verdicts = [{"drop": None}, {"accept": None}, {"jump": {"target": "sub"}}, {"counter": None}]
    for _ in range(n_rules):
        h += 1
        kind = rng.random()
        port = _m(_pl("tcp", "dport"), rng.randrange(1, 30))
        v = rng.choice(verdicts)
        if kind < 0.6:  # the indexed shape: ip saddr/daddr == A ...
            field = rng.choice(("saddr", "daddr"))
            expr = [_m(_pl("ip", field), rng.choice(ADDRS)), port, v]
        elif kind < 0.7:  # address not first, still a leading match
            expr = [port, _m(_pl("ip", "saddr"), rng.choice(ADDRS)), v]
        elif kind < 0.8:  # never indexed: prefix, !=, set
            expr = [_m(_pl("ip", "saddr"), {"prefix": {"addr": "10.1.0.0", "len": 16}}), port, v]
            if rng.random() < 0.5:
                expr[0] = _m(_pl("ip", "daddr"), rng.choice(ADDRS), "!=")
        elif kind < 0.85:  # a statement before the address match: changes the mark, then matches
            expr = [{"mangle": {"key": {"meta": {"key": "mark"}}, "value": rng.randrange(3)}},
                    _m(_pl("ip", "saddr"), rng.choice(ADDRS)), v]
        elif kind < 0.88:  # rewrites the source mid-chain: later rules must see the new address
            expr = [_m({"meta": {"key": "mark"}}, rng.randrange(3)),
                    {"mangle": {"key": _pl("ip", "saddr"), "value": rng.choice(ADDRS)}}]
        else:
            expr = [port, _m({"meta": {"key": "mark"}}, rng.randrange(3)), v]
        objs.append(_rule("forward", h, expr))
    for _ in range(INDEX_MIN_RULES + 40):
        h += 1
        objs.append(_rule("sub", h, [_m(_pl("ip", "daddr"), rng.choice(ADDRS)),
                                     rng.choice([{"drop": None}, {"return": None}, {"accept": None}])]))
    for _ in range(INDEX_MIN_RULES + 40):
        h += 1
        objs.append(_rule("pre", h, [_m(_pl("ip", "daddr"), rng.choice(ADDRS)),
                                     {"dnat": {"addr": rng.choice(ADDRS)}}], table="nat"))
    return {"nft": {"status": "ok", "ruleset": {"nftables": objs}, "text": None}}


def _same(a, b):
    assert (a.verdict, a.packet, a.nat, a.decided_by, a.uncertain) == \
           (b.verdict, b.packet, b.nat, b.decided_by, b.uncertain)
    for ca, cb in zip(a.chains, b.chains, strict=True):
        assert (ca.verdict, ca.verdict_from, ca.skipped) == (cb.verdict, cb.verdict_from, cb.skipped)
        # every rule the index evaluated was evaluated without it, with the same outcome
        full = {(s.chain, s.handle, s.depth): s for s in cb.steps}
        for s in ca.steps:
            assert rule_visit_doc(full[(s.chain, s.handle, s.depth)]) == rule_visit_doc(s)
        assert [s for s in ca.steps if s.matched is not False] == \
               [s for s in cb.steps if s.matched is not False]
        assert cb.skipped_rules == 0


def test_index_is_equivalent_on_random_packets():
    rs = load_ruleset(_generated(2000))
    plain = dataclasses.replace(rs, indexes={})
    assert ("nft", "ip", "filter", "forward") in rs.indexes
    rng = random.Random(2)
    skipped = 0
    for _ in range(400):
        src = rng.choice(ADDRS) if rng.random() < 0.8 else "172.16.0.9"
        dst = rng.choice(ADDRS) if rng.random() < 0.8 else "8.8.8.8"
        p = PacketView("ip", src, dst, 6, 40000, rng.randrange(1, 30), iif="lan0", oif="up0",
                       mark=rng.randrange(3), tcp_flags=2)
        for hook in ("prerouting", "forward"):
            a = traverse(rs, hook, p, addresses=ADDR)
            b = traverse(plain, hook, p, addresses=ADDR)
            _same(a, b)
            skipped += sum(c.skipped_rules for c in a.chains)
    assert skipped > 0


def test_small_chains_are_not_indexed():
    rs = load_ruleset(_generated(INDEX_MIN_RULES))
    assert ("nft", "ip", "filter", "forward") not in rs.indexes
    tr = traverse(rs, "forward", PacketView("ip", "172.16.0.9", "8.8.8.8", 6, 1, 2, iif="a", oif="b"))
    assert tr.chains[0].skipped_rules == 0


def test_lazy_reason_describes_the_packet_the_rule_saw():
    # a rule fails on the mark; a later rule changes the mark: the reason keeps the old value
    objs = [{"table": {"family": "ip", "name": "f", "handle": 1}},
            {"chain": {"family": "ip", "table": "f", "name": "fw", "handle": 1, "type": "filter",
                       "hook": "forward", "prio": 0, "policy": "accept"}},
            _rule("fw", 2, [_m({"meta": {"key": "mark"}}, 5), {"drop": None}], table="f"),
            _rule("fw", 3, [{"mangle": {"key": {"meta": {"key": "mark"}}, "value": 7}}], table="f")]
    rs = load_ruleset({"nft": {"status": "ok", "ruleset": {"nftables": objs}, "text": None}})
    tr = traverse(rs, "forward", PacketView("ip", "10.0.0.1", "10.0.0.2", 6, 1, 2, iif="a", oif="b", mark=1))
    assert tr.packet.mark == 7
    reason = tr.chains[0].steps[0].reason
    assert "0x1" in reason and "0x7" not in reason, reason


def test_long_chains_compile_only_the_rules_a_walk_reads():
    rs = load_ruleset(_generated(2000))
    forward = rs.chains[("nft", "ip", "filter", "forward")]
    assert isinstance(forward.rules, LazyRules)
    compiled_at_load = sum(rule is not None for rule in forward.rules._compiled)
    p = PacketView("ip", "172.16.0.9", "8.8.8.8", 6, 40000, 5, iif="lan0", oif="up0", tcp_flags=2)
    walked = traverse(rs, "forward", p, addresses=ADDR)
    compiled = sum(rule is not None for rule in forward.rules._compiled)
    # only the jumps (for the chains they reach) at load; then the rules no address rules out
    assert compiled_at_load < 2000 * 0.3 and compiled < 2000 * 0.6, (compiled_at_load, compiled)
    assert walked.chains[0].skipped_rules > 0


def test_the_index_read_from_json_is_the_index_read_from_compiled_rules():
    raw = _generated(2000, seed=3)
    lazy = load_ruleset(raw)
    for key, index in lazy.indexes.items():
        rules = lazy.chains[key].rules
        eager = _ChainIndex(tuple(rules[i] for i in range(len(rules))))
        assert (index.always, index.src, index.dst) == (eager.always, eager.src, eager.dst), key
