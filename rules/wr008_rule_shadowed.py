import ipaddress

from tracer.checks.base import Check
from tracer.checks.context import rule_text
from tracer.vocab import addr_int


class RuleShadowed(Check):
    """A rule can never match: an earlier rule always decides first

    ## What it checks
    A rule R2 is shadowed by an earlier rule R1 (lower priority, same family)
    when R1 selects a superset of R2's traffic — every selector of R1 is
    absent or contains R2's (`from`/`to` prefixes, `iif`, `oif`, `fwmark/mask`,
    `tos`, `ipproto`, port and uid ranges; neither rule inverted, R1 not
    `l3mdev`) — and R1 is terminal for that traffic: its action is
    `blackhole`, `unreachable` or `prohibit`; or `lookup` of a table holding a
    non-`throw` default route with no `suppress_*` option and no `throw` route
    that R2's traffic can hit (a throw route hands the packet on to the next
    rules); or `goto` past R2. R2 is reported only if it would do something
    (its table holds routes, or it is not a `lookup`), and not when it is a
    deliberate fallback: a `blackhole`/`unreachable`/`prohibit` rule after a
    `lookup` decides when that table loses its routes (Tailscale's `5250
    unreachable` after 5210's `lookup main`, mwan3's `3001 … unreachable`
    after `2001 … lookup 1`: marked traffic must not leak elsewhere).

    An exact duplicate of an earlier rule (the same selectors and action) can
    never decide anything either way — the earlier copy already did the same
    thing — and is always reported, whatever its action.

    ## Why it breaks forwarding
    The rule is dead configuration: the traffic it was written for is
    decided by R1. The classic case is a policy rule given a priority after
    `32766: from all lookup main` — `main` has a default route, so the rule
    is never reached.

    ## Example
    ```
    ip rule add from 192.168.1.169 lookup sunusroute priority 40000   # after main (32766)
    ```

    ## Fix
    Move the rule before the one that shadows it (steps, in order):
    `ip rule del priority 40000` then `ip rule add from 192.168.1.169 lookup
    sunusroute priority 32765`. A duplicate is deleted, not moved (moving it
    in front of its twin only makes the twin the duplicate):
    `ip rule del from 192.168.1.169 lookup sunusroute priority 40000`.
    """

    id = "WR008"
    severity = "warning"
    title = "rule shadowed by an earlier terminal rule"

    def check(self, ctx):
        state = ctx.state
        for family in (4, 6):
            rules = ctx.rules_of(family)
            # Terminal rules that select by source prefix only are indexed by that prefix
            # (earliest priority first), so a rule is compared with at most one per prefix
            # length of its source instead of with every earlier rule.
            by_src: dict[tuple[int, int], object] = {}
            throws: dict[tuple[int, int], list] = {}  # table → its throw routes, looked at once per table
            others = []
            for r1 in rules:
                if not _terminal(ctx, r1):
                    continue
                if _src_only(r1):
                    key = (_net(r1.src, r1.src_len, family), r1.src_len)
                    by_src.setdefault(key, r1)
                else:
                    others.append(r1)
            lengths = sorted({length for _, length in by_src})
            first_of: dict[str, object] = {}
            for r2 in rules:
                spec = rule_text(r2, state).split(":", 1)[1].strip()
                twin = first_of.setdefault(spec, r2)
                if twin is not r2:
                    message = (f"rule {rule_text(r2, state)} is a duplicate of the earlier rule "
                               f"{rule_text(twin, state)}: it can never decide anything the first did not")
                    ip = "ip -6" if family == 6 else "ip"
                    yield self.finding(message, f"{ip} rule del {spec} priority {r2.priority}",
                                       rule=r2.priority, shadowed_by=twin.priority)
                    continue
                if r2.action == "lookup" and not r2.l3mdev and not ctx.table_has_routes(family, r2.table):
                    continue
                candidates = [by_src.get((_net(r2.src, length, family), length)) for length in lengths
                              if length <= r2.src_len]
                candidates += [r1 for r1 in others if r1.priority < r2.priority]
                shadows = sorted((r1 for r1 in candidates if r1 is not None and r1.priority < r2.priority
                                  and (r1.action != "goto" or (r1.goto or 0) > r2.priority) and _covers(r1, r2)
                                  and not _fallback(r1, r2) and not _falls_through(ctx, throws, r1, r2)),
                                 key=lambda r: r.priority)
                if not shadows:
                    continue
                r1 = shadows[0]
                how = "jumps over it" if r1.action == "goto" else "always decides first"
                message = (f"rule {rule_text(r2, state)} can never match: the earlier rule "
                           f"{rule_text(r1, state)} selects all its traffic and {how}")
                free = _free_priority(rules, r1.priority)
                fixes = [f"ip rule del priority {r2.priority}"]
                if free is not None:
                    fixes.append(f"ip {'-6 ' if family == 6 else ''}rule add {spec} priority {free}")
                yield self.finding(message, fixes, rule=r2.priority, shadowed_by=r1.priority)


