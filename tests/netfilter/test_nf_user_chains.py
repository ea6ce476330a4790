"""NAT in regular (user-defined) chains: a regular chain has the type and hook
of the base chain that jumped (or went) to it, so the kernel applies a DNAT,
SNAT, MASQUERADE or REDIRECT found there (Docker's DOCKER chain, kube-proxy's
KUBE-SEP-*/KUBE-POSTROUTING, Tailscale's ts-postrouting, CNI's masquerade
chains, fw4's dstnat_*/srcnat_*).

Kernel tests load the ruleset each tool writes (tests/netfilter/nftools.py)
into the lab router, send one real packet, and compare the rules that matched,
where the packet arrived and the conntrack mapping with the model. Pure tests
run on fixtures collected from the same rulesets.
"""

import pytest

from tests.netfilter import nftools
from tests.netfilter.nflab import CLIENT4, ROUTER_IN4, ROUTER_OUT4, SERVER4
from tests.netfilter.nfsim import ROUTER, check_agrees, conntrack_tuples, kernel_hits, run, sim_hits, syn, udp
from tracer.sim.netfilter import PacketView, load_ruleset, traverse

BACKENDS = ["iptables-nft", "iptables-legacy"]


def mapping(lab, orig_dport):
    (orig, reply), = [t for t in conntrack_tuples(lab) if t[0]["dport"] == str(orig_dport)]
    return reply


# ---------------------------------------------------------------- kernel

@pytest.mark.parametrize("ipt", BACKENDS)
def test_docker_published_port_is_dnatted_in_the_docker_chain(lab, ipt):
    steps = nftools.docker_iptables(ipt, "r1", "198.51.100.0/24", SERVER4)
    rs, trs = run(lab, steps, syn(8080, 40080, dst=ROUTER_IN4), lambda: lab.send_syn(ROUTER_IN4, 8080, 40080))
    check_agrees(lab, rs, trs)
    (dnat,) = trs[0].nat
    assert (dnat.type, dnat.chain, dnat.to, dnat.to_port, dnat.source) == ("dnat", "DOCKER", SERVER4, 80, ipt)
    assert not trs[0].uncertain and dnat.note is None
    reply = mapping(lab, 8080)
    assert (reply["src"], reply["sport"]) == (dnat.to, str(dnat.to_port))
    # the ipset match in FORWARD sent it to the DOCKER filter chain, which accepted it
    assert trs[1].decided_by is None and trs[1].chains[0].verdict == "accept"


@pytest.mark.parametrize("ipt", BACKENDS)
def test_docker_unpublished_port_is_dropped_in_the_docker_filter_chain(lab, ipt):
    steps = nftools.docker_iptables(ipt, "r1", "198.51.100.0/24", SERVER4)
    rs, trs = run(lab, steps, syn(81, 40081), lambda: lab.send_syn(SERVER4, 81, 40081))
    check_agrees(lab, rs, trs)
    assert trs[0].nat == () and trs[1].verdict == "drop"
    assert trs[1].decided_by == "ip filter DOCKER rule 2"


def test_docker_nft_published_port(lab):
    steps = nftools.docker_nft("r1", "198.51.100.0/24", SERVER4)
    rs, trs = run(lab, steps, syn(8080, 40180, dst=ROUTER_IN4), lambda: lab.send_syn(ROUTER_IN4, 8080, 40180))
    check_agrees(lab, rs, trs)
    (dnat,) = trs[0].nat
    assert (dnat.chain, dnat.to, dnat.to_port) == ("nat-prerouting-and-output", SERVER4, 80)
    reply = mapping(lab, 8080)
    assert (reply["src"], reply["sport"]) == (SERVER4, "80")
    assert trs[2].nat == ()  # nat-postrouting-in__r1 is empty


def test_docker_nft_masquerade_in_a_chain_reached_by_a_verdict_map(lab):
    steps = nftools.docker_nft("r0", "192.0.2.0/24", CLIENT4)
    rs, trs = run(lab, steps, udp(5000, 40280), lambda: lab.send_udp(SERVER4, 5000, 40280))
    check_agrees(lab, rs, trs)
    (masq,) = trs[2].nat
    assert (masq.type, masq.chain, masq.to, masq.to_port) == ("masquerade", "nat-postrouting-out__r0", ROUTER_OUT4,
                                                              40280)
    assert mapping(lab, 5000)["dst"] == ROUTER_OUT4
    assert trs[2].packet.src == ROUTER_OUT4


