from tracer.checks.base import Check


class LegacyAndNft(Check):
    """iptables-legacy and nftables rules are both loaded

    ## What it checks
    The netfilter dump holds tables of `iptables-legacy` (x_tables) and, at
    the same time, nftables tables (native or written by `iptables-nft`).

    ## Why it breaks forwarding
    Both run, one after the other, on every packet: a drop or a NAT in one
    applies whatever the other says, and each tool only shows its own rules
    (`iptables` on Debian is `iptables-nft` and does not list the legacy
    rules; `iptables-legacy -L` does not list the nft ones). The rule that
    drops or mis-NATs the traffic is invisible to whoever debugs it. It
    usually comes from a container runtime, VPN client or old script calling
    `iptables-legacy` on a system that moved to nftables.

    ## Example
    ```
    iptables-legacy -t nat -A POSTROUTING -o ppp0 -j MASQUERADE
    nft list ruleset        # shows only the nft side
    ```

    ## Fix
    Move the legacy rules into nftables and flush the legacy tables:
    `iptables-legacy-save > /root/legacy.rules`,
    `iptables-nft-restore --noflush < /root/legacy.rules`, then
    `iptables-legacy -t nat -F` (for each legacy table).
    """

    id = "WR023"
    severity = "warning"
    title = "iptables-legacy and nftables both loaded"
    requires = frozenset({"netfilter"})

    def check(self, ctx):
        if not ctx.ruleset.legacy_and_nft_both_loaded():
            return
        sources = ctx.ruleset.sources()
        legacy = sources["iptables-legacy"]
        nft = sources["nft"] + sources["iptables-nft"]
        message = (f"iptables-legacy tables ({', '.join(legacy)}) run next to nftables tables ({', '.join(nft)}): "
                   f"every packet crosses both, and each tool shows only its own rules")
        fixes = []
        for family, save, restore, tool in (("ip", "iptables-legacy-save", "iptables-nft-restore", "iptables-legacy"),
                                            ("ip6", "ip6tables-legacy-save", "ip6tables-nft-restore",
                                             "ip6tables-legacy")):
            tables = [t.split()[1] for t in legacy if t.split()[0] == family]
            if not tables:
                continue
            dump = f"/root/{tool}.rules"
            fixes += [f"{save} > {dump}", f"{restore} --noflush < {dump}"]
            for table in tables:
                fixes += [f"{tool} -t {table} -F", f"{tool} -t {table} -X"]
        yield self.finding(message, fixes, legacy=legacy, nft=nft)
