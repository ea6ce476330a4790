import re

from tracer.checks.base import Check, Fix
from tracer.checks.context import rule_text
from tracer.checks.fixes import uses_only_native_nft


class UplinkChangesAfterFirstPacket(Check):
    """A connection's later packets leave by another uplink than its first

    ## What it checks
    For the IPv4 traffic this host evidently forwards to the Internet (the
    flows of the other checks: the sources of `from` rules, a host of each
    private connected subnet), the first packet of a new connection and a
    later packet of the same connection (conntrack state established) are
    walked through the chains and the rules. When they leave by different
    devices, it is an error: what routes them — a mark set in prerouting,
    a rule that selects on it — depends on the connection's state, and
    the mark is not kept with the connection (`ct mark`, CONNMARK).

    ## Why it breaks forwarding
    NAT is decided by a connection's first packet. Its later packets leave
    by the other uplink with the first one's source address, which the
    other network does not route back; with MASQUERADE the kernel drops
    them (a masqueraded connection must leave by its own device) and ends
    the connection, so the next packet starts a new one. TCP hangs after
    the handshake; UDP answers stop. mwan3 avoids this by restoring the
    mark from the connection (`CONNMARK --restore-mark`) before it
    balances and saving it after; a hand-made multi-WAN set-up that marks
    with `ct state new` only, or leaves the restore out, does not.

    ## Example
    ```
    nft add rule ip mangle prerouting ip saddr 192.168.1.169 ct state new meta mark set 0x1
    ip rule add fwmark 0x1 lookup main priority 100   # main: default via eth0.2
    ip rule add from 192.168.1.169 lookup 7375         # 7375: default via ppp0
    ```

    ## Fix
    Keep the mark with the connection: restore it first in prerouting,
    before the rules that mark (`meta mark set ct mark`, or
    `iptables -t mangle -I PREROUTING -j CONNMARK --restore-mark`), and
    save it after them (`ct mark set meta mark`, `-j CONNMARK --save-mark`);
    the rule that marks then needs to match new connections only. A rule
    that marks the later packets themselves overwrites whatever the
    restore brought back: the fix rewrites it in place to match new
    connections only (`ct state new`, `-m conntrack --ctstate NEW`), or
    deletes it when it matches by a connection state already (one a new
    connection is not in, so its mark could only reach later packets).
    What the later packets show is in place already is not added again.
    """

    id = "WR034"
    severity = "error"
    title = "a connection's later packets leave by another uplink"
    requires = frozenset({"netfilter"})

    def check(self, ctx):
        seen = set()
        for first in ctx.derived_flows:
            if first.explanation.choices or first.oif is None:
                continue  # a random or multipath fork: the later packets' walk would fork again
            later = ctx.later_packets(first)
            if later.oif is None or later.oif == first.oif or (first.src, first.oif, later.oif) in seen:
                continue
            seen.add((first.src, first.oif, later.oif))
            yield self._finding(ctx, first, later)

    def _finding(self, ctx, first, later):
        state = ctx.state

        def how(path) -> str:
            decision = path.explanation.decision
            rule = f"rule {rule_text(decision.rule, state)}" if decision and decision.rule else "no rule"
            return f"{path.oif} (mark {decision.query.mark:#x}, {rule})" if decision else path.oif

        remarking = _remarking_rules(later)
        kept = _restores_mark(later)
        message = (f"{first.src} → {first.dst} ({first.why}): the first packet of a connection leaves by {how(first)}, "
                   f"its later packets are routed to {how(later)}: what routes them depends on the connection's "
                   f"state, and " + ("a rule marks them over the mark restored from the connection. " if kept and
                                     remarking else "the mark is not kept with the connection. "))
        egress = later.explanation.egress
        if egress is None:  # NAT dropped them (a masqueraded connection), or a chain did
            message += f"{first.oif}'s NAT binds the connection: {later.explanation.verdict_reason}"
        else:
            message += (f"They leave {later.oif} with the source {egress.src} that NAT gave the first packet, "
                        f"which {later.oif}'s network does not route back")
        if remarking:
            message += (". Later packets are marked by " + "; ".join(f"{c.table} {c.chain} #{r.handle} ({r.action})"
                                                                   for c, r in remarking)
                        + ", over what a restore brings back: a marking rule must match new connections only")
        return self.finding(message, Fix.steps(*_new_only_commands(remarking), *_connmark_commands(ctx, later)),
                            src=first.src, first_dev=first.oif, later_dev=later.oif)


def _prerouting_steps(path):
    traversal = path.explanation.hook("prerouting")
    for chain in traversal.chains if traversal else ():
        for step in chain.steps:
            if step.matched and step.action:
                yield chain, step


def _is_restore(step) -> bool:
    """CONNMARK --restore-mark, or nft's `meta mark set ct mark`."""
    return "from ct mark" in step.action or "mark set ct mark" in step.text


def _restores_mark(later) -> bool:
    return any(_is_restore(step) for _chain, step in _prerouting_steps(later))


def _remarking_rules(later) -> list:
    """The (chain, rule) pairs that set the mark of a later packet in prerouting (not from the
    connection's mark): whatever a restore brings back, they overwrite."""
    return [(chain, step) for chain, step in _prerouting_steps(later)
            if step.action.startswith("mark set") and not _is_restore(step) and step.handle is not None]


_CT_STATE = re.compile(r"(--ctstate|--state|\bct state)\s")


def _new_only_commands(remarking) -> list[str]:
    """Each rule rewritten in place to match new connections only (before the restore is inserted:
    iptables numbers rules by position); one that matches by connection state already, and so by a
    state a new connection is not in, is deleted: its mark could only ever reach later packets."""
    commands = []
    for chain, step in sorted(remarking, key=lambda found: -found[1].handle):  # a deletion renumbers what follows
        tool = "ip6tables" if chain.family == "ip6" else "iptables"
        if _CT_STATE.search(step.text):
            commands.append(f"nft delete rule {chain.family} {chain.table} {chain.chain} handle {step.handle}"
                            if chain.source == "nft" else f"{tool} -t {chain.table} -D {chain.chain} {step.handle}")
        elif chain.source == "nft":
            commands.append(f"nft replace rule {chain.family} {chain.table} {chain.chain} handle {step.handle} "
                            f"ct state new {step.text}")
        else:
            spec = step.text.removeprefix(f"-A {chain.chain} ")
            commands.append(f"{tool} -t {chain.table} -R {chain.chain} {step.handle} -m conntrack --ctstate NEW {spec}")
    return commands


def _connmark_commands(ctx, later) -> list[str]:
    """Restore the mark from the connection before prerouting's mangle chains, save it after them
    (what the later packet shows is there already is left out)."""
    restored = _restores_mark(later)
    saved = any(step.action.startswith("ct mark set") for _chain, step in _prerouting_steps(later))
    if uses_only_native_nft(ctx):
        chain = "nft 'add chain ip whyroute_connmark {} {{ type filter hook prerouting priority mangle {} ; }}'"
        commands = ["nft add table ip whyroute_connmark"]
        if not restored:
            commands += [chain.format("restore", "- 1"),
                         "nft add rule ip whyroute_connmark restore meta mark set ct mark"]
        if not saved:
            commands += [chain.format("save", "+ 1"), "nft add rule ip whyroute_connmark save ct mark set meta mark"]
        return commands if len(commands) > 1 else []
    return ((["iptables -t mangle -I PREROUTING 1 -j CONNMARK --restore-mark"] if not restored else [])
            + (["iptables -t mangle -A PREROUTING -j CONNMARK --save-mark"] if not saved else []))
