"""The typed result of explaining one flow: a path of frozen steps, in the kernel's order.

A step carries what an observer can check against the kernel one to one
(trace events, captures): the hook and the deciding rule's handle, the table
id and nexthop of a routing decision, the NAT tuple, the egress packet.
Consumers (rules engine, lint, verify, renderers) read these types; JSON is
made from them once, by tracer/output/json_out.py.

    forwarded:  HookStep(prerouting) [NatStep dst] RoutingStep HookStep(forward)
                HookStep(postrouting) [NatStep src] EgressStep
    local-out:  RoutingStep HookStep(output) [RerouteStep RoutingStep]…
                HookStep(postrouting) [NatStep] EgressStep
    local-in:   HookStep(prerouting) RoutingStep HookStep(input)
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from functools import cached_property

from tracer.flow import Flow, RouteAnswer, RouteQuery
from tracer.model import ConntrackEntry, HostState, Route, Rule
from tracer.sim.fib import FibResult, RuleStep
from tracer.sim.netfilter import HookTraversal, NatRewrite


@dataclass(frozen=True)
class IifInference:
    """The input interface was not given: taken from the route back to the source."""

    iif: str
    src: str
    gateway: str | None
    table: str | None  # None: no table was looked up (a local or broadcast route back)


@dataclass(frozen=True)
class HookStep:
    """One netfilter hook crossed: every chain that ran, the deciding rule, the verdict."""

    traversal: HookTraversal

    @property
    def hook(self) -> str:
        return self.traversal.hook

    @property
    def verdict(self) -> str:
        return self.traversal.verdict

    @property
    def decided_by(self) -> str | None:
        return self.traversal.decided_by

    @property
    def dropped(self) -> bool:
        return self.traversal.verdict in ("drop", "reject", "queue")


@dataclass(frozen=True)
class RoutingStep:
    """One routing decision: the rules walked, the table, the route and nexthop chosen."""

    stage: str  # "routing" | "re-route after output"
    query: RouteQuery
    result: FibResult

    @property
    def rule(self) -> Rule | None:
        return self.result.rule

    @property
    def rules_walked(self) -> tuple[RuleStep, ...]:
        return self.result.steps

    @property
    def rule_text(self) -> str | None:
        """The deciding rule as `ip rule` prints it."""
        if self.result.rule is None:
            return None
        for step in self.result.steps:
            if step.rule is self.result.rule:
                return step.text
        return str(self.result.rule.priority)

    @property
    def table_id(self) -> int | None:
        return self.result.table

    @property
    def route(self) -> Route | None:
        return self.result.route

    @property
    def dev(self) -> str | None:
        return self.result.dev

    @property
    def gateway(self) -> str | None:
        return self.result.gateway

    @property
    def error(self) -> str | None:
        return self.result.error


@dataclass(frozen=True)
class RerouteStep:
    """The output hook changed what routing keys on (ip_route_me_harder): routed again at that
    moment, with these keys; the RoutingStep that follows is that decision. There is one per
    route chain or NAT that changed a key, in the kernel's order."""

    mark: int
    dst: str
    reason: str = ""  # what triggered it: "ip t out_route (type route): mark 0x0 -> 0x1"
    src: str | None = None


@dataclass(frozen=True)
class NatStep:
    """One address rewrite, by a NAT rule or by an existing conntrack entry's mapping."""

    hook: str
    rewrite: NatRewrite

    @property
    def by_conntrack(self) -> bool:
        return self.rewrite.source == "conntrack"


@dataclass(frozen=True)
class EgressStep:
    """The packet as it leaves: device, addresses after NAT, next hop."""

    dev: str | None
    src: str | None
    dst: str
    nexthop: str
    gateway: str | None
    mtu: int | None
    mark: int
    sport: int | None = None
    dport: int | None = None


Step = HookStep | RoutingStep | RerouteStep | NatStep | EgressStep


@dataclass(frozen=True)
class Choice:
    """A fork of the path that this outcome took: which option, and how likely it is."""

    kind: str  # "multipath" | "random" | "assumed" (a value the user did not give)
    index: int  # 0-based, in the kernel's order
    options: int
    share: float | None  # this option's probability at this fork; None for an assumption
    text: str  # "nexthop via 10.0.0.1 dev wan, weight 1 of 2"


