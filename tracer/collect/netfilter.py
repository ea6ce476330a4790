"""Collect the netfilter ruleset (nft + iptables-nft + iptables-legacy) as plain data.

`collect_netfilter(netns)` runs, concurrently, one process per command:

    nft -j -a list ruleset        parsed JSON (xt exprs lack their parameters)
    nft -a list ruleset           nft's text (translates xt exprs; rule text for users)
    iptables-nft-save -c          iptables view of iptables-nft tables (IPv4)
    ip6tables-nft-save -c         … IPv6
    iptables-legacy-save -c       legacy x_tables (IPv4), empty when none is loaded
    ip6tables-legacy-save -c      … IPv6
    ipset save                    ipsets that `-m set` matches read (= ipset list -o save)

inside `ip netns exec NS` when a namespace is given. The result is the
snapshot's "netfilter" key (schema in docs/netfilter.md).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time

from tracer.errors import EnvironmentProblem, UsageError

SCHEMA_VERSION = 1

_COMMANDS = {
    "nft_json": ["nft", "-j", "-a", "list", "ruleset"],
    "nft_text": ["nft", "-a", "list", "ruleset"],
    "ipt_nft_ip": ["iptables-nft-save", "-c"],
    "ipt_nft_ip6": ["ip6tables-nft-save", "-c"],
    "ipt_legacy_ip": ["iptables-legacy-save", "-c"],
    "ipt_legacy_ip6": ["ip6tables-legacy-save", "-c"],
    "ipset": ["ipset", "save"],
}
_PERMISSION = ("Operation not permitted", "Permission denied", "must be root")


def _argv(cmd: list[str], netns: str | None) -> list[str]:
    if netns:
        return ["ip", "netns", "exec", netns, *cmd]
    return cmd


def _run_all(netns: str | None, timeout: float, while_running=None) -> dict[str, dict]:
    procs = {}
    results: dict[str, dict] = {}
    env = dict(os.environ, LC_ALL="C")
    for key, cmd in _COMMANDS.items():
        if shutil.which(cmd[0]) is None:
            results[key] = {"status": "absent", "error": f"{cmd[0]} not installed"}
            continue
        try:
            procs[key] = subprocess.Popen(_argv(cmd, netns), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                          stdin=subprocess.DEVNULL, env=env)
        except OSError as exc:
            results[key] = {"status": "absent", "error": str(exc)}
    if while_running is not None:  # the caller's other collection overlaps the dumps
        while_running()
    deadline = time.monotonic() + timeout
    for key, p in procs.items():
        try:
            out, err = p.communicate(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            out, err = p.communicate()
            results[key] = {"status": "error", "error": f"timed out after {timeout:g}s"}
            continue
        results[key] = {
            "status": "ok" if p.returncode == 0 else "error",
            "stdout": out.decode("utf-8", "replace"),
            "stderr": err.decode("utf-8", "replace").strip(),
            "rc": p.returncode,
        }
    return results


def _first_line(text: str) -> str:
    lines = [ln for ln in (text or "").splitlines() if ln.strip() and not ln.startswith("#")]
    return lines[0].strip() if lines else ""


def collect_netfilter(netns: str | None = None, *, timeout: float = 20.0, while_running=None) -> dict:
    """The live ruleset as a JSON-serialisable dict (see docs/netfilter.md).

    `while_running()` is called while the dump commands run (other collection
    then costs no extra wall time)."""
    if netns and shutil.which("ip") is None:
        raise EnvironmentProblem("`ip` (iproute2) is needed to enter a network namespace")
    res = _run_all(netns, timeout, while_running)

    for r in res.values():
        err = r.get("stderr", "")
        if r["status"] == "error" and netns and "Cannot open network namespace" in err:
            raise UsageError(f"network namespace {netns!r} does not exist")
        if r["status"] == "error" and netns and "setting the network namespace" in err:
            raise EnvironmentProblem(f"cannot enter network namespace {netns!r}: {_first_line(err)} (run as root)")

    nft: dict = {"status": "absent", "ruleset": None, "text": None, "error": None}
    j, t = res["nft_json"], res["nft_text"]
    if j["status"] == "absent":
        nft["error"] = j["error"]
    elif j["status"] == "error":
        err = j.get("stderr", "")
        if any(s in err for s in _PERMISSION) or (os.geteuid() != 0 and not j.get("stdout")):
            why = _first_line(err) or "permission denied"
            hint = "" if "root" in why else " (run as root or with CAP_NET_ADMIN)"
            raise EnvironmentProblem(f"nft cannot read the ruleset: {why}{hint}")
        nft.update(status="error", error=_first_line(err) or f"nft exited {j.get('rc')}")
    else:
        try:
            parsed = json.loads(j["stdout"]) if j["stdout"].strip() else {"nftables": []}
        except json.JSONDecodeError as exc:
            parsed = None
            nft.update(status="error", error=f"nft -j output is not JSON: {exc}")
        if parsed is not None:
            nft.update(status="ok", ruleset=parsed)
        if t["status"] == "ok":
            nft["text"] = t["stdout"]
        # "# Warning: table ip nat is managed by iptables-nft, do not touch!"
        nft["warnings"] = [ln.strip("# ").strip() for ln in (t.get("stderr") or "").splitlines()
                           if ln.strip()]

    def save(key: str) -> dict:
        r = res[key]
        if r["status"] == "absent":
            return {"status": "absent", "save": None, "error": r["error"]}
        if r["status"] == "error":
            err = r.get("stderr", "")
            if any(s in err for s in _PERMISSION):
                raise EnvironmentProblem(f"{_COMMANDS[key][0]}: {_first_line(err)} (run as root)")
            return {"status": "error", "save": r.get("stdout") or None, "error": _first_line(err)}
        return {"status": "ok", "save": r["stdout"], "error": None,
                "notes": [ln for ln in r.get("stderr", "").splitlines() if ln.strip()] or None}

    return {
        "version": SCHEMA_VERSION,
        "netns": netns,
        "nft": nft,
        "iptables_nft": {"ip": save("ipt_nft_ip"), "ip6": save("ipt_nft_ip6")},
        "iptables_legacy": {"ip": save("ipt_legacy_ip"), "ip6": save("ipt_legacy_ip6")},
        "ipset": save("ipset"),
    }
