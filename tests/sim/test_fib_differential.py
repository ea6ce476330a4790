"""The simulation against the kernel: random configurations, thousands of flows,
every answer of tracer.sim.fib.route compared with RTM_GETROUTE (route_get).

Seeded: WHYROUTE_FIB_SEED=<n> (default: random, printed). On a mismatch the
seed, the configuration as a topology file (tracer.lab) and the flow are printed.
"""

from __future__ import annotations

import errno
import os
import random
from dataclasses import replace

import pytest

from tests.sim import fiblab
from tracer.collect.live import collect_state
from tracer.collect.netlink import NetlinkError, RtnlSocket
from tracer.flow import RouteQuery
from tracer.netns import entered
from tracer.sim.fib import FibResult, _gateway_used, index_for, route

NLM_F_ACK = 0x4
CONFIGS = int(os.environ.get("WHYROUTE_FIB_CONFIGS", "24"))
FLOWS_PER_CONFIG = int(os.environ.get("WHYROUTE_FIB_FLOWS", "110"))


class AckedRtnlSocket(RtnlSocket):
    """RtnlSocket.request waits for a reply end that a plain RTM_GETROUTE never
    gets (no NLMSG_DONE, no ack): ask for the ack, which ends the reply."""

    def request(self, msg_type: int, payload: bytes):
        return list(self._messages(self._send(msg_type, NLM_F_ACK, payload)))


def _seed() -> int:
    raw = os.environ.get("WHYROUTE_FIB_SEED")
    return int(raw) if raw else random.SystemRandom().randrange(1 << 30)


def kernel_answer(rtnl: RtnlSocket, index: dict[str, int], q: RouteQuery) -> dict:
    kwargs = dict(family=q.family, dst=q.dst, src=q.src, iif=index[q.iif] if q.iif else None,
                  oif=index[q.oif] if q.oif else None, mark=q.mark or None, uid=q.uid,
                  proto=q.proto or None, sport=q.sport, dport=q.dport, tos=q.tos)
    try:
        got = rtnl.route_get(**kwargs)
    except NetlinkError as exc:
        return {"error": errno.errorcode[exc.errno]}
    answer = {"error": None, "type": got.type, "table": got.table or None, "dev": got.dev,
              "gateway": got.gateway, "prefsrc": got.prefsrc, "fib": None}
    try:
        fib = rtnl.route_get(fibmatch=True, **kwargs)
        answer["fib"] = (fib.dst, fib.dst_len, fib.tos, fib.metric)
    except NetlinkError as exc:
        answer["fib"] = errno.errorcode[exc.errno]
    return answer


def differences(state, q: RouteQuery, sim: FibResult, kern: dict) -> list[str]:
    if any("check depends on which multipath nexthop" in n for n in sim.notes) and \
            kern["error"] in (None, "EINVAL"):
        return []  # the sim said: passes or fails depending on the hash's nexthop pick
    if sim.error != kern["error"]:
        return [f"error: sim {sim.error} ({sim.error_reason}), kernel {kern['error']}"]
    if kern["error"]:
        return []
    out = []
    if sim.type != kern["type"]:
        out.append(f"type: sim {sim.type}, kernel {kern['type']}")
    if sim.table != kern["table"]:
        out.append(f"table: sim {sim.table}, kernel {kern['table']}")
    if sim.dev is None and len(sim.nexthops) > 1:
        # Broadcast, and multicast over a route shorter than /4, drop the gateway
        # (__mkroute_output); a gateway that is a local address is not used.
        gatewayless = sim.type == "broadcast" or (sim.type == "multicast" and sim.route.dst_len < 4)
        choices = {(nh.dev, None if gatewayless else _gateway_used(index_for(state), sim.route, nh))
                   for nh in sim.nexthops}
        if (kern["dev"], kern["gateway"]) not in choices:
            out.append(f"multipath: kernel {kern['dev']} via {kern['gateway']} not among {sorted(choices, key=str)}")
    else:
        if sim.dev != kern["dev"]:
            out.append(f"dev: sim {sim.dev}, kernel {kern['dev']}")
        if sim.gateway != kern["gateway"]:
            out.append(f"gateway: sim {sim.gateway}, kernel {kern['gateway']}")
    if q.iif is None and q.src is None:
        multipath_src = sim.prefsrc is None and any("source address depends" in n for n in sim.notes)
        if sim.prefsrc != kern["prefsrc"] and not multipath_src:
            out.append(f"prefsrc: sim {sim.prefsrc}, kernel {kern['prefsrc']}")
    if sim.route is None:
        if not isinstance(kern["fib"], str):
            out.append(f"fibmatch: sim no route, kernel {kern['fib']}")
    else:
        r = sim.route
        if kern["fib"] != (r.dst, r.dst_len, r.tos, r.metric):
            out.append(f"fibmatch: sim {(r.dst, r.dst_len, r.tos, r.metric)}, kernel {kern['fib']}")
    return out


def test_fib_matches_kernel():
    why = fiblab.can_run()
    if why:
        print(f"skipping kernel test: {why}")
        pytest.skip(why)
    seed = _seed()
    print(f"WHYROUTE_FIB_SEED={seed}")
    master = random.Random(seed)
    compared = 0
    failures: list[str] = []
    for n in range(CONFIGS):
        cfg = fiblab.random_config(master.randrange(1 << 30), with_rules=n % 6 != 0)
        lab = fiblab.NamespaceLab()
        try:
            lab.build(cfg)
            state = collect_state(netns=lab.name, netfilter=False, conntrack=False)
            index = {link.name: link.index for link in state.links}
            with entered(lab.name):
                rtnl = AckedRtnlSocket()
            with rtnl:
                rtnl.links()  # fills the ifindex → name map replies are parsed with
                flow_rng = random.Random(cfg.seed)
                for _ in range(FLOWS_PER_CONFIG):
                    q = fiblab.random_flow(flow_rng, cfg, sorted(index))
                    # Without RTA_IP_PROTO inet_rtm_getroute asks for UDP.
                    sim = route(state, replace(q, proto=q.proto or 17))
                    kern = kernel_answer(rtnl, index, q)
                    compared += 1
                    diff = differences(state, q, sim, kern)
                    if diff and len(failures) < 5:
                        steps = "\n".join(f"    {s.text}  [{s.result}] {s.reason or ''}" for s in sim.steps)
                        failures.append(
                            f"config seed {cfg.seed}: {q}\n  " + "\n  ".join(diff)
                            + f"\n  sim: {sim.error or sim.type} {sim.dev} {sim.gateway} table {sim.table} "
                            f"src {sim.prefsrc} notes {sim.notes}\n  steps:\n{steps}\n"
                            + (f"  config:\n{cfg.topology()}" if not failures else ""))
                    elif diff:
                        failures.append("…")
        finally:
            lab.delete()
    print(f"{compared} flows compared over {CONFIGS} configurations")
    assert compared >= 2000
    assert not failures, (f"WHYROUTE_FIB_SEED={seed}: {len(failures)} mismatches\n" + "\n".join(
        f for f in failures if f != "…"))
