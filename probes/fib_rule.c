/* fib4_rule_action / fib6_rule_action(rule, flp, flags, arg): the ip rule whose table is looked up
 * next, for the fib probes to name on that lookup (stamp_rule): the kernel's own word for the rule,
 * where the tracepoints leave it to be derived from the rule list. The kernel calls the action only
 * for a rule whose selectors matched (goto and nop rules are handled before). Built twice: as an
 * fentry program (arguments in a u64 array, as a tp_btf's) and as a kprobe; user space loads the one
 * this kernel takes (tracer/trace/collectors.py, RuleCollector). */

/* x86-64's saved registers, for the kprobe's arguments (PT_REGS_PARM1, 2: di, si): the layout is the
 * entry code's, the same on every kernel. Declared here because its header redefines READ. */
struct pt_regs {
    unsigned long r15, r14, r13, r12, bp, bx, r11, r10, r9, r8, ax, cx, dx, si, di, orig_ax, ip, cs, flags, sp, ss;
};

static __always_inline int rule_tried(u8 family, const char *rule, const char *flp, const char *iif_field)
{
    u32 iif = 0;
    struct routing *cur = 0;
    if (!lookup_wanted(family, iif_field, &cur, &iif))
        return 0; /* the rule of a lookup that is not traced (the common case: keep it short) */
    int zero = 0;
    struct rule_now *now = rules_now.lookup(&zero);
    if (!now)
        return 0;
    now->flowi = (u64)flp;
    READ(now->table, rule, OFF_RULE_TABLE);
    READ(now->pref, rule, OFF_RULE_PREF);
    return 0;
}

int wr_rule4_fentry(struct bpf_raw_tracepoint_args *ctx)
{
    const char *flp = (const char *)ctx->args[1];
    return rule_tried(4, (const char *)ctx->args[0], flp, flp + OFF_FL4_IIF);
}

int wr_rule4_kprobe(struct pt_regs *ctx)
{
    const char *flp = (const char *)PT_REGS_PARM2(ctx);
    return rule_tried(4, (const char *)PT_REGS_PARM1(ctx), flp, flp + OFF_FL4_IIF);
}

#ifdef OFF_FL6_IIF
int wr_rule6_fentry(struct bpf_raw_tracepoint_args *ctx)
{
    const char *flp = (const char *)ctx->args[1];
    return rule_tried(6, (const char *)ctx->args[0], flp, flp + OFF_FL6_IIF);
}

int wr_rule6_kprobe(struct pt_regs *ctx)
{
    const char *flp = (const char *)PT_REGS_PARM2(ctx);
    return rule_tried(6, (const char *)PT_REGS_PARM1(ctx), flp, flp + OFF_FL6_IIF);
}
#endif