def _src_only(rule) -> bool:
    return (not rule.dst and not rule.iif and not rule.oif and not rule.fwmark and not rule.fwmask
            and not rule.tos and not rule.ipproto and rule.sport is None and rule.dport is None
            and rule.uidrange is None)


def _net(address, length: int, family: int) -> int:
    if not address or length == 0:
        return 0
    width = 32 if family == 4 else 128
    return addr_int(family, address) >> (width - length) << (width - length)


def _terminal(ctx, rule) -> bool:
    if rule.invert or rule.l3mdev:
        return False
    if rule.action in ("blackhole", "unreachable", "prohibit", "goto"):
        return True
    if rule.action != "lookup" or rule.suppress_prefixlength >= 0 or rule.suppress_ifgroup >= 0:
        return False
    return any(r.type != "throw" for r in ctx.defaults.get((rule.family, rule.table), ()))


def _fallback(r1, r2) -> bool:
    """R2 refuses what R1's table could not route: a deliberate fallback, which decides
    whenever that table loses its routes (tables change; rule actions do not)."""
    return r1.action == "lookup" and r2.action in ("blackhole", "unreachable", "prohibit")


def _falls_through(ctx, throws: dict, r1, r2) -> bool:
    """Whether some of R2's traffic hits a throw route in R1's table (and goes on to later rules)."""
    if r1.action != "lookup":
        return False
    key = (r1.family, r1.table)
    if key not in throws:
        throws[key] = [r for r in ctx.table_routes(*key) if r.type == "throw"]
    for route in throws[key]:
        if not r2.dst or r2.dst_len == 0:
            return True
        if _prefix_covers(route.dst, route.dst_len, r2.dst, r2.dst_len) or \
                _prefix_covers(r2.dst, r2.dst_len, route.dst, route.dst_len):
            return True
    return False


def _prefix_covers(a, alen, b, blen) -> bool:
    if not a or alen == 0:
        return True
    if not b or blen < alen:
        return False
    inner = ipaddress.ip_network(f"{b}/{blen}", strict=False)
    return inner.subnet_of(ipaddress.ip_network(f"{a}/{alen}", strict=False))


def _range_covers(a, b) -> bool:
    return a is None or (b is not None and a[0] <= b[0] and b[1] <= a[1])


def _covers(r1, r2) -> bool:
    if r2.invert:
        return False
    if r1.fwmask or r1.fwmark:
        mask = r1.fwmask or 0xFFFFFFFF
        if (r2.fwmask & mask) != mask or (r2.fwmark & mask) != r1.fwmark:
            return False
    return (_prefix_covers(r1.src, r1.src_len, r2.src, r2.src_len)
            and _prefix_covers(r1.dst, r1.dst_len, r2.dst, r2.dst_len)
            and r1.iif in (None, r2.iif) and r1.oif in (None, r2.oif)
            and r1.tos in (0, r2.tos) and r1.ipproto in (0, r2.ipproto)
            and _range_covers(r1.sport, r2.sport) and _range_covers(r1.dport, r2.dport)
            and _range_covers(r1.uidrange, r2.uidrange))


def _free_priority(rules, before: int) -> int | None:
    used = {r.priority for r in rules if r.priority < before}
    for p in range(before - 1, 0, -1):
        if p not in used:
            return p
    return None
