"""The rules engine takes every flow's path from the explanation's one walk (tracer.sim.explain)."""

import glob
from pathlib import Path

from tracer.checks.context import NEW_CONNECTION, CheckContext
from tracer.collect import snapshot
from tracer.errors import WhyRouteError
from tracer.flow import make_flow
from tracer.sim.explain import explain

FIXTURES = Path(__file__).resolve().parent / "fixtures"


def _hooks(path):
    return [h.hook for h in path.explanation.hooks]


def test_derived_flows_are_the_explanations_walk():
    """Each derived flow's hooks and routing decision are those explain() gives for that packet."""
    checked = 0
    for path in sorted(glob.glob(str(FIXTURES / "*" / "*.json"))):
        state = snapshot.load(path)
        for f in CheckContext(state).derived_flows:
            again = explain(state, f.flow, NEW_CONNECTION)
            assert f.explanation.steps == again.steps, (path, f.flow)
            assert f.forward is again.hook("forward") or f.forward == again.hook("forward")
            if f.post is not None:
                assert _hooks(f)[-1] == "postrouting" and f.out_src == f.post.packet.src
            checked += 1
    assert checked > 50


def test_flow_asked_about_is_its_own_explanation():
    """`why-route SRC DST`'s findings are computed on the very explanation shown (no second walk)."""
    reused = 0
    for path in sorted(glob.glob(str(FIXTURES / "*" / "*.json"))):
        state = snapshot.load(path)
        ctx = CheckContext(state)
        for f in ctx.derived_flows:
            try:
                e = explain(state, make_flow(f.dst, f.src, iif=f.iif, proto="tcp", dport=443))
            except WhyRouteError:
                continue
            path_of = ctx.flow_from_explanation(e)
            if e.conntrack is None:
                assert path_of.explanation is e
                reused += 1
            else:  # an entry decided the NAT: the rules are checked on a new connection
                assert path_of.explanation.conntrack is None
    assert reused > 50
