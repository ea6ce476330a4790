"""`check` on a big table and many policy rules reports per table and interface,
not once per rule or route. (Its speed on 1,000,000 routes is measured by
bench/scale.py, never by a timed test.)"""

from __future__ import annotations

from pathlib import Path

from tracer.checks import engine
from tracer.collect import snapshot
from tracer.model import Address, Nexthop, Route, Rule

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "WR019" / "bad.json"
ROUTES, RULES, TABLES = 50_000, 2_000, 50


def scale_state():
    base = snapshot.load(str(FIXTURE))
    uplink = (Nexthop("10.10.149.1", "eth0.2"),)
    routes = [Route(4, 254, f"{n >> 16 & 255 or 1}.{n >> 8 & 255}.{n & 255}.0", 24, protocol="bgp", nexthops=uplink)
              for n in range(1 << 16, (1 << 16) + ROUTES)]
    fast = (Nexthop("123.150.232.1", "ppp0"),)
    routes += [Route(4, 1000 + t, "0.0.0.0", 0, nexthops=fast) for t in range(TABLES)]
    rules = [Rule(4, 1000 + i, table=1000 + i % TABLES, src=f"172.16.{i // 250}.{i % 250 + 2}", src_len=32)
             for i in range(RULES)]
    return base.replace(routes=base.routes + tuple(routes), rules=base.rules + tuple(rules),
                        addresses=base.addresses + (Address(4, "br-lan", "172.16.0.1", 12),))


def test_many_routes_and_rules_give_one_finding_per_table_and_interface():
    found = engine.run(scale_state())
    # the policy's sources leave ppp0 unNATed: found once per table and interface, not once per rule
    snat = [f for f in found if f.id == "WR019"]
    assert len(snat) == 1 and "172.16." in snat[0].message
