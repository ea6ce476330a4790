from tracer.checks.base import Check
from tracer.checks.context import rule_text


class GotoBadTarget(Check):
    """A goto rule jumps to a missing or earlier priority

    ## What it checks
    Every rule with action `goto`: some rule of the same family must exist at
    exactly the target priority, and the target must be greater than the
    rule's own priority.

    ## Why it breaks forwarding
    The kernel keeps a `goto` whose target priority has no rule as
    "unresolved" and skips it (its traffic goes on to the next rule, not
    where the author wanted); it refuses a backwards `goto` when the rule is
    added (loops), so one in a snapshot or a replayed script never took
    effect.

    ## Example
    ```
    ip rule add fwmark 0x1 goto 200 priority 100     # no rule at 200
    ```

    ## Fix
    Add the target rule, or point the goto at an existing later priority:
    `ip rule add priority 200 lookup fast`.
    """

    id = "WR009"
    severity = "error"
    title = "goto to a missing or earlier priority"
    shown_per_rule = True

    def check(self, ctx):
        state = ctx.state
        for family in (4, 6):
            rules = ctx.rules_of(family)
            priorities = {r.priority for r in rules}
            ip = "ip -6" if family == 6 else "ip"
            for rule in rules:
                if rule.action != "goto":
                    continue
                target = rule.goto
                if target is not None and target <= rule.priority:
                    message = (f"rule {rule_text(rule, state)} jumps backwards (to {target}); the kernel refuses "
                               f"such rules, so it is not in effect")
                    fixes = [f"{ip} rule del priority {rule.priority}"]
                elif target is None or target not in priorities:
                    later = sorted(p for p in priorities if p > rule.priority)
                    message = (f"rule {rule_text(rule, state)}: no rule at priority {target}, so the kernel skips "
                               f"this goto and its traffic goes on to the next rule"
                               + (f" (existing later priorities: {', '.join(map(str, later[:5]))})" if later else ""))
                    fixes = [f"{ip} rule add priority {target} lookup TABLE   # TABLE: where this traffic should go"]
                else:
                    continue
                yield self.finding(message, fixes, rule=rule.priority, target=target)
