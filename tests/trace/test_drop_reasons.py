"""The simulation names each drop as the kernel does (`drop_reason`, enum skb_drop_reason): for every
way a router drops a forwarded packet, the reason `why-route explain` predicts is the one
skb:kfree_skb reports while `why-route trace` watches the same packet.

    client (c0) --- (r0) router (r1) --- isp        main: default via isp
"""

import json

import pytest

from tests.helpers.cli import why_route
from tests.lab.lab_helpers import leftovers, new_prefix
from tests.trace.trace_helpers import RunningTrace
from tracer.lab import builder
from tracer.lab import topology as topo

CLIENT, SPOOFED, ROUTER_UPLINK = "192.0.2.2", "198.51.100.77", "198.51.100.1"
CLIENT6 = "2001:db8:1::2"
# destination → (what the router has for it, the kernel's drop reason)
CASES = {
    "100.64.10.1": ("ip route add blackhole 100.64.10.0/24", "NOT_SPECIFIED"),
    "100.64.11.1": ("ip route add prohibit 100.64.11.0/24", "NOT_SPECIFIED"),
    "100.64.12.1": ("ip rule add to 100.64.12.0/24 unreachable priority 100", "IP_INNOROUTES"),
    "100.64.13.1": ("nft add rule inet filter forward ip daddr 100.64.13.1 drop", "NETFILTER_DROP"),
    # IPv6 counts every refused route as no route (ip6_pkt_drop), but a blackhole's dst_discard
    "2001:db8:10::1": ("ip -6 route add blackhole 2001:db8:10::/48", "NOT_SPECIFIED"),
    "2001:db8:11::1": ("ip -6 route add prohibit 2001:db8:11::/48", "IP_INNOROUTES"),
    "2001:db8:12::1": ("ip -6 rule add to 2001:db8:12::/48 unreachable priority 100", "IP_INNOROUTES"),
}
SPOOFED_TO, LOCAL_SOURCE_TO = "100.64.0.1", "100.64.0.2"


def topology() -> topo.Topology:
    return topo.from_dict({
        "name": "dropreasons",
        "sysctl": {f"net.ipv6.conf.{scope}.{knob}": value for scope in ("all", "default")
                   for knob, value in (("disable_ipv6", 0), ("accept_dad", 0))},
        "nodes": {
            # The client also owns an address of isp's subnet (strict rp_filter drops it at the router)
            # and one of the router's own (a packet from it is a martian: a local source).
            "client": {"interfaces": {"c0": {"addresses": [f"{CLIENT}/24", f"{CLIENT6}/64"]},
                                      "lo": {"addresses": [f"{SPOOFED}/32", f"{ROUTER_UPLINK}/32"]}},
                       "routes": [{"to": "default", "via": "192.0.2.1"}, {"to": "default", "via": "2001:db8:1::1"}]},
            "router": {
                "forwarding": True,
                "sysctl": {"net.ipv4.conf.all.rp_filter": 1, "net.ipv6.conf.all.forwarding": 1},
                "interfaces": {"r0": {"addresses": ["192.0.2.1/24", "2001:db8:1::1/64"]},
                               "r1": {"addresses": [f"{ROUTER_UPLINK}/24", "2001:db8:2::1/64"]}},
                "routes": [{"to": "default", "via": "198.51.100.2"}, {"to": "default", "via": "2001:db8:2::2"}],
                "run": ["nft add table inet filter",
                        "nft 'add chain inet filter forward { type filter hook forward priority 0 ; }'",
                        *(command for command, _ in CASES.values())],
            },
            "isp": {"interfaces": {"u0": {"addresses": ["198.51.100.2/24", "2001:db8:2::2/64"]},
                                   "lo": {"addresses": ["100.64.0.0/16"]}},
                    "routes": [{"to": "default", "via": "198.51.100.1"}, {"to": "default", "via": "2001:db8:2::1"}]},
        },
        "links": [{"ends": ["client:c0", "router:r0"]}, {"ends": ["isp:u0", "router:r1"]}],
    }, source=__file__)


