"""Conntrack-related semantics, and `reject with tcp reset`.

* `ct mark set` before conntrack (a raw chain, priority -300) has no effect,
  and the rule goes on: its later statements and verdict apply
  (nft_ct_set_eval returns without NFT_BREAK; CONNMARK returns XT_CONTINUE).
* A ct mark set and the conntrack state carry over to later hooks.
* notrack / -j CT --notrack / -j NOTRACK in raw: later `ct state untracked`
  matches, and no nat chain is consulted (no NAT at all).
* `reject with tcp reset` only applies to TCP: nft puts an implicit
  `meta l4proto tcp` first (its listing may not show it); iptables refuses
  `--reject-with tcp-reset` without `-p tcp`.
"""

import subprocess

import pytest

from tests.netfilter.nflab import CLIENT4, CLIENT6, SERVER4, SERVER6
from tests.netfilter.nfsim import (
    ROUTER,
    check_agrees,
    conntrack_tuples,
    counted,
    counting_table,
    nft_ruleset,
    run,
    syn,
    udp,
)
from tracer.sim.netfilter import load_ruleset, traverse

BACKENDS = ["iptables-nft", "iptables-legacy"]

CT_MARK_IN_RAW = [("nft", """
    table inet rawmark {
      chain pre { type filter hook prerouting priority raw; policy accept;
        udp dport 5000 ct mark set 0x5 counter meta mark set 0x7 counter
        udp dport 5001 ct mark set 0x5 counter drop
      }
      chain fw { type filter hook forward priority 0; policy accept;
        ct mark 0x5 counter drop
        meta mark 0x7 counter accept
      }
    }""")]

CT_CARRY = [("nft", """
    table inet carry {
      chain raw { type filter hook prerouting priority raw; policy accept;
        ct state invalid counter
      }
      chain pre { type filter hook prerouting priority mangle; policy accept;
        ct state new ct mark set 0x15 counter
      }
      chain fw { type filter hook forward priority 0; policy accept;
        ct state new ct mark 0x15 counter
      }
      chain po { type filter hook postrouting priority 0; policy accept;
        ct state new ct mark 0x15 counter
        ct state untracked counter
      }
    }""")]

NOTRACK_NFT = [("nft", """
    table inet nt {
      chain raw { type filter hook prerouting priority raw; policy accept;
        udp dport 5000 counter notrack
      }
      chain fw { type filter hook forward priority 0; policy drop;
        ct state untracked counter accept
      }
      chain po { type nat hook postrouting priority srcnat; policy accept;
        counter masquerade
      }
    }""")]


def notrack_iptables(ipt: str, target: str) -> list:
    return [
        f"{ipt} -t raw -A PREROUTING -p udp --dport 5000 -j {target}",
        f"{ipt} -P FORWARD DROP",
        f"{ipt} -A FORWARD -m conntrack --ctstate UNTRACKED -j ACCEPT",
        f"{ipt} -t nat -A POSTROUTING -j MASQUERADE",
    ]


def connmark_iptables(ipt: str) -> list:
    return [
        f"{ipt} -t raw -A PREROUTING -p udp -j CONNMARK --set-mark 0x5",  # before conntrack: nothing to mark
        f"{ipt} -t mangle -A PREROUTING -p udp --dport 5002 -j CONNMARK --set-mark 0x15",
        f"{ipt} -A FORWARD -m connmark --mark 0x5 -j DROP",
        f"{ipt} -A FORWARD -m connmark --mark 0x15 -m conntrack --ctstate NEW -j ACCEPT",
        f"{ipt} -t mangle -A POSTROUTING -m connmark --mark 0x15",
    ]


# ---------------------------------------------------------------- kernel

