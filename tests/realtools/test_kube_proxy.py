"""kube-proxy in iptables mode (kubernetes v1.3x, pkg/proxy/iptables/proxier.go).

The rules are those syncProxyRules writes, laid out as the package's
TestOverallIPTablesRules (proxier_test.go) expects them: KUBE-SERVICES →
KUBE-SVC-* → KUBE-SEP-* (DNAT), KUBE-NODEPORTS → KUBE-EXT-* (KUBE-MARK-MASQ
then the service chain), `! -s <cluster CIDR> -j KUBE-MARK-MASQ` for cluster
IPs, endpoints picked with `-m statistic --mode random --probability` (1/n,
then the rest), KUBE-MARK-MASQ `--or-mark 0x4000`, KUBE-POSTROUTING (RETURN
unless marked, `--xor-mark 0x4000`, MASQUERADE `--random-fully` as
HasRandomFully() allows), the REJECT of a service without endpoints in filter
KUBE-SERVICES, KUBE-FORWARD; the base-chain jumps are iptablesJumpChains and
iptablesKubeletJumpChains, each prepended (kubelet's KUBE-FIREWALL jump was
there first, so it ends up last); chain names are computed as
servicePortChainName / servicePortEndpointChainName compute them (base32 of
sha256). kube-proxy sets route_localnet=1 (localhost node ports). Left out: the
nfacct metric matches, which kube-proxy adds only when the kernel supports
nfacct (this one does not).

Services (cluster CIDR 10.244.0.0/16, identical on both nodes):
  default/web:http   ClusterIP 10.96.0.10:80 → 10.244.1.3:8080 (podc, node1), 10.244.2.3:8080 (podb, node2)
  default/api:http   NodePort  10.96.0.20:80, node port 30080 → 10.244.2.3:8080 (podb)
  default/db:http    ClusterIP 10.96.0.40:80 → 10.244.1.3:8080 (podc, on node1 like the client pod)
  default/empty:http ClusterIP 10.96.0.30:80, no endpoints

The pod network is flannel v0.28.9 (host-gw backend: the topology's routes)
with its iptables rules from pkg/trafficmngr/iptables/iptables.go, as its
e2e/rules.go expects them: FLANNEL-POSTRTG (appended to nat POSTROUTING, after
kube-proxy's prepended jump) masquerades pod traffic leaving the pod network,
FLANNEL-FWD accepts the pod network in FORWARD.
"""

import base64
import hashlib

import pytest

from tests.realtools.realtools_lab import (
    Flow,
    Path,
    check,
    errors,
    explain_flow,
    findings_naming,
    outcomes,
    path_tests,
)

TOPOLOGY = "kube"

CLUSTER_CIDR = "10.244.0.0/16"
POD_CIDRS = {"node1": "10.244.1.0/24", "node2": "10.244.2.0/24"}
NODE1, NODE2, CLIENT, LAN_ROUTER = "192.168.122.10", "192.168.122.11", "192.168.122.50", "192.168.122.1"
POD_A, POD_B, POD_C = "10.244.1.2", "10.244.2.3", "10.244.1.3"
WEB, API, EMPTY, DB = "10.96.0.10", "10.96.0.20", "10.96.0.30", "10.96.0.40"
NODE_PORT = 30080


def _hash(text: str) -> str:
    return base64.b32encode(hashlib.sha256(text.encode()).digest()).decode()[:16]


def svc_chain(port_name: str) -> str:
    return "KUBE-SVC-" + _hash(port_name + "tcp")


def ext_chain(port_name: str) -> str:
    return "KUBE-EXT-" + _hash(port_name + "tcp")


def sep_chain(port_name: str, endpoint: str) -> str:
    return "KUBE-SEP-" + _hash(port_name + "tcp" + endpoint)


def _service(port_name: str, cluster_ip: str, endpoints: list[str]) -> tuple[list[str], list[str]]:
    """(chain declarations, rules) of one service's KUBE-SVC and KUBE-SEP chains."""
    svc = svc_chain(port_name)
    chains, rules = [svc], [
        f'-A {svc} -m comment --comment "{port_name} cluster IP" -m tcp -p tcp -d {cluster_ip} --dport 80 '
        f"! -s {CLUSTER_CIDR} -j KUBE-MARK-MASQ"]
    for index, endpoint in enumerate(endpoints):
        sep, left = sep_chain(port_name, endpoint), len(endpoints) - index
        pick = f" -m statistic --mode random --probability {1 / left:.10f}" if left > 1 else ""
        chains.append(sep)
        rules.append(f'-A {svc} -m comment --comment "{port_name} -> {endpoint}"{pick} -j {sep}')
        address = endpoint.split(":")[0]
        rules += [f"-A {sep} -m comment --comment {port_name} -s {address} -j KUBE-MARK-MASQ",
                  f"-A {sep} -m comment --comment {port_name} -m tcp -p tcp -j DNAT --to-destination {endpoint}"]
    return chains, rules


