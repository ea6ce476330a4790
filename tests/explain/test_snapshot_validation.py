"""Snapshots are validated on load against docs/snapshot.md: one line naming the place in the
file, exit 2, never a traceback and never an answer from a broken file (issue 10, section 3)."""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import subprocess
import tempfile
from pathlib import Path

import pytest

from tests.helpers.cli import why_route, why_route_in_process
from tracer.collect import snapshot
from tracer.errors import ExitStatus, UsageError

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "ultimate-route.json"
BASE = json.loads(FIXTURE.read_text())


def one_line(status, out, err, fragment, expected=ExitStatus.USAGE):
    assert status == expected, err
    assert out == "" and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1, err
    assert fragment in err, err


def broken(tmp_path, change) -> str:
    doc = copy.deepcopy(BASE)
    change(doc)
    path = tmp_path / "broken.json"
    path.write_text(json.dumps(doc, indent=1))
    return str(path)


def _set(path: str, value):
    """A change that sets doc[…path…] = value ("routes.0.dst")."""
    *parents, last = [int(p) if p.isdigit() else p for p in path.split(".")]

    def change(doc):
        for key in parents:
            doc = doc[key]
        doc[last] = value
    return change


def _delete(key: str):
    return lambda doc: doc.pop(key)


CASES = [
    # the measured cases of issue 10
    (_set("routes.0.dst", "notanip"), "routes[0].dst: 'notanip' is not an IPv4 address"),
    (_set("rules.1.priority", "abc"), "rules[1].priority: expected an integer, got 'abc'"),
    (_set("routes.2.bogus", 1), "routes[2].bogus: unknown field 'bogus'"),
    (_set("links", "lo"), "links: expected a list of links, got 'lo'"),
    (_set("routes.0.nexthops", "eth0"), "routes[0].nexthops: expected a list of nexthops"),
    (_set("routes.0.nexthops.0", "eth0"), "routes[0].nexthops[0]: expected an object, got 'eth0'"),
    (_delete("netfilter"), "missing section 'netfilter'"),
    (_set("netfilter", {"junk": 1}), "netfilter.junk: unknown key 'junk'"),
    (_set("netfilter", {}), "netfilter: empty: no netfilter dump"),
    (_set("addresses.1.local", "999.1.1.1"), "addresses[1].local: '999.1.1.1' is not an IPv4 address"),
    (_delete("routes"), "missing section 'routes'"),
    # and their neighbours
    (_set("routes.0.dst_len", 33), "routes[0].dst_len: 33 is not a prefix length for IPv4 (0..32)"),
    (_set("routes.0.family", 6), "routes[0].dst: '0.0.0.0' is not an IPv6 address"),
    (_set("routes.0.nexthops.0.gateway", "10.1"), "routes[0].nexthops[0].gateway: '10.1' is not an IP address"),
    (_set("routes.0.nexthops.0.devv", "x"), "routes[0].nexthops[0].devv: unknown field 'devv' (did you mean 'dev'?)"),
    (_set("routes.0.table", True), "routes[0].table: expected an integer, got true"),
    (_set("routes.0.type", "teleport"), "routes[0].type: 'teleport' is not one of unicast"),
    (_set("rules.1.dport", [1, 70000]), "rules[1].dport[1]: 70000 is not an integer in 0..65535"),
    (_set("rules.1.family", "4"), "rules[1].family: '4' is not an address family (4 or 6)"),
    (lambda doc: doc["rules"][1].pop("priority"), "rules[1]: missing field 'priority'"),
    (_set("table_names", {"main": "x"}), "table_names.main: 'main' is not a table id"),
    (_set("sysctls", {"net.ipv4.ip_forward": 1}), "sysctls['net.ipv4.ip_forward']: expected a string, got 1"),
    (_set("meta.warnings", "none"), "meta.warnings: expected a list of strings, got 'none'"),
    (_set("meta.hostnam", "x"), "meta.hostnam: unknown key 'hostnam' (did you mean 'hostname'?)"),
    (_set("netfilter.nft.status", "fine"), "netfilter.nft.status: 'fine' is not one of ok, absent, error"),
    (_set("netfilter.iptables_nft.ip", "x"), "netfilter.iptables_nft.ip: expected an object"),
    (_set("netfilter.nft.ruleset", []), "netfilter.nft.ruleset: expected {\"nftables\": [...]}"),
    (_set("rutes", []), "rutes: unknown section 'rutes' (did you mean 'routes'?)"),
    # a nexthop checked once is reused for equal ones: 1 is not true, even after a true
    (lambda doc: [doc["routes"][i].update(nexthops=[{"gateway": "10.10.149.1", "dev": "eth0.2", "onlink": v}])
                  for i, v in ((0, True), (1, 1))], "routes[1].nexthops[0].onlink: expected true or false, got 1"),
    # bridge netfilter (issue 9)
    (_set("meta.br_netfilter", "yes"), "meta.br_netfilter: expected true or false, got 'yes'"),
    (_set("links.1.nf_call", ["ebtables"]), "links[1].nf_call[0]: 'ebtables' is not one of iptables, ip6tables"),
]


