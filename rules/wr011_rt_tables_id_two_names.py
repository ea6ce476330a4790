from tracer.checks.base import Check


class RtTablesIdTwoNames(Check):
    """rt_tables gives one table id two names

    ## What it checks
    The rt_tables entries collected from the host (`meta.rt_tables_entries`:
    `/etc/iproute2/rt_tables` and `rt_tables.d/*.conf`, duplicates kept) must
    not define the same table id under different names.

    ## Why it breaks forwarding
    iproute2 accepts both names for the id but prints only the last one, so
    `ip rule` and `ip route show table …` show a name the script never used,
    and a script that greps for the other name (or a second script that
    appends its own line, as the seed does twice — `SunusRules` for ArchLinux,
    `sunusroute` for Route) silently manipulates the same table as another
    feature. Two unrelated policies end up sharing one table.

    ## Example
    ```
    echo '7375 SunusRules' >> /etc/iproute2/rt_tables
    echo '7375 sunusroute' >> /etc/iproute2/rt_tables
    ```

    ## Fix
    Keep one line per id: delete the other names' lines
    (`sed -i '/^7375[[:space:]]\\+SunusRules$/d' /etc/iproute2/rt_tables`), or
    give the second policy its own id.
    """

    id = "WR011"
    severity = "warning"
    title = "rt_tables: one id under two names"

    def check(self, ctx):
        by_id: dict[int, list] = {}
        for entry in ctx.state.rt_tables_entries:
            by_id.setdefault(entry.table, []).append((entry.name, entry.path))
        for table, defs in sorted(by_id.items()):
            names = list(dict.fromkeys(name for name, _ in defs))
            if len(names) < 2:
                continue
            shown = defs[-1][0]
            where = ", ".join(f"{name} ({path})" for name, path in defs)
            message = (f"table id {table} has {len(names)} names in rt_tables: {where}; `ip` shows it as {shown}, "
                       f"and every one of these names manipulates the same table")
            fixes = [f"sed -i '/^[[:space:]]*{table}[[:space:]]\\+{name}[[:space:]]*$/d' {path}"
                     for name, path in dict.fromkeys(defs) if name != shown]
            yield self.finding(message, fixes, table=table, names=names)
