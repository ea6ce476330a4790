from tracer.checks.base import Check
from tracer.checks.context import is_private_network
from tracer.checks.fixes import sysctl_key, sysctl_set


class InterfaceForwardingOff(Check):
    """Forwarding is off on an interface that traffic to be forwarded enters by

    ## What it checks
    With `net.ipv4.ip_forward=1`, every interface that forwarded traffic
    evidently enters by — the interface of each non-local `from` rule
    source's subnet, and each interface with a private IPv4 subnet (a LAN) —
    must have `net.ipv4.conf.<if>.forwarding=1` (as recorded in the
    snapshot).

    ## Why it breaks forwarding
    IPv4 checks forwarding on the *input* interface: a packet arriving on an
    interface with `forwarding=0` gets `EHOSTUNREACH` in the input route
    lookup even though `ip_forward` is 1. Setting `ip_forward` writes every
    interface's value, but an interface created later inherits
    `conf.default.forwarding`, and tools (NetworkManager, systemd-networkd
    `IPForward=`) set interfaces one by one.

    ## Example
    ```
    sysctl -w net.ipv4.ip_forward=1
    sysctl -w net.ipv4.conf.br-lan.forwarding=0
    ```

    ## Fix
    `sysctl -w net.ipv4.conf.br-lan.forwarding=1` (and
    `net.ipv4.conf.default.forwarding=1` for interfaces created later).
    """

    id = "WR016"
    severity = "error"
    title = "forwarding off on an input interface"

    def check(self, ctx):
        sysctls = ctx.state.sysctls
        if sysctls.get("net.ipv4.ip_forward") != "1":
            return
        inputs: dict[str, str] = {}
        for rule in ctx.rules_of(4):
            if rule.src and not rule.invert and not ctx.is_local(rule.src):
                lan = ctx.connected_containing(rule.src)
                if lan is not None:
                    inputs.setdefault(lan.ifname, f"the source {rule.src} of rule {rule.priority} is on it")
        for c in ctx.connected:
            if c.family == 4 and is_private_network(c.network) and c.network.prefixlen < 31:
                inputs.setdefault(c.ifname, f"it holds the LAN {c.network}")
        for ifname, why in sorted(inputs.items()):
            if sysctls.get(f"net.ipv4.conf.{ifname}.forwarding") != "0":
                continue
            message = (f"{sysctl_key(ifname, 'forwarding')} is 0 while ip_forward is 1: packets arriving on {ifname} "
                       f"are not forwarded (EHOSTUNREACH); {why}")
            yield self.finding(message, sysctl_set(ifname, "forwarding", 1), dev=ifname)
