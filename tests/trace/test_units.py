"""The pieces that need no traffic: BTF reading and its cache, the ctnetlink and nftables-trace parsers,
kernel symbols, events to JSON and back, the description of a flow from its events."""

import dataclasses
import json
import socket
import struct
import time
from pathlib import Path

import pytest

from tracer.collect import snapshot
from tracer.trace import btf, conntrack, events, flows, kernel, nftrace
from tracer.trace.btf import Btf, BtfError

FIXTURES = Path(__file__).resolve().parents[1] / "explain" / "fixtures"


def test_btf_gives_the_running_kernels_offsets():
    btf = Btf.load()
    assert btf.offset("sk_buff", "mark") % 4 == 0
    assert btf.offset("nf_conntrack_tuple", "src.u3") == 0
    assert btf.offset("nf_conntrack_tuple", "dst.u3") > btf.offset("nf_conntrack_tuple", "src.u")
    reasons = btf.enum("skb_drop_reason")
    assert reasons["SKB_CONSUMED"] == 1 and "SKB_DROP_REASON_NETFILTER_DROP" in reasons
    with pytest.raises(BtfError, match="no member"):
        btf.offset("sk_buff", "no_such_member")
    with pytest.raises(BtfError, match="no struct"):
        btf.offset("no_such_struct", "x")


def test_btf_rejects_what_is_not_btf():
    with pytest.raises(BtfError, match="magic"):
        Btf(b"\0" * 64)


def _nla(kind: int, payload: bytes) -> bytes:
    length = 4 + len(payload)
    return struct.pack("=HH", length, kind) + payload + b"\0" * ((4 - length % 4) % 4)


def _tuple(src: str, dst: str, proto: int, sport: int, dport: int) -> bytes:
    ip = _nla(1, socket.inet_aton(src)) + _nla(2, socket.inet_aton(dst))
    ports = _nla(1, bytes([proto])) + _nla(2, struct.pack("!H", sport)) + _nla(3, struct.pack("!H", dport))
    return _nla(0x8000 | 1, ip) + _nla(0x8000 | 2, ports)


def test_ctnetlink_parser_reads_both_tuples_and_the_status():
    body = (_nla(0x8000 | 1, _tuple("192.168.1.169", "8.8.8.8", 6, 40000, 443))
            + _nla(0x8000 | 2, _tuple("8.8.8.8", "123.150.232.74", 6, 443, 40000))
            + _nla(3, struct.pack("!I", 0x1BE)))
    payload = struct.pack("=BBH", 2, 0, 0) + body
    message = struct.pack("=IHHII", 16 + len(payload), (1 << 8) | 0, 0x400 | 0x200, 0, 0) + payload
    (event,) = conntrack.parse(message * 1, netns=42)
    assert event.type == "new"
    assert event.flow == events.FlowId(42, 6, "192.168.1.169", "8.8.8.8", 40000, 443)
    assert event.reply == events.Tuple("8.8.8.8", "123.150.232.74", 443, 40000)
    assert event.status == 0x1BE
    two = conntrack.parse(message + message, netns=42)
    assert len(two) == 2


def test_events_survive_json():
    """`-o RUN_DIR` writes them, `--replay` reads them back: a flow's record with its parts included."""
    flow = events.FlowId(1, 1, "192.168.1.169", "8.8.8.8", 7, 0)
    hook = events.HookEvent(1, 0, flow, "postrouting", "last", events.Tuple("123.150.232.74", "8.8.8.8", 7, 0),
                            "br-lan", "ppp0", 0, events.Tuple("192.168.1.169", "8.8.8.8", 7, 0),
                            events.Tuple("8.8.8.8", "123.150.232.74", 7, 0), 0x198)
    fib = events.FibEvent(2, 0, flow, 0xFFFF, 7375, 0, False, "192.168.1.169", "8.8.8.8", "br-lan", 0, "ppp0",
                          "123.150.232.1", 32765)
    drop = events.DropEvent(3, 1, flow, "NETFILTER_DROP", 0xFFFFFFFF81A00260, "br-lan", hook.packet, "nf_hook_slow+0x9")
    record = events.FlowRecord(4, 1, flow, (hook,), (fib,), drop, True)
    reply_drop = events.ReplyDropEvent(5, 0, flow, "IP_RPFILTER", 0x10, "ppp0", None, (3, 3, "8.8.8.8"))
    error = events.IcmpErrorEvent(6, 0, flow, 3, 3, "8.8.8.8", "prerouting")
    for event in (hook, fib, record, reply_drop, error):
        assert events.from_json(json.loads(json.dumps(events.to_json(event)))) == event
    with pytest.raises(ValueError, match="unknown event kind"):
        events.from_json({"kind": "nope"})
    with pytest.raises(ValueError, match="not a hook event"):
        events.from_json({**events.to_json(record), "hooks": [events.to_json(fib)]})


