/* why-route trace: what every probe shares. Compiled by BCC; struct offsets arrive as -D
 * constants computed from the running kernel's BTF (tracer/trace/kernel.py), never from
 * headers. The filter is one entry of the `config` array map (mirrored by
 * tracer.trace.kernel.Config). */
#include <uapi/linux/bpf.h>

/* What the ring carries: one record per flow (struct flowrec, when its first packet's path is
 * complete or it was dropped) and change notes about a reported flow (struct note). */
#define KIND_FLOW       1
#define KIND_REPLY      4
#define KIND_REPLY_DROP 5
#define KIND_ICMP_ERROR 6
#define KIND_PATH_CHANGE 7
#define KIND_LATER_DROP 8

#define F_NETNS (1 << 0)
#define F_SRC   (1 << 1)
#define F_DST   (1 << 2)
#define F_PROTO (1 << 3)
#define F_SPORT (1 << 4)
#define F_DPORT (1 << 5)
#define F_IIF   (1 << 6)
#define F_FAMILY (1 << 7)
/* Set once user space has written the filter: BCC attaches the tracepoints when it loads them,
 * before that, and an all-zero filter would let everything through. */
#define F_READY (1u << 31)

#define SEEN_LATER_DROP (1u << 26)
#define SEEN_PATH_CHANGE (1u << 27)
#define SEEN_REPLY_DROP (1u << 28)
#define SEEN_REPORTED (1u << 29)
#define SEEN_DROP  (1u << 30)
#define SEEN_REPLY (1u << 31)

#define LOOPBACK_IFINDEX 1

/* Addresses are 4 words in network order, IPv4 in the first word and the rest zero (as conntrack
 * keeps them), so that one layout serves both families. */
struct config {
    u32 flags;
    u32 netns;
    u32 saddr[4];
    u32 daddr[4];
    u32 iif;
    u16 sport;
    u16 dport;
    u8 proto;
    u8 family; /* 4 or 6 */
    u8 pad[2];
};

/* A flow's identity: its conntrack original tuple (the packet's own tuple before conntrack ran). */
struct key {
    u32 netns;
    u32 saddr[4];
    u32 daddr[4];
    u16 sport;
    u16 dport;
    u8 proto;
    u8 family;
    u8 pad[2];
};

struct tuple {
    u32 saddr[4];
    u32 daddr[4];
    u16 sport;
    u16 dport;
};

/* The packet at one hook position (hook * 2 + position: 0 first, 1 last). */
struct hookpos {
    struct tuple pkt;
    u32 in_ifindex;
    u32 out_ifindex;
    u32 mark;
};
#define POSITIONS 10

/* One table looked up for the flow's first packet (a socket's lookups, for a local flow). */
struct lookup {
    u64 flowi;         /* the lookups of one routing decision share it (and the CPU) */
    u32 table;
    s32 err;
    u32 in_ifindex;
    u32 out_ifindex;
    u32 mark;
    u32 cpu;
    u32 saddr[4];
    u32 daddr[4];
    u32 gw[4];
    u8 gw_family;
    u8 reverse;        /* the source-validation lookup */
    u8 rule_known;     /* rule_pref is the kernel's: probes/fib_rule.c saw the rule take this lookup */
    u8 pad;
    u32 rule_pref;
};
#define LOOKUPS_MAX 8

/* A flow's first packet, assembled in the `records` map while it crosses the hooks and sent as one
 * ring record when its path is complete (left at postrouting, delivered at input, or dropped). */
struct flowrec {
    u64 ts;            /* when it was sent */
    u64 location;      /* drop: the kernel address */
    u32 kind;          /* KIND_FLOW; struct note's first fields are the same */
    u32 cpu;
    struct key key;
    u32 seen;          /* bit hook*2+pos per position recorded in `hooks` */
    u32 ct_status;
    struct tuple orig; /* conntrack tuples as last seen, when has_ct */
    struct tuple reply;
    u32 reason;        /* drop: enum skb_drop_reason, 0 not dropped */
    u32 drop_ifindex;
    u8 has_ct;
    u8 nlookups;
    u8 complete;       /* 0: read from the map when the trace ended, its path unfinished */
    u8 npositions;
    u8 order[POSITIONS]; /* the positions recorded, in the order the packet reached them */
    u8 pad[2];
    struct hookpos hooks[POSITIONS];
    struct lookup lookups[LOOKUPS_MAX];
};

