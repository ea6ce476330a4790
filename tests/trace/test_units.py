"""The pieces that need no traffic: BTF reading, the ctnetlink parser, events to JSON and back."""

import socket
import struct

import pytest

from tracer.trace import conntrack, events
from tracer.trace.btf import Btf, BtfError


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
    flow = events.FlowId(1, 1, "192.168.1.169", "8.8.8.8", 7, 0)
    hook = events.HookEvent(1, 0, flow, "postrouting", "last", events.Tuple("123.150.232.74", "8.8.8.8", 7, 0),
                            "br-lan", "ppp0", 0, events.Tuple("192.168.1.169", "8.8.8.8", 7, 0),
                            events.Tuple("8.8.8.8", "123.150.232.74", 7, 0), 0x198)
    fib = events.FibEvent(2, 0, flow, 0xFFFF, 7375, 0, False, "192.168.1.169", "8.8.8.8", "br-lan", 0, "ppp0",
                          "123.150.232.1")
    for event in (hook, fib):
        assert events.from_json(events.to_json(event)) == event
    with pytest.raises(ValueError, match="unknown event kind"):
        events.from_json({"kind": "nope"})
