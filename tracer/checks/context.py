"""What a check sees: the HostState plus cached indexes and helpers.

Everything expensive is computed once, lazily, and shared by all rules:
routes are walked once and indexed by table (a million-route table must not
be scanned per rule), prefix lookups use per-table hash indexes, and derived
flows (the traffic a router is evidently meant to forward) are routed once
through the FIB simulation and the netfilter model.
"""

from __future__ import annotations

import dataclasses
import ipaddress
from dataclasses import dataclass
from functools import cached_property

from tracer.model import AF_INET, AF_INET6, SCOPE_HOST, TABLE_DEFAULT, TABLE_LOCAL, TABLE_MAIN, Address, HostState, Route
from tracer.sim import fib
from tracer.sim.explain import route_text as explain_route_text

RESERVED_TABLES = (TABLE_DEFAULT, TABLE_MAIN, TABLE_LOCAL)
# Destinations used to stand for "the Internet" when deriving flows: the first
# one that no more specific route covers is taken.
PROBE_DESTINATIONS = ("8.8.8.8", "1.1.1.1", "9.9.9.9", "208.67.222.222")
PROBE_SPORT, PROBE_DPORT = 40000, 443
TCP = 6
_CGNAT = ipaddress.ip_network("100.64.0.0/10")


def family_of(address: str) -> int:
    return AF_INET6 if ":" in address else AF_INET


def bits(family: int) -> int:
    return 32 if family == AF_INET else 128


def prefix_text(address: str | None, length: int, family: int) -> str:
    if not address or length == 0:
        return "all" if not address else "default"
    return address if length == bits(family) else f"{address}/{length}"


def is_private(address: str) -> bool:
    ip = ipaddress.ip_address(address)
    return ip.is_private or (ip.version == 4 and ip in _CGNAT)


def rule_text(rule, state: HostState) -> str:
    """A rule as `ip rule` prints it (the selectors and the action)."""
    return fib.rule_text(state, rule)


def route_text(route: Route, state: HostState) -> str:
    """A route as `ip route show` prints it."""
    return explain_route_text(route, state)


def table_arg(state: HostState, table: int) -> str:
    """How to name the table on an `ip` command line (omitted for main)."""
    return "" if table == TABLE_MAIN else f" table {state.table_name(table)}"


@dataclass(frozen=True)
class Connected:
    """A prefix reachable directly on an interface (from one of its addresses)."""

    ifname: str
    network: ipaddress.IPv4Network | ipaddress.IPv6Network
    address: Address

    @property
    def family(self) -> int:
        return self.address.family

    def __contains__(self, address: str) -> bool:
        ip = ipaddress.ip_address(address)
        return ip.version == self.network.version and ip in self.network


@dataclass(frozen=True)
class GatewayUse:
    count: int  # routes using this gateway on this device
    sample: tuple[Route, ...]  # the first few of them
    nexthop: object  # one Nexthop (flags: onlink, dead, linkdown)

    def routes_text(self, state: HostState) -> str:
        shown = ", ".join(route_text(r, state) for r in self.sample)
        return shown + (f" and {self.count - len(self.sample)} more" if self.count > len(self.sample) else "")


@dataclass(frozen=True)
class FlowPath:
    """One flow through this host as the FIB and netfilter models see it."""

    src: str
    dst: str
    iif: str | None
    proto: int
    sport: int | None
    dport: int | None
    why: str  # where the flow comes from ("source of rule 32765", "a host of the LAN …")
    result: object  # fib.FibResult
    mark: int = 0  # after prerouting
    forward: object = None  # HookTraversal at forward (forwarded flows)
    post: object = None  # HookTraversal at postrouting
    out_src: str | None = None  # the source as the packet leaves (after SNAT)
    snat: tuple = ()  # NatRewrite of the source

    @property
    def oif(self) -> str | None:
        return None if self.result is None or self.result.error else self.result.dev

    @property
    def dropped_by(self) -> str | None:
        for hook in (self.forward, self.post):
            if hook is not None and hook.verdict in ("drop", "reject"):
                return hook.decided_by or hook.hook
        return None

    def decision_text(self, state: HostState) -> str:
        r = self.result
        if r is None or r.error:
            return f"no route ({r.error if r else 'unknown'})"
        rule = rule_text(r.rule, state) if r.rule else "the main table"
        route = route_text(r.route, state) if r.route is not None else f"dev {r.dev}"
        return f"rule {rule} → {route}"


