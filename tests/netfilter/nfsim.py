"""What the kernel tests share: walk a packet through the model hook by hook the
way the kernel does, and read what the kernel did (rule counters, conntrack).

The walk feeds each hook's `HookTraversal.packet` to the next hook, so marks,
ct marks, the conntrack state (untracked) and NAT carry over as in the kernel.
"""

from __future__ import annotations

import re

from tests.netfilter import nflab
from tests.netfilter.nflab import CLIENT4, ROUTER_IN4, ROUTER_IN6, ROUTER_OUT4, ROUTER_OUT6, SERVER4
from tracer.collect.netfilter import collect_netfilter
from tracer.sim.netfilter import AddressInfo, PacketView, hooks_for_origin, load_ruleset, traverse

ROUTER = AddressInfo.simple(
    [ROUTER_IN4, ROUTER_OUT4, ROUTER_IN6, ROUTER_OUT6, "127.0.0.1"],
    interfaces={"r0": [ROUTER_IN4, ROUTER_IN6], "r1": [ROUTER_OUT4, ROUTER_OUT6]},
)


def simulate(rs, packet, origin="forwarded"):
    out, p = [], packet
    for hook in hooks_for_origin(origin):
        tr = traverse(rs, hook, p, addresses=ROUTER)
        out.append(tr)
        if tr.verdict != "accept":
            break
        p = tr.packet
    return out


def sim_hits(trs):
    return {(c.source, c.family, c.table, s.chain, s.handle)
            for tr in trs for c in tr.chains for s in c.steps
            if s.matched is True and s.counters is not None}


def kernel_hits(rs):
    return {(c.source, c.family, c.table, c.name, r.id)
            for c in rs.chains.values() for r in c.rules
            if r.counters and r.counters["packets"] > 0}


def final_verdict(trs):
    return next((t.verdict for t in trs if t.verdict != "accept"), "accept")


def udp(dport, sport, src=CLIENT4, dst=SERVER4, **kw):
    fam = "ip6" if ":" in src else "ip"
    length = (40 if fam == "ip6" else 20) + 8 + 1
    return PacketView(fam, src, dst, 17, sport, dport, iif="r0", oif="r1", length=length, **kw)


def syn(dport, sport, src=CLIENT4, dst=SERVER4, **kw):
    fam = "ip6" if ":" in src else "ip"
    return PacketView(fam, src, dst, 6, sport, dport, iif="r0", oif="r1", tcp_flags=0x02,
                      length=(40 if fam == "ip6" else 20) + 40, **kw)


def run(lab, ruleset, packet, send, origin="forwarded"):
    """Load `ruleset` (a name of nflab.RULESETS or a list of steps) in the router,
    send one packet, collect the router and walk `packet` through the model."""
    lab.load(nflab.RULESETS[ruleset] if isinstance(ruleset, str) else ruleset)
    lab.flush_conntrack()
    send()
    rs = load_ruleset(collect_netfilter(lab.r))
    return rs, simulate(rs, packet, origin)


def check_agrees(lab, rs, trs):
    assert sim_hits(trs) == kernel_hits(rs)
    delivered = lab.server_received() > 0
    assert delivered == (final_verdict(trs) == "accept")


def conntrack_tuples(lab):
    """[(orig dict, reply dict)] from `conntrack -L` in the router."""
    out = []
    for line in lab.conntrack():
        pairs = re.findall(r"(src|dst|sport|dport)=(\S+)", line)
        if len(pairs) >= 8:
            orig, reply = dict(pairs[:4]), dict(pairs[4:8])
            out.append((orig, reply))
    return out


def counting_table(lab, ns: str, name: str, match: str, hook: str = "input") -> None:
    """A counter in namespace `ns` for the packets matching `match` (see `counted`)."""
    lab.nft(ns, f"table inet {name} {{ chain c {{ type filter hook {hook} priority -5; policy accept;\n"
                f"{match} counter\n}}\n}}")


def counted(lab, ns: str, name: str) -> int:
    out = lab.ex(["nft", "list", "table", "inet", name], ns=ns)
    return sum(int(n) for n in re.findall(r"counter packets (\d+)", out))


def nft_ruleset(family: str, chains: dict) -> dict:
    """The collector's dict for one nft table: {name: (hook, prio, type, [[expr, …], …])}."""
    objs = [{"table": {"family": family, "name": "t", "handle": 1}}]
    handle = 1
    for name, (hook, prio, ctype, rules) in chains.items():
        handle += 1
        objs.append({"chain": {"family": family, "table": "t", "name": name, "handle": handle, "type": ctype,
                               "hook": hook, "prio": prio, "policy": "accept"}})
        for expr in rules:
            handle += 1
            objs.append({"rule": {"family": family, "table": "t", "chain": name, "handle": handle, "expr": expr}})
    return {"nft": {"status": "ok", "ruleset": {"nftables": objs}}}
