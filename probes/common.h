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
/* Set once user space has written the filter: BCC attaches the tracepoints when it loads them,
 * before that, and an all-zero filter would let everything through. */
#define F_READY (1u << 31)

#define SEEN_DROP  (1u << 30)
#define SEEN_REPLY (1u << 31)

struct config {
    u32 flags;
    u32 netns;
    u32 saddr;
    u32 daddr;
    u32 iif;
    u16 sport;
    u16 dport;
    u8 proto;
    u8 pad[3];
};

/* A flow's identity: its conntrack original tuple (the packet's own tuple before conntrack ran). */
struct key {
    u32 netns;
    u32 saddr;
    u32 daddr;
    u16 sport;
    u16 dport;
    u8 proto;
    u8 pad[3];
};

struct tuple {
    u32 saddr;
    u32 daddr;
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
    u32 gw;            /* fib */
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
    u32 saddr;
    u32 daddr;
    u32 armed;
};

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
BPF_RINGBUF_OUTPUT(events, 256);
BPF_ARRAY(lost, u64, 1);

#define READ(dst, ptr, off) bpf_probe_read_kernel(&(dst), sizeof(dst), (const char *)(ptr) + (off))

/* The flow is named by its original direction (the conntrack tuple when there is one),
 * whichever way this packet went. */
static __always_inline void name_flow(struct event *ev, u8 proto)
{
    ev->key.proto = proto;
    if (ev->has_ct) {
        ev->key.saddr = ev->orig.saddr;
        ev->key.daddr = ev->orig.daddr;
        ev->key.sport = ev->orig.sport;
        ev->key.dport = ev->orig.dport;
    } else {
        ev->key.saddr = ev->pkt.saddr;
        ev->key.daddr = ev->pkt.daddr;
        ev->key.sport = ev->pkt.sport;
        ev->key.dport = ev->pkt.dport;
    }
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
    if ((c->flags & F_PROTO) && c->proto != k->proto)
        return 0;
    if ((c->flags & F_SRC) && c->saddr != k->saddr)
        return 0;
    if ((c->flags & F_DST) && c->daddr != k->daddr)
        return 0;
    if ((c->flags & F_SPORT) && c->sport != k->sport)
        return 0;
    if ((c->flags & F_DPORT) && c->dport != k->dport)
        return 0;
    return 1;
}

/* IPv4 header at skb->head + network_header: addresses, protocol, ports (ICMP: the echo id as sport). */
static __always_inline int parse_ipv4(const void *skb, struct tuple *t, u8 *proto)
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
    if ((vihl >> 4) != 4)
        return -1;
    READ(*proto, ip, 9);
    READ(t->saddr, ip, 12);
    READ(t->daddr, ip, 16);
    const char *l4 = ip + ((vihl & 0xF) * 4);
    t->sport = 0;
    t->dport = 0;
    if (*proto == 6 || *proto == 17 || *proto == 132) {
        u16 sp = 0, dp = 0;
        READ(sp, l4, 0);
        READ(dp, l4, 2);
        t->sport = bpf_ntohs(sp);
        t->dport = bpf_ntohs(dp);
    } else if (*proto == 1) {
        u8 type = 0;
        u16 id = 0;
        READ(type, l4, 0);
        READ(id, l4, 4);
        if (type == 8 || type == 0)
            t->sport = bpf_ntohs(id);
    }
    return 0;
}

static __always_inline void read_ct_tuple(const char *th, struct tuple *t)
{
    u16 sp = 0, dp = 0;
    READ(t->saddr, th, OFF_TUPLE_SRC_U3);
    READ(t->daddr, th, OFF_TUPLE_DST_U3);
    READ(sp, th, OFF_TUPLE_SRC_U);
    READ(dp, th, OFF_TUPLE_DST_U);
    t->sport = bpf_ntohs(sp);
    t->dport = bpf_ntohs(dp);
}

static __always_inline u64 ct_fingerprint(const char *ct)
{
    const char *th0 = ct + OFF_CT_TUPLEHASH + OFF_TUPLEHASH_TUPLE;
    u32 saddr = 0;
    u16 sport = 0, dport = 0;
    READ(saddr, th0, OFF_TUPLE_SRC_U3);
    READ(sport, th0, OFF_TUPLE_SRC_U);
    READ(dport, th0, OFF_TUPLE_DST_U);
    return ((u64)saddr << 32) | ((u32)sport << 16) | dport;
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
    if (proto == 1) { /* ICMP: src.u holds the echo id; dst.u type and code */
        ev->orig.dport = 0;
        ev->reply.dport = 0;
    }
    READ(ev->ct_status, ct, OFF_CT_STATUS);
    return ct;
}
