"""What a check sees: the HostState plus cached indexes and helpers.

Everything expensive is computed once, lazily, and shared by all rules:
routes are walked once and indexed by table (a million-route table must not
be scanned per rule), prefix lookups use per-table hash indexes, and derived
flows (the traffic a router is evidently meant to forward) are routed once
through the FIB simulation and the netfilter model.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from functools import cached_property

from tracer.flow import Flow, RouteQuery
from tracer.model import (
    SCOPE_HOST,
    TABLE_DEFAULT,
    TABLE_LOCAL,
    TABLE_MAIN,
    Address,
    ConntrackEntry,
    HostState,
    Route,
)
from tracer.sim import fib
from tracer.sim.explain import PacketVariant, explain, later_packet_of, ruleset_of
from tracer.sim.explanation import Explanation
from tracer.vocab import AF_INET, TCP, addr_int, bits, family_of

RESERVED_TABLES = (TABLE_DEFAULT, TABLE_MAIN, TABLE_LOCAL)
# Destinations used to stand for "the Internet" when deriving flows: the first
# one that no more specific route covers is taken.
PROBE_DESTINATIONS = ("8.8.8.8", "1.1.1.1", "9.9.9.9", "208.67.222.222")
PROBE_SPORT, PROBE_DPORT = 40000, 443
# The packet the engine walks for a flow it derives: a new connection's first
# segment (a SYN of 60 bytes), whatever conntrack holds now.
NEW_CONNECTION = PacketVariant(ct_state="new", length=60, conntrack=False)
# Walks kept per state for the checks that ask the same flow again (`check` asks many flows
# several times); beyond this the cache starts afresh.
FLOW_CACHE_SIZE = 4096
# WR025 reads the reply's route and forward verdict only.
REPLY = PacketVariant(ct_state="established", length=60, conntrack=False, reply=True, through_forward_only=True)
# Addresses nobody routes on the Internet because they are meant for private networks:
# RFC 1918, CGNAT (RFC 6598) and IPv6 ULA — not ipaddress's `is_private`, which also
# counts documentation (RFC 5737) and benchmarking prefixes, real uplinks in labs.
PRIVATE_NETWORKS = tuple(ipaddress.ip_network(n) for n in (
    "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10", "fc00::/7"))
# What a check may require of the state (Check.requires), and the context property that tells.
REQUIREMENTS = {"netfilter": "netfilter_known"}
# Devices of tunnels this host terminates itself (a VPN or an overlay), by link kind and
# by the names tunnel daemons give them (a tun device has no kind of its own).
TUNNEL_KINDS = frozenset({"wireguard", "tun", "gre", "ipip", "sit", "vti", "vti6", "ip6tnl", "ip6gre", "xfrm",
                          "geneve", "vxlan", "openvpn"})
TUNNEL_NAMES = ("wg", "tailscale", "tun", "zt", "nebula", "ts", "vpn", "ipsec", "vti", "gre", "ovpn", "tap")


def is_private(address: str) -> bool:
    """RFC 1918, CGNAT or ULA (see PRIVATE_NETWORKS)."""
    ip = ipaddress.ip_address(address)
    return any(ip.version == n.version and ip in n for n in PRIVATE_NETWORKS)


def is_private_network(network) -> bool:
    """Whether the whole of an ipaddress network is private in the sense of is_private."""
    return any(network.version == n.version and network.subnet_of(n) for n in PRIVATE_NETWORKS)


def rule_text(rule, state: HostState) -> str:
    """A rule as `ip rule` prints it (the selectors and the action)."""
    return fib.rule_text(state, rule)


def route_text(route: Route, state: HostState) -> str:
    """A route as `ip route show` prints it."""
    return fib.route_text(state, route)


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
    """One flow through this host, as the explanation's walk gives it, and why the engine looks at it."""

    explanation: Explanation
    why: str  # where the flow comes from ("source of rule 32765", "a host of the LAN …")
    # the conntrack entry the flow asked about matched (its NAT then came from the entry,
    # and `explanation` is the rules' own answer for a new connection)
    conntrack_entry: ConntrackEntry | None = None

    @property
    def flow(self) -> Flow:
        return self.explanation.flow

    @property
    def src(self) -> str:
        return self.flow.src

    @property
    def dst(self) -> str:
        return self.flow.dst

    @property
    def iif(self) -> str | None:
        return self.flow.iif

    @property
    def proto(self) -> int:
        return self.flow.proto

    @property
    def sport(self) -> int | None:
        return self.flow.sport

    @property
    def dport(self) -> int | None:
        return self.flow.dport

    @property
    def result(self) -> fib.FibResult | None:
        """The routing decision of the packet as it leaves prerouting (None if it was dropped before)."""
        decision = self.explanation.decision
        return decision.result if decision else None

    @property
    def mark(self) -> int:
        decision = self.explanation.decision
        return decision.query.mark if decision else self.flow.mark

    @property
    def forward(self):
        """The forward hook's HookTraversal, None when the packet does not get there."""
        return self.explanation.hook("forward")

    @property
    def post(self):
        """The postrouting hook's HookTraversal, None when the packet does not get there."""
        return self.explanation.hook("postrouting")

    @property
    def out_src(self) -> str | None:
        """The source as the packet leaves (after SNAT)."""
        post = self.post
        if post is not None:
            return post.packet.src
        forward = self.forward
        return forward.packet.src if forward is not None else self.src

    @property
    def snat(self) -> tuple:
        """The NatRewrites of the source at postrouting."""
        post = self.post
        return tuple(n for n in post.nat if n.field == "src") if post is not None else ()

    @property
    def oif(self) -> str | None:
        r = self.result
        return None if r is None or r.error else r.dev

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
        return ruleset_of(self.state)

    def has(self, requirements: frozenset[str]) -> bool:
        """Whether the state holds what a check `requires` (see REQUIREMENTS)."""
        return all(getattr(self, REQUIREMENTS[r]) for r in requirements)

    def applicable(self, checks: tuple) -> tuple:
        """The checks whose requirements this state meets, worked out once per set of checks."""
        cache = self.__dict__.setdefault("_applicable", {})
        if checks not in cache:
            cache[checks] = tuple(c for c in checks if self.has(c.requires))
        return cache[checks]

    def host_findings(self, checks: tuple) -> list:
        """The whole-host findings of `checks`, computed once per state (a batch asks thousands of flows)."""
        cache = self.__dict__.setdefault("_host_findings", {})
        key = tuple(c.id for c in checks)
        if key not in cache:
            cache[key] = [f for c in checks for f in c.check(self)]
        return cache[key]

    @cached_property
    def netfilter_known(self) -> bool:
        """False when the snapshot holds no netfilter dump at all (then NAT/filter checks stay quiet)."""
        nf = self.state.netfilter or {}
        return bool(nf.get("nft") or nf.get("iptables_nft") or nf.get("iptables_legacy"))

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

    def tunnel_reason(self, ifname: str | None) -> str | None:
        """Why `ifname` looks like a tunnel this host terminates (WireGuard, Tailscale, OpenVPN,
        GRE …), or None."""
        if not ifname:
            return None
        link = self.links.get(ifname)
        if link is not None and link.kind in TUNNEL_KINDS:
            return f"{ifname} is a {link.kind} device"
        if ifname.lower().startswith(TUNNEL_NAMES):
            return f"{ifname} is named like a tunnel device"
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

    @cached_property
    def routes_by_table(self) -> dict[tuple[int, int], list[Route]]:
        """(family, table) → its routes in the state's order (the simulator's index holds them)."""
        return {key: table.routes for key, table in fib.index_for(self.state).tables().items()}

    @cached_property
    def defaults(self) -> dict[tuple[int, int], list[Route]]:
        """(family, table) → its default routes (no source prefix), in the state's order."""
        tables = fib.index_for(self.state).tables().items()
        found = {key: [r for r in table.defaults if not r.src_len] for key, table in tables}
        return {key: routes for key, routes in found.items() if routes}

    def _index_nexthops(self):
        """One pass over every nexthop, for the host checks that need gateways and devices
        (a flow's findings never do: a batch does not pay for it)."""
        by_dev: dict[str, list[Route]] = {}
        gateways: dict[tuple[str, str | None], list] = {}
        table_devs: dict[tuple[int, int], set] = {}
        for route in self.state.routes:
            if route.table == TABLE_LOCAL or route.type != "unicast":
                continue
            key = (route.family, route.table)
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
        self.__dict__.update(routes_on_dev=by_dev, table_devs=table_devs,
                             gateways={k: GatewayUse(v[0], tuple(v[1]), v[2]) for k, v in gateways.items()})

    @cached_property
    def gateways(self) -> dict[tuple[str, str | None], GatewayUse]:
        """Every (gateway, device) pair used by a unicast route: how many routes, a sample."""
        self._index_nexthops()
        return self.__dict__["gateways"]

    @cached_property
    def table_devs(self) -> dict[tuple[int, int], set]:
        """(family, table) → the devices its unicast routes leave by."""
        self._index_nexthops()
        return self.__dict__["table_devs"]

    @cached_property
    def routes_on_dev(self) -> dict[str, list[Route]]:
        self._index_nexthops()
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
        value = addr_int(family, address)
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
            cache[key] = fib.route(self.state, RouteQuery(
                family=family_of(dst), dst=dst, src=src, iif=iif, oif=oif, mark=mark,
                proto=proto, sport=sport, dport=dport))
        return cache[key]

    def flow(self, src: str, dst: str, iif: str | None, *, why: str = "", proto: int = TCP,
             sport: int | None = PROBE_SPORT, dport: int | None = PROBE_DPORT, mark: int = 0,
             reply: bool = False) -> FlowPath:
        """A forwarded flow entering on `iif` — a new connection, or its reply (walked through the
        forward hook only: its route and forward verdict) — as the explanation walks it."""
        key = (src, dst, iif, proto, sport, dport, mark, reply)
        cache = self.__dict__.setdefault("_flow_cache", {})
        if key not in cache:
            if len(cache) >= FLOW_CACHE_SIZE:  # a batch's replies are each asked once: keep memory flat
                cache.clear()
            flow = Flow(dst=dst, src=src, iif=iif, proto=proto, sport=sport, dport=dport, mark=mark)
            cache[key] = FlowPath(explain(self.state, flow, REPLY if reply else NEW_CONNECTION), why)
        return cache[key]

    def later_packets(self, first: FlowPath) -> FlowPath:
        """A later packet of the connection whose first packet `first` is (established, with the
        ct mark its first packet left), as the explanation walks it."""
        key = ("later", first.flow)
        cache = self.__dict__.setdefault("_flow_cache", {})
        if key not in cache:
            variant = later_packet_of(first.explanation, NEW_CONNECTION.length)
            cache[key] = FlowPath(explain(self.state, first.flow, variant), first.why)
        return cache[key]

    def flow_outcomes(self, src: str, dst: str, iif: str | None, *, why: str = "", proto: int = TCP,
                      sport: int | None = PROBE_SPORT, dport: int | None = PROBE_DPORT,
                      mark: int = 0) -> tuple[FlowPath, ...]:
        """Every possible path of a new forwarded connection (`flow`, then one FlowPath per
        other outcome where the path forks: random balancing, multipath), each with its share."""
        first = self.flow(src, dst, iif, why=why, proto=proto, sport=sport, dport=dport, mark=mark)
        others = first.explanation.alternatives
        if not others:
            return (first,)
        return tuple(FlowPath(e, f"{why} ({_share_text(e)})") for e in (first.explanation, *others))

    @staticmethod
    def rp_filter_drop(result) -> bool:
        """Whether a FibResult is a reverse-path drop (forwarded or delivered locally)."""
        return result.drop_reason == "IP_RPFILTER"

    def flow_from_explanation(self, explanation: Explanation) -> FlowPath | None:
        """The FlowPath of an explained forwarded flow (None for local flows): the
        explanation itself, or — when an existing conntrack entry decided its NAT — the
        same walk for a new connection, which is what the rules answer for."""
        flow = explanation.flow
        if explanation.origin != "forwarded" or not flow.src or not flow.iif:
            return None
        if explanation.conntrack is None and explanation.state is self.state:
            return FlowPath(explanation, "the flow asked about")
        return FlowPath(explain(self.state, flow, NEW_CONNECTION), "the flow asked about", explanation.conntrack)

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
        each private connected subnet. Where the path forks (random balancing,
        multipath), every outcome is a flow of its own. Flows that leave by their input
        interface (an uplink's own subnet) are left out."""
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
            out.extend(self.flow_outcomes(host, dst, lan.ifname, why=f"source of rule {rule.priority}"))
        for c in self.connected:
            if c.family != AF_INET or c.network.prefixlen >= 31 or not is_private_network(c.network):
                continue
            host = self.representative_host(str(c.network.network_address), c.network.prefixlen)
            if host is None or (host, c.ifname) in seen:
                continue
            seen.add((host, c.ifname))
            out.extend(self.flow_outcomes(host, dst, c.ifname, why=f"a host of the LAN {c.network} on {c.ifname}"))
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


def _share_text(explanation: Explanation) -> str:
    share = explanation.share
    choice = explanation.choices[-1].text if explanation.choices else "one outcome"
    return f"{choice}" if share is None else f"{share:.0%} of new connections: {choice}"


def context_for(state: HostState) -> CheckContext:
    """The state's one CheckContext (its indexes are built once per state)."""
    return state.derived(CheckContext)


def reserved(table: int) -> bool:
    return table in RESERVED_TABLES