/* A change about a flow already reported: its first reply-direction packet (KIND_REPLY), a reply
 * dropped (KIND_REPLY_DROP: reason, location, ifindex), an ICMP error about it (KIND_ICMP_ERROR:
 * the error's sender in `from`, its type and code), the first of its later packets to leave by
 * another device than its first packet (KIND_PATH_CHANGE: that device in ifindex, its mark), or the
 * first of its later packets dropped (KIND_LATER_DROP: as KIND_REPLY_DROP). */
struct note {
    u64 ts;
    u64 location;
    u32 kind;
    u32 cpu;
    struct key key;
    u32 hook;
    u32 reason;
    u32 ifindex;
    u32 from[4];
    u8 icmp_type;
    u8 icmp_code;
    u8 icmp_error; /* KIND_REPLY_DROP: the dropped packet was an ICMP error about the flow */
    u8 after; /* KIND_REPLY_DROP: 1 + the last hook position (hook * 2 + pos) the packet passed, 0 unknown */
    u32 mark;
};
#define ICMP_ERRORS_MAX 4 /* noted per flow */

struct flowstate {
    u32 seen; /* bit hook*2+pos per hook probe, SEEN_DROP, SEEN_REPLY, SEEN_REPORTED, SEEN_REPLY_DROP */
    u32 icmp_errors; /* noted so far */
};

/* The packet whose routing decision is being made on this CPU (armed at prerouting-last). */
struct routing {
    u64 skb;
    struct key key;
    u32 saddr[4];
    u32 daddr[4];
    u32 iif;
    u32 armed;
};

/* The table lookups of the last output route lookup on this CPU (a socket's, flowi iif = lo): they
 * happen before the packet exists, so the output probe of a new local flow picks them up. */
#define PENDING_MAX LOOKUPS_MAX
struct pending {
    u64 flowi;
    u64 ts;
    u32 saddr[4];
    u32 daddr[4];
    u32 n;
    u8 family;
    u8 pad[3];
};
/* A socket's lookup and its first packet's output hook run in one system call. */
#define PENDING_MAX_AGE_NS 100000000ULL

/* Before conntrack (prerouting-first, output-first) no packet has its entry yet, so none could take
 * the fast path below: instead of parsing every packet there, the first-position program only notes
 * the packet and its mark on this CPU, and the last-position program (or the drop probe, when a
 * chain dropped it) reports the first position of a new flow from that note. One slot for
 * prerouting (softirq), one for output (process context, which a softirq may interrupt). */
struct arrival {
    u64 skb;
    u32 mark;
    u32 pad;
};
#define ARRIVAL_SLOT(hook) ((hook) == 0 ? 0 : 1)

/* Fast path for packets of flows already reported (or filtered out): keyed by the conntrack entry's
 * address, checked by a fingerprint of its original tuple (an address can be reused by a new entry). */
struct ctseen {
    u64 fingerprint;
    u32 seen; /* as flowstate.seen; IGNORED: the filter does not want this flow */
    u32 out_ifindex; /* the device the flow's first packet left by (reported, forwarded or local) */
};
#define SEEN_IGNORED 0xFFFFFFFFu

/* The packet this CPU last found nothing to do for (its flow reported or not wanted, a reply, an
 * ICMP error about a flow): the rest of its hooks return at once (skb and _nfct, ctinfo included,
 * both equal), each leaving its position here — where a dropped reply was last seen. */
struct skipping {
    u64 skb;
    u64 nfct;
    u32 out_ifindex; /* where its flow's first packet left: postrouting checks this one leaves there too */
    u32 position; /* hook * 2 + pos of the last hook position it reached */
};

BPF_ARRAY(config, struct config, 1);
BPF_TABLE("lru_hash", u64, struct ctseen, seen_ct, 65536);
BPF_TABLE("lru_hash", struct key, struct flowstate, flows, 65536);
BPF_PERCPU_ARRAY(routing_packet, struct routing, 1);
BPF_PERCPU_ARRAY(arrivals, struct arrival, 2);
BPF_PERCPU_ARRAY(skipped, struct skipping, 1);
BPF_PERCPU_ARRAY(pending_route, struct pending, 1);
BPF_PERCPU_ARRAY(pending_lookups, struct lookup, PENDING_MAX); /* a map: the verifier checks the index */
/* The flows whose first packet is on its way (deleted when sent). */
BPF_TABLE("lru_hash", struct key, struct flowrec, records, 16384);
BPF_PERCPU_ARRAY(blank_record, struct flowrec, 1); /* never written: a record's initial value (too big for the stack) */
BPF_RINGBUF_OUTPUT(events, 16384); /* 64 MB: bursts of new flows, while user space catches up */
/* What the kernel could not hand over: notes the ring refused, records the map refused; and records
 * the ring refused, left in the map for user space to read there when the trace ends. */
