"""Topologies given as Python data (tracer.lab.topology.from_dict), as test labs build them."""

import pytest

from tracer.lab import topology as topo

ROUTED_PAIR = """
name = "pair"
sysctl = { "net.ipv6.conf.all.accept_dad" = 0 }
[nodes.a]
forwarding = true
[nodes.a.interfaces.eth0]
addresses = ["10.0.0.1/24", "2001:db8::1/64"]
[nodes.b.interfaces.eth0]
addresses = ["10.0.0.2/24"]
[[nodes.b.routes]]
to = "default"
via = "10.0.0.1"
[[nodes.b.routes]]
to = "default"
via = "2001:db8::1"
[[links]]
ends = ["a:eth0", "b:eth0"]
"""


def routed_pair() -> dict:
    return {
        "name": "pair",
        "sysctl": {"net.ipv6.conf.all.accept_dad": 0},
        "nodes": {
            "a": {"forwarding": True, "interfaces": {"eth0": {"addresses": ["10.0.0.1/24", "2001:db8::1/64"]}}},
            "b": {"interfaces": {"eth0": {"addresses": ["10.0.0.2/24"]}},
                  "routes": [{"to": "default", "via": "10.0.0.1"}, {"to": "default", "via": "2001:db8::1"}]},
        },
        "links": [{"ends": ["a:eth0", "b:eth0"]}],
    }


def test_data_builds_the_same_topology_as_its_toml_file():
    assert topo.from_dict(routed_pair(), "pair.py") == topo.parse(ROUTED_PAIR, "pair.py")


def test_data_is_validated_like_a_file():
    data = routed_pair()
    data["links"][0]["ends"][1] = "host:eth0"
    with pytest.raises(topo.TopologyError) as raised:
        topo.from_dict(data, "pair.py")
    assert str(raised.value).startswith(
        "topology pair.py: links[0].ends[1]: refused: 'host' is not a node of this topology")
