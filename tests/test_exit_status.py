"""Exit statuses and what a failure prints, through the CLI in a process of its own.

Errors meant for the user: one line and their status. A bug (any other exception): one line that
says it is a bug and how to get the traceback, ExitStatus.BUG, never a traceback by itself.
`--traceback` or WHYROUTE_TRACEBACK=1: the traceback instead.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from tests.helpers.cli import REPO_ROOT, why_route, why_route_argv
from tests.lab.lab_helpers import leftovers, missing_requirements, new_prefix
from tracer import netns
from tracer.errors import ExitStatus
from tracer.lab import builder

# `why-route snapshot` fails the way a bug does: an exception nobody expected.
BUG = """
from tracer.cli import cli

def broken(**_params):
    raise RuntimeError("boom\\nand a second line")

cli.commands["snapshot"].callback = broken
"""


def why_route_after(setup: str, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """The CLI in a process of its own, once `setup` (Python) has run there: how a test makes a
    bug happen, or the host change while why-route looks at it."""
    code = f"{textwrap.dedent(setup)}\nimport sys\nfrom tracer.__main__ import main\nsys.exit(main(sys.argv[1:]))\n"
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, cwd=REPO_ROOT,
                          env={**os.environ, **(env or {})}, timeout=120)


def test_the_statuses_are_distinct():
    assert ExitStatus.KERNEL_DISAGREES == ExitStatus.PROBLEMS_FOUND == 1
    assert len({ExitStatus.SUCCESS, ExitStatus.PROBLEMS_FOUND, ExitStatus.USAGE, ExitStatus.ENVIRONMENT,
                ExitStatus.BUG, ExitStatus.INTERRUPTED}) == 6


def test_success():
    result = why_route("rules", "WR001")
    assert (result.returncode, result.stderr) == (ExitStatus.SUCCESS, "")


def test_bad_input_is_one_line():
    result = why_route("192.0.2.1", "8.8.8.8", "--snapshot", "/nonexistent/snapshot.json")
    assert (result.returncode, result.stdout) == (ExitStatus.USAGE, "")
    assert result.stderr == ("why-route: error: cannot read snapshot /nonexistent/snapshot.json: "
                             "No such file or directory\n")


@pytest.mark.skipif(os.geteuid() != 0, reason="runs the CLI as nobody, which needs root")
def test_a_machine_that_cannot_is_one_line():
    result = why_route("lab", "status", user=65534, group=65534, extra_groups=[])
    assert (result.returncode, result.stdout) == (ExitStatus.ENVIRONMENT, "")
    assert result.stderr.startswith("why-route: error: ") and result.stderr.count("\n") == 1, result.stderr


def test_a_bug_is_one_line_that_says_so():
    result = why_route_after(BUG, "snapshot")
    assert (result.returncode, result.stdout) == (ExitStatus.BUG, "")
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr, result.stderr
    assert result.stderr.startswith("why-route: bug: RuntimeError: boom; please report it")
    assert "`why-route --traceback ...` (or WHYROUTE_TRACEBACK=1)" in result.stderr


@pytest.mark.parametrize("args, env", [
    (["--traceback", "snapshot"], {}),
    (["snapshot"], {"WHYROUTE_TRACEBACK": "1"}),
], ids=["flag", "environment"])
def test_traceback_on_request_for_a_bug(args, env):
    result = why_route_after(BUG, *args, env=env)
    assert result.returncode not in (ExitStatus.SUCCESS, ExitStatus.BUG)
    assert result.stderr.startswith("Traceback (most recent call last):"), result.stderr
    assert "RuntimeError: boom\nand a second line\n" in result.stderr
    assert "why-route: bug" not in result.stderr


def test_traceback_off_when_the_variable_says_0():
    result = why_route_after(BUG, "snapshot", env={"WHYROUTE_TRACEBACK": "0"})
    assert result.returncode == ExitStatus.BUG and "Traceback" not in result.stderr


def test_traceback_on_request_for_bad_input_before_the_default_command():
    """`--traceback` is a global option: it comes before `explain`, or before SRC DST for short."""
    result = why_route("--traceback", "192.0.2.1", "8.8.8.8", "--snapshot", "/nonexistent/snapshot.json")
    assert result.stderr.startswith("Traceback (most recent call last):"), result.stderr
    assert result.stderr.endswith("tracer.errors.UsageError: cannot read snapshot /nonexistent/snapshot.json: "
                                  "No such file or directory\n")


def test_traceback_changes_nothing_when_all_is_well():
    assert why_route("--traceback", "rules", "WR001").stdout == why_route("rules", "WR001").stdout


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP], ids=["SIGTERM", "SIGHUP"])
def test_a_termination_signal_is_128_plus_it_after_the_clean_up(tmp_path, signum):
    if missing_requirements():
        pytest.skip(missing_requirements())
    topology = tmp_path / "slow.toml"
    topology.write_text('name = "slowpoke"\n[nodes.a]\n[variants.v.run]\na = ["sleep 20"]\n')
    prefix = new_prefix()
    try:
        up = subprocess.Popen([*why_route_argv(), "lab", "up", str(topology), "--prefix", prefix],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 10
        while not netns.exists(f"{prefix}-a") and time.monotonic() < deadline:
            time.sleep(0.02)
        assert leftovers(prefix), "lab up did not get going"
        up.send_signal(signum)
        _out, err = up.communicate(timeout=10)
        assert (up.returncode, err) == (128 + signum, "")
        assert leftovers(prefix) == []
    finally:
        builder.down(prefix)


# The route the kernel gains between the state's collection and its own answer.
CHANGE_WHILE_LOOKING = """
import subprocess
from tracer.collect import live

collect_state = live.collect_state

def collect_then_change(name, *args, **kwargs):
    state = collect_state(name, *args, **kwargs)
    subprocess.run(["ip", "-n", name, "route", "add", "8.8.8.0/24", "via", "10.0.0.253"], check=True)
    return state

live.collect_state = collect_then_change
"""


@pytest.fixture
def router():
    """A namespace with one uplink (default via 10.0.0.254), removed afterwards."""
    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.skip("needs root and iproute2 (a network namespace)")
    name = netns.owned_name("wrexit-")
    with netns.Teardown() as undo:
        undo.namespace(name)
        for command in ("link add up0 type veth peer name up0p", "link set lo up", "link set up0 up",
                        "link set up0p up", "addr add 10.0.0.1/24 dev up0", "route add default via 10.0.0.254"):
            subprocess.run(["ip", "-n", name, *command.split()], check=True, capture_output=True)
        yield name


def test_kernel_disagrees(router):
    agrees = why_route("8.8.8.8", "--netns", router)
    assert agrees.returncode == ExitStatus.SUCCESS, agrees.stdout + agrees.stderr
    disagrees = why_route_after(CHANGE_WHILE_LOOKING, "8.8.8.8", "--netns", router)
    assert disagrees.returncode == ExitStatus.KERNEL_DISAGREES, disagrees.stdout + disagrees.stderr
    assert disagrees.stderr == ""
