"""Fill in, from the kernel, the routes of tables too large to dump for one explanation.

A live explanation on a router with a full internet table must not dump a
million routes. collect_state(large_table=N) leaves such tables out; here the
kernel's RTM_F_FIB_MATCH answers (the matched route and its table) for the
flow's lookups are added to the state. Within those tables the simulation then
only knows the routes the kernel matched — exact for this flow, which is all
the explanation needs; `why-route snapshot` always dumps everything.
"""

from __future__ import annotations

from tracer import netns as netns_mod
from tracer.collect.netlink import NetlinkError, RtnlSocket
from tracer.model import HostState


def _matched(rtnl: RtnlSocket, index: dict[str, int], *, family, dst, src=None, iif=None, mark=0,
             proto=0, sport=None, dport=None, tos=0, uid=None):
    kwargs = dict(family=family, dst=dst, src=src, mark=mark or None, proto=proto or None,
                  sport=sport, dport=dport, tos=tos, uid=uid)
    if iif:
        kwargs["iif"] = index[iif]
    try:
        return rtnl.route_get(fibmatch=True, **kwargs)
    except (NetlinkError, KeyError):
        return None  # no route: the simulation reports the same error from the rules


def augment(state: HostState, flow, netns: str | None) -> HostState:
    """The state plus the large tables' routes that this flow's lookups match."""
    partial = {int(t) for t in state.meta.get("partial_tables", {})}
    if not partial:
        return state
    from tracer.sim.explain import infer_iif  # the same inference explain() makes

    found = []
    with netns_mod.entered(netns), RtnlSocket() as rtnl:
        rtnl.names = {link.index: link.name for link in state.links}  # read from this kernel just now
        index = {name: i for i, name in rtnl.names.items()}
        common = dict(family=flow.family, mark=flow.mark, tos=flow.tos)
        iif = flow.iif
        if flow.src:
            found.append(_matched(rtnl, index, dst=flow.src, **common))
            if iif is None:
                partial_state = _with(state, found, partial)
                if not any(a.local == flow.src for a in state.addresses):
                    iif = infer_iif(partial_state, flow)[0]
            if iif:  # rp_filter's reverse lookup: towards SRC, from DST, leaving by iif
                found.append(_matched(rtnl, index, dst=flow.src, src=flow.dst, **common))
        found.append(_matched(rtnl, index, dst=flow.dst, src=flow.src if iif else None, iif=iif,
                              proto=flow.proto, sport=flow.sport, dport=flow.dport,
                              uid=None if iif else flow.uid, **common))
        # The simulation resolves each gateway through the routes that reach it
        # (usually a connected route in main): fetch those too.
        gateways = {hop.gateway for route in (*state.routes, *filter(None, found))
                    if route.family == flow.family for hop in route.nexthops if hop.gateway}
        found.extend(_matched(rtnl, index, family=flow.family, dst=gateway) for gateway in sorted(gateways))
    notes = state.meta.get("notes", [])
    meta = {**state.meta, "notes": [*notes, *(
        f"table {state.table_name(t)} has {state.meta['partial_tables'][str(t)]:,} routes: not dumped; "
        f"the routes this flow matches in it come from the kernel (RTM_F_FIB_MATCH)" for t in sorted(partial))]}
    return _with(state, found, partial).replace(meta=meta)


def _with(state: HostState, found, partial: set[int]) -> HostState:
    extra = [r for r in found if r is not None and r.table in partial and r not in state.routes]
    return state.replace(routes=state.routes + tuple(dict.fromkeys(extra))) if extra else state
