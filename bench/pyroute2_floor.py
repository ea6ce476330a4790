"""The library's floor for one live explanation: the same kernel queries through pyroute2.

Rules dump, route get (iif/src), the nft ruleset as JSON — what a minimal
script using pyroute2 would do. Run by explain_bench.py as a baseline.
"""

import subprocess
import sys

from pyroute2 import NetNS

netns, src, dst, iif = sys.argv[1:5]
with NetNS(netns) as ns:
    rules = ns.get_rules(family=2)
    index = ns.link_lookup(ifname=iif)[0]
    answer = ns.route("get", dst=dst, src=src, iif=index)
ruleset = subprocess.run(["ip", "netns", "exec", netns, "nft", "-j", "list", "ruleset"],
                         capture_output=True, text=True, check=True).stdout
print(len(rules), answer[0].get_attr("RTA_OIF"), len(ruleset))
