"""up / status / exec / down through the CLI, crashes and interruptions, coexisting labs."""

import json
import signal
import subprocess
import sys
import time

import pytest

from tests.helpers.cli import why_route, why_route_argv
from tests.lab.lab_helpers import leftovers
from tracer import netns
from tracer.errors import EnvironmentProblem
from tracer.lab import builder

SEED_NODES = ["route", "archlinux", "macbook", "internet1", "internet2", "internet3"]


def test_up_status_exec_down(prefix):
    result = why_route("lab", "up", "--prefix", prefix)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"lab {prefix} up in ")
    assert f"topology seed, variant slow\nnodes: route ({prefix}-route), archlinux ({prefix}-archlinux)," \
        in result.stdout
    assert result.stderr == ""

    status = why_route("lab", "status", "--prefix", prefix)
    assert status.returncode == 0, status.stderr
    for line in (f"lab {prefix}: topology seed, variant slow, up",
                 f"route ({prefix}-route)", f"internet2 ({prefix}-internet2)",
                 "failed variant commands: none"):
        assert line in status.stdout
    lines = [line.split() for line in status.stdout.splitlines()]
    assert ["br-lan", "UP", "192.168.1.1/24"] in lines
    assert ["lan2", "UP", "master", "br-lan"] in lines
    assert ["ppp0", "UP", "123.150.232.74", "peer", "123.150.232.1/32"] in lines
    assert ["lo", "UNKNOWN", "127.0.0.1/8,", "8.8.8.8/32"] in lines

    report = json.loads(why_route("lab", "status", "--json", "--prefix", prefix).stdout)
    assert (report["prefix"], report["variant"], report["failures"]) == (prefix, "slow", [])
    assert list(report["nodes"]) == SEED_NODES  # node names are a contract
    assert {n["namespace"] for n in report["nodes"].values()} == {f"{prefix}-{n}" for n in SEED_NODES}
    en0 = next(i for i in report["nodes"]["macbook"]["interfaces"] if i["name"] == "en0")
    assert en0["addresses"] == ["192.168.1.169/24"]

    run = why_route("lab", "exec", "route", "--prefix", prefix, "--", "sh", "-c", "ip -br addr show ppp0; exit 7")
    assert run.returncode == 7
    assert "123.150.232.74 peer 123.150.232.1/32" in run.stdout
    unknown = why_route("lab", "exec", "router", "--prefix", prefix, "--", "true")
    assert unknown.returncode == 2
    assert unknown.stderr == (f"why-route: error: no node 'router' in lab {prefix} "
                              f"(nodes: {', '.join(SEED_NODES)})\n")

    down = why_route("lab", "down", "--prefix", prefix)
    assert down.returncode == 0 and "removed 6 namespace(s)" in down.stdout
    assert leftovers(prefix) == []
    again = why_route("lab", "down", "--prefix", prefix)
    assert (again.returncode, again.stdout) == (0, f"lab {prefix} down: removed 0 namespace(s)\n")


def test_kernel_objects_stay_inside_the_lab(prefix):
    state = builder.up(None, "ultimate", prefix)
    # A veth end in the root namespace would give the root namespace an id for its peer.
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    ours = [line for line in listed.splitlines() if line.startswith(prefix + "-")]
    assert len(ours) == 6 and not [line for line in ours if "(id:" in line], listed
    for node in SEED_NODES:
        peers = state.run(node, ["ip", "netns", "list-id"]).stdout
        names = [line.split("name: ")[-1].rstrip(")") for line in peers.splitlines()]
        assert names and all(name.startswith(prefix + "-") for name in names), (node, peers)
        # Sysctls are the lab's, not inherited from the host.
        sysctl = state.run(node, ["sysctl", "-n", "net.ipv4.ip_forward", "net.ipv4.conf.all.rp_filter",
                                  "net.ipv4.conf.default.rp_filter"]).stdout.split()
        assert sysctl == ["1" if node in ("route", "archlinux") else "0", "0", "0"], node


