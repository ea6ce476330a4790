"""The collector against real namespaces (and its failure modes)."""

import json
import os
import pathlib
import shutil
import subprocess
import sys

import pytest

from tests.netfilter import nflab
from tracer.collect import netfilter as collect_mod
from tracer.collect.netfilter import collect_netfilter
from tracer.errors import EnvironmentProblem, UsageError
from tracer.sim.netfilter import load_ruleset

REPO = pathlib.Path(__file__).resolve().parents[2]


def test_collects_every_source(lab):
    lab.load(nflab.RULESETS["kitchen_sink"])
    raw = collect_netfilter(lab.r)
    json.dumps(raw)
    assert raw["version"] == 1 and raw["netns"] == lab.r
    assert raw["nft"]["status"] == "ok" and "# handle" in raw["nft"]["text"]
    assert any("xt" in json.dumps(o) for o in raw["nft"]["ruleset"]["nftables"])
    assert "-j MASQUERADE" in raw["iptables_nft"]["ip"]["save"]
    assert "CONNMARK --restore-mark" in raw["iptables_legacy"]["ip"]["save"]
    assert any("managed by iptables-nft" in w for w in raw["nft"]["warnings"])
    rs = load_ruleset(raw)
    assert rs.legacy_and_nft_both_loaded()


def test_empty_namespace(lab):
    raw = collect_netfilter(lab.r)
    assert raw["nft"]["ruleset"]["nftables"][0].get("metainfo")
    assert load_ruleset(raw).chains == {}


def test_missing_binaries_are_recorded_not_fatal(lab, monkeypatch):
    real = shutil.which
    monkeypatch.setattr(collect_mod.shutil, "which",
                        lambda name: None if "legacy" in name else real(name))
    raw = collect_netfilter(lab.r)
    assert raw["iptables_legacy"]["ip"]["status"] == "absent"
    assert raw["nft"]["status"] == "ok"
    load_ruleset(raw)


def test_unknown_namespace_is_a_usage_error():
    if nflab.can_run():
        pytest.skip(nflab.can_run())
    with pytest.raises(UsageError, match="does not exist"):
        collect_netfilter(f"wrnf-{os.getpid()}-absent")


def test_not_root_is_an_environment_problem():
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        pytest.skip("needs root (to drop to nobody) and setpriv")
    code = ("from tracer.collect.netfilter import collect_netfilter\n"
            "from tracer.errors import EnvironmentProblem\n"
            "try:\n    collect_netfilter()\nexcept EnvironmentProblem as e:\n    print('EP:', e)\n")
    p = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable, "-c", code],
                       capture_output=True, text=True, cwd="/", env={**os.environ, "PYTHONPATH": str(REPO)},
                       timeout=60)
    assert p.stdout.startswith("EP: nft cannot read the ruleset"), p.stdout + p.stderr
    assert len(p.stdout.strip().splitlines()) == 1
    assert EnvironmentProblem.exit_status == 3