#define LOST_RING       0
#define LOST_RECORD     1
#define DEFERRED_RECORD 2
BPF_ARRAY(lost, u64, 3);

/* A packet as a probe parsed it: the flow it belongs to, its own tuple, its conntrack entry. */
struct packet {
    struct key key;
    struct tuple pkt;
    struct tuple orig; /* conntrack tuples, when has_ct */
    struct tuple reply;
    u32 in_ifindex;
    u32 out_ifindex;
    u32 mark;
    u32 ct_status;
    u8 ctinfo;
    u8 has_ct;
    u8 pad[2];
};

#define READ(dst, ptr, off) bpf_probe_read_kernel(&(dst), sizeof(dst), (const char *)(ptr) + (off))

/* A tracepoint probe, built as a BTF-typed tracepoint (tp_btf, WR_TP_BTF=1: its pointer arguments
 * are typed, the body may load through them directly) or as a raw tracepoint (WR_TP_BTF=0: every
 * load a helper call), for kernels that refuse tp_btf. User space decides before compiling and
 * attaches it (tracer/trace/kernel.py: attach_tracepoint). */
#define WR_TRACEPOINT(name)                                                                  \
    static __always_inline int name##_body(const u64 *args, const int btf);                 \
    int wr_tp__##name(struct bpf_raw_tracepoint_args *ctx) { return name##_body(ctx->args, WR_TP_BTF); } \
    static __always_inline int name##_body(const u64 *args, const int btf)

/* A tp_btf argument as a pointer to load through: the empty asm hides where it came from from BCC,
 * which would otherwise turn each load into a helper call as it does for a raw tracepoint's. */
static __always_inline const char *btf_pointer(u64 arg)
{
    asm volatile("" : "+r"(arg));
    return (const char *)arg;
}

static __always_inline int same_address(const u32 *a, const u32 *b)
{
    return a[0] == b[0] && a[1] == b[1] && a[2] == b[2] && a[3] == b[3];
}

static __always_inline int is_any(const u32 *a)
{
    return (a[0] | a[1] | a[2] | a[3]) == 0;
}

static __always_inline void copy_address(u32 *to, const u32 *from)
{
    to[0] = from[0];
    to[1] = from[1];
    to[2] = from[2];
    to[3] = from[3];
}

/* The flow is named by its original direction (the conntrack tuple when there is one),
 * whichever way this packet went. */
static __always_inline void name_flow(struct packet *p, u8 proto, u8 family)
{
    p->key.proto = proto;
    p->key.family = family;
    const struct tuple *t = p->has_ct ? &p->orig : &p->pkt;
    copy_address(p->key.saddr, t->saddr);
    copy_address(p->key.daddr, t->daddr);
    p->key.sport = t->sport;
    p->key.dport = t->dport;
}

static __always_inline void count_lost(int what)
{
    u64 *n = lost.lookup(&what);
    if (n)
        __sync_fetch_and_add(n, 1);
}

/* No wakeup per record: user space reads the ring every few milliseconds. 0: sent. */
static __always_inline int send_record(struct flowrec *r)
{
    r->ts = bpf_ktime_get_ns();
    r->cpu = bpf_get_smp_processor_id();
    r->kind = KIND_FLOW;
    return events.ringbuf_output(r, sizeof(*r), BPF_RB_NO_WAKEUP);
}

static __always_inline void send_note(struct note *n)
{
    n->ts = bpf_ktime_get_ns();
    n->cpu = bpf_get_smp_processor_id();
    if (events.ringbuf_output(n, sizeof(*n), BPF_RB_NO_WAKEUP) != 0)
        count_lost(LOST_RING);
}

/* The flow's record being assembled, made when its first position is recorded; NULL (counted as
 * lost) when the map refuses. */
