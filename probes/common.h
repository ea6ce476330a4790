/* why-route trace: what every probe shares. Compiled by BCC; struct offsets arrive as -D
 * constants computed from the running kernel's BTF (tracer/trace/kernel.py), never from
 * headers. The filter is one entry of the `config` array map (mirrored by
 * tracer.trace.kernel.Config). */
#include <uapi/linux/bpf.h>

#define KIND_HOOK  1
#define KIND_FIB   2
#define KIND_DROP  3
#define KIND_REPLY 4

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

struct event {
    u64 ts;
    u64 skb;
    u64 ptr;           /* fib: the flowi; drop: the location */
    u32 kind;
    u32 cpu;
    struct key key;
    struct tuple pkt;  /* the packet as this probe saw it */
    struct tuple orig; /* conntrack tuples, when has_ct */
    struct tuple reply;
    u32 in_ifindex;
    u32 out_ifindex;
    u32 mark;
    u32 ct_status;
    u32 table;         /* fib */
    s32 err;           /* fib */
    u32 gw[4];         /* fib */
    u32 reason;        /* drop */
    u8 hook;
    u8 pos;            /* 0 first, 1 last; fib: 1 when a reverse (source validation) lookup */
    u8 pf;
    u8 ctinfo;
    u8 has_ct;
    u8 gw_family;
    u8 pad[2];
};