@pytest.mark.parametrize("near, far", [("route", "internet2"), ("archlinux", "internet3")])
def test_ppp_links_are_point_to_point_without_arp(near, far, prefix):
    state = builder.up(None, "ultimate", prefix)
    ends = [json.loads(state.run(node, ["ip", "-j", "link", "show", "ppp0"]).stdout)[0] for node in (near, far)]
    for end in ends:
        assert "NOARP" in end["flags"] and end["mtu"] == 1400
    assert ends[0]["address"] == ends[1]["address"]  # frames go to the device's own MAC
    peer = "123.150.232.74" if near == "route" else "180.134.135.173"
    assert state.run(far, ["ping", "-c1", "-W1", peer], check=False).returncode == 0
    neighbours = json.loads(state.run(far, ["ip", "-j", "neigh", "show", "dev", "ppp0", "nud", "all"]).stdout)
    assert neighbours and all(n["state"] == ["NOARP"] and n["lladdr"] == ends[1]["address"]
                              for n in neighbours), neighbours


def test_up_replaces_the_lab_with_the_same_prefix_only_with_replace(prefix):
    first = builder.up(None, "slow", prefix)
    first.run("route", ["ip", "addr", "add", "10.99.99.99/32", "dev", "lo"])
    refused = why_route("lab", "up", "--variant", "ultimate", "--prefix", prefix)  # issue 10: refuses
    assert refused.returncode == 2
    assert "10.99.99.99" in first.run("route", ["ip", "-br", "addr"]).stdout
    second = why_route("lab", "up", "--variant", "ultimate", "--prefix", prefix, "--replace")
    assert second.returncode == 0, second.stderr
    state = builder.read_state(prefix)
    assert (state.status, state.variant) == ("up", "ultimate")
    assert "10.99.99.99" not in state.run("route", ["ip", "-br", "addr"]).stdout
    assert "lookup sunusroute" in state.run("route", ["ip", "rule"]).stdout


CRASH = """
import os, sys
from tracer.lab import builder
link = builder._Build.link
def crash(self, index, spec):
    if index == 2:
        os._exit(9)  # as if killed: no clean-up runs
    link(self, index, spec)
builder._Build.link = crash
builder.up(None, "slow", sys.argv[1])
"""


def _crash_half_way(prefix):
    crashed = subprocess.run([sys.executable, "-c", CRASH, prefix], capture_output=True, text=True)
    assert crashed.returncode == 9, crashed.stderr
    assert builder.read_state(prefix).status == "building"
    assert len([x for x in leftovers(prefix) if x.startswith("netns")]) == 6


def test_a_crashed_up_is_cleaned_by_down_and_by_the_next_up(prefix):
    _crash_half_way(prefix)
    down = why_route("lab", "down", "--prefix", prefix)
    assert down.returncode == 0 and "removed 6 namespace(s)" in down.stdout
    assert leftovers(prefix) == []

    _crash_half_way(prefix)
    up = why_route("lab", "up", "--variant", "ultimate", "--prefix", prefix)
    assert up.returncode == 0, up.stderr
    assert builder.read_state(prefix).status == "up"
    assert "ppp0" in builder.read_state(prefix).run("internet2", ["ip", "-br", "link"]).stdout


def test_up_refuses_while_another_process_builds(fresh_prefix):
    builder._write_state(builder.LabState(prefix=fresh_prefix, topology="seed", source="-", variant="slow",
                                          nodes={}, pid=(sleeper := subprocess.Popen(["sleep", "30"])).pid))
    try:
        result = why_route("lab", "up", "--prefix", fresh_prefix)
    finally:
        sleeper.kill()
        sleeper.wait()
    assert result.returncode == 2
    assert f"lab {fresh_prefix} is being built by process {sleeper.pid}" in result.stderr


