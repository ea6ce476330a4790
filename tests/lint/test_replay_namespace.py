"""The replay namespace: a faithful copy of the source state, and always removed."""

import fcntl
import os
import signal
import struct
import subprocess
import time

import pytest

from tests.helpers.cli import why_route, why_route_argv
from tests.lint.lint_helpers import orphaned_leftovers, replay_leftovers
from tracer import netns
from tracer.collect import snapshot
from tracer.collect.live import collect_state
from tracer.lint.replay import IFF_NO_PI, IFF_TUN, TUNSETIFF, Replay, _route_key, sweep_stale


def same_state(source, copy):
    assert copy.rules == source.rules
    assert {_route_key(r) for r in copy.routes} == {_route_key(r) for r in source.routes}
    assert copy.addresses == source.addresses
    assert copy.table_names == source.table_names
    assert [(link.name, link.mtu, link.up, link.noarp, link.pointopoint) for link in copy.links] == \
        [(link.name, link.mtu, link.up, link.noarp, link.pointopoint) for link in source.links]
    assert copy.sysctls == source.sysctls


@pytest.mark.parametrize("variant", ["slow", "ultimate"])
def test_seed_round_trip(seed, variant):
    source = snapshot.load(seed[variant])
    with Replay(source) as replay:
        assert replay.notes == []
        copy = replay.collect()
        same_state(source, copy)
        # iptables-nft rules come back as iptables-nft rules
        assert copy.netfilter["iptables_nft"]["ip"]["save"].count("-A POSTROUTING") == \
            source.netfilter["iptables_nft"]["ip"]["save"].count("-A POSTROUTING")
        assert replay.seconds < 1
    assert not replay_leftovers(os.getpid())


RICH = [
    "ip link add eth1 type veth peer name eth2",
    "ip link set dev eth1 mtu 9000 up",
    "ip link set dev eth2 up",
    "ip link set dev ppp0 up",
    "ip link set dev lo up",
    "ip addr add 10.1.0.1/24 dev eth1",
    "ip addr add 10.1.0.9/24 dev eth1",
    "ip addr add 10.9.9.2 peer 10.9.9.1/32 dev ppp0",
    "ip -6 addr add 2001:db8::1/64 dev eth1 nodad",
    "echo '100 isp1' >> /etc/iproute2/rt_tables",
    "echo '200 isp2' >> /etc/iproute2/rt_tables",
    "ip route add default via 10.1.0.254 table isp1 metric 5",
    "ip route add default via 10.9.9.1 dev ppp0 table isp2",
    "ip route add 172.16.0.0/12 table isp2 nexthop via 10.1.0.253 weight 2 nexthop via 10.1.0.252",
    "ip route add blackhole 192.0.2.0/24 table isp1",
    "ip route add unreachable 198.51.100.0/24",
    "ip route add throw 10.2.0.0/16 table isp1",
    "ip route add 203.0.113.0/24 dev eth1 src 10.1.0.9 proto static",
    "ip -6 route add default via 2001:db8::fe dev eth1 table isp1",
    "ip rule add pref 100 from 10.1.0.0/24 to 8.8.0.0/16 tos 0x10 lookup isp1",
    "ip rule add pref 110 fwmark 0x10/0xff iif eth1 lookup isp2",
    "ip rule add pref 120 not from 10.5.0.0/16 ipproto tcp dport 443 lookup isp2",
    "ip rule add pref 130 uidrange 1000-2000 oif ppp0 lookup isp2",
    "ip rule add pref 140 lookup main suppress_prefixlength 0",
    "ip rule add pref 150 from 10.6.0.0/16 goto 200",
    "ip rule add pref 160 from 10.7.0.0/16 blackhole",
    "ip rule add pref 170 from 10.8.0.0/16 prohibit",
    "ip rule add pref 200 from all lookup isp1",
    "ip rule del pref 32767",
    "ip -6 rule add pref 300 from 2001:db8::/64 lookup isp1",
    "sysctl -qw net.ipv4.ip_forward=1 net.ipv4.conf.all.rp_filter=2 net.ipv4.conf.eth1.rp_filter=1",
    "nft add table inet fw",
    "nft add set inet fw lan '{ type ipv4_addr; flags interval; elements = { 10.1.0.0/24 } }'",
    "nft add chain inet fw fwdchain '{ type filter hook forward priority 0; policy drop; }'",
    "nft add rule inet fw fwdchain ip saddr @lan oifname ppp0 accept",
    "iptables -t mangle -A FORWARD -o ppp0 -p tcp --tcp-flags SYN,RST SYN -j TCPMSS --clamp-mss-to-pmtu",
    "iptables -t nat -A POSTROUTING -o ppp0 -j MASQUERADE",
]