@pytest.mark.parametrize("dport", [5000, 5001])
def test_ct_mark_set_before_conntrack_does_nothing_and_the_rule_goes_on(lab, dport):
    rs, trs = run(lab, CT_MARK_IN_RAW, udp(dport, 41000 + dport), lambda: lab.send_udp(SERVER4, dport, 41000 + dport))
    check_agrees(lab, rs, trs)
    raw_rule = trs[0].chains[0].steps[0 if dport == 5000 else 1]
    assert raw_rule.matched is True and "no effect" in raw_rule.action
    assert trs[0].packet.ct_mark == 0
    if dport == 5000:
        assert trs[0].packet.mark == 0x7 and trs[1].verdict == "accept"
    else:
        assert trs[0].verdict == "drop"


@pytest.mark.parametrize("ipt", BACKENDS)
@pytest.mark.parametrize("dport", [5000, 5002])
def test_connmark_before_conntrack_does_nothing_later_one_carries_over(lab, ipt, dport):
    rs, trs = run(lab, connmark_iptables(ipt), udp(dport, 42000 + dport),
                  lambda: lab.send_udp(SERVER4, dport, 42000 + dport))
    check_agrees(lab, rs, trs)
    assert trs[0].packet.ct_mark == (0x15 if dport == 5002 else 0)


def test_ct_state_and_ct_mark_carry_over_to_later_hooks(lab):
    rs, trs = run(lab, CT_CARRY, udp(5000, 43000), lambda: lab.send_udp(SERVER4, 5000, 43000))
    check_agrees(lab, rs, trs)
    assert [tr.packet.ct_mark for tr in trs] == [0x15, 0x15, 0x15]
    assert [s.matched for s in trs[2].chains[0].steps] == [True, False]


@pytest.mark.parametrize("ruleset", ["nft", *(f"{ipt} {target}" for ipt in BACKENDS
                                              for target in ("CT --notrack", "NOTRACK"))])
def test_notrack_makes_the_packet_untracked_and_skips_nat(lab, ruleset):
    steps = NOTRACK_NFT if ruleset == "nft" else notrack_iptables(*ruleset.split(" ", 1))
    counting_table(lab, lab.s, "fromclient", f"ip saddr {CLIENT4} udp dport 5000")
    rs, trs = run(lab, steps, udp(5000, 44000), lambda: lab.send_udp(SERVER4, 5000, 44000))
    check_agrees(lab, rs, trs)
    assert [tr.packet.ct_state for tr in trs] == ["untracked"] * 3
    assert trs[1].verdict == "accept" and trs[1].chains[-1].verdict_from == "rule"
    nat_chains = [c for c in trs[2].chains if c.type == "nat"]
    assert nat_chains and all("untracked" in c.skipped for c in nat_chains) and trs[2].nat == ()
    # the kernel: no conntrack entry, the source arrives unchanged
    assert not [t for t in conntrack_tuples(lab) if t[0]["dport"] == "5000"]
    assert counted(lab, lab.s, "fromclient") == 1


REJECT_TCP_RESET = {
    "inet": [("nft", "table inet r { chain fw { type filter hook forward priority 0; reject with tcp reset\n}\n}")],
    "ip6": [("nft", "table ip6 r { chain fw { type filter hook forward priority 0; reject with tcp reset\n}\n}")],
    "iptables": ["iptables-nft -A FORWARD -p tcp -j REJECT --reject-with tcp-reset"],
}


@pytest.mark.parametrize("lab, table", [(False, "inet"), (True, "ip6"), (False, "iptables")], indirect=["lab"])
@pytest.mark.parametrize("proto", ["udp", "tcp"])
def test_reject_with_tcp_reset_only_rejects_tcp(lab, table, proto):
    src, dst = (CLIENT6, SERVER6) if table == "ip6" else (CLIENT4, SERVER4)
    packet, send = ((udp(5000, 45000, src=src, dst=dst), lambda: lab.send_udp(dst, 5000, 45000)) if proto == "udp"
                    else (syn(5000, 45001, src=src, dst=dst), lambda: lab.send_syn(dst, 5000, 45001)))
    rs, trs = run(lab, REJECT_TCP_RESET[table], packet, send)
    check_agrees(lab, rs, trs)
    assert (trs[-1].hook, trs[-1].verdict) == (("postrouting", "accept") if proto == "udp" else ("forward", "reject"))