@pytest.mark.parametrize("error", [KeyboardInterrupt, OSError])
def test_an_interrupted_up_removes_what_it_built(error, fresh_prefix, monkeypatch):
    link = builder._Build.link

    def fail(self, index, spec):
        if index == 3:
            assert len([x for x in leftovers(fresh_prefix) if x.startswith("netns")]) == 6
            raise error("stop")
        link(self, index, spec)

    monkeypatch.setattr(builder._Build, "link", fail)
    with pytest.raises(KeyboardInterrupt if error is KeyboardInterrupt else EnvironmentProblem):
        builder.up(None, "slow", fresh_prefix)
    assert leftovers(fresh_prefix) == []


def test_a_failing_base_command_aborts_cleanly(tmp_path, fresh_prefix):
    path = tmp_path / "broken.toml"
    path.write_text('name = "broken"\n[nodes.a]\nrun = ["ip route add 10.9.0.0/16 via 10.0.0.9"]\n')
    result = why_route("lab", "up", str(path), "--prefix", fresh_prefix)
    assert result.returncode == 3
    assert result.stderr.startswith("why-route: error: lab up failed, nothing left behind: "
                                    "a: `ip route add 10.9.0.0/16 via 10.0.0.9` failed: ")
    assert result.stderr.count("\n") == 1
    assert leftovers(fresh_prefix) == []


def test_two_labs_coexist_and_a_user_topology_file_works(prefix, fresh_prefix, tmp_path):
    builder.up(None, "slow", prefix)
    path = tmp_path / "mine.toml"
    path.write_text("""
name = "mine"
[nodes.route]
[nodes.route.interfaces.lan]
addresses = ["10.1.0.1/24"]
[nodes.pc]
sysctl = { "net.ipv4.conf.all.rp_filter" = 2 }
[nodes.pc.interfaces.eth0]
addresses = ["10.1.0.2/24"]
[[nodes.pc.routes]]
to = "default"
via = "10.1.0.1"
[[links]]
ends = ["route:lan", "pc:eth0"]
[variants.quiet.run]
route = ["ip addr add 10.7.7.7/32 dev lo"]
""")
    mine = why_route("lab", "up", str(path), "--variant", "quiet", "--prefix", fresh_prefix)
    assert mine.returncode == 0, mine.stderr
    assert why_route("lab", "exec", "pc", "--prefix", fresh_prefix, "--", "ping", "-c1", "-W1",
                     "10.7.7.7").returncode == 0
    rp_filter = why_route("lab", "exec", "pc", "--prefix", fresh_prefix, "--", "sysctl", "-n",
                          "net.ipv4.conf.all.rp_filter", "net.ipv4.conf.default.rp_filter")
    assert rp_filter.stdout.split() == ["2", "0"]  # the node's sysctl over the lab's default
    assert why_route("lab", "down", "--prefix", fresh_prefix).returncode == 0
    assert leftovers(fresh_prefix) == []
    # The other lab, with the same node name `route`, is untouched.
    state = builder.read_state(prefix)
    assert state.status == "up"
    assert state.run("macbook", ["ping", "-c1", "-W1", "8.8.8.8"], check=False).returncode == 0


def test_not_root_is_one_line(kernel_lab):
    result = why_route("lab", "up", "--prefix", "tnr", user=65534, group=65534, extra_groups=[],
                       env={"PYTHONDONTWRITEBYTECODE": "1"})
    assert (result.returncode, result.stderr) == (
        3, "why-route: error: the lab needs root (it creates network namespaces); run it as root\n")


def test_ctrl_c_during_up_removes_what_it_built(tmp_path, fresh_prefix):
    path = tmp_path / "slow.toml"
    path.write_text('name = "slowpoke"\n[nodes.a]\n[variants.v.run]\na = ["sleep 20"]\n')
    up = subprocess.Popen([*why_route_argv(), "lab", "up", str(path), "--prefix", fresh_prefix],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 10
    while not netns.exists(f"{fresh_prefix}-a") and time.monotonic() < deadline:
        time.sleep(0.02)
    assert leftovers(fresh_prefix), "lab up did not get going"
    up.send_signal(signal.SIGINT)
    out, err = up.communicate(timeout=10)
    assert (up.returncode, err.strip()) == (130, "why-route: interrupted")
    assert leftovers(fresh_prefix) == []
