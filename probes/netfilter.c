/* BPF netfilter programs (BPF_PROG_TYPE_NETFILTER), attached at the last allowed priority of each
 * hook (the packet after its chains) and at the first of prerouting and output (before them: the
 * packet as it arrived, before conntrack). A flow's first
 * packet is recorded at each hook position in its record (struct flowrec), sent once its path is
 * complete; reply-direction packets only note that the flow was answered. The same programs serve
 * the IPv4 and the IPv6 hooks. */

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
        a->mark = *(const u32 *)((const char *)skb + OFF_SKB_MARK);
    }
    /* A new packet at the address of the one skipped last: that one is gone (see reply_position) */
    int zero = 0;
    struct skipping *skip = skipped.lookup(&zero);
    if (skip && skip->skb == (u64)skb)
        skip->skb = 0;
}

/* The rest of this packet's hooks take the fast path; `position` is where it is now. */
static __always_inline void skip_packet(struct skipping *skip, const void *skb, u64 nfct, u32 out_ifindex,
                                        u32 position)
{
    skip->skb = (u64)skb;
    skip->nfct = nfct;
    skip->out_ifindex = out_ifindex;
    skip->position = position;
}

/* The first position of a new flow at prerouting or output, from the note its packet left there
 * (the mark before the hook's chains; the packet before their NAT is the conntrack original tuple). */
static __always_inline void record_arrival(struct flowrec *r, const struct packet *p, const void *skb, u8 hook)
{
    u32 slot = ARRIVAL_SLOT(hook);
    struct arrival *a = arrivals.lookup(&slot);
    u32 mark = p->mark;
    if (a && a->skb == (u64)skb)
        mark = a->mark; /* else the note was overwritten (preempted): the mark after the chains */
    record_position(r, hook * 2, p->has_ct ? &p->orig : &p->pkt, p->in_ifindex, p->out_ifindex, mark);
}

/* An ICMP error about a traced flow (skb->_nfct is the flow's own entry), noted with its sender, type
 * and code, ICMP_ERRORS_MAX a flow. */
static __always_inline void note_icmp_error(const struct config *c, const void *skb, const void *state, u64 ctp,
                                            u8 hook)
{
    struct packet p = {};
    u8 proto = 0, family = 0;
    if (parse_btf_packet((const char *)skb, &p.pkt, &proto, &family) != 0 || (proto != 1 && proto != 58))
        return;
    p.key.netns = btf_netns(*(const char *const *)((const char *)state + OFF_STATE_NET));
    u8 flow_proto = ct_protonum((const char *)ctp);
    read_nfct(*(const u64 *)((const char *)skb + OFF_SKB_NFCT), &p, flow_proto);
    name_flow(&p, flow_proto, family);
    if (!matches(c, &p.key))
        return;
    struct flowstate *fs = flows.lookup(&p.key);
    if (!fs || fs->icmp_errors >= ICMP_ERRORS_MAX)
        return;
    fs->icmp_errors++;
    struct note n = {.kind = KIND_ICMP_ERROR, .key = p.key, .hook = hook};
    copy_address(n.from, p.pkt.saddr);
    read_icmp(skb, family, &n.icmp_type, &n.icmp_code);
    send_note(&n);
}

/* Input, forward and postrouting have no first-position program (a link less per packet each): the
 * packet entering their chains is the one the previous position left, with this hook's devices. */
static __always_inline void record_entry(struct flowrec *r, const struct packet *p, u8 hook)
{
    struct tuple before = p->pkt;
    u32 mark = p->mark;
    u32 n = r->npositions;
    u32 latest = (n - 1) & 15; /* masked: the verifier sees the bound */
    if (n > 0 && latest < POSITIONS) {
        u32 previous = r->order[latest];
        if (previous < POSITIONS) {
            before = r->hooks[previous].pkt;
            mark = r->hooks[previous].mark;
        }
    }
    record_position(r, hook * 2, &before, p->in_ifindex, p->out_ifindex, mark);
}

/* Postrouting, after its chains, for a packet on the fast path: does it leave where its flow's first
 * packet left? Two direct loads when it does; else the device it leaves by (checked once a packet). */
static __always_inline u32 egress_changed(const void *state, struct skipping *skip)
{
    u32 ifindex = btf_ifindex(*(const char *const *)((const char *)state + OFF_STATE_OUT));
    if (!ifindex || ifindex == skip->out_ifindex)
        return 0;
    skip->out_ifindex = 0;
    return ifindex;
}

/* The first later packet of a reported flow to leave by another device than its first packet (noted
 * once a flow; its conntrack entry is checked no more). */
