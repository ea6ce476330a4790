"""`check` on the seed lab, live: build each variant in namespaces, collect its
state from the node's namespace, run every rule. Root only; every lab removed."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from tests.helpers.cli import why_route
from tests.lab.lab_helpers import new_prefix
from tracer.checks import engine
from tracer.collect.live import collect_state
from tracer.lab import builder

pytestmark = pytest.mark.skipif(os.geteuid() != 0 or shutil.which("ip") is None,
                                reason="seed lab checks need root and iproute2 (network namespaces)")


@pytest.fixture(scope="module")
def lab():
    """lab(variant, copy) builds (once per variant and copy) and returns the LabState;
    tests that change a lab use their own copy. All torn down at the end."""
    built = {}

    def get(variant, copy=""):
        if (variant, copy) not in built:
            prefix = new_prefix("r")
            built[variant, copy] = builder.up(topology=None, variant=variant, prefix=prefix)
        return built[variant, copy]

    yield get
    for state in built.values():
        builder.down(state.prefix)
        leftovers = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
        assert f"{state.prefix}-" not in leftovers


def findings(lab, variant, node):
    return engine.run(collect_state(lab(variant).ns(node)))


def by_id(found, rule_id):
    return [f for f in found if f.id == rule_id]


def test_ultimate_has_no_error(lab):
    found = findings(lab, "ultimate", "route")
    assert not [f for f in found if f.severity == "error"], [f.message for f in found]


def test_ultimate_nosnat_reports_missing_snat_on_route_ppp0(lab):
    (snat,) = by_id(findings(lab, "ultimate-nosnat", "route"), "WR019")
    assert snat.severity == "error"
    assert "ppp0" in snat.message and "192.168.1.169" in snat.message
    assert ("iptables -t nat -A POSTROUTING -o ppp0 -j SNAT --to-source 123.150.232.74" in snat.fix
            or "iptables -t nat -A POSTROUTING -o ppp0 -j MASQUERADE" in snat.fix)


def test_blog_as_written_reports_the_empty_table(lab):
    (empty,) = by_id(findings(lab, "blog-as-written", "route"), "WR001")
    assert "sunusroute" in empty.message and "without `table sunusroute`" in empty.message
    assert "went to main" in empty.message and "default via 10.10.149.1 dev eth0.2" in empty.message
    assert "ip route add default via 123.150.232.1 dev ppp0 table sunusroute" in empty.fix


def test_faster_reports_missing_snat_on_archlinux_and_the_own_gateway(lab):
    found = findings(lab, "faster", "archlinux")
    (snat,) = by_id(found, "WR019")
    assert "ppp0" in snat.message and "192.168.1.169" in snat.message and "SunusRules" in snat.message
    (own,) = by_id(found, "WR004")
    assert own.severity == "info" and "180.134.135.173" in own.message and "harmless" in own.message
    assert "ip route replace default via 180.134.135.1 dev ppp0 table SunusRules" in own.fix


def test_the_suggested_snat_fix_makes_the_ping_work(lab):
    """The finding is real (no reply without SNAT) and its fix is what makes it work."""
    state = lab("ultimate-nosnat", copy="fixed")
    ping = ["ping", "-n", "-c", "1", "-W", "1", "8.8.8.8"]
    assert state.run("macbook", ping, check=False).returncode != 0
    (snat,) = by_id(engine.run(collect_state(state.ns("route"))), "WR019")
    state.run("route", ["sh", "-c", snat.fix[0]])
    state.run("route", ["conntrack", "-F"], check=False)  # the failed ping's entry has no NAT (WR022)
    assert state.run("macbook", ping, check=False).returncode == 0
    assert not by_id(engine.run(collect_state(state.ns("route"))), "WR019")


def test_cli_check_on_a_namespace(lab):
    state = lab("ultimate-nosnat")
    result = why_route("check", "--netns", state.ns("route"))
    assert result.returncode == 1, result.stderr
    assert "WR019" in result.stdout and "ppp0" in result.stdout
    ok = why_route("check", "--netns", lab("ultimate").ns("route"))
    assert ok.returncode == 0, ok.stdout + ok.stderr
