"""The replica and its sinks are always removed: on exit, on an exception, Ctrl-C, SIGTERM; a
SIGKILLed probe's namespaces are swept by the next run."""

import os
import signal
import subprocess
import time

import pytest

from tests.helpers.cli import why_route_argv
from tests.lint.lint_helpers import replay_leftovers
from tracer.collect import snapshot
from tracer.flow import make_flow
from tracer.lint import probe as probe_mod
from tracer.lint.replay import sweep_stale
from tracer.sim.explain import explain


@pytest.fixture(scope="module")
def router(minilab, tmp_path_factory):
    path = tmp_path_factory.mktemp("probe") / "router.json"
    snapshot.save(minilab[1], str(path))
    return str(path)


def test_every_interface_has_a_sink_and_all_go_away(minilab):
    state = minilab[1]
    with probe_mod.Replica(state) as replica:
        sinks = replica.replay.sinks
        assert set(sinks) == {"r-lan", "r-wan1", "r-wan2"}
        # one namespace each, the replica's own besides: all swept alike (wrreplay-<pid>-<n>)
        names = [p for p in replay_leftovers(os.getpid()) if p.startswith("/run/netns/")]
        assert sorted(n.rsplit("/", 1)[1] for n in names) == sorted([replica.replay.name, *sinks.values()])
        result = replica.probe(explain(state, make_flow("198.51.100.7", "10.0.1.2", proto="udp", dport="53")))
        assert result.agrees
    assert not replay_leftovers(os.getpid())


def test_an_exception_or_ctrl_c_inside_removes_everything(minilab):
    for error in (RuntimeError, KeyboardInterrupt):
        with pytest.raises(error), probe_mod.Replica(minilab[1]):
            assert replay_leftovers(os.getpid())
            raise error
        assert not replay_leftovers(os.getpid())


def _start_batch(router):
    """A `batch --probe` that probes one line, then waits for the next on its stdin."""
    process = subprocess.Popen([*why_route_argv(), "batch", "--snapshot", router, "--probe", "-"],
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    process.stdin.write("10.0.1.2 198.51.100.7 --proto udp --dport 53\n")
    process.stdin.flush()
    first = process.stdout.readline()
    assert '"agrees":true' in first, first
    assert replay_leftovers(process.pid)
    return process


@pytest.mark.parametrize("signum, status", [(signal.SIGINT, 130), (signal.SIGTERM, 128 + signal.SIGTERM)])
def test_a_signal_removes_the_replica_and_its_sinks(router, signum, status):
    process = _start_batch(router)
    process.send_signal(signum)
    _out, err = process.communicate(timeout=30)
    assert process.returncode == status, err
    assert not replay_leftovers(process.pid)


def test_a_killed_probe_is_swept_by_the_next_run(router):
    process = _start_batch(router)
    process.kill()
    process.wait()
    left = replay_leftovers(process.pid)
    assert len([p for p in left if p.startswith("/run/netns/")]) == 4  # the replica and its three sinks
    deadline = time.monotonic() + 5
    while replay_leftovers(process.pid) and time.monotonic() < deadline:
        sweep_stale()
    assert not replay_leftovers(process.pid)


def test_a_sigterm_as_the_batch_ends_still_removes_everything(router):
    """The signal lands while the last line's probe is done and stdin closes: wherever the handler's
    exception is raised (an outer __exit__ included), nothing is left."""
    for _ in range(5):
        process = _start_batch(router)
        process.send_signal(signal.SIGTERM)
        process.stdin.close()
        process.wait(timeout=30)
        process.stdout.close()
        process.stderr.close()
        assert process.returncode in (0, 128 + signal.SIGTERM)
        assert not replay_leftovers(process.pid)