static __always_inline struct flowrec *record_of(const struct key *key)
{
    struct key *k = (struct key *)key; /* BCC's map calls take a key that is not const: they do not write it */
    struct flowrec *r = records.lookup(k);
    if (r)
        return r;
    int zero = 0;
    struct flowrec *blank = blank_record.lookup(&zero);
    if (!blank)
        return 0;
    records.update(k, blank);
    r = records.lookup(k);
    if (!r) {
        count_lost(LOST_RECORD);
        return 0;
    }
    r->key = *key;
    return r;
}

static __always_inline void record_position(struct flowrec *r, u32 index, const struct tuple *pkt, u32 in, u32 out,
                                            u32 mark)
{
    if (index >= POSITIONS)
        return;
    struct hookpos *h = &r->hooks[index];
    if (!(r->seen & (1u << index))) {
        u32 n = r->npositions;
        if (n < POSITIONS) {
            r->order[n] = index;
            r->npositions = n + 1;
        }
    }
    h->pkt = *pkt;
    h->in_ifindex = in;
    h->out_ifindex = out;
    h->mark = mark;
    r->seen |= 1u << index;
}

/* The record's last word on conntrack: the tuples as this packet saw them. */
static __always_inline void record_ct(struct flowrec *r, const struct packet *p)
{
    if (!p->has_ct)
        return;
    r->has_ct = 1;
    r->orig = p->orig;
    r->reply = p->reply;
    r->ct_status = p->ct_status;
}

/* Sent: the record leaves the map (if the ring refuses it, now and then under contention, it stays
 * there, complete, for user space); the flow state remembers it was reported. */
static __always_inline void finish_record(struct flowrec *r, struct flowstate *fs, const struct key *key)
{
    r->complete = 1;
    if (send_record(r) == 0)
        records.delete((struct key *)key);
    else
        count_lost(DEFERRED_RECORD);
    fs->seen |= SEEN_REPORTED;
}

/* The inode of a BTF-typed struct net pointer: a direct load. */
static __always_inline u32 btf_netns(const char *net)
{
    return net ? *(const u32 *)(net + OFF_NET_INUM) : 0;
}

/* netns_of_dev, for a BTF-typed device pointer: direct loads. */
static __always_inline u32 netns_of_btf_dev(const char *dev)
{
    return dev ? btf_netns(*(const char *const *)(dev + OFF_DEV_ND_NET)) : 0;
}

/* ifindex_of, for a BTF-typed device pointer. */
static __always_inline u32 btf_ifindex(const char *dev)
{
    return dev ? *(const u32 *)(dev + OFF_DEV_IFINDEX) : 0;
}

static __always_inline u32 netns_of_dev(const void *dev)
{
    const void *net = 0;
    u32 inum = 0;
    if (!dev)
        return 0;
    READ(net, dev, OFF_DEV_ND_NET);
    if (!net)
        return 0;
    READ(inum, net, OFF_NET_INUM);
    return inum;
}

static __always_inline u32 ifindex_of(const void *dev)
{
    u32 ifindex = 0;
    if (dev)
        READ(ifindex, dev, OFF_DEV_IFINDEX);
    return ifindex;
}

static __always_inline int matches(const struct config *c, const struct key *k)
{
    if ((c->flags & F_NETNS) && c->netns != k->netns)
        return 0;
    if ((c->flags & F_FAMILY) && c->family != k->family)
        return 0;
    if ((c->flags & F_PROTO) && c->proto != k->proto)
        return 0;
    if ((c->flags & F_SRC) && !same_address(c->saddr, k->saddr))
        return 0;
    if ((c->flags & F_DST) && !same_address(c->daddr, k->daddr))
        return 0;
    if ((c->flags & F_SPORT) && c->sport != k->sport)
        return 0;
    if ((c->flags & F_DPORT) && c->dport != k->dport)
        return 0;
    return 1;
}

/* The ports (or the ICMP echo id) from the transport header at l4: one read of its first 8 bytes. */
static __always_inline void read_ports(const char *l4, u8 proto, struct tuple *t)
{
    t->sport = 0;
    t->dport = 0;
    u8 l4h[8] = {};
    if (proto == 6 || proto == 17 || proto == 132) {
        READ(l4h, l4, 0);
        t->sport = (u16)l4h[0] << 8 | l4h[1];
        t->dport = (u16)l4h[2] << 8 | l4h[3];
    } else if (proto == 1 || proto == 58) {
        READ(l4h, l4, 0);
        /* ICMP echo request/reply (8/0), ICMPv6 (128/129): the echo id as sport */
        if (l4h[0] == 8 || l4h[0] == 0 || l4h[0] == 128 || l4h[0] == 129)
            t->sport = (u16)l4h[4] << 8 | l4h[5];
    }
}

