from tracer.checks.base import Check
from tracer.checks.context import reserved, rule_text


class TableWithoutName(Check):
    """A rule looks up a table id that rt_tables does not name

    ## What it checks
    Every `lookup` rule of a non-reserved table whose id has no name in the
    host's rt_tables (the names `ip` prints).

    ## Why it breaks forwarding
    It does not by itself: the kernel only knows ids. But a script that
    names the table (`ip route add … table isp2`) fails with
    "table id value is invalid" on this host — the seed's `echo '7375
    sunusroute' >> rt_tables` step exists for this — and the bare number in
    `ip rule` hides which policy the table belongs to. Informational.

    ## Example
    ```
    ip rule add from 192.168.1.169 lookup 7375      # no "7375 …" line in rt_tables
    ```

    ## Fix
    Name the table: `echo '7375 sunusroute' >> /etc/iproute2/rt_tables`.
    """

    id = "WR013"
    severity = "info"
    title = "table used by a rule has no rt_tables name"

    def check(self, ctx):
        state = ctx.state
        reported = set()
        for rule in ctx.rules:
            if (rule.action != "lookup" or rule.l3mdev or reserved(rule.table) or rule.table in state.table_names
                    or rule.table in reported):
                continue
            reported.add(rule.table)
            message = (f"rule {rule_text(rule, state)} looks up table {rule.table}, which has no name in rt_tables: "
                       f"scripts cannot refer to it by name on this host")
            yield self.finding(message,
                               f"echo '{rule.table} NAME' >> /etc/iproute2/rt_tables   # NAME: the policy's name",
                               table=rule.table)
