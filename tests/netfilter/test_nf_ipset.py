"""ipsets: collected with `ipset save`, matched by `-m set --match-set`.

The kernel test fills the lab router with sets of every modelled type and
FORWARD rules that only count (`-m set …` without a target), sends probes that
differ in address, protocol, port and interface, and after each probe compares
the rules whose counters moved with the rules the model says match. Covered:
hash:ip (with netmask), bitmap:ip, hash:net with nomatch elements and
--return-nomatch, hash:ip,port (udp, tcp, icmp, gre: port 0), hash:net,port, hash:ip,port,ip,
hash:ip,port,net, hash:net,iface (input/output interface, physdev), list:set
with members of both families, `!`, and fewer directions than dimensions.
"""

import shutil

import pytest

from tests.netfilter.nflab import CLIENT4, CLIENT6, SERVER4, SERVER6
from tests.netfilter.nfsim import ROUTER, kernel_hits, sim_hits, simulate, syn, udp
from tracer.collect import netfilter as collect_mod
from tracer.collect.netfilter import collect_netfilter
from tracer.sim.netfilter import PacketView, load_ruleset, traverse
from tracer.sim.nft_ipt import parse_ipset_save

SETS = [
    "create ip4 hash:ip", "add ip4 198.51.100.2", "add ip4 192.0.2.3",
    "create net4 hash:net", "add net4 198.51.100.0/24", "add net4 198.51.100.128/25 nomatch",
    "add net4 192.0.2.0/30",
    "create ipport hash:ip,port", "add ipport 198.51.100.2,udp:5000", "add ipport 198.51.100.2,tcp:80",
    "add ipport 198.51.100.2,icmp:echo-request", "add ipport 198.51.100.3,udp:5001", "add ipport 198.51.100.3,gre:0",
    "create netport hash:net,port", "add netport 192.0.2.0/24,udp:40001",
    "add netport 192.0.2.2/32,udp:40001 nomatch",
    "create ipportnet hash:ip,port,net", "add ipportnet 198.51.100.2,udp:5000,192.0.2.0/24",
    "create ipportip hash:ip,port,ip", "add ipportip 198.51.100.2,udp:5000,192.0.2.2",
    "create netiface hash:net,iface", "add netiface 192.0.2.0/24,r0", "add netiface 192.0.2.4/32,r0 nomatch",
    "create phys hash:net,iface", "add phys 192.0.2.0/24,physdev:r0",
    "create bm bitmap:ip range 192.0.2.0/24", "add bm 192.0.2.3",
    "create mask24 hash:ip netmask 24", "add mask24 198.51.100.77",
    "create net6 hash:net family inet6", "add net6 2001:db8:2::/64",
    "create conn list:set", "add conn net6", "add conn ip4",
]
MATCHES = [
    "--match-set ip4 dst", "--match-set ip4 src", "! --match-set ip4 src",
    "--match-set net4 dst", "--match-set net4 dst --return-nomatch", "--match-set net4 src",
    "--match-set ipport dst,dst", "--match-set ipport dst", "--match-set ipport dst,src",
    "--match-set netport src,src", "--match-set ipportnet dst,dst,src", "--match-set ipportip dst,dst,src",
    "--match-set netiface src,src", "--match-set netiface src,dst", "--match-set netiface src,src --return-nomatch",
    "--match-set phys src,src", "--match-set bm src", "--match-set mask24 dst",
    "--match-set conn dst", "--match-set conn src", "--match-set ip4 dst ! --update-counters",
]


def probe_packet(kind, src, dst, sport=None, dport=None):
    if kind == "udp":
        return udp(dport, sport, src=src, dst=dst)
    if kind == "tcp":
        return syn(dport, sport, src=src, dst=dst)
    if kind == "gre":
        return PacketView("ip", src, dst, 47, iif="r0", oif="r1", length=24)
    return PacketView("ip", src, dst, 1, iif="r0", oif="r1", icmp_type=8, icmp_code=0, length=84)


PROBES = [
    ("udp", CLIENT4, SERVER4, 40001, 5000),
    ("udp", "192.0.2.3", SERVER4, 40002, 5001),
    ("tcp", CLIENT4, SERVER4, 40003, 80),
    ("icmp", CLIENT4, SERVER4),
    ("gre", CLIENT4, "198.51.100.3"),
    ("gre", CLIENT4, SERVER4),
    ("udp", "192.0.2.4", "198.51.100.130", 40001, 5000),
    ("udp", CLIENT4, "198.51.100.3", 40001, 5001),
    ("udp", "192.0.2.5", "198.51.100.77", 40009, 7),
]


