"""Real TCP traffic in the seed lab, captured by `why-route capture` on the router.

`Run(lab)` turns the namespaces' offloads off (so that captured packets are real
segments, not 64 KB GSO blobs), starts `why-route capture` on the router, runs a
server in internet2 (8.8.8.8) and a client on the MacBook, and stops the capture
with SIGINT (the user's Ctrl-C) when the client is done. Nothing leaves the
lab's namespaces.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.helpers.cli import REPO_ROOT, why_route_argv
from tracer.capture import live

SERVER = r"""
import socket, sys, time
mode, port, size, timeout = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
if mode == "slowsink":
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
s.bind(("0.0.0.0", port)); s.listen(4); s.settimeout(timeout)
print("listening", flush=True)
try:
    c, _ = s.accept()
except OSError:
    sys.exit(0)
c.settimeout(timeout)
got = 0
try:
    if mode in ("sink", "slowsink"):
        while True:
            data = c.recv(1024 if mode == "slowsink" else 65536)
            if not data:
                break
            got += len(data)
            if mode == "slowsink":
                time.sleep(0.01)
    else:
        c.sendall(b"x" * size)
        c.shutdown(socket.SHUT_WR)
        c.recv(1)
except OSError:
    pass
c.close()
"""

CLIENT = r"""
import json, socket, sys, time
mode, port, size, timeout, address = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]), sys.argv[5]
s = socket.socket()
if mode == "slowread":
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
s.settimeout(timeout)
s.bind(("0.0.0.0", 0))
out = {"mode": mode, "bytes": 0, "error": None, "sport": s.getsockname()[1]}
start = time.time()
try:
    s.connect((address, port))
    if mode == "upload":
        s.sendall(b"y" * size)
        s.shutdown(socket.SHUT_WR)
        s.recv(1)
    else:
        while True:
            data = s.recv(1024 if mode == "slowread" else 65536)
            if not data:
                break
            out["bytes"] += len(data)
            if mode == "slowread":
                time.sleep(0.005)
except OSError as exc:
    out["error"] = type(exc).__name__
