"""Bad topologies and bad input, through the CLI: one line on stderr, non-zero exit, nothing created."""

import pytest

from tests.helpers.cli import why_route
from tests.lab.lab_helpers import leftovers

PAIR = """
name = "pair"
[nodes.a.interfaces.eth0]
addresses = ["10.0.0.1/24"]
[nodes.b.interfaces.eth0]
addresses = ["10.0.0.2/24"]
[[links]]
ends = ["a:eth0", "b:eth0"]
"""

# (name, topology text, what the one line must say)
REFUSED = [
    ("link to a node outside", PAIR.replace('"b:eth0"', '"host:eth0"'),
     "links[0].ends[1]: refused: 'host' is not a node of this topology"),
    ("node standing for the host", PAIR + '[nodes.root]\n', "nodes.root: refused: 'root' would stand for the host"),
    ("macvlan on a real interface", PAIR + '[nodes.a.interfaces.mv0]\nkind = "macvlan"\n',
     "nodes.a.interfaces.mv0.kind: refused: a macvlan interface attaches to a real interface"),
    ("parent interface", PAIR.replace('addresses = ["10.0.0.1/24"]', 'parent = "eth0"'),
     "nodes.a.interfaces.eth0.parent: refused"),
    ("netns on a link", PAIR + 'netns = "1"\n', "links[0].netns: refused"),
    ("physical link", PAIR.replace('[[links]]', '[[links]]\nkind = "physical"'),
     "links[0].kind: refused: a physical link attaches to a real interface"),
    ("route via an interface the node lacks", PAIR + '[[nodes.a.routes]]\nto = "default"\ndev = "eth1"\n',
     "nodes.a.routes[0].dev: refused: 'eth1' is not an interface of this node"),
    ("command not scoped to a node", PAIR + '[variants.v.run]\nhost = ["ip link"]\n',
     "variants.v.run.host: refused: commands must be scoped to a node"),
    ("command moving a link out", PAIR + '[variants.v.run]\na = ["ip link set eth0 netns 1"]\n',
     "variants.v.run.a[0]: refused: 'netns' would leave the node's network namespace"),
    ("command entering pid 1's namespaces",
     PAIR.replace('[nodes.b.interfaces.eth0]',
                  '[nodes.b]\nrun = ["nsenter -t 1 -n ip link"]\n[nodes.b.interfaces.eth0]'),
     "nodes.b.run[0]: refused: 'nsenter' would leave"),
    ("command writing a host file", PAIR + "[variants.v.run]\na = [\"echo x >> /etc/hosts\"]\n",
     "refused: writes to /etc/hosts"),
    ("host-wide sysctl", PAIR + '[sysctl]\n"kernel.panic" = 1\n', "sysctl.kernel.panic: refused"),
]

INVALID = [
    ("unknown key", PAIR.replace("addresses", "adresses", 1), "nodes.a.interfaces.eth0.adresses: unknown key"),
    ("missing field", PAIR.replace('name = "pair"', ""), "top level: missing required key 'name'"),
    ("bad address", PAIR.replace("10.0.0.1/24", "10.0.0.300/24"), "'10.0.0.300/24' is not an IP address/prefix"),
    ("interface name too long", PAIR.replace("a:eth0", "a:averyveryverylongname").replace(
        "[nodes.a.interfaces.eth0]", "[nodes.a.interfaces.averyveryverylongname]"),
     "is 21 characters; Linux allows at most 15"),
    ("link end used twice", PAIR + '[[links]]\nends = ["a:eth0", "b:eth0"]\n',
     "links[1]: a:eth0 is already an end of links[0]"),
    ("duplicate node", PAIR + '[nodes.c]\n[nodes.c]\n', "not valid TOML"),
    ("duplicate interface", PAIR + '[nodes.b.interfaces.eth0]\n', "not valid TOML"),
    ("malformed TOML", PAIR + "name = \n", "not valid TOML"),
    ("commands not a list", PAIR + '[variants.v]\nrun = { a = "ip link" }\n', "variants.v.run.a: must be a list"),
]


@pytest.mark.parametrize("text, says", [c[1:] for c in REFUSED + INVALID], ids=[c[0] for c in REFUSED + INVALID])
def test_bad_topology_is_refused_before_anything_exists(text, says, tmp_path, fresh_prefix):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    result = why_route("lab", "up", str(path), "--prefix", fresh_prefix)
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.startswith(f"why-route: error: topology {path}: ")
    assert result.stderr.count("\n") == 1 and says in result.stderr, result.stderr
    assert leftovers(fresh_prefix) == []


def test_the_valid_pair_is_accepted(tmp_path, fresh_prefix):
    """The guard cases above differ from this by the refused part only."""
    path = tmp_path / "pair.toml"
    path.write_text(PAIR)
    result = why_route("lab", "up", str(path), "--prefix", fresh_prefix)
    assert result.returncode == 0, result.stderr
    ping = why_route("lab", "exec", "a", "--prefix", fresh_prefix, "--", "ping", "-c1", "-W1", "10.0.0.2")
    assert ping.returncode == 0


@pytest.mark.parametrize("args, says", [
    (["lab", "up", "--variant", "fastest"], "no variant 'fastest' in topology seed (variants: slow, faster,"),
    (["lab", "up", "galaxy"], "no bundled topology 'galaxy'"),
    (["lab", "up", "/nonexistent/topology.toml"], "cannot read topology /nonexistent/topology.toml"),
    (["lab", "exec", "route", "--", "true"], "no lab with prefix"),
    (["lab", "status"], "no lab with prefix"),
], ids=["unknown variant", "unknown bundled topology", "missing file", "exec without lab", "status without lab"])
def test_bad_input(args, says, fresh_prefix):
    result = why_route(*args, "--prefix", fresh_prefix) if "--" not in args else why_route(
        *args[:3], "--prefix", fresh_prefix, *args[3:])
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and says in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
    assert leftovers(fresh_prefix) == []


def test_bad_prefix():
    result = why_route("lab", "down", "--prefix", "Bad-1")
    assert (result.returncode, result.stderr) == (
        2, "why-route: error: bad lab prefix 'Bad-1': 1 to 5 characters, a-z and 0-9\n")
