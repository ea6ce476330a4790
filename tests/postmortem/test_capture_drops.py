"""`why-route capture` reports its drop counters honestly, checked against the kernel: UDP packets
from the MacBook (out ppp0) and ArchLinux (out eth0.2) through the lab router, counted by nft
counters on the router as they cross br-lan, ppp0 and eth0.2. At a low rate every packet is in
the capture and the drops are 0; with a 1 MiB buffer and dumpcap stopped while the packets pass,
the kernel drops some, and captured + dropped is exactly what crossed each interface."""

import json
import subprocess
import sys
import time

import pytest

from tests.lab.lab_helpers import new_prefix
from tests.postmortem import pmlab
from tracer.capture import pcapio
from tracer.lab import builder

INTERFACES = ("br-lan", "ppp0", "eth0.2")
COUNTERS = """
table ip wrcount {
    counter brlan { }
    counter ppp0 { }
    counter eth02 { }
    chain arriving { type filter hook prerouting priority -300; iifname "br-lan" udp dport 9 counter name brlan; }
    chain leaving {
        type filter hook postrouting priority 300;
        oifname "ppp0" udp dport 9 counter name ppp0
        oifname "eth0.2" udp dport 9 counter name eth02
    }
}
"""
# unconnected: the far side's ICMP port-unreachables do not fail the next send
SENDER = r"""
import socket, sys, time
count = int(sys.argv[1])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for i in range(count):
    s.sendto(b"x" * 18, ("8.8.8.8", 9))
    if i % 100 == 99:
        time.sleep(0.002)
"""


@pytest.fixture(scope="module")
def lab(kernel_lab):
    state = builder.up(variant="ultimate", prefix=new_prefix("p"))
    try:
        state.run("route", ["nft", "-f", "-"], input=COUNTERS)
        yield state
    finally:
        builder.down(state.prefix)


def _send(lab, node: str, count: int) -> None:
    lab.run(node, [sys.executable, "-c", SENDER, str(count)])


def _crossed(lab) -> dict[str, int]:
    """The router's nft counters (reset by the read): UDP packets to port 9 per interface."""
    out = lab.run("route", ["nft", "-j", "reset", "counters", "table", "ip", "wrcount"]).stdout
    names = {"brlan": "br-lan", "ppp0": "ppp0", "eth02": "eth0.2"}
    return {names[c["counter"]["name"]]: c["counter"]["packets"] for c in json.loads(out)["nftables"]
            if "counter" in c}


def _pcapng_drops(path) -> list[tuple]:
    """(isb_ifdrop, isb_osdrop) per interface, as a reader of the pcapng sees them (after the packets)."""
    capture = pcapio.read(str(path))
    sum(1 for _ in capture.packets())
    return [(i.dropped, i.os_dropped) for i in capture.interfaces]


def _finish(proc) -> tuple[str, dict]:
    err = pmlab.stop_capture(proc)
    return err, {s["interface"]: s for s in json.loads((proc.run_dir / "capture.json").read_text())["statistics"]}


def _start(lab, tmp_path, *options):
    _crossed(lab)
    proc = pmlab.start_capture(lab, tmp_path / "run", INTERFACES, "udp port 9", options)
    proc.run_dir = tmp_path / "run"
    return proc


def test_low_rate_every_packet_counted_and_no_drop(lab, tmp_path):
    proc = _start(lab, tmp_path)
    try:
        _send(lab, "macbook", 3000)
        _send(lab, "archlinux", 2000)
        time.sleep(0.3)
    finally:
        err, stats = _finish(proc)
    crossed = _crossed(lab)
    assert crossed == {"br-lan": 5000, "ppp0": 3000, "eth0.2": 2000}
    for name in INTERFACES:
        assert f"{name} {crossed[name]} (drops: kernel 0, capture 0)" in err, err
        assert stats[name]["packets"] == crossed[name]
    assert _pcapng_drops(tmp_path / "run" / "capture.pcapng") == [(0, 0)] * 3


def test_tiny_buffer_behind_a_stopped_dumpcap_drops_and_says_so_exactly(lab, tmp_path):
    proc = _start(lab, tmp_path, "--buffer", "1")
    dumpcap = int(subprocess.run(["pgrep", "-P", str(proc.pid), "-x", "dumpcap"], capture_output=True, text=True,
                                 check=True).stdout.split()[0])
    try:
        subprocess.run(["kill", "-STOP", str(dumpcap)], check=True)  # its 1 MiB rings fill up
        try:
            _send(lab, "macbook", 30000)
        finally:
            subprocess.run(["kill", "-CONT", str(dumpcap)], check=True)
        time.sleep(0.5)
    finally:
        err, stats = _finish(proc)
    crossed = _crossed(lab)
    assert crossed["br-lan"] == crossed["ppp0"] > 0 and crossed["eth0.2"] == 0
    for name, in_file in zip(INTERFACES, _pcapng_drops(tmp_path / "run" / "capture.pcapng"), strict=True):
        s = stats[name]
        assert s["packets"] + s["kernel_drops"] + s["capture_drops"] == crossed[name]
        assert f"{name} {s['packets']} (drops: kernel {s['kernel_drops']}, capture {s['capture_drops']})" in err
        assert in_file == (s["kernel_drops"], s["capture_drops"])  # the pcapng says it too
    assert stats["br-lan"]["kernel_drops"] > 0 and stats["ppp0"]["kernel_drops"] > 0
    postmortem = subprocess.run([*pmlab.why_route_argv(), "postmortem", str(tmp_path / "run")], capture_output=True,
                                text=True, cwd=pmlab.REPO_ROOT)
    lost = stats["br-lan"]["kernel_drops"] + stats["br-lan"]["capture_drops"]
    assert f"the capture lost {lost} packet(s) on br-lan" in postmortem.stdout + postmortem.stderr


def test_buffer_below_one_mib_is_a_usage_error(lab, tmp_path):
    result = subprocess.run([*pmlab.why_route_argv(), "capture", "--netns", lab.ns("route"), "--buffer", "0", "-o",
                             str(tmp_path / "run")], capture_output=True, text=True, cwd=pmlab.REPO_ROOT)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == ["why-route: error: --buffer 0: the capture buffer is at least 1 MiB"]