def node_rules(pod_cidr: str) -> str:
    """kube-proxy's and flannel's tables on a node whose pods are `pod_cidr`."""
    web_chains, web_rules = _service("default/web:http", WEB, [f"{POD_C}:8080", f"{POD_B}:8080"])
    api_chains, api_rules = _service("default/api:http", API, [f"{POD_B}:8080"])
    db_chains, db_rules = _service("default/db:http", DB, [f"{POD_C}:8080"])
    ext = ext_chain("default/api:http")
    nat_chains = ["KUBE-SERVICES", "KUBE-NODEPORTS", "KUBE-POSTROUTING", "KUBE-MARK-MASQ", "KUBE-PROXY-CANARY",
                  "FLANNEL-POSTRTG", ext, *web_chains, *api_chains, *db_chains]
    flannel = '-m comment --comment "flanneld masq"'
    nat = "\n".join([
        "*nat", ":PREROUTING ACCEPT [0:0]", ":INPUT ACCEPT [0:0]", ":OUTPUT ACCEPT [0:0]",
        ":POSTROUTING ACCEPT [0:0]", *(f":{c} - [0:0]" for c in nat_chains),
        '-A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES',
        '-A OUTPUT -m comment --comment "kubernetes service portals" -j KUBE-SERVICES',
        '-A POSTROUTING -m comment --comment "kubernetes postrouting rules" -j KUBE-POSTROUTING',
        f"-A POSTROUTING {flannel} -j FLANNEL-POSTRTG",
        f"-A FLANNEL-POSTRTG -m mark --mark 0x4000/0x4000 {flannel} -j RETURN",
        f"-A FLANNEL-POSTRTG -s {pod_cidr} -d {CLUSTER_CIDR} {flannel} -j RETURN",
        f"-A FLANNEL-POSTRTG -s {CLUSTER_CIDR} -d {pod_cidr} {flannel} -j RETURN",
        f"-A FLANNEL-POSTRTG ! -s {CLUSTER_CIDR} -d {pod_cidr} {flannel} -j RETURN",
        f"-A FLANNEL-POSTRTG -s {CLUSTER_CIDR} ! -d 224.0.0.0/4 {flannel} -j MASQUERADE --random-fully",
        f"-A FLANNEL-POSTRTG ! -s {CLUSTER_CIDR} -d {CLUSTER_CIDR} {flannel} -j MASQUERADE --random-fully",
        "-A KUBE-MARK-MASQ -j MARK --or-mark 0x4000",
        f"-A KUBE-NODEPORTS -m comment --comment default/api:http -m tcp -p tcp --dport {NODE_PORT} -j {ext}",
        "-A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN",
        "-A KUBE-POSTROUTING -j MARK --xor-mark 0x4000",
        '-A KUBE-POSTROUTING -m comment --comment "kubernetes service traffic requiring SNAT" '
        "-j MASQUERADE --random-fully",
        f'-A KUBE-SERVICES -m comment --comment "default/web:http cluster IP" -m tcp -p tcp -d {WEB} --dport 80 '
        f"-j {svc_chain('default/web:http')}",
        f'-A KUBE-SERVICES -m comment --comment "default/api:http cluster IP" -m tcp -p tcp -d {API} --dport 80 '
        f"-j {svc_chain('default/api:http')}",
        f'-A KUBE-SERVICES -m comment --comment "default/db:http cluster IP" -m tcp -p tcp -d {DB} --dport 80 '
        f"-j {svc_chain('default/db:http')}",
        '-A KUBE-SERVICES -m comment --comment "kubernetes service nodeports; NOTE: this must be the last rule in '
        'this chain" -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS',
        f'-A {ext} -m comment --comment "masquerade traffic for default/api:http external destinations" '
        "-j KUBE-MARK-MASQ",
        f"-A {ext} -j {svc_chain('default/api:http')}",
        *web_rules, *api_rules, *db_rules, "COMMIT"])
    new = '-m conntrack --ctstate NEW -m comment --comment'
    filter_ = "\n".join([
        "*filter", ":INPUT ACCEPT [0:0]", ":FORWARD ACCEPT [0:0]", ":OUTPUT ACCEPT [0:0]",
        *(f":{c} - [0:0]" for c in ("KUBE-EXTERNAL-SERVICES", "KUBE-FIREWALL", "KUBE-FORWARD", "KUBE-NODEPORTS",
                                    "KUBE-PROXY-CANARY", "KUBE-PROXY-FIREWALL", "KUBE-SERVICES", "FLANNEL-FWD")),
        f'-A INPUT {new} "kubernetes load balancer firewall" -j KUBE-PROXY-FIREWALL',
        '-A INPUT -m comment --comment "kubernetes health check service ports" -j KUBE-NODEPORTS',
        f'-A INPUT {new} "kubernetes externally-visible service portals" -j KUBE-EXTERNAL-SERVICES',
        "-A INPUT -j KUBE-FIREWALL",
        f'-A FORWARD {new} "kubernetes load balancer firewall" -j KUBE-PROXY-FIREWALL',
        '-A FORWARD -m comment --comment "kubernetes forwarding rules" -j KUBE-FORWARD',
        f'-A FORWARD {new} "kubernetes service portals" -j KUBE-SERVICES',
        f'-A FORWARD {new} "kubernetes externally-visible service portals" -j KUBE-EXTERNAL-SERVICES',
        '-A FORWARD -m comment --comment "flanneld forward" -j FLANNEL-FWD',
        f'-A OUTPUT {new} "kubernetes load balancer firewall" -j KUBE-PROXY-FIREWALL',
        f'-A OUTPUT {new} "kubernetes service portals" -j KUBE-SERVICES',
        "-A OUTPUT -j KUBE-FIREWALL",
        '-A KUBE-FIREWALL ! -s 127.0.0.0/8 -d 127.0.0.0/8 -m comment --comment "block incoming localnet '
        'connections" -m conntrack ! --ctstate RELATED,ESTABLISHED,DNAT -j DROP',
        "-A KUBE-FORWARD -m conntrack --ctstate INVALID -j DROP",
        '-A KUBE-FORWARD -m comment --comment "kubernetes forwarding rules" -m mark --mark 0x4000/0x4000 '
        "-j ACCEPT",
        '-A KUBE-FORWARD -m comment --comment "kubernetes forwarding conntrack rule" -m conntrack --ctstate '
        "RELATED,ESTABLISHED -j ACCEPT",
        f'-A KUBE-SERVICES -m comment --comment "default/empty:http has no endpoints" -m tcp -p tcp -d {EMPTY} '
        "--dport 80 -j REJECT --reject-with icmp-port-unreachable",
        f'-A FLANNEL-FWD -s {CLUSTER_CIDR} -m comment --comment "flanneld forward" -j ACCEPT',
        f'-A FLANNEL-FWD -d {CLUSTER_CIDR} -m comment --comment "flanneld forward" -j ACCEPT',
        "COMMIT"])
    mangle = "\n".join(["*mangle", ":KUBE-PROXY-CANARY - [0:0]", "COMMIT"])
    return "\n".join([mangle, filter_, nat, ""])