@pytest.fixture(scope="module")
def lab(kernel_lab):
    state = builder.up(topology(), prefix=new_prefix("r"))
    state.run("router", ["ping", "-n", "-c1", "-W2", "198.51.100.2"], check=False)
    yield state
    builder.down(state.prefix)
    assert not leftovers(state.prefix)


def _simulated(lab, src: str, dst: str) -> dict:
    proto = "58" if ":" in dst else "icmp"
    result = why_route("explain", src, dst, "--iif", "r0", "--proto", proto, "--netns", lab.ns("router"), "--json")
    return json.loads(result.stdout)


def test_each_drop_is_named_as_the_kernel_names_it(lab):
    pings = [(CLIENT6 if ":" in dst else CLIENT, dst) for dst in CASES]
    pings += [(SPOOFED, SPOOFED_TO), (ROUTER_UPLINK, LOCAL_SOURCE_TO)]
    expected = {dst: reason for dst, (_, reason) in CASES.items()}
    expected |= {SPOOFED_TO: "IP_RPFILTER", LOCAL_SOURCE_TO: "IP_LOCAL_SOURCE"}
    trace = RunningTrace("--netns", lab.ns("router"), "--iif", "r0",
                         "--count", str(len(pings))).started()
    for src, dst in pings:
        lab.run("client", ["ping", "-n", "-c1", "-W1", "-I", src, dst], check=False)
    docs, _summary = trace.finish()
    observed = {d["flow"]["dst"]: d["drop"]["reason"] if d["drop"] else None for d in docs}
    assert observed == expected, trace.stderr
    # the trace's own comparison reads the same typed reason
    disagreements = [(d["flow"]["dst"], d["sim"]["differences"]) for d in docs if not d["sim"]["agrees"]]
    assert disagreements == [], str(disagreements)
    # the unreachable rule decided: the kernel looked up table local only, then the rule refused
    refused = next(d for d in docs if d["flow"]["dst"] == "100.64.12.1")
    assert (refused["rule"]["priority"], refused["table_id"], refused["tables_tried"][-1]["result"]) == \
        (100, None, "EAGAIN")
    for src, dst in pings:
        simulated = _simulated(lab, src, dst)
        assert simulated["drop_reason"] == observed[dst], (dst, simulated["verdict"], simulated["verdict_reason"])
    assert _simulated(lab, SPOOFED, SPOOFED_TO)["verdict"] == "dropped-rp-filter"
    assert _simulated(lab, ROUTER_UPLINK, LOCAL_SOURCE_TO)["verdict"] == "dropped-martian"


def test_a_packet_that_leaves_has_no_drop_reason(lab):
    simulated = _simulated(lab, CLIENT, "100.64.0.1")
    assert (simulated["verdict"], simulated["drop_reason"]) == ("forwarded", None)


def test_a_local_flow_whose_lookup_fails_has_no_packet_to_drop(lab):
    """The socket gets ENETUNREACH from the rule; no packet exists, so nothing is dropped."""
    result = why_route("explain", "100.64.12.1", "--proto", "icmp", "--netns", lab.ns("router"), "--json")
    simulated = json.loads(result.stdout)
    assert (simulated["origin"], simulated["verdict"], simulated["drop_reason"]) == ("local-out", "unreachable", None)


def test_martians_before_6_13_are_expected_without_a_reason():
    """Kernels before 6.13 returned errnos from the input route: its martians were NOT_SPECIFIED."""
    from types import SimpleNamespace

    from tracer.trace.flows import _expected_drop_reason

    def dropped(reason, kernel):
        return SimpleNamespace(drop_reason=reason, state=SimpleNamespace(provenance=SimpleNamespace(kernel=kernel)))

    assert _expected_drop_reason(dropped("IP_LOCAL_SOURCE", "6.1.0-18-amd64")) == "NOT_SPECIFIED"
    assert _expected_drop_reason(dropped("IP_LOCAL_SOURCE", "6.18.0")) == "IP_LOCAL_SOURCE"
    assert _expected_drop_reason(dropped("IP_RPFILTER", "6.1.0-18-amd64")) == "IP_RPFILTER"
    assert _expected_drop_reason(dropped("IP_LOCALNET", None)) == "IP_LOCALNET"