@pytest.mark.parametrize("change, fragment", CASES, ids=[c[1].split(":")[0] for c in CASES])
def test_a_broken_snapshot_is_refused_naming_the_place(capsys, tmp_path, change, fragment):
    path = broken(tmp_path, change)
    one_line(*why_route_in_process(capsys, "192.168.1.169", "8.8.8.8", "--snapshot", path),
             f"why-route: error: {path}: malformed snapshot: {fragment}")


@pytest.mark.parametrize("command", [["check"], ["batch", "-"], ["verify", "tests/lint/fixtures/seed-ultimate.toml"]])
def test_every_command_refuses_it(tmp_path, command):
    path = broken(tmp_path, _set("routes.0.dst", "notanip"))
    result = why_route(*command, "--snapshot", path, input="8.8.8.8\n")
    assert result.returncode == ExitStatus.USAGE and "Traceback" not in result.stderr
    assert result.stderr.strip().endswith("routes[0].dst: 'notanip' is not an IPv4 address"), result.stderr


def test_a_json_syntax_error_gives_its_real_line_and_column(capsys, tmp_path):
    path = tmp_path / "syntax.json"
    path.write_text('{\n  "format": "why-route-snapshot",\n  "version": 1\n  "meta": {}\n}\n')
    one_line(*why_route_in_process(capsys, "8.8.8.8", "--snapshot", str(path)),
             f"{path}: not valid JSON: Expecting ',' delimiter at line 4, column 3")


def test_a_snapshot_that_is_not_utf8(capsys, tmp_path):
    path = tmp_path / "latin1.json"
    path.write_bytes(b'{"format": "why-route-snapshot",\n "meta": {"hostname": "r\xe9seau"}}')
    one_line(*why_route_in_process(capsys, "8.8.8.8", "--snapshot", str(path)),
             "not UTF-8 text: byte 0xe9 at line 2, column 25")


def test_the_committed_snapshots_load_and_round_trip():
    state = snapshot.load(str(FIXTURE))
    again = snapshot.from_dict(json.loads(json.dumps(snapshot.to_dict(state))))
    for field in ("links", "addresses", "rules", "routes", "neighbours", "conntrack", "table_names", "sysctls",
                  "netfilter", "provenance", "rt_tables_entries", "partial_tables", "warnings", "notes"):
        assert getattr(again, field) == getattr(state, field), field
    route = state.routes[0]
    assert dataclasses.replace(route) == route and hash(dataclasses.replace(route)) == hash(route)


def test_the_checks_cover_every_field_of_the_model():
    """FIELDS (the validation) and tracer/model.py's dataclasses name the same fields."""
    for cls, fields in snapshot.FIELDS.items():
        assert set(fields) == {f.name for f in dataclasses.fields(cls)}, cls.__name__


def test_an_old_snapshot_without_ipset_still_loads(tmp_path):
    doc = copy.deepcopy(BASE)
    doc["netfilter"].pop("ipset", None)
    path = tmp_path / "old.json"
    path.write_text(json.dumps(doc))
    assert snapshot.load(str(path)).routes


# ------------------------------------------------------------------ writing

def test_snapshot_into_a_missing_directory_is_one_line_and_writes_nothing(tmp_path):
    target = tmp_path / "nonexistent" / "dir" / "x.json"
    result = why_route("snapshot", "-o", str(target))
    assert (result.returncode, result.stdout) == (ExitStatus.USAGE, "")
    assert result.stderr == (f"why-route: error: cannot write snapshot {target}: directory {target.parent} "
                             "does not exist\n")
    assert not target.parent.exists()


def test_snapshot_into_a_read_only_directory():
    if os.geteuid() != 0:
        pytest.skip("needs root to run the CLI as nobody, for whom the directory is read-only")
    with tempfile.TemporaryDirectory() as root_only:  # root's, mode 0755: nobody cannot write there
        os.chmod(root_only, 0o755)
        result = why_route("snapshot", "-o", os.path.join(root_only, "x.json"), user=65534, group=65534,
                           env={"HOME": "/tmp"}, cwd="/tmp")
        assert os.listdir(root_only) == []
    assert result.returncode == ExitStatus.USAGE and "is not writable" in result.stderr, result.stderr


def test_a_failed_write_leaves_nothing_half_written(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("needs root: mounts a tiny tmpfs that runs out of space for real")
    state = snapshot.load(str(FIXTURE))
    small = tmp_path / "small"
    small.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4k", "tmpfs", str(small)], check=True)
    try:
        target = small / "x.json"
        target.write_text("the previous snapshot\n")
        with pytest.raises(UsageError, match="cannot write snapshot .*: No space left on device"):
            snapshot.save(state, str(target))
        assert target.read_text() == "the previous snapshot\n"
        assert [p.name for p in small.iterdir()] == ["x.json"]
    finally:
        subprocess.run(["umount", str(small)], check=True)


def test_a_written_snapshot_loads(tmp_path):
    state = snapshot.load(str(FIXTURE))
    target = tmp_path / "x.json"
    snapshot.save(state, str(target))
    assert snapshot.load(str(target)).routes == state.routes
    assert oct(target.stat().st_mode & 0o777) == oct(0o644)
