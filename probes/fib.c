/* fib:fib_table_lookup(tb or tb_id, flp, nhc, err): each table actually looked up, into the flow's
 * record, while the routing decision of a traced flow's first packet is being made on this CPU (armed by the
 * prerouting-last netfilter probe). The reverse lookup of source validation is marked. Output
 * lookups (a socket's, flowi iif = lo) are kept per CPU for the output probe (keep_pending). */

WR_TRACEPOINT(fib_table_lookup)
{
    const void *tb = (const void *)args[0];
    const void *flp = (const void *)args[1];
    const void *nhc = (const void *)args[2];
    u32 iif = 0;
    struct routing *cur = 0;
    if (!lookup_wanted(4, (const char *)flp + OFF_FL4_IIF, &cur, &iif))
        return 0; /* the lookup of a packet that is not traced (the common case: keep it short) */
    struct lookup l = {.in_ifindex = iif, .flowi = (u64)flp};
    READ(l.daddr[0], flp, OFF_FL4_DADDR);
    READ(l.saddr[0], flp, OFF_FL4_SADDR);
    l.err = (s32)args[3];
#ifdef WR_FIB_TB_IS_ID
    l.table = (u32)(u64)tb;
#else
    READ(l.table, tb, OFF_TB_ID);
#endif
    READ(l.mark, flp, OFF_FL4_MARK);
    if (nhc && l.err == 0) {
        const void *dev = 0;
        READ(dev, nhc, OFF_NHC_DEV);
        l.out_ifindex = ifindex_of(dev);
        READ(l.gw_family, nhc, OFF_NHC_GW_FAMILY);
        if (l.gw_family)
            READ(l.gw, nhc, OFF_NHC_GW); /* IPv4, or IPv6 (RFC 5549): decoded by gw_family */
    }
    report_lookup(&l, cur, 4);
    return 0;
}