BREAKAGES = {
    # The node's forwarding switched off (a sysctl.conf reload after kube-proxy
    # started; kubeadm's preflight checks exactly this).
    "forwarding-off": "sysctl -q -w net.ipv4.ip_forward=0",
    # br_netfilter missing (kubeadm's preflight: "bridge-nf-call-iptables
    # contents are not set to 1"): frames bridged in cni0 skip iptables and
    # conntrack, so a same-node pod's reply to a ClusterIP client is not un-DNATed.
    "br-netfilter-off": "sysctl -q -w net.bridge.bridge-nf-call-iptables=0",
}


def install(lab, state):
    for node, pod_cidr in POD_CIDRS.items():
        lab.sh(node, "sysctl -q -w net.ipv4.conf.all.route_localnet=1")
        lab.iptables_restore(node, node_rules(pod_cidr))
    if state != "healthy":
        lab.sh("node1", BREAKAGES[state])


POD_TO_CLUSTER_IP = Flow("node1", API, "tcp", 80, 42001, src=POD_A, iif="cni0", sender="poda")
CLIENT_TO_NODE_PORT = Flow("node1", NODE1, "tcp", NODE_PORT, 42002, src=CLIENT, iif="eth0", sender="client")
POD_TO_SERVICE_WITHOUT_ENDPOINTS = Flow("node1", EMPTY, "tcp", 80, 42003, src=POD_A, iif="cni0", sender="poda")
POD_TO_SAME_NODE_CLUSTER_IP = Flow("node1", DB, "tcp", 80, 42005, src=POD_A, iif="cni0", sender="poda")

