from tracer.checks.base import Check


class RtTablesNameTwoIds(Check):
    """rt_tables gives one name to two table ids

    ## What it checks
    The rt_tables entries (`meta.rt_tables_entries`, duplicates kept) must
    not define the same name for different table ids.

    ## Why it breaks forwarding
    `ip … table NAME` resolves the name to one id only (iproute2 searches its
    hash by `id & 255`, so the lowest bucket wins, the latest entry first
    within a bucket), while `ip rule`/`ip route` print that name for both ids.
    Routes added "to NAME" all land in one table; the rule that was meant to
    use the other id looks right in `ip rule` but looks up a table that stays
    empty (WR001).

    ## Example
    ```
    echo '100 isp2' >> /etc/iproute2/rt_tables
    echo '200 isp2' >> /etc/iproute2/rt_tables.d/vpn.conf
    ```

    ## Fix
    Give each id its own name, deleting or renaming the duplicate line:
    `sed -i '/^200[[:space:]]\\+isp2$/d' /etc/iproute2/rt_tables.d/vpn.conf`.
    """

    id = "WR012"
    severity = "warning"
    title = "rt_tables: one name under two ids"

    def check(self, ctx):
        by_name: dict[str, list] = {}
        for order, entry in enumerate(ctx.state.rt_tables_entries):
            by_name.setdefault(entry.name, []).append((entry.table, entry.path, order))
        for name, defs in sorted(by_name.items()):
            ids = sorted({t for t, _, _ in defs})
            if len(ids) < 2:
                continue
            resolved = min(defs, key=lambda d: (d[0] & 255, -d[2]))[0]
            where = ", ".join(f"{t} ({path})" for t, path, _ in defs)
            message = (f"the table name {name} is defined for ids {', '.join(map(str, ids))}: {where}; "
                       f"`ip … table {name}` means {resolved} only")
            fixes = [f"sed -i '/^[[:space:]]*{t}[[:space:]]\\+{name}[[:space:]]*$/d' {path}"
                     for t, path, _ in defs if t != resolved]
            yield self.finding(message, fixes, name=name, ids=ids)