@pytest.mark.parametrize(("change", "said"), [
    (lambda e: [e], "an event is a JSON object, not list"),
    (lambda e: {**e, "flow": {**e["flow"], "src": "192.168.1"}}, r"record.flow.src: not an IP address: '192.168.1'"),
    (lambda e: {**e, "lookups": [{**e["lookups"][0], "err": "-11"}]}, r"record.lookups\[0\].err: int expected"),
    (lambda e: {**e, "hooks": [{**e["hooks"][0], "mark": True}]}, r"record.hooks\[0\].mark: int expected"),
    (lambda e: {**e, "hooks": [{**e["hooks"][0], "hook": "postroute"}]}, "none of prerouting, input"),
    (lambda e: {**e, "hooks": [{**e["hooks"][0], "ct_reply": None}]}, "ct_orig and ct_reply go together"),
    (lambda e: {**e, "hooks": {}}, "record.hooks: a list expected, not {}"),
    (lambda e: {**e, "drop": [1]}, "record.drop: an object expected"),
])
def test_a_recorded_event_that_is_not_as_written_is_refused_with_where_and_why(change, said):
    """--replay reads files users keep, copy and edit: what is not an event says which field and why
    (the run's replay then stops with that line), rather than failing later in the description."""
    flow = events.FlowId(1, 1, "192.168.1.169", "8.8.8.8", 7, 0)
    packet = events.Tuple("192.168.1.169", "8.8.8.8", 7, 0)
    hook = events.HookEvent(1, 0, flow, "prerouting", "first", packet, "br-lan", None, 0, packet,
                            events.Tuple("8.8.8.8", "123.150.232.74", 7, 0), 0x198)
    fib = events.FibEvent(2, 0, flow, 0xFFFF, 7375, 0, False, "192.168.1.169", "8.8.8.8", "br-lan", 0, "ppp0", None)
    written = events.to_json(events.FlowRecord(4, 1, flow, (hook,), (fib,), None, True))
    assert events.from_json(json.loads(json.dumps(written))).hooks == (hook,)
    with pytest.raises(ValueError, match=said):
        events.from_json(json.loads(json.dumps(change(written))))


def _tuple6(src: str, dst: str, echo_id: int) -> bytes:
    ip = _nla(3, socket.inet_pton(socket.AF_INET6, src)) + _nla(4, socket.inet_pton(socket.AF_INET6, dst))
    proto = _nla(1, bytes([58])) + _nla(7, struct.pack("!H", echo_id))  # CTA_PROTO_ICMPV6_ID
    return _nla(0x8000 | 1, ip) + _nla(0x8000 | 2, proto)


def test_ctnetlink_parser_reads_ipv6_tuples_with_the_echo_id_as_sport():
    body = (_nla(0x8000 | 1, _tuple6("2001:db8:1::2", "2001:db8:ff::1", 77))
            + _nla(0x8000 | 2, _tuple6("2001:db8:ff::1", "2001:db8:1::2", 77)) + _nla(3, struct.pack("!I", 0x8)))
    payload = struct.pack("=BBH", 10, 0, 0) + body
    message = struct.pack("=IHHII", 16 + len(payload), (1 << 8) | 0, 0x400, 0, 0) + payload
    (event,) = conntrack.parse(message, netns=7)
    assert event.flow == events.FlowId(7, 58, "2001:db8:1::2", "2001:db8:ff::1", 77, 0)
    assert event.flow.family == 6 and event.reply.dst == "2001:db8:1::2"


def test_kernel_symbols_name_an_address_as_function_and_offset(tmp_path):
    kallsyms = tmp_path / "kallsyms"
    kallsyms.write_text("ffffffff81000000 T _stext\nffffffff81a00000 t ip_rcv_finish_core\n"
                        "ffffffff81a00400 D some_data\nffffffff81a00800 T ip_rcv\n")
    symbols = kernel.KernelSymbols(kallsyms)
    assert symbols.name(0xFFFFFFFF81A00260) == "ip_rcv_finish_core+0x260"
    assert symbols.name(0xFFFFFFFF81A00500) == "ip_rcv_finish_core+0x500"  # data symbols are not functions
    assert symbols.name(0x1000) is None
    unreadable = tmp_path / "zeros"  # what an unprivileged reader sees
    unreadable.write_text("0000000000000000 T _stext\n")
    assert kernel.KernelSymbols(unreadable).name(0xFFFFFFFF81A00260) is None


