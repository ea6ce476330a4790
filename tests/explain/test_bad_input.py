"""Bad input: one line on stderr, a non-zero exit status, never a traceback."""

import json
import os

import pytest

from tests.helpers.cli import why_route, why_route_in_process
from tracer.errors import ExitStatus


def _one_line_error(status, out, err, expected_status, fragment):
    assert status == expected_status
    assert "Traceback" not in err and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert fragment in lines[0]


# The smallest snapshot that loads: every section present, all empty (docs/snapshot.md, Schema).
EMPTY_NETFILTER = {"version": 1, "netns": None,
                   "nft": {"status": "absent", "ruleset": None, "text": None, "error": "nft not found"},
                   "iptables_nft": {}, "iptables_legacy": {}}


def minimal_snapshot(**sections) -> dict:
    return {"format": "why-route-snapshot", "version": 1, "meta": {}, "links": [], "addresses": [], "rules": [],
            "routes": [], "neighbours": [], "conntrack": [], "table_names": {}, "sysctls": {},
            "netfilter": EMPTY_NETFILTER, **sections}


@pytest.fixture
def snapshot_file(tmp_path):
    def write(doc):
        path = tmp_path / "snap.json"
        path.write_text(doc if isinstance(doc, str) else json.dumps(doc))
        return str(path)
    return write


@pytest.mark.parametrize("argv, fragment", [
    (["192.168.1.300", "8.8.8.8"], "invalid source address '192.168.1.300'"),
    (["8.8.8.x"], "invalid destination address '8.8.8.x'"),
    (["10.0.0.1", "2001:db8::1"], "different IP versions"),
    (["8.8.8.8", "--proto", "bogus"], "unknown protocol 'bogus'"),
    (["8.8.8.8", "--dport", "70000"], "out of range"),
    (["8.8.8.8", "--mark", "zz"], "invalid mark 'zz'"),
    (["1.1.1.1", "2.2.2.2", "3.3.3.3"], "expected [SRC] DST"),
])
def test_malformed_flow(capsys, argv, fragment, snapshot_file):
    path = snapshot_file(minimal_snapshot())
    _one_line_error(*why_route_in_process(capsys, *argv, "--snapshot", path), ExitStatus.USAGE, fragment)


def test_unknown_interface(capsys, snapshot_file):
    path = snapshot_file(minimal_snapshot(links=[{"index": 1, "name": "lo"}]))
    _one_line_error(*why_route_in_process(capsys, "10.0.0.1", "8.8.8.8", "--iif", "eth9", "--snapshot", path),
                    ExitStatus.USAGE, "unknown interface 'eth9' for --iif")


@pytest.mark.parametrize("content, fragment", [
    (None, "cannot read snapshot"),
    ("{not json", "not valid JSON"),
    ({"format": "something-else"}, "not a why-route snapshot"),
    ({"format": "why-route-snapshot", "version": 99}, "snapshot version 99 is not supported"),
    ({"format": "why-route-snapshot", "version": 1, "routes": [{"bogus": 1}]}, "malformed snapshot"),
])
def test_bad_snapshot(capsys, snapshot_file, tmp_path, content, fragment):
    path = str(tmp_path / "missing.json") if content is None else snapshot_file(content)
    _one_line_error(*why_route_in_process(capsys, "8.8.8.8", "--snapshot", path), ExitStatus.USAGE, fragment)


def test_unknown_namespace(capsys):
    _one_line_error(*why_route_in_process(capsys, "8.8.8.8", "--netns", "wr-no-such-ns"), ExitStatus.USAGE,
                    "network namespace 'wr-no-such-ns' does not exist")


def test_snapshot_and_netns_together(capsys):
    _one_line_error(*why_route_in_process(capsys, "8.8.8.8", "--netns", "x", "--snapshot", "y"), ExitStatus.USAGE,
                    "either --snapshot or --netns")


def test_live_explain_without_root_says_so():
    if os.geteuid() != 0:
        pytest.skip("needs root to drop privileges to nobody")
    result = why_route("8.8.8.8", user=65534, group=65534, env={"HOME": "/tmp"}, cwd="/tmp")
    assert result.returncode == ExitStatus.ENVIRONMENT, result.stderr
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert "root" in result.stderr