out["seconds"] = time.time() - start
s.close()
print(json.dumps(out))
"""


def offloads_off(lab, nodes=("route", "macbook", "internet2")) -> None:
    for node in nodes:
        links = json.loads(lab.run(node, ["ip", "-j", "link", "show"]).stdout)
        for link in links:
            if link["ifname"] != "lo":
                lab.run(node, ["ethtool", "-K", link["ifname"], "tso", "off", "gso", "off", "gro", "off"],
                        check=False)


# The transfer's two ends run on one CPU: a veth hands a packet to the backlog of the CPU that sent
# it, so a sender moving between CPUs puts its segments on two backlogs, and on a loaded host they
# cross the router out of order and the sender re-sends them (spurious, the receiver D-SACKs some).
# That is the host, not the router under diagnosis; the reordering cases make their own.
TRANSFER_CPU = str(max(os.sched_getaffinity(0)))


def _popen(ns: str, argv: list[str]) -> subprocess.Popen:
    return subprocess.Popen(["ip", "netns", "exec", ns, "taskset", "-c", TRANSFER_CPU, *argv],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def start_capture(lab, run_dir: Path, interfaces=("br-lan", "ppp0", "eth0.2"), bpf="tcp or icmp",
                  options=(), stderr=subprocess.PIPE) -> subprocess.Popen:
    """`why-route capture` on the router, once dumpcap has opened every interface; `stderr`: where its
    progress and closing lines go (a terminal's pty shows the progress line)."""
    proc = subprocess.Popen([*why_route_argv(), "capture", "--netns", lab.ns("route"), "-i", ",".join(interfaces),
                             *options, bpf, "-o", str(run_dir)], cwd=REPO_ROOT, stdout=subprocess.PIPE,
                            stderr=stderr, text=True)
    raw = run_dir / ".dumpcap.pcapng"
    counter = live._Counter(str(raw))
    deadline = time.time() + 15
    while time.time() < deadline and len(counter.names) < len(interfaces):  # dumpcap has opened them all
        if proc.poll() is not None:
            raise AssertionError(f"capture ended early: {proc.stderr.read() if proc.stderr else proc.returncode}")
        time.sleep(0.05)
        counter.update()
    assert len(counter.names) == len(interfaces), "dumpcap did not start"
    time.sleep(0.5)
    return proc


def stop_capture(proc: subprocess.Popen) -> str:
    proc.send_signal(signal.SIGINT)
    _out, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err
    return err


def transfer(lab, run_dir: Path, *, server: str, client: str, size: int = 300_000, port: int = 80,
             timeout: float = 3.0, settle: float = 0.3, address: str = "8.8.8.8", client_node: str = "macbook") -> dict:
    """Capture one client/server exchange (the client runs on `client_node`); returns the client's report."""
    capture = start_capture(lab, run_dir)
    try:
        srv = _popen(lab.ns("internet2"), [sys.executable, "-c", SERVER, server, str(port), str(size),
                                           str(timeout + 2)])
        assert srv.stdout.readline().strip() == "listening", srv.stderr.read()
        cli = _popen(lab.ns(client_node), [sys.executable, "-c", CLIENT, client, str(port), str(size),
                                            str(timeout), address])
        out, err = cli.communicate(timeout=timeout * 4 + 10)
        srv.kill()
        srv.wait()
        time.sleep(settle)
    finally:
        stop_capture(capture)
    assert out, err
    return json.loads(out)


def postmortem(run_dir: Path, *args: str) -> dict:
    result = subprocess.run([*why_route_argv(), "postmortem", str(run_dir), "--json", *args], cwd=REPO_ROOT,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode in (0, 1), result.stderr
    return json.loads(result.stdout)


@contextlib.contextmanager
def _configured(lab, setup: list[tuple], undo: list[tuple], offload_nodes=("route", "macbook", "internet2")):
    """Run the (node, argv) commands of `setup` in order, offloads off on `offload_nodes`; on leaving, those
    of `undo` (whatever fails: setup may have stopped half way)."""
    try:
        for node, argv in setup:
            lab.run(node, argv)
        offloads_off(lab, offload_nodes)
        yield
    finally:
        for node, argv in undo:
            lab.run(node, argv, check=False)


def _server_wired_to(lab, node: str, veth: str, subnet: str) -> list[tuple]:
    """internet2 holds 9.9.9.9 and a wire VETH0 (SUBNET.1/30) to `node` (VETH1, SUBNET.2/30), which forwards."""
    return [
        ("internet2", ["ip", "addr", "add", "9.9.9.9/32", "dev", "lo"]),
        ("internet2", ["ip", "link", "add", f"{veth}0", "type", "veth", "peer", "name", f"{veth}1", "netns",
                       lab.ns(node)]),
        ("internet2", ["ip", "addr", "add", f"{subnet}.1/30", "dev", f"{veth}0"]),
        ("internet2", ["ip", "link", "set", f"{veth}0", "up"]),
        (node, ["ip", "addr", "add", f"{subnet}.2/30", "dev", f"{veth}1"]),
        (node, ["ip", "link", "set", f"{veth}1", "up"]),
        (node, ["sysctl", "-qw", "net.ipv4.ip_forward=1"]),
    ]


def _unwired(node: str, veth: str) -> list[tuple]:
    return [("internet2", ["ip", "addr", "del", "9.9.9.9/32", "dev", "lo"]),
            ("internet2", ["ip", "link", "del", f"{veth}0"]),
            (node, ["sysctl", "-qw", "net.ipv4.ip_forward=0"])]


def replies_by_eth0_2(lab):
    """internet2 serves on 9.9.9.9 (an address internet1 does not hold) and sends its replies to
    123.150.232.74 through internet1 (a wire added between them), which delivers them to the
    router's eth0.2: requests leave ppp0, replies come back on eth0.2."""
    setup = [
        *_server_wired_to(lab, "internet1", "pmx", "10.99.0"),
        ("internet1", ["ip", "route", "add", "123.150.232.74/32", "via", "10.10.149.4"]),
        ("internet2", ["ip", "route", "replace", "123.150.232.74/32", "via", "10.99.0.2"]),
    ]
    undo = [
        ("internet2", ["ip", "route", "del", "123.150.232.74/32", "via", "10.99.0.2"]),
        ("internet1", ["ip", "route", "del", "123.150.232.74/32"]),
        *_unwired("internet1", "pmx"),
    ]
    return _configured(lab, setup, undo)


def requests_by_archlinux(lab):
    """internet2 serves on 9.9.9.9; ArchLinux (192.168.1.245, a LAN host with its own uplink) sends
    its requests there out its own ppp0, through internet3 and a wire added from internet3 to
    internet2, and internet2 routes the replies to 192.168.1.245 back by the router's ppp0: the
    router sees the replies of the connection and never its requests. The router's own route to
    9.9.9.9 is by ppp0 (so that requests sent through it work)."""
    setup = [
        *_server_wired_to(lab, "internet3", "pmy", "10.98.0"),
        ("internet3", ["ip", "route", "add", "9.9.9.9/32", "via", "10.98.0.1"]),
        ("internet2", ["ip", "route", "add", "192.168.1.245/32", "via", "123.150.232.74"]),
        ("archlinux", ["ip", "route", "add", "9.9.9.9/32", "via", "180.134.135.1", "dev", "ppp0",
                       "src", "192.168.1.245"]),
        ("route", ["ip", "route", "add", "9.9.9.9/32", "via", "123.150.232.1", "dev", "ppp0"]),
    ]
    undo = [
        ("archlinux", ["ip", "route", "del", "9.9.9.9/32"]),
        ("route", ["ip", "route", "del", "9.9.9.9/32"]),
        ("internet2", ["ip", "route", "del", "192.168.1.245/32"]),
        *_unwired("internet3", "pmy"),
    ]
    return _configured(lab, setup, undo, ("route", "archlinux", "internet3", "internet2"))


def the_connection(doc: dict, client: dict, port: int = 80, address: str = "192.168.1.169") -> dict:
    """The client's connection (others may be in the capture: an earlier test's orphaned socket retrying)."""
    found = [c for c in doc["connections"] if c["flow"]["lan"]["dport"] == port
             and c["flow"]["lan"]["src"] == address and c["flow"]["lan"]["sport"] == client["sport"]]
    assert len(found) == 1, json.dumps([c["flow"] for c in doc["connections"]])
    return found[0]


__all__ = ["offloads_off", "transfer", "postmortem", "the_connection", "os"]