@pytest.mark.parametrize("ipt", BACKENDS)
def test_kube_proxy_service_dnat_mark_and_random_fully_masquerade(lab, ipt):
    steps = nftools.kube_proxy(ipt)
    rs, trs = run(lab, steps, syn(80, 40380, dst=nftools.KUBE_SERVICE),
                  lambda: lab.send_syn(nftools.KUBE_SERVICE, 80, 40380))
    check_agrees(lab, rs, trs)
    pre, fwd, post = trs
    (dnat,) = pre.nat
    assert dnat.chain.startswith("KUBE-SEP-") and (dnat.to, dnat.to_port) == (SERVER4, 5000)
    assert pre.packet.mark == 0x4000  # KUBE-MARK-MASQ, jumped to from KUBE-SVC-*
    assert fwd.chains[0].verdict == "accept" and fwd.chains[0].verdict_from == "rule"  # KUBE-FORWARD: marked
    (masq,) = post.nat
    assert (masq.chain, masq.to) == ("KUBE-POSTROUTING", ROUTER_OUT4)
    assert masq.to_port is None and "random" in masq.note  # --random-fully: the kernel picks the port
    assert post.packet.mark == 0  # --xor-mark 0x4000 before MASQUERADE
    reply = mapping(lab, 80)
    assert (reply["src"], reply["sport"], reply["dst"]) == (SERVER4, "5000", ROUTER_OUT4)
    assert reply["dport"] != "40380"  # the kernel did pick another port


@pytest.mark.parametrize("rule, random_port", [
    ("nft: masquerade fully-random", True),
    (f"nft: snat ip to {ROUTER_OUT4} random,persistent", True),
    ("nft: masquerade", False),
    (f"iptables-nft -t nat -A POSTROUTING -j SNAT --to-source {ROUTER_OUT4} --random", True),
    ("iptables-legacy -t nat -A POSTROUTING -j MASQUERADE --random-fully", True),
    ("iptables-legacy -t nat -A POSTROUTING -j MASQUERADE", False),
])
def test_random_port_flags_leave_the_port_to_the_kernel(lab, rule, random_port):
    steps = [("nft", f"table ip n {{ chain po {{ type nat hook postrouting priority srcnat;\n{rule[5:]}\n}}\n}}")] \
        if rule.startswith("nft: ") else [rule]
    rs, trs = run(lab, steps, udp(5000, 40990), lambda: lab.send_udp(SERVER4, 5000, 40990))
    (nat,) = trs[2].nat
    reply = mapping(lab, 5000)
    assert reply["dst"] == nat.to == ROUTER_OUT4
    if random_port:
        assert nat.to_port is None and "random" in nat.note and reply["dport"] != "40990"
    else:
        assert nat.to_port == int(reply["dport"]) == 40990


@pytest.mark.parametrize("ipt", BACKENDS)
def test_tailscale_marks_in_ts_forward_and_masquerades_in_ts_postrouting(lab, ipt):
    rs, trs = run(lab, nftools.tailscale(ipt), udp(5000, 40480), lambda: lab.send_udp(SERVER4, 5000, 40480))
    check_agrees(lab, rs, trs)
    assert trs[1].packet.mark == 0x40000
    (masq,) = trs[2].nat
    assert (masq.chain, masq.to) == ("ts-postrouting", ROUTER_OUT4)
    assert mapping(lab, 5000)["dst"] == ROUTER_OUT4


@pytest.mark.parametrize("ipt", BACKENDS)
def test_cni_masquerade_chain(lab, ipt):
    rs, trs = run(lab, nftools.cni_masquerade(ipt), udp(5000, 40580), lambda: lab.send_udp(SERVER4, 5000, 40580))
    check_agrees(lab, rs, trs)
    (masq,) = trs[2].nat
    assert masq.chain.startswith("CNI-") and masq.to == ROUTER_OUT4
    assert mapping(lab, 5000)["dst"] == ROUTER_OUT4


def test_fw4_port_forward_in_dstnat_wan(lab):
    rs, trs = run(lab, nftools.fw4("r0", "r1"), syn(8022, 40680, dst=ROUTER_IN4),
                  lambda: lab.send_syn(ROUTER_IN4, 8022, 40680))
    check_agrees(lab, rs, trs)
    (dnat,) = trs[0].nat
    assert (dnat.chain, dnat.to, dnat.to_port) == ("dstnat_wan", SERVER4, 22)
    assert trs[2].nat == ()  # srcnat_lan's reflection rule is for LAN sources only
    reply = mapping(lab, 8022)
    assert (reply["src"], reply["sport"]) == (SERVER4, "22")


def test_fw4_redirect_in_dstnat_wan(lab):
    rs, trs = run(lab, nftools.fw4("r0", "r1"), udp(53, 40780), lambda: lab.send_udp(SERVER4, 53, 40780),
                  origin="local-in")
    assert sim_hits(trs) == kernel_hits(rs)
    (redirect,) = trs[0].nat
    assert (redirect.type, redirect.chain, redirect.to, redirect.to_port) == ("redirect", "dstnat_wan", ROUTER_IN4,
                                                                              5353)
    reply = mapping(lab, 53)
    assert (reply["src"], reply["sport"]) == (ROUTER_IN4, "5353")
    assert lab.server_received() == 0