def test_addresses_reach_the_probes_in_network_order_and_come_back():
    for text, family in (("192.168.1.169", 4), ("2001:db8:ff::1", 6)):
        raw = kernel.address_bytes(text)
        assert bytes(raw)[:4] == socket.inet_pton(socket.AF_INET if family == 4 else socket.AF_INET6, text)[:4]
        assert kernel.address_text(raw, family) == text
    assert bytes(kernel.address_bytes("10.0.0.1"))[4:] == bytes(12)


def test_rule_texts_by_handle_from_an_nft_listing():
    listing = """table ip filter_demo { # handle 3
\tset blocked { # handle 4
\t\ttype ipv4_addr
\t\telements = { 192.0.2.9 }
\t}
\tchain forward { # handle 1
\t\ttype filter hook forward priority filter; policy accept;
\t\tct state established accept # handle 5
\t\tcounter packets 12 bytes 960 tcp dport { 25, 465 } drop # handle 2
\t}
}
table inet other { # handle 9
\tchain c { # handle 1
\t\tip saddr @x accept # handle 2
\t}
}
"""
    texts = nftrace.rule_texts(listing)
    assert texts == {("ip", "filter_demo", 5): ("forward", "ct state established accept"),
                     ("ip", "filter_demo", 2): ("forward", "counter tcp dport { 25, 465 } drop"),
                     ("inet", "other", 2): ("c", "ip saddr @x accept")}


def test_nftrace_packet_headers_name_the_flow():
    ipv4 = (bytes([0x45, 0, 0, 60, 0, 0, 0, 0, 64, 6, 0, 0]) + socket.inet_aton("192.0.2.2")
            + socket.inet_aton("8.8.8.8"))
    assert nftrace.packet_flow(ipv4, struct.pack("!HH", 40000, 443), 3) == \
        events.FlowId(3, 6, "192.0.2.2", "8.8.8.8", 40000, 443)
    ipv6 = (bytes([0x60, 0, 0, 0, 0, 8, 58, 64]) + socket.inet_pton(socket.AF_INET6, "2001:db8:1::2")
            + socket.inet_pton(socket.AF_INET6, "2001:db8:ff::1"))
    echo = bytes([128, 0, 0, 0]) + struct.pack("!HH", 77, 1)
    assert nftrace.packet_flow(ipv6, echo, 3) == events.FlowId(3, 58, "2001:db8:1::2", "2001:db8:ff::1", 77, 0)
    assert nftrace.packet_flow(b"\x00" * 8, b"", 3) is None


def _forwarded_ping(ts: int, dst: str = "8.8.8.8", echo_id: int = 7, rules: tuple = (None, None)) -> list:
    """The events of the MacBook's ping through the seed router (ultimate), as the probes report them;
    `rules`: the priorities the rule probe named on the two lookups (None: no rule probe)."""
    flow = events.FlowId(1, 1, "192.168.1.169", dst, echo_id, 0)
    orig, reply = events.Tuple("192.168.1.169", dst, echo_id, 0), events.Tuple(dst, "123.150.232.74", echo_id, 0)
    hooks = [events.HookEvent(ts, 0, flow, hook, position, orig if hook != "postrouting" or position == "first"
                              else events.Tuple("123.150.232.74", dst, echo_id, 0), "br-lan",
                              None if hook == "prerouting" else "ppp0", 0, orig, reply, 0x188)
             for hook in ("prerouting", "forward", "postrouting") for position in ("first", "last")]
    lookups = [events.FibEvent(ts, 0, flow, 0xFF, table, err, False, "192.168.1.169", dst, "br-lan", 0,
                               "ppp0" if table == 7375 else None, "123.150.232.1" if table == 7375 else None, rule)
               for (table, err), rule in zip(((255, -11), (7375, 0)), rules, strict=True)]
    return [*hooks[:2], *lookups, *hooks[2:]]


def _described(describer, ts: int, dst: str, echo_id: int, rules: tuple = (None, None)) -> dict:
    flow = flows.TracedFlow(events.FlowId(1, 1, "192.168.1.169", dst, echo_id, 0))
    for event in _forwarded_ping(ts, dst, echo_id, rules):
        flow.add(event, 0.0, hooks_traced=True)
    return describer(flow, reply_wait=1.0)


