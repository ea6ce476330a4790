from tracer.checks.base import Check, Fix
from tracer.checks.context import rule_text
from tracer.vocab import AF_INET

# Actions that refuse a packet: after a lookup they are a tunnel daemon's "never leak" fallback.
_REFUSE = ("blackhole", "unreachable", "prohibit")


class BypassMarkIntoTunnel(Check):
    """Traffic marked to bypass a tunnel is routed into it, or cannot leave at all

    ## What it checks
    Tunnel daemons mark their own packets (the encrypted ones, to the peers'
    endpoints) so that policy routing keeps them out of the tunnel: wg-quick
    adds `not fwmark 51820 table 51820` (the mark selects what must *not*
    enter table 51820), Tailscale adds `5210 fwmark 0x80000/0xff0000 lookup
    main` with the fallbacks `5230 … lookup default` and `5250 …
    unreachable`. On a host with a tunnel device (by kind, or a name such as
    `wg0`, `tailscale0`), every such bypass mark — the mark of an inverted
    fwmark rule, or of a fwmark rule that looks up `main`/`default` or
    refuses (`unreachable`, `blackhole`, `prohibit`) — is routed like the
    daemon's own packet to an Internet address. It is an error when that
    packet goes into a tunnel device, or is refused while a route over
    another device exists (main's default, say). The opposite breakage —
    the rule that sends unmarked traffic into the tunnel gone (wg-quick's
    `not fwmark 51820 lookup 51820`), so that traffic leaks past the
    tunnel while the bypass still works — is WR029: the tunnel's table is
    then looked up by no rule.

    ## Why it breaks forwarding
    The daemon's packets to its peers loop into its own tunnel (the tunnel
    never comes up, or collapses as soon as it routes the default), or — with
    Tailscale's fallback — end at `5250 unreachable`: the daemon gets
    ENETUNREACH, cannot reach its peers or DERP, and every connection
    through the tunnel stops. The usual cause is a network manager that
    deletes rules it did not write (systemd-networkd's
    `ManageForeignRoutingPolicyRules`), or a hand-written clean-up.

    ## Example
    ```
    ip rule del pref 5210            # fwmark 0x80000/0xff0000 lookup main
    ip route get 192.0.2.100 mark 0x80000   # RTNETLINK answers: Network is unreachable
    ```

    ## Fix
    Put the bypass rule back before the rule that now decides:
    `ip rule add fwmark 0x80000/0xff0000 lookup main priority 5249` (or
    restart the daemon, which writes its rules again).
    """

    id = "WR030"
    severity = "error"
    title = "bypass-marked traffic routed into the tunnel"

    def check(self, ctx):
        tunnels = [name for name in sorted(ctx.links) if ctx.tunnel_reason(name)]
        if not tunnels:
            return
        state = ctx.state
        dst = ctx.probe_destination(AF_INET)
        # A route out of the host that does not use a tunnel: without one, nothing can bypass.
        uplink = ctx.route(dst)
        for mark, mask, why in _bypass_marks(ctx):
            result = ctx.route(dst, mark=mark)
            if result.error is None and not ctx.tunnel_reason(result.dev):
                continue
            plain = _uplink_route(ctx, dst, uplink)
            if plain is None:
                continue
            shown = f"0x{mark:x}" + (f"/0x{mask:x}" if mask != 0xFFFFFFFF else "")
            decided = rule_text(result.rule, state) if result.rule else "no rule"
            if result.error is None:
                what = f"are routed into the tunnel device {result.dev} by rule {decided}: they loop into it"
            else:
                what = (f"are refused ({result.error}) by rule {decided}: the daemon cannot reach its peers "
                        f"through {plain}")
            message = (f"packets marked {shown} ({why}) — the tunnel daemon's own packets, which must bypass "
                       f"the tunnel — {what}, e.g. {dst}; main's default route leaves by {plain}")
            before = result.rule.priority if result.rule else 32766
            priority = _free_priority(ctx.rules_of(AF_INET), before)
            fix = Fix.steps(f"ip rule add fwmark {shown} lookup main priority {priority}")
            yield self.finding(message, fix, mark=mark, mask=mask, dev=result.dev,
                               rule=result.rule.priority if result.rule else None)


def _bypass_marks(ctx):
    """(mark, mask, why) of every bypass mark the ip rules show, first occurrence only."""
    seen = {}
    for rule in ctx.rules_of(AF_INET):
        if not (rule.fwmark or rule.fwmask):
            continue
        mask = rule.fwmask or 0xFFFFFFFF
        key = (rule.fwmark & mask, mask)
        if key in seen:
            continue
        if rule.invert and rule.action == "lookup":
            seen[key] = f"rule {rule_text(rule, ctx.state)} keeps them out of table {ctx.state.table_name(rule.table)}"
        elif not rule.invert and (rule.action in _REFUSE or (rule.action == "lookup" and rule.table in (253, 254))):
            seen[key] = f"rule {rule_text(rule, ctx.state)} is there for them"
    return [(mark, mask, why) for (mark, mask), why in seen.items()]


def _uplink_route(ctx, dst, unmarked):
    """The device an Internet packet leaves by through main's default route, when that is no tunnel."""
    for route in ctx.table_routes(AF_INET, 254):
        if route.dst_len == 0 and route.type == "unicast":
            dev = route.nexthops[0].dev if route.nexthops else None
            if dev and not ctx.tunnel_reason(dev):
                return dev
    if unmarked.error is None and unmarked.dev and not ctx.tunnel_reason(unmarked.dev):
        return unmarked.dev
    return None


def _free_priority(rules, before: int) -> int:
    used = {r.priority for r in rules}
    for p in range(before - 1, 0, -1):
        if p not in used:
            return p
    return before