HEALTHY = {
    # KUBE-SERVICES → KUBE-SVC (a pod source: no KUBE-MARK-MASQ) → KUBE-SEP DNAT;
    # routed to node2 by the pod-CIDR route; podb's RST comes back un-DNATed.
    "pod-to-cluster-ip": (POD_TO_CLUSTER_IP, Path(
        "forwarded", rule=32766, table="main", dev="eth0", gateway=NODE2, wire=(POD_A, POD_B, 8080),
        nat=(("dnat", "dst", POD_B, 8080),), sink="podb", sink_iif="eth0", outcome="refused")),
    # KUBE-SERVICES' last rule (dst-type LOCAL) → KUBE-NODEPORTS → KUBE-EXT
    # (mark 0x4000) → DNAT to podb on node2; KUBE-FORWARD accepts the mark;
    # KUBE-POSTROUTING masquerades to node1's address, so podb answers node1.
    "client-to-node-port": (CLIENT_TO_NODE_PORT, Path(
        "forwarded", rule=32766, table="main", dev="eth0", gateway=NODE2, wire=(NODE1, POD_B, 8080),
        nat=(("dnat", "dst", POD_B, 8080), ("masquerade", "src", NODE1)), sink="podb", sink_iif="eth0",
        outcome="refused")),
    # DNAT to a pod on the same bridge: routed back out cni0; podc's RST is
    # bridged to poda, and br_netfilter's conntrack un-DNATs it.
    "pod-to-same-node-cluster-ip": (POD_TO_SAME_NODE_CLUSTER_IP, Path(
        "forwarded", rule=32766, table="main", dev="cni0", wire=(POD_A, POD_C, 8080),
        nat=(("dnat", "dst", POD_C, 8080),), sink="podc", sink_iif="eth0", outcome="refused")),
    # filter KUBE-SERVICES (from FORWARD, ctstate NEW) rejects: the pod gets
    # ICMP port unreachable at once, nothing leaves the node.
    "service-without-endpoints": (POD_TO_SERVICE_WITHOUT_ENDPOINTS, Path(
        "dropped", rule=32766, table="main", dev="eth0", gateway=LAN_ROUTER, absent_from=("client",),
        outcome="refused")),
}

BROKEN = {
    # DNAT still happens, then the input route is EHOSTUNREACH (cni0 does not
    # forward); ip_error sends no ICMP when the input device does not forward,
    # so the pod's connection just times out.
    ("forwarding-off", "pod-to-cluster-ip"): (POD_TO_CLUSTER_IP, Path(
        "unreachable", nat=(("dnat", "dst", POD_B, 8080),), error="EHOSTUNREACH", absent_from=("podb",),
        outcome="timeout")),
    # The request's path is unchanged; podc's RST reaches poda from
    # 10.244.1.3:8080, which poda's socket (connected to 10.96.0.40:80) ignores.
    ("br-netfilter-off", "pod-to-same-node-cluster-ip"): (POD_TO_SAME_NODE_CLUSTER_IP, Path(
        "forwarded", rule=32766, table="main", dev="cni0", wire=(POD_A, POD_C, 8080),
        nat=(("dnat", "dst", POD_C, 8080),), sink="podc", sink_iif="eth0", outcome="timeout")),
}

# Flow → why-route's defect, for the flows it gets wrong today (a strict xfail: a fix flips it).
WHY_ROUTE_DEFECTS = {
}


globals().update(path_tests(HEALTHY, BROKEN, WHY_ROUTE_DEFECTS))


def test_without_br_netfilter_the_reply_reaches_the_pod_un_dnatted(tool_lab):
    lab = tool_lab("br-netfilter-off")
    lab.clear_sinks()
    lab.tcp_connect("poda", DB, 80, src=POD_A, sport=42004)
    replies = {(a.src, a.sport) for a in lab.arrivals("poda") if a.dport == 42004}
    assert replies == {(POD_C, 8080)}, replies


def test_why_route_warns_that_the_reply_bypasses_conntrack(tool_lab, capsys):
    doc = explain_flow(capsys, tool_lab("br-netfilter-off"), POD_TO_SAME_NODE_CLUSTER_IP)
    assert [(f["id"], f["severity"]) for f in doc["findings"] if "bridge-nf-call-iptables" in f["message"]] == [
        ("WR033", "error")], doc["findings"]
    assert not [f for f in explain_flow(capsys, tool_lab("healthy"), POD_TO_SAME_NODE_CLUSTER_IP)["findings"]
                if f["id"] == "WR033"]


# ---------------------------------------------------------------- two endpoints, picked at random

WEB_FLOW_SPORTS = range(42100, 42124)


