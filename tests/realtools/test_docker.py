"""Docker 28.5.2 with a published port (`docker run -p 8080:80` on the default bridge).

The rules are those moby v28.5.2 writes with its iptables firewaller (on
Debian 12 `iptables` is iptables-nft, so they land in nftables' ip tables):
  libnetwork/drivers/bridge/internal/iptabler/iptabler.go (setupIPChains: DOCKER,
    DOCKER-FORWARD, DOCKER-BRIDGE, DOCKER-CT, DOCKER-ISOLATION-STAGE-1/2),
  …/iptabler/network.go (per network: the jump from PREROUTING/OUTPUT to nat
    DOCKER, MASQUERADE of the subnet, `-i docker0 -j RETURN` without hairpin),
  …/iptabler/port.go (setPerPortNAT: the DNAT; setPerPortForwarding: the ACCEPT
    in filter DOCKER; the raw PREROUTING drop of direct access to the container),
  libnetwork/firewall_linux.go (setupUserChain: DOCKER-USER, jumped to first),
  libnetwork/drivers/bridge/setup_ip_forwarding.go (FORWARD policy DROP when
    dockerd turned ip_forward on),
in the order of the package's golden file
  …/iptabler/testdata/TestIptabler_hairpin=false,internal=false,icc=true,masq=true,snat=false,gwm=nat,bindlh=false__iptables.golden
with its bridge br-dummy / 192.168.0.0/24 replaced by docker0 / 172.17.0.0/16.
"""

import pytest

from tests.realtools.realtools_lab import (
    Flow,
    Path,
    check,
    errors,
    findings_naming,
    path_tests,
)

TOPOLOGY = "docker"

HOST, CONTAINER, UPSTREAM, CLIENT = "198.51.100.10", "172.17.0.2", "198.51.100.1", "203.0.113.7"

DOCKER_RULES = f"""\
*raw
:PREROUTING ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
-A PREROUTING -d {CONTAINER}/32 ! -i docker0 -j DROP
COMMIT
*filter
:INPUT ACCEPT [0:0]
:FORWARD DROP [0:0]
:OUTPUT ACCEPT [0:0]
:DOCKER - [0:0]
:DOCKER-BRIDGE - [0:0]
:DOCKER-CT - [0:0]
:DOCKER-FORWARD - [0:0]
:DOCKER-ISOLATION-STAGE-1 - [0:0]
:DOCKER-ISOLATION-STAGE-2 - [0:0]
:DOCKER-USER - [0:0]
-A FORWARD -j DOCKER-USER
-A FORWARD -j DOCKER-FORWARD
-A DOCKER -d {CONTAINER}/32 ! -i docker0 -o docker0 -p tcp -m tcp --dport 80 -j ACCEPT
-A DOCKER ! -i docker0 -o docker0 -j DROP
-A DOCKER-BRIDGE -o docker0 -j DOCKER
-A DOCKER-CT -o docker0 -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
-A DOCKER-FORWARD -j DOCKER-CT
-A DOCKER-FORWARD -j DOCKER-ISOLATION-STAGE-1
-A DOCKER-FORWARD -j DOCKER-BRIDGE
-A DOCKER-FORWARD -i docker0 -j ACCEPT
-A DOCKER-ISOLATION-STAGE-1 -i docker0 ! -o docker0 -j DOCKER-ISOLATION-STAGE-2
-A DOCKER-ISOLATION-STAGE-2 -o docker0 -j DROP
COMMIT
*nat
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
:DOCKER - [0:0]
-A PREROUTING -m addrtype --dst-type LOCAL -j DOCKER
-A OUTPUT ! -d 127.0.0.0/8 -m addrtype --dst-type LOCAL -j DOCKER
-A POSTROUTING -s 172.17.0.0/16 ! -o docker0 -j MASQUERADE
-A DOCKER -i docker0 -j RETURN
-A DOCKER ! -i docker0 -p tcp -m tcp --dport 8080 -j DNAT --to-destination {CONTAINER}:80
COMMIT
"""

# Realistic ways the host loses Docker's rules after dockerd wrote them.
BREAKAGES = {
    # A host firewall script that starts after dockerd and flushes FORWARD
    # (`iptables -F FORWARD`): the jumps to DOCKER-USER/DOCKER-FORWARD go, the
    # DROP policy dockerd set stays.
    "forward-flushed": "iptables -F FORWARD",
    # …or flushes the nat table (`iptables -t nat -F`): no DNAT, no MASQUERADE.
    "nat-flushed": "iptables -t nat -F",
}


def install(lab, state):
    lab.iptables_restore("docker", DOCKER_RULES)
    if state != "healthy":
        lab.sh("docker", BREAKAGES[state])