def test_flows_described_far_behind_the_kernel_are_compared_only_from_an_explanation_made_already():
    state = snapshot.load(str(FIXTURES / "ultimate-route.json"))
    assert not flows.ports_may_matter(state)  # nothing in it reads ports: an echo id changes nothing
    describer = flows.Describer(state)
    late = time.monotonic_ns() - 10 * 10**9
    in_time = _described(describer, time.monotonic_ns(), "8.8.8.8", 7)
    assert (in_time["rule"]["priority"], in_time["table_id"], in_time["dev"]) == (32765, 7375, "ppp0")
    assert in_time["sim"]["agrees"] is True, in_time["sim"]
    same_inputs = _described(describer, late, "8.8.8.8", 8)  # another ping: the same explanation serves
    assert same_inputs["sim"] == in_time["sim"] and same_inputs["flow"]["icmp_id"] == 8
    other = _described(describer, late, "8.8.4.4", 9)  # another destination: it would need a new one
    assert other["sim"]["agrees"] is None and "not compared" in other["sim"]["note"]
    assert other["rule"]["priority"] == 32765  # the kernel's side is still described
    assert describer.not_compared == 1


def test_the_rule_the_kernel_named_decides_and_a_derivation_that_differs_is_kept_beside_it():
    state = snapshot.load(str(FIXTURES / "ultimate-route.json"))
    now = time.monotonic_ns()
    derived = _described(flows.Describer(state), now, "8.8.8.8", 7)
    assert derived["rule"]["source"] == "derived" and [t["rule"] for t in derived["tables_tried"]] == [None, None]
    assert "rule 32765 table" in flows.text_line(derived)
    seen = _described(flows.Describer(state), now, "8.8.8.8", 7, rules=(0, 32765))
    assert seen["rule"] == {"priority": 32765, "source": "kernel",
                            "text": "32765: from 192.168.1.169 lookup sunusroute"}, seen["rule"]
    assert [t["rule"] for t in seen["tables_tried"]] == [0, 32765] and seen["sim"]["agrees"] is True
    assert "rule 32765 (kernel) table sunusroute" in flows.text_line(seen)
    # The kernel names a rule the rule list at trace start does not have (added since): it stands,
    # the derivation is kept, and the simulation differs.
    other = _described(flows.Describer(state), now, "8.8.8.8", 7, rules=(0, 32000))
    assert other["rule"] == {"priority": 32000, "source": "kernel", "text": None, "derived_priority": 32765,
                             "note": "not in the rule list at trace start"}, other["rule"]
    assert other["sim"]["agrees"] is False
    assert "rule: kernel 32000, simulation 32765" in other["sim"]["differences"]


def test_ports_may_matter_when_anything_could_read_them():
    state = snapshot.load(str(FIXTURES / "ultimate-route.json"))
    with_dport = dataclasses.replace(state, netfilter={**state.netfilter, "extra": [{"match": {"dport": 25}}]})
    assert flows.ports_may_matter(with_dport)
    rule = dataclasses.replace(state.rules[-1], dport=(53, 53))
    assert flows.ports_may_matter(dataclasses.replace(state, rules=(*state.rules, rule)))


def test_kernel_facts_answer_as_the_btf_does_and_the_next_start_reads_them_back(tmp_path):
    data = btf.VMLINUX.read_bytes()
    first = btf.KernelFacts(data, cache_dir=tmp_path)
    assert first.offset("sk_buff", "mark") == Btf.load().offset("sk_buff", "mark")
    assert first.enum("skb_drop_reason") == Btf.load().enum("skb_drop_reason")
    with pytest.raises(BtfError, match="no member"):
        first.offset("sk_buff", "no_such_member")
    assert first.parsed
    first.save()
    again = btf.KernelFacts(data, cache_dir=tmp_path)
    assert again.offset("sk_buff", "mark") == first.offset("sk_buff", "mark")
    with pytest.raises(BtfError, match="no member"):
        again.offset("sk_buff", "no_such_member")
    assert not again.parsed  # answered from the file
    other_kernel = btf.KernelFacts(data + b"\0", cache_dir=tmp_path)
    assert other_kernel.size("sk_buff") == Btf.load().size("sk_buff") and other_kernel.parsed


