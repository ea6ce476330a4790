"""nft `numgen` balancing and random loss: every value is an outcome with its share, checked
against the kernel's own spread of new connections."""

import json
import re
import subprocess

import pytest

from tests.explain.explain_helpers import seed_lab_with
from tests.helpers.cli import why_route

RULESET = """
table ip lb {
  chain pre {
    type nat hook prerouting priority -100;
    th dport 8080 numgen random mod 2 vmap { 0 : jump a, 1 : jump b }
  }
  chain a {
    meta l4proto tcp counter dnat to 8.8.8.8:80
  }
  chain b {
    meta l4proto tcp counter dnat to 8.8.8.8:81
  }
}
table ip loss {
  chain forwarding {
    type filter hook forward priority 0;
    oifname "ppp0" udp dport 53 numgen random mod 100 < 3 drop
  }
}
"""


@pytest.fixture(scope="module")
def lab():
    with seed_lab_with("ultimate") as state:
        state.run("route", ["nft", "-f", "-"], input=RULESET)
        yield state


def _outcomes(lab, *flow):
    result = why_route("192.168.1.169", "8.8.8.8", *flow, "--netns", lab.ns("route"), "--json")
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    return [doc, *doc["alternatives"]]


def test_numgen_vmap_gives_each_value_its_share_and_the_kernel_uses_both(lab):
    outcomes = _outcomes(lab, "--proto", "tcp", "--dport", "8080")
    assert {(o["egress"]["dport"], o["share"]) for o in outcomes} == {(80, 0.5), (81, 0.5)}
    subprocess.run(["ip", "netns", "exec", lab.ns("macbook"), "python3", "-c",
                    "import socket\nfor i in range(24):\n    s = socket.socket(); s.settimeout(0.05)\n"
                    "    try: s.connect(('8.8.8.8', 8080))\n    except OSError: pass\n    s.close()"], check=False)
    listing = lab.run("route", ["nft", "list", "table", "ip", "lb"]).stdout
    counts = [int(n) for n in re.findall(r"counter packets (\d+)", listing)]
    assert len(counts) == 2 and all(counts), listing


def test_random_loss_is_the_unlikely_outcome(lab):
    outcomes = _outcomes(lab, "--proto", "udp", "--dport", "53")
    assert [(o["verdict"], o["share"]) for o in outcomes] == [("forwarded", 0.97), ("dropped", 0.03)]
