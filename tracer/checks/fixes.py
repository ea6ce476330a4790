"""Fix commands computed from the host's state, in the tool the host already uses."""

from __future__ import annotations

import re

_IPT_OIF = re.compile(r"^(!\s*)?-o\s+(\S+)$")
_NFT_OIF = re.compile(r'^(?:meta\s+)?oif(?:name)?\s+(!=\s*)?"?([^"\s{}]+)"?$')


def sysctl_key(ifname: str, key: str, family: str = "ipv4") -> str:
    """The sysctl name of a per-interface key, as sysctl(8) spells it (dots in names become /)."""
    return f"net.{family}.conf.{ifname.replace('.', '/')}.{key}"


def sysctl_set(ifname: str, key: str, value: int) -> str:
    return f"sysctl -w {sysctl_key(ifname, key)}={value}"


def interface_matches(pattern: str, ifname: str) -> bool:
    """iptables `ppp+` and nft `ppp*` wildcards."""
    if pattern.endswith(("+", "*")):
        return ifname.startswith(pattern[:-1])
    return pattern == ifname


def rule_oifs(conditions) -> list[tuple[str, bool]]:
    """The output-interface conditions of a rule as (pattern, negated)."""
    out = []
    for text in conditions:
        text = text.strip()
        m = _IPT_OIF.match(text) or _NFT_OIF.match(text)
        if m:
            out.append((m.group(2), bool(m.group(1))))
    return out


def rule_accepts_oif(conditions, ifname: str) -> bool | None:
    """True/False when the rule names output interfaces, None when it has no oif condition."""
    oifs = rule_oifs(conditions)
    if not oifs:
        return None
    return all(interface_matches(p, ifname) != neg for p, neg in oifs)


def native_nft_chain(ctx, hook: str, chain_type: str, family: str = "ip"):
    """A native nftables base chain at `hook` of `chain_type` for this family (ip or inet), or None."""
    for chain in ctx.ruleset.chains.values():
        if (chain.source == "nft" and chain.family in (family, "inet") and getattr(chain, "hook", None) == hook
                and chain.type == chain_type):
            return chain
    return None


def uses_only_native_nft(ctx) -> bool:
    sources = ctx.ruleset.sources()
    return bool(sources.get("nft")) and not sources.get("iptables-nft") and not sources.get("iptables-legacy")


def _iptables_nat(ctx) -> bool:
    """Whether iptables (nft or legacy) keeps a nat table here."""
    sources = ctx.ruleset.sources()
    return any(t.split()[1] == "nat" for src in ("iptables-nft", "iptables-legacy") for t in sources.get(src, ()))


def snat_command(ctx, oif: str, *, masquerade: bool | None = None) -> str:
    """The command that source-NATs traffic leaving `oif`: MASQUERADE on a dynamic
    interface (or one without an address), SNAT to its primary address otherwise; in the
    native nftables nat chain when the host's NAT lives there (fw4, even next to
    iptables-nft mangle rules such as mwan3's), else with iptables."""
    address = ctx.primary_address(oif)
    if masquerade is None:
        masquerade = address is None or ctx.dynamic_reason(oif) is not None
    chain = native_nft_chain(ctx, "postrouting", "nat") if not _iptables_nat(ctx) else None
    if chain is not None:
        action = "masquerade" if masquerade else f"snat {'ip ' if chain.family == 'inet' else ''}to {address}"
        return f'nft add rule {chain.family} {chain.table} {chain.name} oifname "{oif}" {action}'
    action = "MASQUERADE" if masquerade else f"SNAT --to-source {address}"
    return f"iptables -t nat -A POSTROUTING -o {oif} -j {action}"


def nat_replace_command(rule, *, masquerade: bool, address: str | None = None) -> str:
    """The command that replaces one SNAT/MASQUERADE rule in place (where it matches now)
    by MASQUERADE or by SNAT to `address`: `iptables -R CHAIN N` with its rule number,
    `nft replace rule … handle H`. `rule` has family, table, chain, source, handle and its
    text (a NatRule, or a NatRewrite whose `rule` is the text)."""
    text = getattr(rule, "text", None) or rule.rule
    if rule.source == "nft":
        action = "masquerade" if masquerade else f"snat ip to {address}"
        spec = re.sub(r"\bsnat( ip6?)? to \S+|\bmasquerade\b", action, text, count=1)
        return f"nft replace rule {rule.family} {rule.table} {rule.chain} handle {rule.handle} {spec}"
    action = "-j MASQUERADE" if masquerade else f"-j SNAT --to-source {address}"
    spec = re.sub(r"-j (SNAT|MASQUERADE)\b.*$", action, text)
    spec = re.sub(r"^-A (\S+)", lambda m: f"-R {m.group(1)} {rule.handle}", spec)
    return f"{_iptables_tool(rule)} -t {rule.table} {spec}"


def _iptables_tool(rule) -> str:
    legacy = rule.source == "iptables-legacy"
    if rule.family == "ip6":
        return "ip6tables-legacy" if legacy else "ip6tables"
    return "iptables-legacy" if legacy else "iptables"


def mss_clamp_command(ctx, oif: str) -> str:
    chain = native_nft_chain(ctx, "forward", "filter") if uses_only_native_nft(ctx) else None
    if chain is not None:
        return (f'nft insert rule {chain.family} {chain.table} {chain.name} oifname "{oif}" '
                f"tcp flags syn tcp option maxseg size set rt mtu")
    return f"iptables -t mangle -A FORWARD -o {oif} -p tcp --tcp-flags SYN,RST SYN -j TCPMSS --clamp-mss-to-pmtu"


def forward_accept_commands(ctx, hook, iif: str, oif: str, src: str | None = None, *, reply: bool = False) -> list[str]:
    """Accept rules for a forwarded flow (or, with `reply`, its established replies),
    inserted into the chain that dropped it."""
    chain = next((c for c in hook.chains if c.verdict in ("drop", "reject")), None) if hook else None
    if chain is not None and chain.source == "nft":
        match = f'iifname "{iif}" oifname "{oif}"'
        match += " ct state established,related" if reply else (f" ip saddr {src}" if src else "")
        return [f"nft insert rule {chain.family} {chain.table} {chain.chain} {match} accept"]
    tool = "iptables-legacy" if chain is not None and chain.source == "iptables-legacy" else "iptables"
    name = chain.chain if chain is not None else "FORWARD"
    table = f"-t {chain.table} " if chain is not None and chain.table != "filter" else ""
    if reply:
        return [f"{tool} {table}-I {name} -i {iif} -o {oif} -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT"]
    source = f" -s {src}" if src else ""
    return [f"{tool} {table}-I {name} -i {iif} -o {oif}{source} -j ACCEPT",
            f"{tool} {table}-I {name} -i {oif} -o {iif} -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT"]
