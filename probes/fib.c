/* fib:fib_table_lookup(tb or tb_id, flp, nhc, err): one event per table actually looked up while the
 * routing decision of a traced flow's first packet is being made on this CPU (armed by the
 * prerouting-last netfilter probe). The reverse lookup of source validation is marked. */

RAW_TRACEPOINT_PROBE(fib_table_lookup)
{
    int zero = 0;
    struct routing *cur = routing_packet.lookup(&zero);
    if (!cur || !cur->armed)
        return 0;
    const void *tb = (const void *)ctx->args[0];
    const void *flp = (const void *)ctx->args[1];
    const void *nhc = (const void *)ctx->args[2];
    struct event ev = {};
    u32 daddr = 0, saddr = 0;
    READ(daddr, flp, OFF_FL4_DADDR);
    READ(saddr, flp, OFF_FL4_SADDR);
    if (daddr == cur->daddr)
        ev.pos = 0;
    else if (daddr == cur->saddr)
        ev.pos = 1;
    else
        return 0;
    ev.kind = KIND_FIB;
    ev.ts = bpf_ktime_get_ns();
    ev.cpu = bpf_get_smp_processor_id();
    ev.skb = cur->skb;
    ev.ptr = (u64)flp;
    ev.key = cur->key;
    ev.err = (s32)ctx->args[3];
#ifdef WR_FIB_TB_IS_ID
    ev.table = (u32)(u64)tb;
#else
    READ(ev.table, tb, OFF_TB_ID);
#endif
    ev.pkt.saddr = saddr;
    ev.pkt.daddr = daddr;
    READ(ev.in_ifindex, flp, OFF_FL4_IIF);
    READ(ev.mark, flp, OFF_FL4_MARK);
    if (nhc && ev.err == 0) {
        const void *dev = 0;
        READ(dev, nhc, OFF_NHC_DEV);
        ev.out_ifindex = ifindex_of(dev);
        READ(ev.gw_family, nhc, OFF_NHC_GW_FAMILY);
        if (ev.gw_family == 2)
            READ(ev.gw, nhc, OFF_NHC_GW);
    }
    emit(&ev);
    return 0;
}
