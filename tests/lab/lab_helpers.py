"""Test instrumentation for labs: prefixes, leftovers, and the seed's 8.8.8.8 observer.

The observer is not part of any topology: tests install it in the internet
nodes after `lab up`. It is an nft table that records, in a dynamic set, the
source address of every packet to 8.8.8.8 that arrives, counts those requests,
and counts the packets from 8.8.8.8 that actually leave (a reply the node could
not route is never sent, so it is not counted).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from tracer import netns
from tracer.lab import builder

INTERNETS = ("internet1", "internet2", "internet3")
TARGET = "8.8.8.8"

OBSERVER = f"""
table ip wrobserve {{
    set sources {{ type ipv4_addr; flags dynamic; }}
    counter requests {{ }}
    counter replies {{ }}
    chain arriving {{
        type filter hook prerouting priority -300; policy accept;
        ip daddr {TARGET} add @sources {{ ip saddr }} counter name requests
    }}
    chain leaving {{
        type filter hook postrouting priority 300; policy accept;
        ip saddr {TARGET} counter name replies
    }}
}}
"""


def new_prefix(initial: str = "t") -> str:
    """A prefix no lab uses: `initial` and four hex digits (parallel test processes never collide)."""
    while True:
        prefix = initial + secrets.token_hex(2)
        if not builder.state_path(prefix).exists() and not leftovers(prefix):
            return prefix


def leftovers(prefix: str) -> list[str]:
    """Everything of lab `prefix` that exists: namespaces, /etc/netns dirs, the state file."""
    found = [f"netns {p.name}" for p in _listdir(netns.NETNS_RUN_DIR) if p.name.startswith(prefix + "-")]
    found += [f"/etc/netns/{p.name}" for p in _listdir(netns.ETC_NETNS) if p.name.startswith(prefix + "-")]
    if builder.state_path(prefix).exists():
        found.append(str(builder.state_path(prefix)))
    return found


def _listdir(path: Path) -> list[Path]:
    return list(path.iterdir()) if path.is_dir() else []


def missing_requirements() -> str | None:
    """Why lab tests cannot run here, or None."""
    if os.geteuid() != 0:
        return "lab tests need root (network namespaces)"
    if shutil.which("ip") is None:
        return "`ip` (iproute2) is not installed"
    probe = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True)
    if probe.returncode != 0:
        return f"`ip netns` is unavailable: {probe.stderr.strip()}"
    return None


@dataclass(frozen=True)
class Observation:
    sources: frozenset[str]  # source addresses of packets to 8.8.8.8 that arrived
    requests: int
    replies: int  # packets from 8.8.8.8 that left the node


def install_observers(state: builder.LabState) -> None:
    for node in INTERNETS:
        state.run(node, ["nft", "-f", "-"], input=OBSERVER)


def observe(state: builder.LabState, node: str) -> Observation:
    data = json.loads(state.run(node, ["nft", "-j", "list", "table", "ip", "wrobserve"]).stdout)["nftables"]
    sources = next(item["set"] for item in data if "set" in item).get("elem", [])
    counters = {item["counter"]["name"]: item["counter"]["packets"] for item in data if "counter" in item}
    return Observation(frozenset(sources), counters["requests"], counters["replies"])


def ping_from_macbook(state: builder.LabState) -> subprocess.CompletedProcess:
    return state.run("macbook", ["ping", "-n", "-c", "1", "-W", "1", TARGET], check=False)


class LabsByVariant:
    """Seed labs built once each (lazily), under their own prefix, for read-only tests of a session."""

    def __init__(self, first: str = "t"):
        self.first = first  # the prefixes' first letter (new_prefix)
        self.labs: dict[str, builder.LabState] = {}

    def __call__(self, variant: str) -> builder.LabState:
        if variant not in self.labs:
            self.labs[variant] = builder.up(variant=variant, prefix=new_prefix(self.first))
        return self.labs[variant]

    def close(self):
        for state in self.labs.values():
            builder.down(state.prefix)
            assert not leftovers(state.prefix)