class CheckContext:
    """The host under check; every helper is computed at most once."""

    def __init__(self, state: HostState):
        self.state = state

    # -- netfilter -----------------------------------------------------------
    @cached_property
    def ruleset(self):
        from tracer.sim.netfilter import load_ruleset

        # Shared with the explanation of the same state (compiling 10k rules costs).
        return self.state.cached("ruleset", lambda: load_ruleset(self.state.netfilter or {}))

    @cached_property
    def netfilter_known(self) -> bool:
        """False when the snapshot holds no netfilter dump at all (then NAT/filter checks stay quiet)."""
        nf = self.state.netfilter or {}
        return bool(nf.get("nft") or nf.get("iptables_nft") or nf.get("iptables_legacy"))

    @cached_property
    def address_info(self):
        from tracer.sim.explain import address_info

        return address_info(self.state)

    # -- links and addresses -------------------------------------------------
    @cached_property
    def links(self) -> dict:
        return {link.name: link for link in self.state.links}

    @cached_property
    def local_addresses(self) -> frozenset[str]:
        return frozenset(a.local for a in self.state.addresses)

    def is_local(self, address: str) -> bool:
        return address in self.local_addresses

    @cached_property
    def connected(self) -> tuple[Connected, ...]:
        out = []
        for a in self.state.addresses:
            if a.scope == SCOPE_HOST or a.ifname == "lo":
                continue
            out.append(Connected(a.ifname, ipaddress.ip_network(f"{a.network_address}/{a.prefixlen}", strict=False), a))
        return tuple(out)

    def connected_on(self, ifname: str, family: int | None = None) -> list[Connected]:
        return [c for c in self.connected if c.ifname == ifname and (family is None or c.family == family)]

    def connected_containing(self, address: str) -> Connected | None:
        """The longest connected prefix holding `address`, or None."""
        best = None
        for c in self.connected:
            if address in c and (best is None or c.network.prefixlen > best.network.prefixlen):
                best = c
        return best

    def primary_address(self, ifname: str, family: int = AF_INET) -> str | None:
        addrs = [a for a in self.state.addresses_of(ifname, family) if a.scope != SCOPE_HOST]
        primary = [a for a in addrs if not a.secondary] or addrs
        return primary[0].local if primary else None

    def dynamic_reason(self, ifname: str) -> str | None:
        """Why `ifname` looks like it gets its address dynamically (PPP, DHCP), or None."""
        link = self.links.get(ifname)
        if link is not None and link.kind in ("ppp", "pppoe"):
            return f"{ifname} is a PPP device"
        if ifname.startswith(("ppp", "pppoe")):
            return f"{ifname} is named like a PPP device"
        for route in self.routes_on_dev.get(ifname, ()):
            if route.protocol in ("dhcp", "ra"):
                return f"routes on {ifname} are installed by {route.protocol.upper()}"
        return None

    # -- sysctls -------------------------------------------------------------
    def conf(self, ifname: str, key: str, family: int = AF_INET) -> int:
        return self.state.conf(family, ifname, key)

    def rp_filter(self, ifname: str) -> int:
        """The effective rp_filter of an interface, as the simulator computes it."""
        return fib.conf_or(self.state, ifname, "rp_filter")

    def src_valid_mark(self, ifname: str) -> bool:
        return bool(fib.conf_or(self.state, ifname, "src_valid_mark"))

    # -- rules and routes ----------------------------------------------------
    @cached_property
    def rules(self) -> tuple:
        """ip rules of every family, in kernel order (family, then priority)."""
        return tuple(sorted(self.state.rules, key=lambda r: (r.family, r.priority)))

    def rules_of(self, family: int) -> list:
        return [r for r in self.rules if r.family == family]

    def _index_routes(self):
        by_table: dict[tuple[int, int], list[Route]] = {}
        defaults: dict[tuple[int, int], list[Route]] = {}
        by_dev: dict[str, list[Route]] = {}
        gateways: dict[tuple[str, str | None], list] = {}
        table_devs: dict[tuple[int, int], set] = {}
        for route in self.state.routes:  # the only pass over every route
            key = (route.family, route.table)
            bucket = by_table.get(key)
            if bucket is None:
                bucket = by_table[key] = []
            bucket.append(route)
            if route.dst_len == 0 and route.src_len == 0:
                defaults.setdefault(key, []).append(route)
            if route.table != TABLE_LOCAL and route.type == "unicast":
                for nh in route.nexthops:
                    if nh.dev is not None:
                        devs_of_table = table_devs.get(key)
                        if devs_of_table is None:
                            devs_of_table = table_devs[key] = set()
                        devs_of_table.add(nh.dev)
                    if nh.gateway is not None:
                        seen = gateways.get((nh.gateway, nh.dev))
                        if seen is None:
                            gateways[(nh.gateway, nh.dev)] = [0, [], nh]
                            seen = gateways[(nh.gateway, nh.dev)]
                        seen[0] += 1
                        if len(seen[1]) < 3:
                            seen[1].append(route)
                    if nh.dev is not None:
                        devs = by_dev.get(nh.dev)
                        if devs is None:
                            devs = by_dev[nh.dev] = []
                        if len(devs) < 64:  # only a sample is ever needed per device
                            devs.append(route)
        self.__dict__.update(routes_by_table=by_table, defaults=defaults, routes_on_dev=by_dev, table_devs=table_devs,
                             gateways={k: GatewayUse(v[0], tuple(v[1]), v[2]) for k, v in gateways.items()})

    @cached_property
    def routes_by_table(self) -> dict[tuple[int, int], list[Route]]:
        self._index_routes()
        return self.__dict__["routes_by_table"]

    @cached_property
    def defaults(self) -> dict[tuple[int, int], list[Route]]:
        self._index_routes()
        return self.__dict__["defaults"]

    @cached_property
    def gateways(self) -> dict[tuple[str, str | None], "GatewayUse"]:
        """Every (gateway, device) pair used by a unicast route: how many routes, a sample."""
        self._index_routes()
        return self.__dict__["gateways"]

    @cached_property
    def table_devs(self) -> dict[tuple[int, int], set]:
        """(family, table) → the devices its unicast routes leave by."""
        self._index_routes()
        return self.__dict__["table_devs"]

    @cached_property
    def routes_on_dev(self) -> dict[str, list[Route]]:
        self._index_routes()
        return self.__dict__["routes_on_dev"]

    def table_routes(self, family: int, table: int) -> list[Route]:
        return self.routes_by_table.get((family, table), [])

    def table_has_routes(self, family: int, table: int) -> bool:
        return bool(self.routes_by_table.get((family, table)))

    def covering_route(self, family: int, table: int, address: str, prefixlen: int | None = None) -> Route | None:
        """The longest-prefix route in `table` whose prefix holds the whole of address/prefixlen
        (lowest metric among equals), or None. Route types are not filtered. Uses the
        simulator's per-table index; IPv6 source-specific routes do not serve every source."""
        plen = bits(family) if prefixlen is None else prefixlen
        found = fib.index_for(self.state).table(family, table)
        if found is None:
            return None
        value = fib.addr_int(family, address)
        for length in found.lengths:
            if length > plen:
                continue
            mask = ((1 << length) - 1) << (bits(family) - length) if length else 0
            hits = [r for r in found.by_len[length].get(value & mask, ()) if not r.src_len]
            if hits:
                return min(hits, key=lambda r: r.metric)
        return None

    def tables_looked_up(self) -> set[tuple[int, int]]:
        return {(r.family, r.table) for r in self.rules if r.action == "lookup" and not r.l3mdev}

    def probe_destination(self, family: int = AF_INET) -> str:
        """An Internet address that only default routes cover, where possible."""
        tables = [t for (fam, t) in self.tables_looked_up() if fam == family]
        for candidate in PROBE_DESTINATIONS:
            if all((r := self.covering_route(family, t, candidate)) is None or r.dst_len == 0 for t in tables):
                return candidate
        return PROBE_DESTINATIONS[0]

    # -- the FIB simulation --------------------------------------------------
    def route(self, dst: str, *, src: str | None = None, iif: str | None = None, oif: str | None = None,
              mark: int = 0, proto: int = 0, sport: int | None = None, dport: int | None = None):
        """fib.route() for one query, cached."""
        key = (dst, src, iif, oif, mark, proto, sport, dport)
        cache = self.__dict__.setdefault("_fib_cache", {})
        if key not in cache:
            cache[key] = fib.route(self.state, fib.FibQuery(
                family=family_of(dst), dst=dst, src=src, iif=iif, oif=oif, mark=mark,
                proto=proto, sport=sport, dport=dport))
        return cache[key]

    def flow(self, src: str, dst: str, iif: str | None, *, why: str = "", proto: int = TCP,
             sport: int | None = PROBE_SPORT, dport: int | None = PROBE_DPORT, mark: int = 0,
             ct_state: str = "new") -> FlowPath:
        """A forwarded flow entering on `iif`: prerouting (marks), routing, forward, postrouting (NAT)."""
        from tracer.sim.netfilter import traverse

        key = (src, dst, iif, proto, sport, dport, mark, ct_state)
        cache = self.__dict__.setdefault("_flow_cache", {})
        if key in cache:
            return cache[key]
        packet = self._flow_packet(src, dst, iif, proto, sport, dport, mark, ct_state)
        rs, info = self.ruleset, self.address_info
        pre = traverse(rs, "prerouting", packet, addresses=info)
        packet = pre.packet
        result = self.route(packet.dst, src=packet.src, iif=iif, mark=packet.mark, proto=proto,
                            sport=sport, dport=dport)
        path = FlowPath(src, dst, iif, proto, sport, dport, why, result, mark=packet.mark)
        if not result.error and result.dev and result.type in (None, "unicast"):
            link = self.links.get(result.dev)
            packet = dataclasses.replace(packet, oif=result.dev, oifkind=link.kind if link else None)
            forward = traverse(rs, "forward", packet, addresses=info)
            post = traverse(rs, "postrouting", forward.packet, addresses=info) if forward.verdict == "accept" else None
            snat = tuple(n for n in (post.nat if post else ()) if n.field == "src")
            path = FlowPath(src, dst, iif, proto, sport, dport, why, result, mark=packet.mark,
                            forward=forward, post=post,
                            out_src=post.packet.src if post else packet.src, snat=snat)
        cache[key] = path
        return path

    def _flow_packet(self, src, dst, iif, proto, sport, dport, mark, ct_state):
        """The packet of a flow as it enters prerouting."""
        from tracer.sim.netfilter import PacketView

        pf = "ip" if family_of(dst) == AF_INET else "ip6"
        new = ct_state == "new"
        return PacketView(pf, src, dst, proto, sport=sport, dport=dport, iif=iif, mark=mark, ct_state=ct_state,
                          tcp_flags=(0x02 if new else 0x12) if proto == TCP else None, length=60,
                          icmp_type=(8 if new else 0) if proto == 1 else None, icmp_code=0 if proto == 1 else None,
                          iifkind=self.links[iif].kind if iif in self.links else None)

    @staticmethod
    def rp_filter_drop(result) -> bool:
        """Whether a FibResult is a reverse-path drop: EXDEV when forwarding, EINVAL
        (martian source) for local delivery."""
        return result.error == "EXDEV" or (result.error == "EINVAL" and "rp_filter" in (result.error_reason or ""))

    def flow_from_explanation(self, explanation) -> FlowPath | None:
        """The FlowPath of an explained forwarded flow (None for local flows)."""
        flow = explanation.flow
        if explanation.origin != "forwarded" or not flow.src or not flow.iif:
            return None
        key = (flow.src, flow.dst, flow.iif, flow.proto, flow.sport, flow.dport, flow.mark, "new")
        cache = self.__dict__.setdefault("_flow_cache", {})
        if key not in cache:
            path = self._path_from_explanation(explanation, "the flow asked about")
            if path is not None:
                cache[key] = path
        return self.flow(flow.src, flow.dst, flow.iif, why="the flow asked about",
                         proto=flow.proto, sport=flow.sport, dport=flow.dport, mark=flow.mark)

    @cached_property
    def _hooks_reusable(self) -> bool:
        """Whether an explanation's hook walks can stand for this engine's own: no rule
        reads what the two models set differently (packet length, address types,
        REDIRECT's interface address). MASQUERADE is compared per flow."""
        words = ("fib ", "length", "addrtype", "redirect", "tproxy")
        for chain in self.ruleset.chains.values():
            for rule in chain.rules:
                text = rule.text.lower()
                if any(w in text for w in words):
                    return False
        return True

    def _path_from_explanation(self, explanation, why: str) -> FlowPath | None:
        """The FlowPath `flow()` would compute, taken from the explanation's own walk
        (hooks and routing decision) when its inputs are provably the same; None
        otherwise (then `flow()` walks again)."""
        flow = explanation.flow
        hooks = explanation.hooks
        if (explanation.state is not self.state or explanation.conntrack is not None or flow.tos
                or not hooks or hooks[0].hook != "prerouting" or not explanation.decisions
                or not self._hooks_reusable):
            return None
        pre = hooks[0]
        packet = self._flow_packet(flow.src, flow.dst, flow.iif, flow.proto, flow.sport, flow.dport, flow.mark, "new")
        # the explanation leaves the length unset; no rule reads it (_hooks_reusable)
        if pre.verdict != "accept" or dataclasses.replace(packet, length=None) != pre.packet_in:
            return None
        decision = explanation.decisions[0]
        packet = pre.packet
        query = fib.FibQuery(family=family_of(packet.dst), dst=packet.dst, src=packet.src, iif=flow.iif,
                             mark=packet.mark, proto=flow.proto, sport=flow.sport, dport=flow.dport)
        if decision.stage != "routing" or decision.query != query:
            return None
        result = decision.result
        src, dst, iif = flow.src, flow.dst, flow.iif
        path = FlowPath(src, dst, iif, flow.proto, flow.sport, flow.dport, why, result, mark=packet.mark)
        if not result.error and result.dev and result.type in (None, "unicast"):
            link = self.links.get(result.dev)
            packet = dataclasses.replace(packet, oif=result.dev, oifkind=link.kind if link else None)
            if len(hooks) < 2 or hooks[1].hook != "forward" or hooks[1].packet_in != packet:
                return None
            forward, post = hooks[1], None
            if forward.verdict == "accept":
                if len(hooks) < 3 or hooks[2].hook != "postrouting" or hooks[2].packet_in != forward.packet:
                    return None
                post = hooks[2]
            for hook in (pre, forward, post):
                if hook is not None and hook.uncertain:
                    return None
                for n in hook.nat if hook is not None else ():
                    if n.type == "masquerade" and self.address_info.masquerade_source(
                            hook.packet_in.oif, hook.packet_in.dst) != n.to:
                        return None
            snat = tuple(n for n in (post.nat if post else ()) if n.field == "src")
            path = FlowPath(src, dst, iif, flow.proto, flow.sport, flow.dport, why, result, mark=packet.mark,
                            forward=forward, post=post,
                            out_src=post.packet.src if post else packet.src, snat=snat)
        self.__dict__.setdefault("_fib_cache", {}).setdefault(
            (query.dst, query.src, query.iif, None, query.mark, query.proto, query.sport, query.dport), result)
        return path

    def source_routed_back_via(self, source: str, ifname: str) -> bool:
        """Whether the far side of `ifname` can answer `source`: it is an address or a
        connected prefix of `ifname`, or this host routes it (more specifically than a
        default) through `ifname`."""
        family = family_of(source)
        if any(source in c for c in self.connected_on(ifname, family)):
            return True
        if source in {a.local for a in self.state.addresses_of(ifname, family)}:
            return True
        route = self.covering_route(family, TABLE_MAIN, source)
        return route is not None and route.dst_len > 0 and any(nh.dev == ifname for nh in route.nexthops)

    @cached_property
    def derived_flows(self) -> tuple[FlowPath, ...]:
        """The IPv4 traffic this host is evidently meant to forward to the Internet, TCP
        SYN to port 443 towards a probe destination: from the source of the first
        non-local `from` rule of each (action target, input interface) — rules that share
        a table and an input interface are represented by the first — and from a host of
        each private connected subnet. Flows that leave by their input interface (an
        uplink's own subnet) are left out."""
        dst = self.probe_destination(AF_INET)
        seen: set = set()
        out = []
        for rule in self.rules_of(AF_INET):
            if rule.src is None or rule.invert or rule.action not in ("lookup", "goto"):
                continue
            host = self.representative_host(rule.src, rule.src_len)
            lan = self.connected_containing(host) if host else None
            if lan is None or (rule.action, rule.table, rule.goto, lan.ifname) in seen:
                continue
            seen.add((rule.action, rule.table, rule.goto, lan.ifname))
            seen.add((host, lan.ifname))
            out.append(self.flow(host, dst, lan.ifname, why=f"source of rule {rule.priority}"))
        for c in self.connected:
            if c.family != AF_INET or c.network.prefixlen >= 31 or not c.network.is_private:
                continue
            host = self.representative_host(str(c.network.network_address), c.network.prefixlen)
            if host is None or (host, c.ifname) in seen:
                continue
            seen.add((host, c.ifname))
            out.append(self.flow(host, dst, c.ifname, why=f"a host of the LAN {c.network} on {c.ifname}"))
        return tuple(f for f in out if f.oif != f.iif)

    def representative_host(self, network: str, prefixlen: int) -> str | None:
        """A non-local host address inside network/prefixlen (the address itself for a host prefix)."""
        family = family_of(network)
        if prefixlen == bits(family):
            return None if self.is_local(network) else network
        net = ipaddress.ip_network(f"{network}/{prefixlen}", strict=False)
        for offset in range(1, min(net.num_addresses - 1, 16)):
            host = str(net.network_address + offset)
            if not self.is_local(host):
                return host
        return None


def context_for(state: HostState) -> CheckContext:
    """The state's one CheckContext (its indexes are built once per state)."""
    return state.cached("check_context", lambda: CheckContext(state))


def reserved(table: int) -> bool:
    return table in RESERVED_TABLES