/* The IP header at head + nh (skb->head, skb->network_header): family, addresses, protocol, ports —
 * the fixed header in one read. IPv6 extension headers (hop-by-hop, routing, destination options)
 * are skipped, two at most. -1: not a flow. */
static __always_inline int parse_ip(const char *head, u16 nh, struct tuple *t, u8 *proto, u8 *family)
{
    if (!head || nh == 0xFFFF)
        return -1;
    const char *ip = head + nh;
    u32 hdr[10] = {}; /* an IPv6 header, or an IPv4 one and what follows */
    READ(hdr, ip, 0);
    u8 vihl = hdr[0] & 0xFF;
    __builtin_memset(t->saddr, 0, sizeof(t->saddr));
    __builtin_memset(t->daddr, 0, sizeof(t->daddr));
    if ((vihl >> 4) == 4) {
        *family = 4;
        *proto = (hdr[2] >> 8) & 0xFF;
        t->saddr[0] = hdr[3];
        t->daddr[0] = hdr[4];
        read_ports(ip + ((vihl & 0xF) * 4), *proto, t);
        return 0;
    }
    if ((vihl >> 4) != 6)
        return -1;
    *family = 6;
    copy_address(t->saddr, &hdr[2]);
    copy_address(t->daddr, &hdr[6]);
    u8 next = (hdr[1] >> 16) & 0xFF;
    const char *l4 = ip + 40;
    for (int i = 0; i < 2; i++) {
        if (next != 0 && next != 43 && next != 60)
            break;
        u8 ext[2] = {};
        READ(ext, l4, 0);
        next = ext[0];
        l4 += (ext[1] + 1) * 8;
    }
    *proto = next;
    if (next == 58) {
        u8 type = 0;
        READ(type, l4, 0);
        if (type >= 130 && type <= 143) /* multicast listener and neighbour discovery: link control, not flows */
            return -1;
    }
    read_ports(l4, next, t);
    return 0;
}

/* parse_ip for an skb that is not BTF-typed (a raw tracepoint's): its header fields read by helper. */
static __always_inline int parse_packet(const void *skb, struct tuple *t, u8 *proto, u8 *family)
{
    const char *head = 0;
    u16 nh = 0;
    READ(head, skb, OFF_SKB_HEAD);
    READ(nh, skb, OFF_SKB_NETWORK_HEADER);
    return parse_ip(head, nh, t, proto, family);
}

/* parse_ip for a BTF-typed skb (a netfilter program's, a tp_btf argument): direct loads. */
static __always_inline int parse_btf_packet(const char *skb, struct tuple *t, u8 *proto, u8 *family)
{
    const char *head = *(const char *const *)(skb + OFF_SKB_HEAD);
    u16 nh = *(const u16 *)(skb + OFF_SKB_NETWORK_HEADER);
    return parse_ip(head, nh, t, proto, family);
}

/* The ICMP (or ICMPv6) type and code of the packet at skb's network header: an error's. */
static __always_inline void read_icmp(const void *skb, u8 family, u8 *type, u8 *code)
{
    const char *head = 0;
    u16 nh = 0;
    u8 vihl = 0;
    READ(head, skb, OFF_SKB_HEAD);
    READ(nh, skb, OFF_SKB_NETWORK_HEADER);
    const char *ip = head + nh;
    READ(vihl, ip, 0);
    const char *l4 = family == 4 ? ip + (vihl & 0xF) * 4 : ip + 40; /* extension headers before ICMPv6: rare */
    READ(*type, l4, 0);
    READ(*code, l4, 1);
}

/* A conntrack tuple in one read of the whole struct nf_conntrack_tuple. */
static __always_inline void read_ct_tuple(const char *th, struct tuple *t)
{
    u32 raw[SIZE_TUPLE / 4] = {};
    READ(raw, th, 0);
    const char *at = (const char *)raw;
    __builtin_memcpy(t->saddr, at + OFF_TUPLE_SRC_U3, sizeof(t->saddr)); /* union nf_inet_addr: IPv4 in the first word */
    __builtin_memcpy(t->daddr, at + OFF_TUPLE_DST_U3, sizeof(t->daddr));
    u16 sp = 0, dp = 0;
    __builtin_memcpy(&sp, at + OFF_TUPLE_SRC_U, sizeof(sp));
    __builtin_memcpy(&dp, at + OFF_TUPLE_DST_U, sizeof(dp));
    t->sport = bpf_ntohs(sp);
    t->dport = bpf_ntohs(dp);
}

