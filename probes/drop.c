/* skb:kfree_skb(skb, location, reason, …): a traced flow's packet dropped, once per flow, with
 * the reason (its name comes from the kernel's BTF enum skb_drop_reason). */

RAW_TRACEPOINT_PROBE(kfree_skb)
{
    u32 reason = (u32)ctx->args[2];
    if (reason <= WR_REASON_NOT_DROPPED_MAX)
        return 0;
    const void *skb = (const void *)ctx->args[0];
    int zero = 0;
    struct config *c = config.lookup(&zero);
    if (!c || !(c->flags & F_READY))
        return 0;
    struct event ev = {};
    const void *dev = 0;
    READ(dev, skb, OFF_SKB_DEV);
    u32 inum = netns_of_dev(dev);
    if ((c->flags & F_NETNS) && c->netns != inum)
        return 0;
    u8 proto = 0, family = 0;
    if (parse_packet(skb, &ev.pkt, &proto, &family) != 0)
        return 0;
    read_ct(skb, &ev, proto);
    if (ev.has_ct && ev.ctinfo >= 3) /* IP_CT_IS_REPLY: a reply (or an ICMP error about the flow), not its first packet */
        return 0;
    ev.key.netns = inum;
    name_flow(&ev, proto, family);
    if (!matches(c, &ev.key))
        return 0;
    struct flowstate fresh = {};
    struct flowstate *fs = flows.lookup_or_try_init(&ev.key, &fresh);
    if (!fs || (fs->seen & SEEN_DROP))
        return 0;
    fs->seen |= SEEN_DROP;
    ev.ts = bpf_ktime_get_ns();
    ev.cpu = bpf_get_smp_processor_id();
    ev.skb = (u64)skb;
    u32 ifindex = ifindex_of(dev);
    READ(ev.mark, skb, OFF_SKB_MARK);
    /* Dropped by a chain of prerouting or output: the netfilter probe only noted its first position
     * there (struct arrival), report it now. */
    for (u32 slot = 0; slot < 2; slot++) {
        struct arrival *a = arrivals.lookup(&slot);
        u8 hook = slot == 0 ? 0 : 3;
        u32 first = 1u << (hook * 2);
        if (!a || a->skb != ev.skb || (fs->seen & (first | first << 1)))
            continue;
        fs->seen |= first;
        ev.kind = KIND_HOOK;
        ev.hook = hook;
        ev.pos = 0;
        u32 mark = ev.mark;
        ev.mark = a->mark;
        if (hook == 0)
            ev.in_ifindex = ifindex;
        else
            ev.out_ifindex = ifindex;
        emit(&ev);
        ev.mark = mark;
        ev.out_ifindex = 0;
    }
    ev.kind = KIND_DROP;
    ev.ptr = ctx->args[1];
    ev.reason = reason;
    ev.in_ifindex = ifindex;
    struct routing *cur = routing_packet.lookup(&zero);
    if (cur && cur->skb == ev.skb)
        cur->armed = 0;
    emit(&ev);
    return 0;
}
