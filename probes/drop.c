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
    u8 proto = 0;
    if (parse_ipv4(skb, &ev.pkt, &proto) != 0)
        return 0;
    read_ct(skb, &ev, proto);
    ev.key.netns = inum;
    name_flow(&ev, proto);
    if (!matches(c, &ev.key))
        return 0;
    struct flowstate fresh = {};
    struct flowstate *fs = flows.lookup_or_try_init(&ev.key, &fresh);
    if (!fs || (fs->seen & SEEN_DROP))
        return 0;
    fs->seen |= SEEN_DROP;
    ev.kind = KIND_DROP;
    ev.ts = bpf_ktime_get_ns();
    ev.cpu = bpf_get_smp_processor_id();
    ev.skb = (u64)skb;
    ev.ptr = ctx->args[1];
    ev.reason = reason;
    ev.in_ifindex = ifindex_of(dev);
    READ(ev.mark, skb, OFF_SKB_MARK);
    struct routing *cur = routing_packet.lookup(&zero);
    if (cur && cur->skb == ev.skb)
        cur->armed = 0;
    emit(&ev);
    return 0;
}
