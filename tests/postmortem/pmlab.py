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


def offloads_off(lab) -> None:
    for node in ("route", "macbook", "internet2"):
        links = json.loads(lab.run(node, ["ip", "-j", "link", "show"]).stdout)
        for link in links:
            if link["ifname"] != "lo":
                lab.run(node, ["ethtool", "-K", link["ifname"], "tso", "off", "gso", "off", "gro", "off"],
                        check=False)


def _popen(ns: str, argv: list[str]) -> subprocess.Popen:
    return subprocess.Popen(["ip", "netns", "exec", ns, *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def start_capture(lab, run_dir: Path, interfaces=("br-lan", "ppp0", "eth0.2"), bpf="tcp or icmp",
                  options=()) -> subprocess.Popen:
    proc = subprocess.Popen([*why_route_argv(), "capture", "--netns", lab.ns("route"), "-i", ",".join(interfaces),
                             *options, bpf, "-o", str(run_dir)], cwd=REPO_ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    raw = run_dir / ".dumpcap.pcapng"
    counter = live._Counter(str(raw))
    deadline = time.time() + 15
    while time.time() < deadline and len(counter.names) < len(interfaces):  # dumpcap has opened them all
        if proc.poll() is not None:
            raise AssertionError(f"capture ended early: {proc.stderr.read()}")
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
             timeout: float = 3.0, settle: float = 0.3, address: str = "8.8.8.8") -> dict:
    """Capture one client/server exchange; returns the client's report."""
    capture = start_capture(lab, run_dir)
    try:
        srv = _popen(lab.ns("internet2"), [sys.executable, "-c", SERVER, server, str(port), str(size),
                                           str(timeout + 2)])
        assert srv.stdout.readline().strip() == "listening", srv.stderr.read()
        cli = _popen(lab.ns("macbook"), [sys.executable, "-c", CLIENT, client, str(port), str(size), str(timeout),
                                          address])
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
def replies_by_eth0_2(lab):
    """internet2 serves on 9.9.9.9 (an address internet1 does not hold) and sends its replies to
    123.150.232.74 through internet1 (a wire added between them), which delivers them to the
    router's eth0.2: requests leave ppp0, replies come back on eth0.2."""
    i1 = lab.ns("internet1")
    setup = [
        ("internet2", ["ip", "addr", "add", "9.9.9.9/32", "dev", "lo"]),
        ("internet2", ["ip", "link", "add", "pmx0", "type", "veth", "peer", "name", "pmx1", "netns", i1]),
        ("internet2", ["ip", "addr", "add", "10.99.0.1/30", "dev", "pmx0"]),
        ("internet2", ["ip", "link", "set", "pmx0", "up"]),
        ("internet1", ["ip", "addr", "add", "10.99.0.2/30", "dev", "pmx1"]),
        ("internet1", ["ip", "link", "set", "pmx1", "up"]),
        ("internet1", ["sysctl", "-qw", "net.ipv4.ip_forward=1"]),
        ("internet1", ["ip", "route", "add", "123.150.232.74/32", "via", "10.10.149.4"]),
        ("internet2", ["ip", "route", "replace", "123.150.232.74/32", "via", "10.99.0.2"]),
    ]
    try:
        for node, argv in setup:
            lab.run(node, argv)
        offloads_off(lab)
        yield
    finally:
        lab.run("internet2", ["ip", "addr", "del", "9.9.9.9/32", "dev", "lo"], check=False)
        lab.run("internet2", ["ip", "route", "del", "123.150.232.74/32", "via", "10.99.0.2"], check=False)
        lab.run("internet2", ["ip", "link", "del", "pmx0"], check=False)
        lab.run("internet1", ["ip", "route", "del", "123.150.232.74/32"], check=False)
        lab.run("internet1", ["sysctl", "-qw", "net.ipv4.ip_forward=0"], check=False)


def the_connection(doc: dict, client: dict, port: int = 80) -> dict:
    """The client's connection (others may be in the capture: an earlier test's orphaned socket retrying)."""
    found = [c for c in doc["connections"] if c["flow"]["lan"]["dport"] == port
             and c["flow"]["lan"]["src"] == "192.168.1.169" and c["flow"]["lan"]["sport"] == client["sport"]]
    assert len(found) == 1, json.dumps([c["flow"] for c in doc["connections"]])
    return found[0]


__all__ = ["offloads_off", "transfer", "postmortem", "the_connection", "os"]