def test_a_ring_record_decodes_as_its_ctypes_mirror_reads_it():
    # The decoder unpacks struct flowrec with struct formats (cheaper than ctypes fields); the mirror
    # of probes/common.h written field by field must come back the same.
    from types import SimpleNamespace

    from tracer.trace.session import Decoder

    r = kernel.RawRecord(ts=123, cpu=1, kind=kernel.KIND_FLOW, has_ct=1, nlookups=2, complete=1, npositions=3,
                         ct_status=0x18a, reason=2, drop_ifindex=3, location=0xffffffff81000010)
    r.key.netns, r.key.proto, r.key.family, r.key.sport, r.key.dport = 4026531840, 17, 4, 40000, 53
    r.key.saddr, r.key.daddr = kernel.address_bytes("192.168.1.169"), kernel.address_bytes("8.8.8.8")
    r.orig.saddr, r.orig.daddr, r.orig.sport, r.orig.dport = r.key.saddr, r.key.daddr, 40000, 53
    r.reply.saddr, r.reply.daddr = kernel.address_bytes("8.8.8.8"), kernel.address_bytes("123.150.232.74")
    r.reply.sport, r.reply.dport = 53, 40001
    for n, index in enumerate((1, 5, 9)):  # prerouting last, forward last, postrouting last
        r.order[n] = index
        h = r.hooks[index]
        h.pkt.saddr = kernel.address_bytes("123.150.232.74" if index == 9 else "192.168.1.169")
        h.pkt.daddr, h.pkt.sport, h.pkt.dport = r.key.daddr, 40001 if index == 9 else 40000, 53
        h.in_ifindex, h.out_ifindex, h.mark = 2, 0 if index == 1 else 3, 0x10 * n
    for i, (table, err) in enumerate(((7375, -11), (254, 0))):
        lookup = r.lookups[i]
        lookup.flowi, lookup.table, lookup.err, lookup.cpu = 0xabc, table, err, 1
        lookup.rule_known, lookup.rule_pref = i, 32766  # the rule probe named the second lookup's rule
        lookup.in_ifindex, lookup.out_ifindex = 2, 3
        lookup.saddr, lookup.daddr, lookup.gw_family = r.key.saddr, r.key.daddr, socket.AF_INET if err == 0 else 0
        lookup.gw = kernel.address_bytes("10.0.0.1")
    state = SimpleNamespace(links=[SimpleNamespace(index=2, name="br-lan"), SimpleNamespace(index=3, name="ppp0")])
    record = Decoder(state, {2: "SKB_DROP_REASON_NETFILTER_DROP"}).decode(bytes(r))
    assert record.flow == events.FlowId(4026531840, 17, "192.168.1.169", "8.8.8.8", 40000, 53)
    assert (record.ts, record.cpu, record.complete) == (123, 1, True)
    assert [(h.hook, h.position, h.iif, h.oif, h.mark) for h in record.hooks] == [
        ("prerouting", "last", "br-lan", None, 0), ("forward", "last", "br-lan", "ppp0", 0x10),
        ("postrouting", "last", "br-lan", "ppp0", 0x20)]
    assert record.hooks[2].packet == events.Tuple("123.150.232.74", "8.8.8.8", 40001, 53)
    assert record.hooks[0].ct_reply == events.Tuple("8.8.8.8", "123.150.232.74", 53, 40001)
    assert record.hooks[0].ct_status == 0x18a
    assert [(e.table_id, e.err, e.dev, e.gateway, e.flowi) for e in record.lookups] == [
        (7375, -11, "ppp0", None, 0xabc), (254, 0, "ppp0", "10.0.0.1", 0xabc)]
    assert [e.rule for e in record.lookups] == [None, 32766]
    assert (record.drop.reason, record.drop.dev, record.drop.location) == ("NETFILTER_DROP", "ppp0", 0xffffffff81000010)


def test_the_default_backlog_is_what_a_quarter_of_the_available_memory_holds(tmp_path):
    from tracer.trace import session

    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:        1024000 kB\nMemAvailable:     409600 kB\n")  # 400 MiB
    # a quarter of 400 MiB, 4 KB a record: its own 2 KB, and as much again for the sockets' datagrams
    assert session.default_backlog(str(meminfo)) == 25_600
    meminfo.write_text("MemAvailable:      10240 kB\n")  # a small router: the floor
    assert session.default_backlog(str(meminfo)) == session.BACKLOG_RANGE[0]
    assert session.default_backlog(str(tmp_path / "absent")) == session.BACKLOG_RANGE[0]


def test_a_socket_inbox_holds_at_most_its_limit_and_counts_the_messages_it_dropped():
    import socket
    import struct

    from tracer.trace import netlink

    def datagram(messages: int) -> bytes:  # empty netlink messages: a 16-byte header each
        return b"".join(struct.pack("=IHHII", 16, 0, 0, seq, 0) for seq in range(messages))

    reader, writer = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    with reader, writer:
        inbox = netlink.Inbox(reader, limit=100)
        for _ in range(3):
            writer.send(datagram(3))  # 48 bytes each: two fit in 100, the third's 3 messages do not
        inbox.drain()
        assert (len(inbox.take()), inbox.dropped) == (2, 3)
        writer.send(datagram(2))  # taken: room again
        inbox.drain()
        assert (inbox.take(), inbox.dropped) == ([datagram(2)], 3)