@pytest.mark.parametrize("to_wan", ["jump", "goto"])
def test_fw4_masquerade_in_srcnat_wan(lab, to_wan):
    rs, trs = run(lab, nftools.fw4("r1", "r0", to_wan), udp(5000, 40880), lambda: lab.send_udp(SERVER4, 5000, 40880))
    check_agrees(lab, rs, trs)
    (masq,) = trs[2].nat
    assert (masq.chain, masq.to) == ("srcnat_wan", ROUTER_OUT4)
    assert mapping(lab, 5000)["dst"] == ROUTER_OUT4


# ------------------------------------------------------------------ pure

def test_nat_rules_lists_regular_chains_with_the_hooks_that_reach_them(raw_fixture):
    def nat(name):
        return {(n.chain, n.type): n.hooks for n in load_ruleset(raw_fixture(name)).nat_rules()}
    assert nat("tools_docker_iptables")[("DOCKER", "dnat")] == ("prerouting", "output")
    docker_nft = nat("tools_docker_nft")
    assert docker_nft[("nat-prerouting-and-output", "dnat")] == ("prerouting", "output")
    # reached only through `iifname vmap @nat-postrouting-out-jumps`
    assert docker_nft[("nat-postrouting-out__r1", "masquerade")] == ("postrouting",)
    kube = nat("tools_kube_proxy")
    assert kube[("KUBE-SEP-0000000000000000", "dnat")] == ("prerouting", "output")
    assert kube[("KUBE-POSTROUTING", "masquerade")] == ("postrouting",)
    fw4 = nat("tools_fw4")
    assert fw4[("srcnat_wan", "masquerade")] == ("postrouting",)  # reached by goto
    assert fw4[("dstnat_wan", "redirect")] == ("prerouting",)


def test_kube_proxy_random_endpoint_choice_is_uncertain(raw_fixture):
    rs = load_ruleset(raw_fixture("tools_kube_proxy"))
    tr = traverse(rs, "prerouting", syn(80, 40001, dst=nftools.KUBE_SERVICE), addresses=ROUTER)
    pick = next(s for c in tr.chains for s in c.steps if "statistic" in s.text)
    assert pick.matched is None and "at random" in pick.reason
    assert tr.uncertain and any("statistic" in r for r in tr.uncertain_reasons)
    # the walk does not take the rule it cannot evaluate: the last endpoint's DNAT
    assert [(n.chain, n.to) for n in tr.nat] == [("KUBE-SEP-0000000000000001", "198.51.100.3")]


def test_regular_nat_chains_are_not_consulted_for_established_packets(raw_fixture):
    rs = load_ruleset(raw_fixture("tools_docker_iptables"))
    tr = traverse(rs, "prerouting", syn(8080, 40002, dst=ROUTER_IN4, ct_state="established"), addresses=ROUTER)
    assert tr.nat == () and tr.packet.dst == ROUTER_IN4


def test_docker_dnat_of_a_local_out_packet_needs_a_reroute(raw_fixture):
    rs = load_ruleset(raw_fixture("tools_docker_iptables"))
    out = traverse(rs, "output", PacketView("ip", ROUTER_OUT4, ROUTER_IN4, 6, 40003, 8080, oif="lo", tcp_flags=2),
                   addresses=ROUTER)
    (dnat,) = out.nat
    assert (dnat.chain, dnat.to) == ("DOCKER", SERVER4)
    assert out.reroute_needed and "destination 192.0.2.1 -> 198.51.100.2" in out.reroute_reasons[0]


CNI, CNI_COMMENT = "CNI-4f0b2a9e6d1c3b5a7e9f0d12", '-m comment --comment "name: \\"bridge\\" id: \\"abc\\""'
LEGACY_NAT = f"""*nat
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
:{CNI} - [0:0]
:LATER - [0:0]
[0:0] -A POSTROUTING -s 192.0.2.2/32 {CNI_COMMENT} -j {CNI}
[0:0] -A POSTROUTING -j LATER
[0:0] -A {CNI} -d 192.0.2.0/24 {CNI_COMMENT} -j ACCEPT
[0:0] -A {CNI} -d 203.0.113.0/24 -j RETURN
[0:0] -A {CNI} ! -d 224.0.0.0/4 {CNI_COMMENT} -j MASQUERADE
[0:0] -A LATER -j SNAT --to-source 198.51.100.77
COMMIT
"""


@pytest.mark.parametrize("dst, nat", [
    (SERVER4, (CNI, "masquerade", ROUTER_OUT4)),
    ("192.0.2.9", None),  # ACCEPT in the regular chain ends the nat chain without a mapping
    ("203.0.113.5", ("LATER", "snat", "198.51.100.77")),  # RETURN goes back to POSTROUTING
])
def test_accept_and_return_in_a_regular_nat_chain(dst, nat):
    rs = load_ruleset({"iptables_legacy": {"ip": {"status": "ok", "save": LEGACY_NAT}}})
    tr = traverse(rs, "postrouting", udp(5000, 40004, dst=dst), addresses=ROUTER)
    assert tr.verdict == "accept"
    assert [(n.chain, n.type, n.to) for n in tr.nat] == ([nat] if nat else [])
