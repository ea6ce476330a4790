from tracer.checks.base import Check
from tracer.vocab import protocol_name


class ConntrackStale(Check):
    """Conntrack entries whose NAT no longer matches the current configuration

    ## What it checks
    For every conntrack entry of a forwarded IPv4 connection (original
    source not local, on a connected subnet), the source it leaves with
    (the reply direction's destination) is compared with what the current
    rules, routes and NAT rules give a new packet of the same connection
    (FIB simulation and netfilter model, entering on the source's subnet).
    They must agree: same source address after NAT (where the path forks —
    random balancing, multipath — the mapping of any outcome agrees). Entries
    are grouped by original source, old and new source address.

    ## Why it breaks forwarding
    NAT is decided on a connection's first packet and then kept in the
    conntrack entry: after adding the missing SNAT rule, or moving a host to
    another uplink, existing connections (and the UDP/ICMP "connections" a
    client keeps re-using, e.g. a ping or a VPN) go on with the old mapping
    and keep failing until the entry expires — so the fix seems not to work.

    ## Example
    ```
    # ping from 192.168.1.169 runs, then:
    iptables -t nat -A POSTROUTING -o ppp0 -j SNAT --to-source 123.150.232.74
    conntrack -L    # src=192.168.1.169 dst=8.8.8.8 … src=8.8.8.8 dst=192.168.1.169  (no NAT)
    ```

    ## Fix
    Delete the stale entries so the next packet is NATed anew:
    `conntrack -D -p icmp -s 192.168.1.169 -d 8.8.8.8`.
    """

    id = "WR022"
    severity = "warning"
    title = "conntrack entries stale after a configuration change"
    requires = frozenset({"netfilter"})

    def check(self, ctx):
        groups: dict[tuple, list] = {}
        for entry in ctx.state.conntrack:
            if ":" in entry.orig_src or ctx.is_local(entry.orig_src):
                continue
            lan = ctx.connected_containing(entry.orig_src)
            if lan is None:
                continue
            ports = entry.proto in (6, 17, 132)
            outcomes = ctx.flow_outcomes(entry.orig_src, entry.orig_dst, lan.ifname,
                                         why=f"conntrack entry {entry.text}", proto=entry.proto,
                                         sport=entry.orig_sport if ports else None,
                                         dport=entry.orig_dport if ports else None, mark=0)
            # Balanced paths (random, multipath): the entry may hold any outcome's mapping.
            if any(f.out_src is None or f.out_src == entry.reply_dst for f in outcomes):
                continue
            flow = outcomes[0]
            key = (entry.orig_src, entry.reply_dst, flow.out_src, flow.oif)
            groups.setdefault(key, []).append(entry)
        for (src, old, new, oif), entries in sorted(groups.items()):
            yield self._finding(src, old, new, oif, entries)

    def flow_check(self, ctx, flow):
        """The flow asked about matched an entry whose mapping today's rules would not make."""
        entry = flow.conntrack_entry
        if entry is not None and flow.out_src is not None and flow.out_src != entry.reply_dst:
            yield self._finding(entry.orig_src, entry.reply_dst, flow.out_src, flow.oif, [entry])

    def _finding(self, src, old, new, oif, entries):
        old_text = "no NAT" if old == src else f"NAT to {old}"
        message = (f"{len(entries)} conntrack entr{'y' if len(entries) == 1 else 'ies'} from {src} "
                   f"keep{'s' if len(entries) == 1 else ''} the old mapping ({old_text}), but the current "
                   f"configuration sends new packets of these connections out {oif} with source {new}: "
                   f"they keep failing until the entries expire. First: {entries[0].text}")
        fixes = list(dict.fromkeys(f"conntrack -D -p {protocol_name(e.proto)} -s {e.orig_src} -d {e.orig_dst}"
                                   for e in entries[:5]))
        if len(entries) > 5:
            fixes.append(f"conntrack -D -s {src}")
        return self.finding(message, fixes, src=src, old=old, new=new, count=len(entries))