def send(lab, kind, src, dst, sport=None, dport=None):
    if kind == "icmp":
        lab.ex(["ping", "-c1", "-W1", "-I", src, dst], ns=lab.c, check=False)
        return
    if kind == "gre":
        lab.ex(["python3", "-c", f"import socket;socket.socket(socket.AF_INET,socket.SOCK_RAW,47)"
                                 f".sendto(bytes(4),({dst!r},0))"], ns=lab.c)
        return
    sock = "SOCK_DGRAM" if kind == "udp" else "SOCK_STREAM"
    code = (f"import socket,time;s=socket.socket(socket.AF_INET,socket.{sock});s.bind(({src!r},{sport}));"
            + (f"s.sendto(b'x',({dst!r},{dport}))" if kind == "udp"
               else f"s.setblocking(False);s.connect_ex(({dst!r},{dport}));time.sleep(0.3)") + ";s.close()")
    lab.ex(["python3", "-c", code], ns=lab.c)


def load_sets(lab, lines):
    lab.ex(["ipset", "restore"], input="".join(f"{line}\n" for line in lines))


@pytest.mark.parametrize("ipt", ["iptables-nft", "iptables-legacy"])
def test_set_matches_agree_with_the_kernel(lab, ipt):
    for address in ("192.0.2.3", "192.0.2.4", "192.0.2.5"):
        lab.ex(["ip", "addr", "add", f"{address}/24", "dev", "c0"], ns=lab.c)
    load_sets(lab, SETS)
    lab.load([f"{ipt} -A FORWARD -m set {m}" for m in MATCHES])
    for probe in PROBES:
        lab.ex([ipt, "-Z"])
        send(lab, *probe)
        rs = load_ruleset(collect_netfilter(lab.r))
        trs = simulate(rs, probe_packet(*probe))
        assert not trs[1].uncertain, (probe, trs[1].uncertain_reasons)
        assert sim_hits(trs) == kernel_hits(rs), probe


@pytest.mark.parametrize("lab", [True], indirect=True)
def test_list_set_and_family_in_ip6tables(lab):
    load_sets(lab, ["create ip4 hash:ip", f"add ip4 {SERVER4}", "create net6 hash:net family inet6",
                    "add net6 2001:db8:2::/64", "create conn list:set", "add conn ip4", "add conn net6"])
    lab.load([f"ip6tables-nft -A FORWARD -m set {m}" for m in
              ("--match-set conn dst", "--match-set conn src", "--match-set net6 dst", "--match-set net6 src")])
    lab.send_udp(SERVER6, 5000, 40010)
    rs = load_ruleset(collect_netfilter(lab.r))
    trs = simulate(rs, udp(5000, 40010, src=CLIENT6, dst=SERVER6))
    assert sim_hits(trs) == kernel_hits(rs)
    assert [s.matched for s in trs[1].chains[0].steps] == [True, False, True, False]


def test_interface_the_hook_lacks_never_matches(lab):
    load_sets(lab, ["create out hash:net,iface", "add out 198.51.100.0/24,r1"])
    lab.load([f"iptables-nft -A OUTPUT -m set --match-set out {flags}" for flags in ("dst,dst", "dst,src")])
    lab.send_udp(SERVER4, 5000, 40011, ns=lab.r)
    rs = load_ruleset(collect_netfilter(lab.r))
    out = traverse(rs, "output", PacketView("ip", "198.51.100.1", SERVER4, 17, 40011, 5000, oif="r1"),
                   addresses=ROUTER)
    assert sim_hits([out]) == kernel_hits(rs)
    oif_rule, iif_rule = out.chains[0].steps
    assert oif_rule.matched is True
    assert iif_rule.matched is False and "no input interface" in iif_rule.reason


def test_collects_ipsets(lab):
    load_sets(lab, ["create web hash:ip,port counters comment", 'add web 198.51.100.2,tcp:443 comment "a b"'])
    raw = collect_netfilter(lab.r)
    assert raw["ipset"]["status"] == "ok" and "add web 198.51.100.2,tcp:443" in raw["ipset"]["save"]


def test_missing_ipset_binary_is_recorded_not_fatal(lab, monkeypatch):
    real = shutil.which
    monkeypatch.setattr(collect_mod.shutil, "which", lambda name: None if name == "ipset" else real(name))
    raw = collect_netfilter(lab.r)
    assert raw["ipset"] == {"status": "absent", "save": None, "error": "ipset not installed"}
    assert raw["nft"]["status"] == "ok"