PUBLISHED_PORT = Flow("docker", HOST, "tcp", 8080, 41001, src=CLIENT, iif="eth0", sender="internet")
CONTAINER_TO_INTERNET = Flow("docker", "8.8.8.8", "udp", 53, 41002, src=CONTAINER, iif="docker0", sender="web")
DIRECT_TO_CONTAINER = Flow("docker", CONTAINER, "tcp", 80, 41003, src=CLIENT, iif="eth0", sender="internet")
HOST_TO_OWN_PUBLISHED_PORT = Flow("docker", HOST, "tcp", 8080, 41004)

HEALTHY = {
    # nat PREROUTING → DOCKER: DNAT to the container; filter DOCKER-FORWARD →
    # DOCKER-BRIDGE → DOCKER accepts the published port. No listener in the
    # container: its RST coming back through the un-DNAT says "refused".
    "published-port": (PUBLISHED_PORT, Path(
        "forwarded", rule=32766, table="main", dev="docker0", wire=(CLIENT, CONTAINER, 80),
        nat=(("dnat", "dst", CONTAINER, 80),), sink="web", sink_iif="eth0", outcome="refused")),
    # The container's own traffic: DOCKER-FORWARD `-i docker0 -j ACCEPT`,
    # POSTROUTING MASQUERADE to the uplink's address.
    "container-to-internet": (CONTAINER_TO_INTERNET, Path(
        "forwarded", rule=32766, table="main", dev="eth0", gateway=UPSTREAM, wire=(HOST, "8.8.8.8", 53),
        nat=(("masquerade", "src", HOST),), sink="internet", sink_iif="eth0", outcome="sent")),
    # Straight to the container's address from outside: raw PREROUTING drops it
    # before routing (Docker's "direct access" protection).
    "direct-access-dropped": (DIRECT_TO_CONTAINER, Path(
        "dropped", absent_from=("web",), outcome="timeout")),
    # The host's own connection to its published port: nat OUTPUT → DOCKER
    # DNATs it, the kernel re-routes it to docker0; the source stays the one
    # chosen for the original destination (the host's own address).
    "host-to-own-published-port": (HOST_TO_OWN_PUBLISHED_PORT, Path(
        "sent", table="main", dev="docker0", wire=(HOST, CONTAINER, 80),
        nat=(("dnat", "dst", CONTAINER, 80),), sink="web", sink_iif="eth0", outcome="refused")),
}

BROKEN = {
    # FORWARD's DROP policy now decides: nothing reaches the container or the Internet.
    ("forward-flushed", "published-port"): (PUBLISHED_PORT, Path(
        "dropped", rule=32766, table="main", dev="docker0", nat=(("dnat", "dst", CONTAINER, 80),),
        absent_from=("web",), outcome="timeout")),
    ("forward-flushed", "container-to-internet"): (CONTAINER_TO_INTERNET, Path(
        "dropped", rule=32766, table="main", dev="eth0", gateway=UPSTREAM, absent_from=("internet",),
        outcome="sent")),
    # No DNAT: the host itself answers 8080 (nothing listens: RST). With only
    # the default ip rules the kernel keeps table local merged into main and
    # reports the local route as table main.
    ("nat-flushed", "published-port"): (PUBLISHED_PORT, Path(
        "delivered-locally", rule=32766, table="main", dev="lo", absent_from=("web",), outcome="refused")),
    # No MASQUERADE: the container's private source leaves on the uplink.
    ("nat-flushed", "container-to-internet"): (CONTAINER_TO_INTERNET, Path(
        "forwarded", rule=32766, table="main", dev="eth0", gateway=UPSTREAM, wire=(CONTAINER, "8.8.8.8", 53),
        sink="internet", sink_iif="eth0", outcome="sent")),
}

# Flow → why-route's defect, for the flows it gets wrong today (a strict xfail: a fix flips it).
WHY_ROUTE_DEFECTS = {
}


globals().update(path_tests(HEALTHY, BROKEN, WHY_ROUTE_DEFECTS))


def test_check_finds_no_error_on_the_healthy_host(tool_lab, capsys):
    assert errors(check(capsys, tool_lab("healthy").ns("docker"))) == []


CHECK_EXPECTATIONS = {
    # The FORWARD policy drops the published port and the container's traffic.
    "forward-flushed": ("FORWARD",),
    # The container's source 172.17.0.2 leaves eth0 untranslated.
    "nat-flushed": ("172.17.0.2", "eth0"),
}


@pytest.mark.parametrize("state", CHECK_EXPECTATIONS)
def test_check_reports_the_breakage(tool_lab, capsys, state):
    assert findings_naming(check(capsys, tool_lab(state).ns("docker")), *CHECK_EXPECTATIONS[state])
