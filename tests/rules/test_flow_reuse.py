"""The rules engine takes an explained flow's path from the explanation's own walk
(CheckContext._path_from_explanation); it must equal the engine's own traversal."""

import glob
from pathlib import Path

from tracer.collect import snapshot
from tracer.checks.context import CheckContext
from tracer.errors import WhyRouteError
from tracer.sim.explain import explain, make_flow

FIXTURES = Path(__file__).resolve().parent / "fixtures"


def _hook(h):
    if h is None:
        return None
    d = h.to_dict()
    for key in ("packet_in", "packet"):
        d[key].pop("length")  # the explanation leaves it unset; no fixture rule reads it
    return d


def _summary(p):
    return (p.result, p.mark, p.out_src, [n.to_dict() for n in p.snat], _hook(p.forward), _hook(p.post))


def test_path_from_explanation_equals_own_walk():
    reused = 0
    for path in sorted(glob.glob(str(FIXTURES / "*" / "*.json"))):
        state = snapshot.load(path)
        for f in CheckContext(state).derived_flows:
            for proto in ("tcp", "udp", "icmp"):
                try:
                    e = explain(state, make_flow(f.dst, f.src, iif=f.iif, proto=proto,
                                                 dport=None if proto == "icmp" else 443))
                except WhyRouteError:
                    continue
                if e.origin != "forwarded":
                    continue
                mine = CheckContext(state)._path_from_explanation(e, "x")
                if mine is None:
                    continue
                reused += 1
                own = CheckContext(state).flow(e.flow.src, e.flow.dst, e.flow.iif, why="x", proto=e.flow.proto,
                                               sport=e.flow.sport, dport=e.flow.dport, mark=e.flow.mark)
                assert _summary(mine) == _summary(own), (path, e.flow)
    assert reused > 100
