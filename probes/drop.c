/* skb:kfree_skb(skb, location, reason, …): a traced flow's first packet dropped, with the reason
 * (its name comes from the kernel's BTF enum skb_drop_reason): its record is sent. */

/* A packet dropped by a chain of prerouting or output (hook 0 or 3): the netfilter probe only noted
 * its first position there (struct arrival); it is recorded now. */
static __always_inline void record_dropped_arrival(struct flowrec *r, struct flowstate *fs, const void *skb,
                                                   const struct tuple *pkt, u8 hook, u32 ifindex)
{
    u32 slot = ARRIVAL_SLOT(hook);
    u32 first = 1u << (hook * 2);
    struct arrival *a = arrivals.lookup(&slot);
    if (!a || a->skb != (u64)skb || (r->seen & (first | first << 1)))
        return;
    fs->seen |= first;
    record_position(r, hook * 2, pkt, hook == 0 ? ifindex : 0, hook == 0 ? 0 : ifindex, a->mark);
}

/* Where a reply (or an ICMP error about a flow) was when dropped: 1 + the last hook position it
 * passed on this CPU (the netfilter probe's skip slot, or its note before prerouting's or output's
 * chains), 0 unknown. */
static __always_inline u8 reply_position(const void *skb, u64 nfct)
{
    int zero = 0;
    struct skipping *skip = skipped.lookup(&zero);
    if (skip && skip->skb == (u64)skb && skip->nfct == nfct && skip->position < POSITIONS)
        return skip->position + 1;
    u32 slot = ARRIVAL_SLOT(0);
    struct arrival *a = arrivals.lookup(&slot);
    if (a && a->skb == (u64)skb)
        return 0 * 2 + 1; /* before prerouting's chains */
    slot = ARRIVAL_SLOT(3);
    a = arrivals.lookup(&slot);
    if (a && a->skb == (u64)skb)
        return 3 * 2 + 1; /* before output's chains */
    return 0;
}

/* A packet of a traced flow dropped after its first one was reported — a reply-direction packet (or
 * an ICMP error about the flow: KIND_REPLY_DROP, flag SEEN_REPLY_DROP), or one of the flow's own
 * (KIND_LATER_DROP, SEEN_LATER_DROP): the first such drop of the flow, as a note. */
static __always_inline void note_drop(struct flowstate *fs, u32 kind, u32 flag, const struct packet *p,
                                      const void *skb, u64 nfct, const void *dev, u32 reason, u64 location)
{
    if (!fs || (fs->seen & flag))
        return;
    fs->seen |= flag;
    struct note n = {.kind = kind, .key = p->key, .reason = reason, .location = location,
                     .ifindex = ifindex_of(dev), .after = kind == KIND_REPLY_DROP ? reply_position(skb, nfct) : 0};
    if (p->ctinfo == 4) { /* an ICMP error: its sender, type and code too */
        copy_address(n.from, p->pkt.saddr);
        read_icmp(skb, p->key.family, &n.icmp_type, &n.icmp_code);
        n.icmp_error = 1;
    }
    send_note(&n);
}

WR_TRACEPOINT(kfree_skb)
{
    u32 reason = (u32)args[2];
    if (reason <= WR_REASON_NOT_DROPPED_MAX)
        return 0;
    const void *skb = (const void *)args[0];
    int zero = 0;
    struct config *c = config.lookup(&zero);
    if (!c || !(c->flags & F_READY))
        return 0;
    struct packet p = {};
    const void *dev = 0;
    u32 inum = 0;
    if (btf) { /* every drop of every namespace comes here: the namespace in three loads, no helper call */
        dev = *(const void *const *)(btf_pointer(args[0]) + OFF_SKB_DEV);
        inum = netns_of_btf_dev(dev);
    } else {
        READ(dev, skb, OFF_SKB_DEV);
        inum = netns_of_dev(dev);
    }
    if ((c->flags & F_NETNS) && c->netns != inum)
        return 0;
    u8 proto = 0, family = 0;
    u64 nfct = 0;
    if (btf) {
        if (parse_btf_packet(btf_pointer(args[0]), &p.pkt, &proto, &family) != 0)
            return 0;
        nfct = *(const u64 *)(btf_pointer(args[0]) + OFF_SKB_NFCT);
    } else {
        if (parse_packet(skb, &p.pkt, &proto, &family) != 0)
            return 0;
        READ(nfct, skb, OFF_SKB_NFCT);
    }
    read_nfct(nfct, &p, proto);
    int reply = p.has_ct && p.ctinfo >= 3; /* IP_CT_IS_REPLY: a reply (or an ICMP error about the flow) */
    if (reply && p.ctinfo == 4) { /* an ICMP error: its conntrack entry is the flow's, named by the flow's protocol */
        proto = ct_protonum((const char *)(nfct & ~7ULL));
        read_nfct(nfct, &p, proto);
    }
    p.key.netns = inum;
    name_flow(&p, proto, family);
    if (!matches(c, &p.key))
        return 0;
    struct flowstate fresh = {};
    struct flowstate *fs = reply ? flows.lookup(&p.key) : flows.lookup_or_try_init(&p.key, &fresh);
    /* a reply, or a later packet of a flow whose first packet went through: a note (one call site) */
    if (reply || (fs && (fs->seen & SEEN_REPORTED) && !(fs->seen & SEEN_DROP))) {
        note_drop(fs, reply ? KIND_REPLY_DROP : KIND_LATER_DROP, reply ? SEEN_REPLY_DROP : SEEN_LATER_DROP, &p, skb,
                  nfct, dev, reason, args[1]);
        return 0;
    }
    if (!fs || (fs->seen & (SEEN_DROP | SEEN_REPORTED)))
        return 0;
    fs->seen |= SEEN_DROP;
    struct flowrec *r = record_of(&p.key);
    if (!r)
        return 0;
    u32 ifindex = ifindex_of(dev);
    READ(p.mark, skb, OFF_SKB_MARK);
    record_dropped_arrival(r, fs, skb, &p.pkt, 0, ifindex);
    record_dropped_arrival(r, fs, skb, &p.pkt, 3, ifindex);
    record_ct(r, &p);
    r->reason = reason;
    r->location = args[1];
    r->drop_ifindex = ifindex;
    struct routing *cur = routing_packet.lookup(&zero);
    if (cur && cur->skb == (u64)skb)
        cur->armed = 0;
    finish_record(r, fs, &p.key);
    return 0;
}
