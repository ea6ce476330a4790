/* fib6:fib6_table_lookup(net, res, table, flp): as fib.c, for IPv6. The tracepoint has no error
 * argument: a miss (the table's null entry, after which the next rule is tried) is reported as
 * -EAGAIN like IPv4's, otherwise the route type gives the error as the kernel's fib6_prop table does. */

static __always_inline s32 fib6_error(u8 type)
{
    switch (type) {
    case 6: return -22;  /* RTN_BLACKHOLE: -EINVAL */
    case 7: return -113; /* RTN_UNREACHABLE: -EHOSTUNREACH */
    case 8: return -13;  /* RTN_PROHIBIT: -EACCES */
    case 9: return -11;  /* RTN_THROW: -EAGAIN */
    default: return 0;
    }
}

WR_TRACEPOINT(fib6_table_lookup)
{
    const void *net = (const void *)args[0];
    const void *res = (const void *)args[1];
    const void *table = (const void *)args[2];
    const void *flp = (const void *)args[3];
    u32 iif = 0;
    struct routing *cur = 0;
    if (!lookup_wanted(6, (const char *)flp + OFF_FL6_IIF, &cur, &iif))
        return 0;
    struct lookup l = {.in_ifindex = iif, .flowi = (u64)flp};
    READ(l.daddr, flp, OFF_FL6_DADDR);
    READ(l.saddr, flp, OFF_FL6_SADDR);
    READ(l.table, table, OFF_TB6_ID);
    READ(l.mark, flp, OFF_FL6_MARK);
    const void *f6i = 0, *null_entry = 0, *nh = 0;
    u8 type = 0;
    READ(f6i, res, OFF_RES6_F6I);
    READ(null_entry, net, OFF_NET_FIB6_NULL_ENTRY);
    READ(type, res, OFF_RES6_TYPE);
    l.err = f6i == null_entry ? -11 : fib6_error(type);
    READ(nh, res, OFF_RES6_NH);
    if (nh && l.err == 0) {
        const void *dev = 0;
        READ(dev, nh, OFF_NH6_DEV);
        l.out_ifindex = ifindex_of(dev);
        READ(l.gw_family, nh, OFF_NH6_GW_FAMILY);
        if (l.gw_family == 10)
            READ(l.gw, nh, OFF_NH6_GW);
    }
    report_lookup(&l, cur, 6);
    return 0;
}
