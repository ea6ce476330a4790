"""Config regression tests for a router: expectations about flows and findings, checked against a state.

    load_expectations(path) -> list[Expectation]      UsageError (one line) when the file is broken
    verify(state, expectations) -> list[Outcome]

The format is documented in docs/verify.md.
"""

from __future__ import annotations

import difflib
import ipaddress
import tomllib
from dataclasses import dataclass, field

from tracer.errors import UsageError
from tracer.flow import make_flow
from tracer.lint import flows
from tracer.sim.explanation import Explanation

# What a flow expectation may assert, and the type of its value.
ASSERTIONS = {"leaves_via": str, "source": str, "gateway": str, "table": (str, int), "rule": int,
              "verdict": str, "nat": str, "error": str}
FLOW_OPTIONS = {"iif": str, "oif": str, "proto": (str, int), "sport": int, "dport": int, "mark": (str, int),
                "tos": (str, int), "uid": int}
_KEYS = {"from": str, "to": str, "name": str, "no_finding": (str, list), **ASSERTIONS, **FLOW_OPTIONS}
VERDICTS = ("forwarded", "sent", "delivered-locally", "dropped", "unreachable", "blackholed", "prohibited",
            "dropped-rp-filter", "dropped-martian")
NAT_TYPES = ("snat", "masquerade", "dnat", "redirect", "none")


@dataclass(frozen=True)
class Expectation:
    index: int  # 1-based position in the file
    name: str
    src: str | None = None
    dst: str | None = None
    options: dict = field(default_factory=dict)
    asserts: dict = field(default_factory=dict)
    no_finding: tuple[str, ...] = ()

    @property
    def title(self) -> str:
        if self.name:
            return self.name
        if self.no_finding:
            return f"no finding {', '.join(self.no_finding)}"
        return f"{self.src or '(local)'} → {self.dst}"


@dataclass(frozen=True)
class Outcome:
    expectation: Expectation
    mismatches: tuple[str, ...]  # empty: it holds
    explanation: Explanation | None = None  # the flow's explanation (flow expectations)
    findings: tuple = ()  # the unwanted findings (no_finding expectations)

    @property
    def ok(self) -> bool:
        return not self.mismatches


def load_expectations(path: str) -> list[Expectation]:
    try:
        with open(path, "rb") as fh:
            doc = tomllib.load(fh)
    except OSError as exc:
        raise UsageError(f"cannot read expectations {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"{path}: not valid TOML: {exc}") from None
    extra = sorted(set(doc) - {"expect"})
    if extra:
        raise UsageError(f"{path}: unknown top-level key {extra[0]!r}: expectations are [[expect]] tables")
    items = doc.get("expect")
    if not isinstance(items, list) or not items or not all(isinstance(i, dict) for i in items):
        raise UsageError(f"{path}: no expectations: write at least one [[expect]] table")
    return [_expectation(path, index, item) for index, item in enumerate(items, 1)]


def _expectation(path: str, index: int, item: dict) -> Expectation:
    def bad(message: str) -> UsageError:
        return UsageError(f"{path}: expect #{index}: {message}")

    for key, value in item.items():
        if key not in _KEYS:
            close = difflib.get_close_matches(key, _KEYS, n=1)
            raise bad(f"unknown key {key!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
        if not isinstance(value, _KEYS[key]) or isinstance(value, bool):
            raise bad(f"{key} = {value!r}: wrong type")
    if "no_finding" in item:
        if set(item) - {"no_finding", "name"}:
            raise bad("no_finding stands alone: put flow assertions in their own [[expect]]")
        ids = [item["no_finding"]] if isinstance(item["no_finding"], str) else item["no_finding"]
        if not ids or not all(isinstance(i, str) and i.strip() for i in ids):
            raise bad("no_finding must be a rule ID or a list of them")
        from tracer.checks import engine
        try:
            resolved = tuple(engine.resolve(i).id for i in ids)
        except UsageError as exc:
            raise bad(str(exc)) from None
        return Expectation(index, item.get("name", ""), no_finding=resolved)
    if "to" not in item:
        raise bad("a flow needs `to` (and usually `from`); or write no_finding = \"WR…\"")
    asserts = {k: item[k] for k in ASSERTIONS if k in item}
    if not asserts:
        raise bad(f"nothing to check: give at least one of {', '.join(ASSERTIONS)}")
    if "verdict" in asserts and asserts["verdict"] not in VERDICTS:
        raise bad(f"verdict {asserts['verdict']!r} is not one of {', '.join(VERDICTS)}")
    if "nat" in asserts and asserts["nat"] not in NAT_TYPES:
        raise bad(f"nat {asserts['nat']!r} is not one of {', '.join(NAT_TYPES)}")
    for key in ("source", "gateway"):
        if key in asserts and asserts[key] != "none":
            try:
                ipaddress.ip_address(asserts[key])
            except ValueError:
                raise bad(f"{key} {asserts[key]!r} is not an IP address") from None
    options = {k: item[k] for k in FLOW_OPTIONS if k in item}
    try:
        # As the command line gives them (text): ports, uid, mark and tos are range-checked.
        make_flow(item["to"], item.get("from"), **{k: str(v) for k, v in options.items()})
    except UsageError as exc:
        raise bad(str(exc)) from None
    return Expectation(index, item.get("name", ""), item.get("from"), item["to"], options, asserts)


# The assertions and flow options that name an interface of the state.
INTERFACE_KEYS = ("leaves_via", "iif", "oif")


def check_interfaces(state, expectations: list[Expectation], path: str, where: str) -> None:
    """UsageError (one line naming the expectation) for an interface the state does not have:
    `leaves_via = "ppp9"` can never hold, and is a typo more often than a finding."""
    names = [link.name for link in state.links]
    for e in expectations:
        for key in INTERFACE_KEYS:
            device = e.asserts.get(key, e.options.get(key))
            if device is None or state.link(device) is not None:
                continue
            close = difflib.get_close_matches(device, names, n=1)
            hint = f"did you mean {close[0]!r}?" if close else f"interfaces: {', '.join(names) or 'none'}"
            raise UsageError(f"{path}: expect #{e.index} ({e.title}): {key} {device!r} is not an interface "
                             f"of {where} ({hint})")


def verify(state, expectations: list[Expectation]) -> list[Outcome]:
    findings = None
    outcomes = []
    for e in expectations:
        if e.no_finding:
            if findings is None:
                from tracer.checks import engine
                findings = engine.run(state)
            hits = tuple(f for f in findings if f.id in e.no_finding)
            outcomes.append(Outcome(e, tuple(f"{f.id}: {f.message}" for f in hits), findings=hits))
            continue
        options = {k: str(v) if k in ("mark", "tos", "proto") else v for k, v in e.options.items()}
        explanation = flows.explained(state, e.src, e.dst, **options)
        outcomes.append(Outcome(e, _mismatches(e.asserts, flows.facts(explanation)), explanation))
    return outcomes


def _mismatches(asserts: dict, actual: dict) -> tuple[str, ...]:
    out = []
    for key, wanted in asserts.items():
        got = actual[key]
        if key == "table":
            holds = str(wanted) in (str(actual["table"]), str(actual["table_id"]))
        elif key in ("nat", "error", "gateway", "source") and wanted == "none":
            holds = got is None
        else:
            holds = got == wanted
        if not holds:
            out.append(f"{key} is {got if got is not None else 'none'}, expected {wanted}")
    return tuple(out)
