/* BPF netfilter programs (BPF_PROG_TYPE_NETFILTER), attached at each hook twice: at the first
 * allowed priority (the packet before the hook's chains) and the last (after them). One event
 * per flow and hook position; reply-direction packets only mark the flow as answered. */

struct nf_ctx {
    const void *state; /* struct nf_hook_state */
    const void *skb;   /* struct sk_buff */
};

static __always_inline int on_hook(struct nf_ctx *ctx, u8 pos)
{
    const void *skb = ctx->skb;
    const void *state = ctx->state;
    int zero = 0;
    struct config *c = config.lookup(&zero);
    if (!c || !(c->flags & F_READY))
        return 1;
    struct event ev = {};
    const void *net = 0, *in = 0, *out = 0;
    READ(net, state, OFF_STATE_NET);
    READ(ev.hook, state, OFF_STATE_HOOK);
    READ(ev.pf, state, OFF_STATE_PF);
    READ(in, state, OFF_STATE_IN);
    READ(out, state, OFF_STATE_OUT);
    u32 inum = 0;
    if (net)
        READ(inum, net, OFF_NET_INUM);
    if ((c->flags & F_NETNS) && c->netns != inum)
        return 1;
    /* Fast path: a packet of a flow already reported at this position, or not wanted. */
    u64 nfct = 0;
    READ(nfct, skb, OFF_SKB_NFCT);
    u64 ctp = nfct & ~7ULL;
    u64 fingerprint = 0;
    u32 bit = 1u << ((ev.hook & 7) * 2 + pos);
    if (ctp) {
        u8 info = nfct & 7;
        if (info == 4) /* IP_CT_RELATED_REPLY: an ICMP error about a flow, no answer */
            return 1;
        fingerprint = ct_fingerprint((const char *)ctp);
        struct ctseen *cs = seen_ct.lookup(&ctp);
        if (cs && cs->fingerprint == fingerprint &&
            (cs->seen == SEEN_IGNORED || (cs->seen & (info == 3 ? SEEN_REPLY : bit))))
            return 1;
    }
    u8 proto = 0;
    if (parse_ipv4(skb, &ev.pkt, &proto) != 0)
        return 1;
    ev.in_ifindex = ifindex_of(in);
    ev.out_ifindex = ifindex_of(out);
    if ((c->flags & F_IIF) && ev.hook <= 2 && c->iif != ev.in_ifindex)
        return 1;
    read_ct(skb, &ev, proto);
    ev.key.netns = inum;
    name_flow(&ev, proto);
    if (!matches(c, &ev.key)) {
        if (ctp) {
            struct ctseen ignored = {.fingerprint = fingerprint, .seen = SEEN_IGNORED};
            seen_ct.update(&ctp, &ignored);
        }
        return 1;
    }
    ev.kind = KIND_HOOK;
    ev.pos = pos;
    ev.ts = bpf_ktime_get_ns();
    ev.cpu = bpf_get_smp_processor_id();
    ev.skb = (u64)skb;
    READ(ev.mark, skb, OFF_SKB_MARK);

    if (ev.has_ct && ev.ctinfo >= 3) { /* IP_CT_IS_REPLY: the reply direction of a flow */
        struct flowstate *fs = flows.lookup(&ev.key);
        if (fs && !(fs->seen & SEEN_REPLY)) {
            fs->seen |= SEEN_REPLY;
            ev.kind = KIND_REPLY;
            emit(&ev);
        }
        if (fs) {
            struct ctseen known = {.fingerprint = fingerprint, .seen = fs->seen};
            seen_ct.update(&ctp, &known);
        }
        return 1;
    }
    struct flowstate fresh = {};
    struct flowstate *fs = flows.lookup_or_try_init(&ev.key, &fresh);
    if (!fs)
        return 1;
    if (fs->seen & bit)
        return 1;
    fs->seen |= bit;
    if (ctp) {
        struct ctseen known = {.fingerprint = fingerprint, .seen = fs->seen};
        seen_ct.update(&ctp, &known);
    }
    emit(&ev);
    if (pos == 1 && ev.hook == 0) { /* prerouting, after its chains: routing comes next on this CPU */
        struct routing *cur = routing_packet.lookup(&zero);
        if (cur) {
            cur->skb = ev.skb;
            cur->key = ev.key;
            cur->saddr = ev.pkt.saddr;
            cur->daddr = ev.pkt.daddr;
            cur->armed = 1;
        }
    } else if (pos == 0 && (ev.hook == 1 || ev.hook == 2)) { /* input or forward: routing is done */
        struct routing *cur = routing_packet.lookup(&zero);
        if (cur && cur->skb == ev.skb)
            cur->armed = 0;
    }
    return 1;
}

int wr_hook_first(struct nf_ctx *ctx) { return on_hook(ctx, 0); }
int wr_hook_last(struct nf_ctx *ctx) { return on_hook(ctx, 1); }