static __always_inline void note_path_change(const struct packet *p, u64 ctp, u32 ifindex)
{
    struct ctseen *cs = seen_ct.lookup(&ctp);
    if (cs)
        cs->out_ifindex = 0;
    struct flowstate *fs = flows.lookup((struct key *)&p->key);
    if (!fs || (fs->seen & SEEN_PATH_CHANGE))
        return;
    fs->seen |= SEEN_PATH_CHANGE;
    struct note n = {.kind = KIND_PATH_CHANGE, .key = p->key, .hook = 4, .ifindex = ifindex, .mark = p->mark};
    send_note(&n);
}

/* A hook's program after its chains (inlined into wr_hook_last: written as the entry function
 * itself, it compiles over the 512-byte stack limit). */
static __always_inline int on_hook_last(struct nf_ctx *ctx)
{
    const u8 pos = 1; /* the position, in the arithmetic of hook * 2 + pos that records share */
    const void *skb = ctx->skb;
    const void *state = ctx->state;
    int zero = 0;
    struct config *c = config.lookup(&zero);
    if (!c || !(c->flags & F_READY))
        return 1;
    /* Direct loads (the context's pointers are typed by BTF): no helper call on the fast path. */
    u8 hook = *((const u8 *)state + OFF_STATE_HOOK);
    if (hook > 4) /* NF_INET_POST_ROUTING is the last (and bounds the record's index for the verifier) */
        return 1;
    /* Fast path: a packet of a flow already reported at this position, or not wanted. The link
     * exists in the traced namespace only: no namespace check is needed before it. */
    u64 nfct = *(const u64 *)((const char *)skb + OFF_SKB_NFCT);
    u64 ctp = nfct & ~7ULL;
    u64 fingerprint = 0;
    struct ctseen *cs = 0;
    u32 bit = 1u << ((hook & 7) * 2 + pos);
    u32 changed = 0; /* a packet of a reported flow leaving by another device: this one (the slow path names it) */
    u32 position = hook * 2 + pos;
    struct skipping *skip = 0;
    if (ctp) {
        skip = skipped.lookup(&zero);
        if (!skip)
            return 1;
        if (skip->skb == (u64)skb && skip->nfct == nfct) {
            skip->position = position;
            if (hook == 4 && pos == 1 && skip->out_ifindex)
                changed = egress_changed(state, skip);
            if (!changed)
                return 1;
            goto parse;
        }
        u8 info = nfct & 7;
        if (info == 4) { /* IP_CT_RELATED_REPLY: an ICMP error about a flow (its conntrack entry), no answer */
            if (pos == 1 && (hook == 0 || hook == 3)) /* arrived, or sent by this host: once */
                note_icmp_error(c, skb, state, ctp, hook);
            skip_packet(skip, skb, nfct, 0, position);
            return 1;
        }
        fingerprint = ct_fingerprint((const char *)ctp);
        cs = seen_ct.lookup(&ctp);
        if (cs && cs->fingerprint == fingerprint) {
            if (cs->seen == SEEN_IGNORED || (cs->seen & (info == 3 ? SEEN_REPLY : SEEN_REPORTED))) {
                skip_packet(skip, skb, nfct, info == 3 || cs->seen == SEEN_IGNORED ? 0 : cs->out_ifindex, position);
                if (hook == 4 && pos == 1 && skip->out_ifindex)
                    changed = egress_changed(state, skip);
                if (!changed)
                    return 1;
                goto parse;
            }
            if (info != 3 && (cs->seen & bit))
                return 1;
        }
    }
parse:;
    /* The hook state and the skb by direct loads; the packet's headers and its conntrack entry,
     * which no typed pointer reaches, by one helper call each part. */
    struct packet p = {};
    u8 proto = 0, family = 0;
    if (parse_btf_packet((const char *)skb, &p.pkt, &proto, &family) != 0)
        return 1;
    p.in_ifindex = btf_ifindex(*(const char *const *)((const char *)state + OFF_STATE_IN));
    p.out_ifindex = btf_ifindex(*(const char *const *)((const char *)state + OFF_STATE_OUT));
    if ((c->flags & F_IIF) && hook <= 2 && c->iif != p.in_ifindex)
        return 1;
    read_nfct(nfct, &p, proto);
    p.key.netns = btf_netns(*(const char *const *)((const char *)state + OFF_STATE_NET));
    name_flow(&p, proto, family);
    if (!matches(c, &p.key)) {
        if (ctp) {
            struct ctseen ignored = {.fingerprint = fingerprint, .seen = SEEN_IGNORED};
            seen_ct.update(&ctp, &ignored);
        }
        return 1;
    }
    p.mark = *(const u32 *)((const char *)skb + OFF_SKB_MARK);
    if (changed) {
        note_path_change(&p, ctp, changed);
        return 1;
    }

    if (p.has_ct && p.ctinfo >= 3) { /* IP_CT_IS_REPLY: the reply direction of a flow */
        struct flowstate *fs = flows.lookup(&p.key);
        if (fs && !(fs->seen & SEEN_REPLY)) {
            fs->seen |= SEEN_REPLY;
            struct note n = {.kind = KIND_REPLY, .key = p.key, .hook = hook};
            send_note(&n);
        }
        if (fs) {
            struct ctseen known = {.fingerprint = fingerprint, .seen = fs->seen,
                                   .out_ifindex = cs && cs->fingerprint == fingerprint ? cs->out_ifindex : 0};
            seen_ct.update(&ctp, &known);
        }
        if (skip) /* the first reply too: its later hooks skip, and a drop knows where it was */
            skip_packet(skip, skb, nfct, 0, position);
        return 1;
    }
    struct flowstate fresh = {};
    struct flowstate *fs = flows.lookup_or_try_init(&p.key, &fresh);
    if (!fs)
        return 1;
    if (fs->seen & bit)
        return 1;
    u32 first = bit >> 1; /* this hook's first position */
    int arrived = pos == 1 && (hook == 0 || hook == 3) && !(fs->seen & first);
    int entered = pos == 1 && (hook == 1 || hook == 2 || hook == 4) && !(fs->seen & first);
    fs->seen |= bit | (arrived || entered ? first : 0);
    if (fs->seen & SEEN_REPORTED) {
        /* a later packet of a flow already sent takes another way (its first packet's record is out),
         * or its conntrack entry's note was evicted: noted again, for its next packets' fast path */
        if (ctp) {
            struct ctseen known = {.fingerprint = fingerprint, .seen = fs->seen};
            seen_ct.update(&ctp, &known);
        }
        return 1;
    }
    /* A flow on its way is noted for the fast path once, when its first packet's path is complete
     * (below): the flow state says the rest, a map update a hook less. */
    struct flowrec *r = record_of(&p.key);
    if (!r)
        return 1;
    if (arrived)
        record_arrival(r, &p, skb, hook);
    else if (entered)
        record_entry(r, &p, hook);
    record_position(r, hook * 2 + pos, &p.pkt, p.in_ifindex, p.out_ifindex, p.mark);
    record_ct(r, &p);
    if (pos == 1 && hook == 0) { /* prerouting, after its chains: routing comes next on this CPU */
        struct routing *cur = routing_packet.lookup(&zero);
        if (cur) {
            cur->skb = (u64)skb;
            cur->key = p.key;
            copy_address(cur->saddr, p.pkt.saddr);
            copy_address(cur->daddr, p.pkt.daddr);
            cur->iif = p.in_ifindex;
            cur->armed = 1;
        }
    } else if (hook == 1 || hook == 2) { /* input or forward (after its chains): routing is done */
        struct routing *cur = routing_packet.lookup(&zero);
        if (cur && cur->skb == (u64)skb)
            cur->armed = 0;
    } else if (arrived && hook == 3) { /* a new local flow: routed already, by its socket */
        claim_pending(r);
    }
    if (pos == 1 && (hook == 4 || hook == 1)) { /* left, or delivered: the path is complete */
        finish_record(r, fs, &p.key);
        if (ctp) { /* the next packets of the flow take the fast path from their first hook on */
            struct ctseen reported = {.fingerprint = fingerprint, .seen = fs->seen,
                                      .out_ifindex = hook == 4 ? p.out_ifindex : 0};
            seen_ct.update(&ctp, &reported);
        }
    }
    return 1;
}

int wr_hook_last(struct nf_ctx *ctx) { return on_hook_last(ctx); }

/* Before the chains of prerouting and output (the only hooks it is attached at), before conntrack:
 * the packet is only noted (struct arrival). A program of its own, a few instructions long: the
 * verifier has nothing more to walk, and a start loads it in no time. */
int wr_hook_first(struct nf_ctx *ctx)
{
    int zero = 0;
    struct config *c = config.lookup(&zero);
    if (!c || !(c->flags & F_READY))
        return 1;
    u8 hook = *((const u8 *)ctx->state + OFF_STATE_HOOK);
    if (hook == 0 || hook == 3)
        note_arrival(ctx->skb, hook);
    return 1;
}