/* A conntrack entry's identity beside its address (which a new entry can reuse): its original tuple, folded. */
static __always_inline u64 ct_fingerprint(const char *ct)
{
    struct tuple t = {};
    read_ct_tuple(ct + OFF_CT_TUPLEHASH + OFF_TUPLEHASH_TUPLE, &t);
    return ((u64)(t.saddr[0] ^ t.saddr[1] ^ t.saddr[2] ^ t.saddr[3]) << 32) | ((u32)t.sport << 16) | t.dport;
}

/* The protocol of a conntrack entry's flow (an ICMP error's entry is the flow's it is about). */
static __always_inline u8 ct_protonum(const char *ct)
{
    u8 proto = 0;
    READ(proto, ct, OFF_CT_TUPLEHASH + OFF_TUPLEHASH_TUPLE + OFF_TUPLE_DST_PROTONUM);
    return proto;
}

/* The conntrack entry of skb->_nfct (its value: ctinfo in the low bits): both tuples and the status. */
static __always_inline const char *read_nfct(u64 nfct, struct packet *p, u8 proto)
{
    const char *ct = (const char *)(nfct & ~7ULL);
    p->ctinfo = nfct & 7;
    if (!ct)
        return 0;
    p->has_ct = 1;
    const char *th0 = ct + OFF_CT_TUPLEHASH + OFF_TUPLEHASH_TUPLE;
    read_ct_tuple(th0, &p->orig);
    read_ct_tuple(th0 + SIZE_TUPLEHASH, &p->reply);
    if (proto == 1 || proto == 58) { /* ICMP, ICMPv6: src.u holds the echo id; dst.u type and code */
        p->orig.dport = 0;
        p->reply.dport = 0;
    }
    READ(p->ct_status, ct, OFF_CT_STATUS);
    return ct;
}

/* fib probes: one table lookup of an output route lookup (a socket's), kept on this CPU until its
 * packet reaches the output hook. A lookup that found something (or refused) ends a lookup sequence:
 * the next one starts a new sequence (connect() looks up again once it has chosen the source). */
static __always_inline void keep_pending(const struct lookup *found, u8 family)
{
    int zero = 0;
    struct pending *p = pending_route.lookup(&zero);
    if (!p)
        return;
    u64 now = bpf_ktime_get_ns();
    u32 n = p->n;
    if (n > 0) {
        u32 previous = n - 1;
        struct lookup *last = pending_lookups.lookup(&previous);
        if (!last || last->err != -11)
            n = 0;
    }
    if (p->flowi != found->flowi || p->family != family || !same_address(p->saddr, found->saddr) ||
        !same_address(p->daddr, found->daddr) || now - p->ts > PENDING_MAX_AGE_NS)
        n = 0;
    struct lookup *l = pending_lookups.lookup(&n);
    if (!l)
        return; /* more than PENDING_MAX lookups: the rest is not kept */
    p->flowi = found->flowi;
    p->ts = now;
    p->family = family;
    copy_address(p->saddr, found->saddr);
    copy_address(p->daddr, found->daddr);
    *l = *found;
    p->n = n + 1;
}

/* netfilter probe, output hook, first packet of a new local flow: the lookups its socket made for
 * it (matched by the flow's original addresses, before any NAT of the output chains), into its record. */
static __always_inline void claim_pending(struct flowrec *r)
{
    int zero = 0;
    struct pending *p = pending_route.lookup(&zero);
    /* A lookup without a source (the socket is not bound) is the one that selected the packet's. */
    if (!p || p->n == 0 || p->family != r->key.family || !same_address(p->daddr, r->key.daddr) ||
        (!is_any(p->saddr) && !same_address(p->saddr, r->key.saddr)) ||
        bpf_ktime_get_ns() - p->ts > PENDING_MAX_AGE_NS)
        return;
    u32 n = p->n;
    p->n = 0;
#pragma unroll
    for (int i = 0; i < PENDING_MAX; i++) {
        u32 index = i;
        if (index >= n)
            break;
        struct lookup *l = pending_lookups.lookup(&index);
        if (!l)
            break;
        r->lookups[i] = *l;
        r->nlookups = i + 1;
    }
}