def test_the_kernel_spreads_the_two_endpoint_service_over_both_pods(tool_lab):
    lab = tool_lab("healthy")
    lab.clear_sinks()
    lab.tcp_connects("poda", [(WEB, 80, sport) for sport in WEB_FLOW_SPORTS], src=POD_A)
    hits = {pod: {a.sport for a in lab.arrivals(pod) if (a.dst, a.dport) == (address, 8080)}
            for pod, address in (("podc", POD_C), ("podb", POD_B))}
    # 24 connections at p = 1/2 each: one pod getting none has odds 2 × 2^-24.
    assert hits["podc"] and hits["podb"] and hits["podc"] | hits["podb"] == set(WEB_FLOW_SPORTS), hits


def test_why_route_gives_both_endpoints_half_the_new_connections_each(tool_lab, capsys):
    # A source port no test has sent from: no conntrack entry pins the flow yet.
    flow = Flow("node1", WEB, "tcp", 80, 42200, src=POD_A, iif="cni0")
    doc = explain_flow(capsys, tool_lab("healthy"), flow)
    assert outcomes(doc, "dst", "dev") == {(POD_C, "cni0"): 0.5, (POD_B, "eth0"): 0.5}


def test_check_finds_no_error_on_a_healthy_node(tool_lab, capsys):
    assert errors(check(capsys, tool_lab("healthy").ns("node1"))) == []


CHECK_EXPECTATIONS = {
    "forwarding-off": ("ip_forward",),
    "br-netfilter-off": ("bridge-nf-call-iptables",),
}


@pytest.mark.parametrize("state", list(CHECK_EXPECTATIONS))
def test_check_reports_the_breakage(tool_lab, capsys, state):
    assert findings_naming(check(capsys, tool_lab(state).ns("node1")), *CHECK_EXPECTATIONS[state])


# WR033's fix alternatives on node1, each with the command that undoes it (the module shares the lab).
HAIRPIN_MASQUERADE = f"iptables -t nat -I POSTROUTING -s {POD_CIDRS['node1']} -d {POD_C} -o cni0 -j MASQUERADE"
WR033_FIXES = {
    "sysctl -w net.bridge.bridge-nf-call-iptables=1": "sysctl -q -w net.bridge.bridge-nf-call-iptables=0",
    "ip link set cni0 type bridge nf_call_iptables 1": "ip link set cni0 type bridge nf_call_iptables 0",
    HAIRPIN_MASQUERADE: HAIRPIN_MASQUERADE.replace(" -I ", " -D "),
}


def test_each_fix_of_wr033_repairs_the_hairpin_in_the_kernel(tool_lab, capsys):
    lab = tool_lab("br-netfilter-off")
    (finding,) = [f for f in check(capsys, lab.ns("node1"))["findings"]
                  if f["id"] == "WR033" and f"to {DB}:80 are DNATed to {POD_C}:8080" in f["message"]]
    assert finding["fix"] == {"kind": "alternatives", "commands": list(WR033_FIXES)}
    for sport, (command, undo) in enumerate(WR033_FIXES.items(), start=42300):
        lab.sh("node1", command)
        try:
            # podc's RST now reaches poda's socket un-DNATed: connection refused, not a timeout
            assert lab.tcp_connect("poda", DB, 80, src=POD_A, sport=sport) == "refused", command
            assert not [f for f in check(capsys, lab.ns("node1"))["findings"] if f["id"] == "WR033"], command
        finally:
            lab.sh("node1", undo)


@pytest.mark.parametrize("state, seen", [
    ("healthy", "bridge netfilter passes it through iptables' prerouting, forward and postrouting hooks"),
    ("br-netfilter-off", "bridged IPv4 skips iptables here (br_netfilter off: net.bridge.bridge-nf-call-iptables = 0)"),
])
def test_explaining_the_bridged_reply_says_it_is_bridged(tool_lab, capsys, state, seen):
    reply = Flow("node1", POD_A, "tcp", 42005, 8080, src=POD_C, iif="cni0")
    notes = explain_flow(capsys, tool_lab(state), reply)["notes"]
    assert [n for n in notes if "the bridge forwards a frame between them itself" in n and seen in n], notes


def test_bridge_netfilter_is_per_namespace(tool_lab, capsys):
    # The sysctl was set to 0 in node1 only; node2 DNATs to its own pod podb on its cni0 just
    # the same, and still bridges through iptables.
    lab = tool_lab("br-netfilter-off")
    wr033 = {node: [f for f in check(capsys, lab.ns(node))["findings"] if f["id"] == "WR033"]
             for node in ("node1", "node2")}
    assert wr033["node1"] and not wr033["node2"], wr033
    assert lab.run("node2", ["sysctl", "-n", "net.bridge.bridge-nf-call-iptables"]).stdout.strip() == "1"
