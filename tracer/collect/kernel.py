"""Routing questions asked of the live kernel (RTM_GETROUTE), in the flow vocabulary.

- `answers(queries, netns, links)`: the kernel's answer to each RouteQuery —
  the route it resolves and, with RTM_F_FIB_MATCH, the route entry that
  matched — for the live cross-check of an explanation.
- `augment(state, flow, netns, iif_of)`: a state whose too-large tables
  (left out of the dump, see collect_state(large_table=…)) are filled in with
  the routes this flow's lookups match. Within those tables the simulation
  then only knows the routes the kernel matched — exact for this flow, which
  is all one explanation needs; `why-route snapshot` always dumps everything.
"""

from __future__ import annotations

import errno as errno_mod
from collections.abc import Callable, Iterable

from tracer import netns as netns_mod
from tracer.collect.netlink import NetlinkError, RtnlSocket
from tracer.flow import Flow, RouteAnswer, RouteQuery
from tracer.model import HostState, Link, Route


def _errno_name(exc: NetlinkError) -> str:
    return errno_mod.errorcode.get(exc.errno, str(exc.errno))


def _route_get_args(rtnl: RtnlSocket, q: RouteQuery) -> dict:
    """route_get's keyword arguments for a query; KeyError for an interface that is gone."""
    index = {name: i for i, name in rtnl.names.items()}
    kwargs = dict(family=q.family, dst=q.dst, src=q.src, mark=q.mark or None, uid=q.uid,
                  proto=q.proto or None, sport=q.sport, dport=q.dport, tos=q.tos)
    for key, name in (("iif", q.iif), ("oif", q.oif)):
        if name:
            kwargs[key] = index[name]
    return kwargs


def _ask(rtnl: RtnlSocket, query: RouteQuery) -> RouteAnswer:
    try:
        kwargs = _route_get_args(rtnl, query)
    except KeyError as gone:
        return RouteAnswer(text=f"interface {gone.args[0]} no longer exists", error="ENODEV")
    try:
        route = rtnl.route_get(**kwargs)
    except NetlinkError as exc:
        return RouteAnswer(text=f"RTNETLINK answers: {exc.strerror}", error=_errno_name(exc))
    matched, fibmatch_error = None, None
    try:
        matched = rtnl.route_get(fibmatch=True, **kwargs)
    except NetlinkError as exc:  # fibmatch can refuse what the plain query answers
        fibmatch_error = _errno_name(exc)
    words = [route.type if route.type != "unicast" else "", route.dst]
    if route.gateway:
        words += ["via", route.gateway]
    words += ["dev", str(route.dev), "table", str(route.table)]
    if route.prefsrc:
        words += ["src", route.prefsrc]
    if matched is not None:
        words += ["(fibmatch:", f"{matched.prefix})"]
    return RouteAnswer(
        text=" ".join(w for w in words if w), type=route.type, dev=route.dev, gateway=route.gateway,
        # RT_TABLE_UNSPEC: no table was looked up (limited broadcast, …)
        prefsrc=route.prefsrc, table=route.table or None, route=matched.prefix if matched else None,
        nexthops=tuple((h.gateway, h.dev) for h in matched.nexthops) if matched else (),
        fibmatch_error=fibmatch_error)


def answers(queries: Iterable[RouteQuery], netns: str | None, links: Iterable[Link]) -> tuple[RouteAnswer, ...]:
    """The kernel's answer to each query, asked in `netns`; `links` (read from this
    kernel a moment ago) name the ifindexes."""
    with netns_mod.entered(netns), RtnlSocket() as rtnl:
        rtnl.names = {link.index: link.name for link in links}
        return tuple(_ask(rtnl, q) for q in queries)


def _matched(rtnl: RtnlSocket, query: RouteQuery) -> Route | None:
    try:
        return rtnl.route_get(fibmatch=True, **_route_get_args(rtnl, query))
    except (NetlinkError, KeyError):
        return None  # no route: the simulation reports the same error from the rules


def augment(state: HostState, flow: Flow, netns: str | None,
            iif_of: Callable[[HostState, Flow], str | None]) -> HostState:
    """The state plus the large tables' routes that this flow's lookups match.
    `iif_of(state, flow)`: the input interface the explanation will infer for a
    forwarded flow given without one (asked once the route back to SRC is known)."""
    partial = set(state.partial_tables)
    if not partial:
        return state
    found = []
    with netns_mod.entered(netns), RtnlSocket() as rtnl:
        rtnl.names = {link.index: link.name for link in state.links}  # read from this kernel just now
        common = dict(family=flow.family, mark=flow.mark, tos=flow.tos)
        iif = flow.iif
        if flow.src:
            found.append(_matched(rtnl, RouteQuery(dst=flow.src, **common)))
            if iif is None and not any(a.local == flow.src for a in state.addresses):
                iif = iif_of(_with(state, found, partial), flow)
            if iif:  # rp_filter's reverse lookup: towards SRC, from DST, leaving by iif
                found.append(_matched(rtnl, RouteQuery(dst=flow.src, src=flow.dst, **common)))
        found.append(_matched(rtnl, RouteQuery(dst=flow.dst, src=flow.src if iif else None, iif=iif,
                                               proto=flow.proto, sport=flow.sport, dport=flow.dport,
                                               uid=None if iif else flow.uid, **common)))
        # The simulation resolves each gateway through the routes that reach it
        # (usually a connected route in main): fetch those too.
        gateways = {hop.gateway for route in (*state.routes, *filter(None, found))
                    if route.family == flow.family for hop in route.nexthops if hop.gateway}
        found.extend(_matched(rtnl, RouteQuery(family=flow.family, dst=gateway)) for gateway in sorted(gateways))
    notes = tuple(f"table {state.table_name(t)} has {state.partial_tables[t]:,} routes: not dumped; "
                  f"the routes this flow matches in it come from the kernel (RTM_F_FIB_MATCH)" for t in sorted(partial))
    return _with(state, found, partial).replace(notes=(*state.notes, *notes))


def _with(state: HostState, found, partial: set[int]) -> HostState:
    extra = [r for r in found if r is not None and r.table in partial and r not in state.routes]
    return state.replace(routes=state.routes + tuple(dict.fromkeys(extra))) if extra else state