@dataclass(frozen=True)
class KernelCheck:
    """The kernel's answers to the explanation's routing queries, one per RoutingStep.

    What the kernel confirms is one routing decision per query, for the packet the
    query describes; `assumed` says what of that packet came from the simulation
    (a mark or destination netfilter set, a re-route), and that netfilter and NAT
    themselves are simulated, never confirmed by a route query."""

    answers: tuple[RouteAnswer, ...]
    differences: tuple[str, ...]
    confirmed: tuple[str, ...] = ()  # "table 7375", "device ppp0", … equal in both, per decision
    assumed: tuple[str, ...] = ()  # what the question took from the simulation

    @property
    def agrees(self) -> bool:
        return not self.differences

    @property
    def final(self) -> RouteAnswer:
        return self.answers[-1]


# The drop reason of every packet a netfilter verdict drops (nf_hook_slow: NF_DROP, a rule's
# drop or reject, a failed re-route's NF_DROP_ERR).
NETFILTER_DROP = "NETFILTER_DROP"


@dataclass(frozen=True)
class Explanation:
    flow: Flow
    origin: str  # forwarded | local-out | local-in
    iif_inferred: IifInference | None  # how the input interface was chosen, when the user gave none
    steps: tuple[Step, ...]
    conntrack: ConntrackEntry | None
    verdict: str
    verdict_reason: str
    state: HostState = field(repr=False, compare=False)
    # The packet is dropped: the kernel's name for why (enum skb_drop_reason without its
    # SKB_DROP_REASON_ prefix, as skb:kfree_skb reports it since 6.13 — `trace` compares it).
    # None when it is not dropped, or when no packet exists (a socket's route lookup failed).
    drop_reason: str | None = None
    kernel: KernelCheck | None = None
    findings: tuple = ()
    notes: tuple[str, ...] = ()
    # Where the path forks (multipath), the choices this outcome took, and the other outcomes.
    choices: tuple[Choice, ...] = ()
    alternatives: tuple[Explanation, ...] = ()

    @property
    def share(self) -> float | None:
        """This outcome's probability (1.0 when the path does not fork; None when it rests
        on an assumption, which has no probability)."""
        share = 1.0
        for choice in self.choices:
            if choice.share is None:
                return None
            share *= choice.share
        return share

    @property
    def outcomes(self) -> tuple[Explanation, ...]:
        """Every possible outcome, this one first."""
        return (self, *self.alternatives)

    def as_main(self, outcome: Explanation) -> Explanation:
        """The same set of outcomes with `outcome` (one of them) explained first."""
        others = tuple(o for o in self.outcomes if o is not outcome)
        return dataclasses.replace(outcome, alternatives=others, kernel=self.kernel, findings=self.findings)

    def _of(self, kind):
        return tuple(step for step in self.steps if isinstance(step, kind))

    # The views below are read many times per flow (findings, renderers): computed once.
    @cached_property
    def decisions(self) -> tuple[RoutingStep, ...]:
        return self._of(RoutingStep)

    @property
    def decision(self) -> RoutingStep | None:
        decisions = self.decisions
        return decisions[-1] if decisions else None

    @cached_property
    def hook_steps(self) -> tuple[HookStep, ...]:
        return self._of(HookStep)

    @cached_property
    def hooks(self) -> tuple[HookTraversal, ...]:
        return tuple(step.traversal for step in self.hook_steps)

    @cached_property
    def _first_traversal_of_hook(self) -> dict[str, HookTraversal]:
        first: dict[str, HookTraversal] = {}
        for step in self.hook_steps:
            first.setdefault(step.hook, step.traversal)
        return first

    def hook(self, name: str) -> HookTraversal | None:
        """The walk's first traversal of hook `name` (a looped-back packet crosses some twice)."""
        return self._first_traversal_of_hook.get(name)

    @cached_property
    def nat(self) -> tuple[NatStep, ...]:
        return self._of(NatStep)

    @cached_property
    def egress(self) -> EgressStep | None:
        found = self._of(EgressStep)
        return found[0] if found else None

    @property
    def leaves(self) -> bool:
        return self.verdict in ("forwarded", "sent")

    def with_kernel(self, kernel: KernelCheck) -> Explanation:
        return dataclasses.replace(self, kernel=kernel)

    def with_findings(self, findings) -> Explanation:
        return dataclasses.replace(self, findings=tuple(findings))
