/* BPF netfilter programs (BPF_PROG_TYPE_NETFILTER), attached at each hook twice: at the first
 * allowed priority (the packet before the hook's chains) and the last (after them). One event
 * per flow and hook position; reply-direction packets only mark the flow as answered. The same
 * programs serve the IPv4 and the IPv6 hooks. */

struct nf_ctx {
    const void *state; /* struct nf_hook_state */
    const void *skb;   /* struct sk_buff */
};

static __always_inline void note_arrival(const void *skb, u8 hook)
{
    u32 slot = ARRIVAL_SLOT(hook);
    struct arrival *a = arrivals.lookup(&slot);
    if (a) {
        a->skb = (u64)skb;
        READ(a->mark, skb, OFF_SKB_MARK);
    }
}

/* The first position of a new flow at prerouting or output, from the note its packet left there
 * (the mark before the hook's chains; the packet before their NAT is the conntrack original tuple).
 * `ev` is the last-position event about to be sent; it is restored. */
static __always_inline void emit_arrival(struct event *ev)
{
    u32 slot = ARRIVAL_SLOT(ev->hook);
    struct arrival *a = arrivals.lookup(&slot);
    u32 mark = ev->mark;
    struct tuple now = ev->pkt;
    if (a && a->skb == ev->skb)
        ev->mark = a->mark; /* else the note was overwritten (preempted): the mark after the chains */
    if (ev->has_ct)
        ev->pkt = ev->orig;
    ev->pos = 0;
    emit(ev);
    ev->pos = 1;
    ev->pkt = now;
    ev->mark = mark;
}

static __always_inline int on_hook(struct nf_ctx *ctx, u8 pos)
{
    const void *skb = ctx->skb;
    const void *state = ctx->state;
    int zero = 0;
    struct config *c = config.lookup(&zero);
    if (!c || !(c->flags & F_READY))
        return 1;
    u8 hook = 0;
    READ(hook, state, OFF_STATE_HOOK);
    if (pos == 0 && (hook == 0 || hook == 3)) { /* before conntrack: see struct arrival */
        note_arrival(skb, hook);
        return 1;
    }
    /* Fast path: a packet of a flow already reported at this position, or not wanted. The link
     * exists in the traced namespace only: no namespace check is needed before it. */
    u64 nfct = 0;
    READ(nfct, skb, OFF_SKB_NFCT);
    u64 ctp = nfct & ~7ULL;
    u64 fingerprint = 0;
    u32 bit = 1u << ((hook & 7) * 2 + pos);
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
    struct event ev = {};
    ev.hook = hook;
    const void *net = 0, *in = 0, *out = 0;
    READ(net, state, OFF_STATE_NET);
    READ(ev.pf, state, OFF_STATE_PF);
    READ(in, state, OFF_STATE_IN);
    READ(out, state, OFF_STATE_OUT);
    u32 inum = 0;
    if (net)
        READ(inum, net, OFF_NET_INUM);
    u8 proto = 0, family = 0;
    if (parse_packet(skb, &ev.pkt, &proto, &family) != 0)
        return 1;
    ev.in_ifindex = ifindex_of(in);
    ev.out_ifindex = ifindex_of(out);
    if ((c->flags & F_IIF) && ev.hook <= 2 && c->iif != ev.in_ifindex)
        return 1;
    read_ct(skb, &ev, proto);
    ev.key.netns = inum;
    name_flow(&ev, proto, family);
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
    u32 first = bit >> 1; /* this hook's first position */
    int arrived = pos == 1 && (hook == 0 || hook == 3) && !(fs->seen & first);
    fs->seen |= bit | (arrived ? first : 0);
    if (ctp) {
        struct ctseen known = {.fingerprint = fingerprint, .seen = fs->seen};
        seen_ct.update(&ctp, &known);
    }
    if (arrived)
        emit_arrival(&ev);
    emit(&ev);
    if (pos == 1 && ev.hook == 0) { /* prerouting, after its chains: routing comes next on this CPU */
        struct routing *cur = routing_packet.lookup(&zero);
        if (cur) {
            cur->skb = ev.skb;
            cur->key = ev.key;
            copy_address(cur->saddr, ev.pkt.saddr);
            copy_address(cur->daddr, ev.pkt.daddr);
            cur->iif = ev.in_ifindex;
            cur->armed = 1;
        }
    } else if (pos == 0 && (ev.hook == 1 || ev.hook == 2)) { /* input or forward: routing is done */
        struct routing *cur = routing_packet.lookup(&zero);
        if (cur && cur->skb == ev.skb)
            cur->armed = 0;
    } else if (arrived && ev.hook == 3) { /* a new local flow: routed already, by its socket */
        emit_pending(&ev);
    }
    return 1;
}

int wr_hook_first(struct nf_ctx *ctx) { return on_hook(ctx, 0); }
int wr_hook_last(struct nf_ctx *ctx) { return on_hook(ctx, 1); }