# ------------------------------------------------------------------ pure

SAVE = """create a hash:ip family inet hashsize 1024 maxelem 65536 bucketsize 12 initval 0x9a347487
add a 10.0.0.1
create b hash:net family inet6 hashsize 1024 maxelem 65536 counters comment bucketsize 12 initval 0x4d6ba181
add b 2001:db8:1::/48 nomatch packets 0 bytes 0
add b 2001:db8::/32 packets 0 bytes 0 comment "hi there"
create c hash:ip,port family inet hashsize 1024 maxelem 65536 timeout 600 bucketsize 12 initval 0xe6d6ec0a
add c 10.0.0.3,gre:0 timeout 599
add c 10.0.0.2,icmp:fragmentation-needed timeout 599
add c 10.0.0.1,udp:53 timeout 599
create m hash:mac hashsize 1024 maxelem 65536 bucketsize 12 initval 0x1
add m 00:11:22:33:44:55
create l list:set size 8
add l m
add l a
create e bitmap:ip range 10.0.0.0-10.0.255.255 netmask 24
add e 10.0.5.0
"""


def legacy(rules: list[str], ipset: dict | None) -> dict:
    save = "*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n"
    save += "".join(f"[0:0] -A FORWARD {r}\n" for r in rules) + "COMMIT\n"
    raw = {"iptables_legacy": {"ip": {"status": "ok", "save": save}}}
    if ipset is not None:
        raw["ipset"] = ipset
    return raw


def steps(raw, packet):
    return traverse(load_ruleset(raw), "forward", packet, addresses=ROUTER)


def test_parse_ipset_save():
    sets = parse_ipset_save(SAVE).sets
    assert set(sets) == {"a", "b", "c", "m", "l", "e"}
    assert sets["b"].family == "ip6" and sets["b"].lengths == [48, 32]
    assert sets["c"].entries[None] == {(addr, port): False for addr, port in (
        (0x0A000003, (47, 0)), (0x0A000002, (1, 3 << 8 | 4)), (0x0A000001, (17, 53)))}
    assert sets["m"].unsupported == "set type hash:mac not modelled"
    assert sets["l"].members == ["m", "a"]
    assert sets["e"].mask == 0xFFFFFF00 and sets["e"].entries[None] == {(0x0A000500,): False}


@pytest.mark.parametrize("ipset, why", [
    (None, "ipset contents were not collected"),
    ({"status": "absent", "save": None, "error": "ipset not installed"}, "ipset not installed"),
    ({"status": "ok", "save": SAVE}, "set web is not in the collected ipsets"),
])
def test_unknown_set_cannot_be_evaluated(ipset, why):
    tr = steps(legacy(["-m set --match-set web dst -j DROP"], ipset), udp(53, 40000))
    (step,) = tr.chains[0].steps
    assert step.matched is None and why in step.reason and step.reason.startswith("cannot evaluate")
    assert tr.uncertain and tr.verdict == "accept"


def test_unknown_set_type_cannot_be_evaluated_not_even_inside_a_list():
    raw = legacy(["-m set --match-set m src -j DROP", "-m set --match-set l src -j DROP"],
                 {"status": "ok", "save": SAVE})
    first, second = steps(raw, udp(53, 40000, src="10.9.9.9")).chains[0].steps
    assert first.matched is None and "hash:mac not modelled" in first.reason
    assert second.matched is None and "hash:mac not modelled" in second.reason
    # a member that matches decides, whatever the others are
    tr = steps(raw, udp(53, 40000, src="10.0.0.1"))
    assert tr.verdict == "drop" and tr.chains[0].steps[1].matched is True


def test_reasons_say_what_the_set_holds():
    raw = legacy(["-m set --match-set c dst,dst -j DROP", "-m set --match-set c dst -j DROP"],
                 {"status": "ok", "save": SAVE})
    first, second = steps(raw, udp(54, 40000, dst="10.0.0.1")).chains[0].steps
    assert first.matched is False and "c has no element for 10.0.0.1,udp:54" in first.reason
    assert second.matched is False and "needs 2 directions" in second.reason
    tr = steps(raw, PacketView("ip", CLIENT4, "10.0.0.2", 1, icmp_type=3, icmp_code=4, iif="r0", oif="r1"))
    assert tr.verdict == "drop"