struct flowstate {
    u32 seen; /* bit hook*2+pos per hook probe, SEEN_DROP, SEEN_REPLY */
    u32 pad;
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
#define PENDING_MAX 8
struct pending_lookup {
    u32 table;
    s32 err;
    u32 out_ifindex;
    u32 gw[4];
    u8 gw_family;
    u8 pad[3];
};

struct pending {
    u64 flowi;
    u64 ts;
    u32 saddr[4];
    u32 daddr[4];
    u32 mark;
    u32 n;
    u8 family;
    u8 pad[7];
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
    u32 pad;
};
#define SEEN_IGNORED 0xFFFFFFFFu

BPF_ARRAY(config, struct config, 1);
BPF_TABLE("lru_hash", u64, struct ctseen, seen_ct, 65536);
BPF_TABLE("lru_hash", struct key, struct flowstate, flows, 65536);
BPF_PERCPU_ARRAY(routing_packet, struct routing, 1);
BPF_PERCPU_ARRAY(arrivals, struct arrival, 2);
BPF_PERCPU_ARRAY(pending_route, struct pending, 1);
BPF_PERCPU_ARRAY(pending_lookups, struct pending_lookup, PENDING_MAX); /* a map: the verifier checks the index */
BPF_RINGBUF_OUTPUT(events, 8192); /* 32 MB: bursts of new flows, while user space catches up */
BPF_ARRAY(lost, u64, 1);

#define READ(dst, ptr, off) bpf_probe_read_kernel(&(dst), sizeof(dst), (const char *)(ptr) + (off))

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
static __always_inline void name_flow(struct event *ev, u8 proto, u8 family)
{
    ev->key.proto = proto;
    ev->key.family = family;
    const struct tuple *t = ev->has_ct ? &ev->orig : &ev->pkt;
    copy_address(ev->key.saddr, t->saddr);
    copy_address(ev->key.daddr, t->daddr);
    ev->key.sport = t->sport;
    ev->key.dport = t->dport;
}

static __always_inline void emit(struct event *ev)
{
    /* No wakeup per event: user space drains the ring every few milliseconds. */
    if (events.ringbuf_output(ev, sizeof(*ev), BPF_RB_NO_WAKEUP) != 0) {
        int zero = 0;
        u64 *n = lost.lookup(&zero);
        if (n)
            __sync_fetch_and_add(n, 1);
    }
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

static __always_inline void read_ports(const char *l4, u8 proto, struct tuple *t)
{
    t->sport = 0;
    t->dport = 0;
    if (proto == 6 || proto == 17 || proto == 132) {
        u16 sp = 0, dp = 0;
        READ(sp, l4, 0);
        READ(dp, l4, 2);
        t->sport = bpf_ntohs(sp);
        t->dport = bpf_ntohs(dp);
    } else if (proto == 1 || proto == 58) {
        u8 type = 0;
        u16 id = 0;
        READ(type, l4, 0);
        READ(id, l4, 4);
        /* ICMP echo request/reply (8/0), ICMPv6 (128/129): the echo id as sport */
        if (type == 8 || type == 0 || type == 128 || type == 129)
            t->sport = bpf_ntohs(id);
    }
}

/* The IP header at skb->head + network_header: family, addresses, protocol, ports. IPv6 extension
 * headers (hop-by-hop, routing, destination options) are skipped, two at most. -1: not a flow. */
static __always_inline int parse_packet(const void *skb, struct tuple *t, u8 *proto, u8 *family)
{
    const char *head = 0;
    u16 nh = 0;
    u8 vihl = 0;
    READ(head, skb, OFF_SKB_HEAD);
    READ(nh, skb, OFF_SKB_NETWORK_HEADER);
    if (!head || nh == 0xFFFF)
        return -1;
    const char *ip = head + nh;
    READ(vihl, ip, 0);
    __builtin_memset(t->saddr, 0, sizeof(t->saddr));
    __builtin_memset(t->daddr, 0, sizeof(t->daddr));
    if ((vihl >> 4) == 4) {
        *family = 4;
        READ(*proto, ip, 9);
        READ(t->saddr[0], ip, 12);
        READ(t->daddr[0], ip, 16);
        read_ports(ip + ((vihl & 0xF) * 4), *proto, t);
        return 0;
    }
    if ((vihl >> 4) != 6)
        return -1;
    *family = 6;
    READ(t->saddr, ip, 8);
    READ(t->daddr, ip, 24);
    u8 next = 0;
    READ(next, ip, 6);
    const char *l4 = ip + 40;
    for (int i = 0; i < 2; i++) {
        if (next != 0 && next != 43 && next != 60)
            break;
        u8 len = 0;
        READ(len, l4, 1);
        READ(next, l4, 0);
        l4 += (len + 1) * 8;
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

static __always_inline void read_ct_tuple(const char *th, struct tuple *t)
{
    u16 sp = 0, dp = 0;
    READ(t->saddr, th, OFF_TUPLE_SRC_U3); /* union nf_inet_addr: IPv4 in the first word, the rest zero */
    READ(t->daddr, th, OFF_TUPLE_DST_U3);
    READ(sp, th, OFF_TUPLE_SRC_U);
    READ(dp, th, OFF_TUPLE_DST_U);
    t->sport = bpf_ntohs(sp);
    t->dport = bpf_ntohs(dp);
}

static __always_inline u64 ct_fingerprint(const char *ct)
{
    u32 raw[SIZE_TUPLE / 4] = {}; /* the whole original tuple, read at once */
    READ(raw, ct + OFF_CT_TUPLEHASH + OFF_TUPLEHASH_TUPLE, 0);
    const u32 *saddr = (const u32 *)((const char *)raw + OFF_TUPLE_SRC_U3);
    u16 sport = 0, dport = 0;
    __builtin_memcpy(&sport, (const char *)raw + OFF_TUPLE_SRC_U, sizeof(sport));
    __builtin_memcpy(&dport, (const char *)raw + OFF_TUPLE_DST_U, sizeof(dport));
    return ((u64)(saddr[0] ^ saddr[1] ^ saddr[2] ^ saddr[3]) << 32) | ((u32)sport << 16) | dport;
}

/* Conntrack entry of the skb (skb->_nfct): both tuples and the status; ctinfo in the low bits. */
static __always_inline const char *read_ct(const void *skb, struct event *ev, u8 proto)
{
    u64 nfct = 0;
    READ(nfct, skb, OFF_SKB_NFCT);
    const char *ct = (const char *)(nfct & ~7ULL);
    ev->ctinfo = nfct & 7;
    if (!ct)
        return 0;
    ev->has_ct = 1;
    const char *th0 = ct + OFF_CT_TUPLEHASH + OFF_TUPLEHASH_TUPLE;
    read_ct_tuple(th0, &ev->orig);
    read_ct_tuple(th0 + SIZE_TUPLEHASH, &ev->reply);
    if (proto == 1 || proto == 58) { /* ICMP, ICMPv6: src.u holds the echo id; dst.u type and code */
        ev->orig.dport = 0;
        ev->reply.dport = 0;
    }
    READ(ev->ct_status, ct, OFF_CT_STATUS);
    return ct;
}

/* fib probes: one table lookup of an output route lookup (a socket's), kept on this CPU until its
 * packet reaches the output hook. A lookup that found something (or refused) ends a lookup sequence:
 * the next one starts a new sequence (connect() looks up again once it has chosen the source). */
static __always_inline void keep_pending(u64 flowi, const u32 *saddr, const u32 *daddr, u32 mark, u8 family,
                                         u32 table, s32 err, u32 out_ifindex, const u32 *gw, u8 gw_family)
{
    int zero = 0;
    struct pending *p = pending_route.lookup(&zero);
    if (!p)
        return;
    u64 now = bpf_ktime_get_ns();
    u32 n = p->n;
    if (n > 0) {
        u32 previous = n - 1;
        struct pending_lookup *last = pending_lookups.lookup(&previous);
        if (!last || last->err != -11)
            n = 0;
    }
    if (p->flowi != flowi || p->family != family || !same_address(p->saddr, saddr) ||
        !same_address(p->daddr, daddr) || now - p->ts > PENDING_MAX_AGE_NS)
        n = 0;
    struct pending_lookup *l = pending_lookups.lookup(&n);
    if (!l)
        return; /* more than PENDING_MAX lookups: the rest is not kept */
    p->flowi = flowi;
    p->ts = now;
    p->family = family;
    p->mark = mark;
    copy_address(p->saddr, saddr);
    copy_address(p->daddr, daddr);
    l->table = table;
    l->err = err;
    l->out_ifindex = out_ifindex;
    copy_address(l->gw, gw);
    l->gw_family = gw_family;
    p->n = n + 1;
}

/* netfilter probe, output hook, first packet of a new local flow: the lookups its socket made for
 * it (matched by the flow's original addresses, before any NAT of the output chains), as fib events
 * of the flow. `ev` is the hook event just emitted; it is reused. */
static __always_inline void emit_pending(struct event *ev)
{
    int zero = 0;
    struct pending *p = pending_route.lookup(&zero);
    /* A lookup without a source (the socket is not bound) is the one that selected the packet's. */
    if (!p || p->n == 0 || p->family != ev->key.family || !same_address(p->daddr, ev->key.daddr) ||
        (!is_any(p->saddr) && !same_address(p->saddr, ev->key.saddr)) || ev->ts - p->ts > PENDING_MAX_AGE_NS)
        return;
    u32 n = p->n;
    p->n = 0;
    copy_address(ev->pkt.saddr, p->saddr);
    ev->kind = KIND_FIB;
    ev->pos = 0;
    ev->ptr = p->flowi;
    ev->in_ifindex = LOOPBACK_IFINDEX;
    ev->mark = p->mark;
    for (u32 i = 0; i < PENDING_MAX; i++) {
        if (i >= n)
            break;
        struct pending_lookup *l = pending_lookups.lookup(&i);
        if (!l)
            break;
        ev->table = l->table;
        ev->err = l->err;
        ev->out_ifindex = l->out_ifindex;
        copy_address(ev->gw, l->gw);
        ev->gw_family = l->gw_family;
        emit(ev);
    }
}

/* fib probes: the routing decision being made on this CPU when a traced flow's first packet armed
 * it and this lookup is of its family and for a packet of its input device (not a socket's lookup,
 * nor an address-type check such as icmp_send's, whose flowi has no device); NULL otherwise. The
 * reverse lookup of source validation runs with the forward route's device: it is seen only when
 * that is the input device too. */
static __always_inline struct routing *armed_routing(u8 family, u32 iif)
{
    int zero = 0;
    struct routing *cur = routing_packet.lookup(&zero);
    if (cur && cur->armed && cur->key.family == family && iif == cur->iif)
        return cur;
    return 0;
}

/* fib probes: `ev` holds one table lookup (addresses, table, result, nexthop). The armed packet's is
 * reported (marked when it is the reverse, source-validation, lookup); a socket's is kept. */
static __always_inline void report_lookup(struct event *ev, const struct routing *cur, u64 flowi, u8 family)
{
    if (!cur) {
        keep_pending(flowi, ev->pkt.saddr, ev->pkt.daddr, ev->mark, family, ev->table, ev->err, ev->out_ifindex,
                     ev->gw, ev->gw_family);
        return;
    }
    if (same_address(ev->pkt.daddr, cur->daddr))
        ev->pos = 0;
    else if (same_address(ev->pkt.daddr, cur->saddr))
        ev->pos = 1;
    else
        return;
    ev->kind = KIND_FIB;
    ev->ts = bpf_ktime_get_ns();
    ev->cpu = bpf_get_smp_processor_id();
    ev->skb = cur->skb;
    ev->ptr = flowi;
    ev->key = cur->key;
    emit(ev);
}