def test_iptables_refuses_tcp_reset_without_p_tcp(lab):
    refused = subprocess.run(["ip", "netns", "exec", lab.r, "iptables-nft", "-A", "FORWARD", "-j", "REJECT",
                              "--reject-with", "tcp-reset"], capture_output=True, text=True)
    assert refused.returncode != 0 and "REJECT" not in lab.ex(["iptables-nft-save"])


# ------------------------------------------------------------------ pure

def match(proto: str, field: str, value) -> dict:
    return {"match": {"op": "==", "left": {"payload": {"protocol": proto, "field": field}}, "right": value}}


COUNTER = {"counter": {"packets": 0, "bytes": 0}}
RESET = {"reject": {"type": "tcp reset"}}


@pytest.mark.parametrize("family", ["ip", "ip6", "inet"])
def test_bare_reject_with_tcp_reset_lets_other_protocols_through(family):
    rs = load_ruleset(nft_ruleset(family, {"fw": ("forward", 0, "filter", [[RESET]])}))
    src, dst = ("2001:db8:1::2", "2001:db8:2::2") if family == "ip6" else (CLIENT4, SERVER4)
    tr = traverse(rs, "forward", udp(53, 40000, src=src, dst=dst), addresses=ROUTER)
    (step,) = tr.chains[0].steps
    assert tr.verdict == "accept" and step.matched is False
    assert "implied by reject with tcp reset" in step.reason and "udp" in step.reason
    assert traverse(rs, "forward", syn(22, 40000, src=src, dst=dst), addresses=ROUTER).verdict == "reject"


def test_listed_tcp_dependency_is_not_doubled():
    l4proto_tcp = {"match": {"op": "==", "left": {"meta": {"key": "l4proto"}}, "right": "tcp"}}
    rs = load_ruleset(nft_ruleset("inet", {"fw": ("forward", 0, "filter", [
        [l4proto_tcp, COUNTER, RESET], [match("tcp", "dport", 22), RESET], [COUNTER, RESET]])}))
    first, second, third = next(iter(rs.chains.values())).rules
    assert len(first.conds) == 1 and len(second.conds) == 1
    assert third.conds[0].text.startswith("meta l4proto tcp") and type(third.items[0]).__name__ == "Cond"


def test_ct_mark_set_without_a_conntrack_entry_keeps_going_to_the_verdict():
    ct_mark_set = {"mangle": {"key": {"ct": {"key": "mark"}}, "value": 5}}
    rs = load_ruleset(nft_ruleset("inet", {
        "raw": ("prerouting", -300, "filter", [[ct_mark_set, COUNTER, {"drop": None}]]),
        "mangle": ("prerouting", -150, "filter", [[ct_mark_set]]),
        "fw": ("forward", 0, "filter", [[ct_mark_set, {"accept": None}]]),
    }))
    tr = traverse(rs, "prerouting", udp(5000, 40000), addresses=ROUTER)
    assert tr.verdict == "drop" and tr.chains[0].steps[0].action.startswith("ct mark set: no effect")
    # after conntrack (-200) the same statement sets the ct mark
    tr = traverse(rs, "prerouting", udp(5000, 40000, ct_state="untracked"), addresses=ROUTER)
    assert tr.verdict == "drop"
    tr = traverse(rs, "forward", udp(5000, 40000), addresses=ROUTER)
    assert tr.packet.ct_mark == 5
    tr = traverse(rs, "forward", udp(5000, 40000, ct_state="untracked"), addresses=ROUTER)
    assert tr.packet.ct_mark == 0 and tr.chains[0].verdict_from == "rule"
    assert "untracked" in tr.chains[0].steps[0].action
