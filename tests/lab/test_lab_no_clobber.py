"""Issue 10, section 6: the lab never destroys someone else's work (real namespaces).

`lab up` refuses an existing lab or namespace unless --replace; `lab list` shows the labs; a namespace
name given as a node gets a hint; `make demo` / `make lab-down` take PREFIX=.
"""

import json
import os
import subprocess

from tests.helpers.cli import REPO_ROOT, why_route
from tests.lab.lab_helpers import leftovers, new_prefix
from tracer import netns
from tracer.lab import builder


def test_up_refuses_an_existing_lab_in_one_line(fresh_prefix):
    lab = builder.up(None, "slow", fresh_prefix)
    lab.run("route", ["ip", "addr", "add", "10.99.99.99/32", "dev", "lo"])  # someone's work
    result = why_route("lab", "up", "--variant", "ultimate", "--prefix", fresh_prefix)
    assert result.returncode == 2
    assert result.stderr == (f"why-route: error: lab {fresh_prefix} already exists (topology seed, variant slow, "
                             "up); `--replace` rebuilds it, `--prefix` picks another, `why-route lab list` shows "
                             "the labs\n")
    assert result.stdout == ""
    assert "10.99.99.99" in lab.run("route", ["ip", "-br", "addr"]).stdout
    assert builder.read_state(fresh_prefix).variant == "slow"
    replaced = why_route("lab", "up", "--variant", "ultimate", "--prefix", fresh_prefix, "--replace")
    assert replaced.returncode == 0, replaced.stderr
    assert builder.read_state(fresh_prefix).variant == "ultimate"


def test_up_refuses_a_namespace_that_is_not_a_labs(fresh_prefix):
    foreign = f"{fresh_prefix}-route"
    subprocess.run(["ip", "netns", "add", foreign], check=True)
    try:
        result = why_route("lab", "up", "--prefix", fresh_prefix)
        assert result.returncode == 2
        assert result.stderr == (f"why-route: error: namespace {foreign} already exists and is not a lab's; "
                                 "`--replace` deletes it, `--prefix` picks another\n")
        assert netns.exists(foreign) and not builder.state_path(fresh_prefix).exists()
        assert why_route("lab", "up", "--prefix", fresh_prefix, "--replace").returncode == 0
    finally:
        builder.down(fresh_prefix)
        netns.delete(foreign)


def test_lab_list_shows_the_labs_on_the_machine(fresh_prefix):
    builder.up(None, "ultimate", fresh_prefix)
    result = why_route("lab", "list")
    assert result.returncode == 0, result.stderr
    header, *rows = result.stdout.splitlines()
    assert header.split() == ["PREFIX", "TOPOLOGY", "VARIANT", "STATUS", "NAMESPACES"]
    assert [fresh_prefix, "seed", "ultimate", "up", "6/6"] in [row.split() for row in rows]
    netns.delete(f"{fresh_prefix}-macbook")  # a lab someone half-removed by hand
    doc = json.loads(why_route("lab", "list", "--json").stdout)
    mine = next(lab for lab in doc["labs"] if lab["prefix"] == fresh_prefix)
    assert (mine["topology"], mine["variant"], mine["status"], mine["namespaces"], mine["nodes"]) == \
        ("seed", "ultimate", "broken", 5, 6)


def test_exec_with_a_namespace_name_gets_a_hint(fresh_prefix):
    builder.up(None, "slow", fresh_prefix)
    for args in ([], ["--prefix", fresh_prefix]):
        result = why_route("lab", "exec", f"{fresh_prefix}-route", *args, "--", "true")
        assert result.returncode == 2
        assert result.stderr == (f"why-route: error: {fresh_prefix}-route is a namespace, not a node: did you mean "
                                 f"node route of lab {fresh_prefix}? (`why-route lab exec route --prefix "
                                 f"{fresh_prefix} -- …`)\n")


def test_make_takes_a_prefix():
    demo = subprocess.run(["make", "-n", "demo", "PREFIX=zq1"], cwd=REPO_ROOT, capture_output=True, text=True)
    assert "PREFIX='zq1' scripts/demo.sh" in demo.stdout
    down = subprocess.run(["make", "-n", "lab-down", "PREFIX=zq1"], cwd=REPO_ROOT, capture_output=True, text=True)
    assert ".venv/bin/why-route lab down --prefix 'zq1'" in down.stdout
    default = subprocess.run(["make", "-n", "lab-down"], cwd=REPO_ROOT, capture_output=True, text=True)
    assert ".venv/bin/why-route lab down --prefix 'wr'" in default.stdout


def _demo(prefix):
    return subprocess.run(["scripts/demo.sh"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PREFIX": prefix, "NO_COLOR": "1"})


def test_demo_builds_its_lab_under_prefix_and_leaves_other_labs_alone(fresh_prefix):
    first = _demo(fresh_prefix)
    assert first.returncode == 0, first.stderr
    assert f"lab {fresh_prefix} up in " in first.stdout and "Verdict: forwarded" in first.stdout
    again = _demo(fresh_prefix)  # its own lab: reused, not rebuilt
    assert again.returncode == 0, again.stderr
    assert f"lab {fresh_prefix} (seed, ultimate) is already up: using it" in again.stdout
    other = new_prefix()
    try:
        builder.up(None, "slow", other)
        refused = _demo(other)
        assert refused.returncode == 2
        assert f"lab {other} already exists (topology seed, variant slow, up)" in refused.stderr
        assert builder.read_state(other).variant == "slow"
    finally:
        builder.down(other)
        assert not leftovers(other)