@pytest.fixture
def rich_namespace(kernel):
    """A namespace with every kind of rule, route, link and table the replay must reproduce."""
    name = f"wrtestrich{os.getpid()}"
    etc = f"/etc/netns/{name}/iproute2"
    subprocess.run(["ip", "netns", "add", name], check=True)
    os.makedirs(etc)
    with open("/etc/iproute2/rt_tables") as src, open(f"{etc}/rt_tables", "w") as dst:
        dst.write(src.read())
    tun = None
    try:
        # ppp0: a point-to-point device with a carrier, as pppd keeps it (the fd held open).
        with netns.entered(name):
            tun = os.open("/dev/net/tun", os.O_RDWR)
            fcntl.ioctl(tun, TUNSETIFF, struct.pack("16sH", b"ppp0", IFF_TUN | IFF_NO_PI))
        for command in RICH:
            subprocess.run(["ip", "netns", "exec", name, "sh", "-c", command], check=True, capture_output=True)
        yield name
    finally:
        if tun is not None:
            os.close(tun)
        subprocess.run(["ip", "netns", "del", name])
        subprocess.run(["rm", "-rf", f"/etc/netns/{name}"])


def test_rich_round_trip(rich_namespace):
    source = collect_state(rich_namespace, conntrack=False)
    with Replay(source) as replay:
        assert replay.notes == []
        copy = replay.collect()
    same_state(source, copy)
    assert copy.netfilter["nft"]["text"].replace("\t", "") .count("@lan") == 1
    assert "TCPMSS" in copy.netfilter["iptables_nft"]["ip"]["save"]
    ppp = copy.link("ppp0")
    assert ppp.pointopoint and ppp.noarp and "LOWER_UP" in ppp.flags


def test_cleanup_on_keyboard_interrupt(seed):
    with pytest.raises(KeyboardInterrupt):
        with Replay(snapshot.load(seed["slow"])):
            assert replay_leftovers(os.getpid())
            raise KeyboardInterrupt
    assert not replay_leftovers(os.getpid())


def test_cleanup_when_the_script_destroys_things(seed, tmp_path):
    script = tmp_path / "destroy.sh"
    script.write_text("ip link del ppp0\nip link set lo down\nip rule flush\nip -6 rule flush\n"
                      "ip route flush table all\nnft flush ruleset\niptables -F\n"
                      "echo > /etc/iproute2/rt_tables\nkill -9 1\npkill why-route\n")
    result = why_route("lint", str(script), "--snapshot", seed["slow"], no_color=True)
    assert result.returncode in (0, 1), result.stderr
    assert "`kill` signals processes of the host" in result.stdout
    assert not orphaned_leftovers()


def _wait_for_replay(process) -> None:
    deadline = time.monotonic() + 20
    while not replay_leftovers(process.pid):
        assert process.poll() is None and time.monotonic() < deadline, "no replay namespace appeared"
        time.sleep(0.01)


@pytest.mark.parametrize("signum, status", [(signal.SIGINT, 130), (signal.SIGTERM, 128 + signal.SIGTERM)])
def test_cleanup_on_signal(seed, tmp_path, signum, status):
    script = tmp_path / "long.sh"
    script.write_text("ip rule show\n" * 3000)
    process = subprocess.Popen([*why_route_argv(), "lint", str(script), "--snapshot", seed["slow"]],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_for_replay(process)
    process.send_signal(signum)
    _out, err = process.communicate(timeout=30)
    assert process.returncode == status
    if signum == signal.SIGINT:
        assert err.strip() == "why-route: interrupted"
    assert not replay_leftovers(process.pid)


def test_a_killed_process_is_swept_by_the_next_replay(seed, tmp_path):
    script = tmp_path / "long.sh"
    script.write_text("ip rule show\n" * 3000)
    process = subprocess.Popen([*why_route_argv(), "lint", str(script), "--snapshot", seed["slow"]],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _wait_for_replay(process)
    process.kill()
    process.wait()
    assert replay_leftovers(process.pid)  # SIGKILL: nothing can clean up at once
    assert sweep_stale()
    assert not replay_leftovers(process.pid)