/* fib probes: the routing decision being made on this CPU when a traced flow's first packet armed
 * it and this lookup is of its family and for a packet of its input device (not a socket's lookup,
 * nor an address-type check such as icmp_send's, whose flowi has no device); NULL otherwise. The
 * reverse lookup of source validation runs with the forward route's device: it is seen only when
 * that is the input device too. */
static const char *(*current_task_btf)(void) = (void *)BPF_FUNC_get_current_task_btf;

/* fib probes: a socket's lookup (no packet yet) of the traced namespace? The lookup carries no
 * namespace: the calling task's is the socket's (a lookup from another namespace, such as the
 * sender's in a lab, is left at once). */
static __always_inline int own_socket_lookup(void)
{
    int zero = 0;
    struct config *c = config.lookup(&zero);
    if (!c || !(c->flags & F_READY))
        return 0;
    if (!(c->flags & F_NETNS))
        return 1;
    /* The task as a BTF pointer: direct loads, no helper call for each. */
    const char *task = current_task_btf();
    const char *nsproxy = *(const char *const *)(task + OFF_TASK_NSPROXY);
    if (!nsproxy)
        return 0;
    const char *net = *(const char *const *)(nsproxy + OFF_NSPROXY_NET);
    if (!net)
        return 0;
    return *(const u32 *)(net + OFF_NET_INUM) == c->netns;
}

/* fib probes: whether this table lookup is one to report — the routing decision of the packet armed
 * on this CPU (`*cur` set; of its family and for a packet of its input device), or a socket's lookup
 * (iif lo) in the traced namespace (`*cur` 0) — with its input interface in `*iif`. Most lookups are
 * neither: both are ruled out before the flowi is read, without a helper call. */
static __always_inline int lookup_wanted(u8 family, const void *iif_field, struct routing **cur, u32 *iif)
{
    int zero = 0;
    struct routing *armed = routing_packet.lookup(&zero);
    if (armed && !(armed->armed && armed->key.family == family))
        armed = 0;
    int own = -1; /* own_socket_lookup(), once asked */
    if (!armed) {
        own = own_socket_lookup();
        if (!own)
            return 0;
    }
    READ(*iif, iif_field, 0);
    *cur = armed && *iif == armed->iif ? armed : 0;
    if (*cur)
        return 1;
    return *iif == LOOPBACK_IFINDEX && (own >= 0 ? own : own_socket_lookup());
}

/* The ip rule whose table lookup comes next on this CPU (probes/fib_rule.c, on kernels that let it
 * attach): the kernel calls the rule's action, which looks its table up at once, with the same flowi. */
struct rule_now {
    u64 flowi;
    u32 table;
    u32 pref;
};
BPF_PERCPU_ARRAY(rules_now, struct rule_now, 1);

/* fib probes: the rule of lookup `l`, if the rule probe saw it on this CPU for the same flowi and
 * table. Taken once: one rule, one lookup (a rule whose table does not exist looks nothing up, and a
 * softirq's lookup between a process's rule and its lookup leaves the flowi different). */
static __always_inline void stamp_rule(struct lookup *l)
{
    int zero = 0;
    struct rule_now *now = rules_now.lookup(&zero);
    if (!now || now->flowi != l->flowi)
        return;
    now->flowi = 0;
    if (now->table != l->table)
        return;
    l->rule_known = 1;
    l->rule_pref = now->pref;
}

/* fib probes: `l` is one table lookup (addresses, table, result, nexthop). The armed packet's goes
 * into its flow's record (marked when it is the reverse, source-validation, lookup); a socket's is kept. */
static __always_inline void report_lookup(struct lookup *l, const struct routing *cur, u8 family)
{
    l->cpu = bpf_get_smp_processor_id();
    stamp_rule(l);
    if (!cur) {
        keep_pending(l, family);
        return;
    }
    if (same_address(l->daddr, cur->daddr))
        l->reverse = 0;
    else if (same_address(l->daddr, cur->saddr))
        l->reverse = 1;
    else
        return;
    struct flowrec *r = records.lookup((struct key *)&cur->key);
    if (!r)
        return;
    u32 n = r->nlookups;
    if (n >= LOOKUPS_MAX)
        return;
    r->lookups[n % LOOKUPS_MAX] = *l;
    r->nlookups = n + 1;
}
