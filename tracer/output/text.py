"""The readable walk of one explanation, rendered from its JSON dict."""

from __future__ import annotations

from tracer.output.style import Style

_VERDICT_COLOURS = {"forwarded": "green", "sent": "green", "delivered-locally": "green"}


def _flow_line(flow: dict) -> str:
    words = [f"{flow['src'] or '(this host)'} → {flow['dst']}"]
    if flow["proto"]:
        ports = ""
        if flow["sport"] is not None or flow["dport"] is not None:
            ports = f" {flow['sport'] if flow['sport'] is not None else '*'}→{flow['dport'] if flow['dport'] is not None else '*'}"
        words.append(f"{flow['proto']}{ports}")
    for key in ("iif", "oif", "uid"):
        if flow[key] is not None:
            words.append(f"{key} {flow[key]}")
    if flow["mark"]:
        words.append(f"mark {flow['mark']:#x}")
    if flow["tos"]:
        words.append(f"tos {flow['tos']:#04x}")
    return "  ".join(words)


def _rules(doc: dict, s: Style) -> list[str]:
    lines = [s("Policy routing (ip rule, in priority order)", "bold")]
    width = max((len(str(r["priority"])) for r in doc["rules"]), default=1)
    for rule in doc["rules"]:
        mark = s("✓", "green") if rule["matched"] else s("✗", "dim")
        text = rule["text"]
        lines.append(f"  {mark} {text}")
        detail = rule["reason"] if not rule["matched"] else rule["result"]
        if rule["matched"] and rule["reason"]:
            detail = f"{rule['result']}: {rule['reason']}" if rule["reason"] not in rule["result"] else rule["result"]
        if detail:
            lines.append(f"    {' ' * width}  {s(detail, 'dim' if not rule['matched'] else 'cyan')}")
    return lines


def _decision(d: dict, s: Style, heading: str) -> list[str]:
    lines = [s(heading, "bold")]
    if d["rule"]:
        lines.append(f"  decided by rule {d['rule']['text']}")
    if d["route"]:
        lines.append(f"  table {d['table']} ({d['table_id']}): {d['route']['text']}")
    if d["error"]:
        lines.append("  " + s(f"error {d['error']}", "red") + (f": {d['error_reason']}" if d["error_reason"] else ""))
    else:
        hop = f"gateway {d['gateway']}" if d["gateway"] else "no gateway (destination on-link)"
        lines.append(f"  {hop}, device {d['dev']}" + (f", source {d['prefsrc']}" if d["prefsrc"] else ""))
    if d["multipath"]:
        hops = ", ".join(f"via {h['gateway']} dev {h['dev']} weight {h['weight']}" for h in d["nexthops"])
        lines.append(f"  multipath: {hops}")
        lines.append(f"  {d['multipath']}")
    lines.extend(f"  note: {note}" for note in d["notes"])
    return lines


def _chain_title(chain: dict) -> str:
    return f"{chain['family']} {chain['table']} {chain['chain']} ({chain['source']}, priority {chain['priority']})"


def _netfilter(hooks: list[dict], s: Style) -> list[str]:
    if not hooks:
        return []
    lines = [s("Netfilter", "bold")]
    for hook in hooks:
        colour = "green" if hook["verdict"] == "accept" else "red"
        lines.append(f"  {hook['hook']}: {s(hook['verdict'], colour)}"
                     + (f" (decided by {hook['decided_by']})" if hook["decided_by"] else "")
                     + ("" if hook["chains"] else " (no chains at this hook)"))
        for chain in hook["chains"]:
            if chain["skipped"]:
                continue
            shown = [step for step in chain["steps"] if step["matched"] is not False]
            verdict = chain["verdict"] or "continue"
            how = "policy" if chain["verdict_from"] == "policy" else "rule"
            if not shown:
                ending = f"policy {chain['policy']}" if chain["policy"] else "no verdict"
                lines.append(f"    {_chain_title(chain)}: no rule matched ({len(chain['steps'])} checked), {ending}")
                continue
            lines.append(f"    {_chain_title(chain)}: {verdict} by {how}")
            if chain.get("skipped_rules"):
                lines.append(f"      ({chain['skipped_rules']:,} rules cannot match: they select other addresses)")
            if chain.get("omitted"):
                lines.append(f"      ({chain['omitted']:,} non-matching rules not listed)")
            for step in shown:
                label = f"#{step['handle']}" if step["handle"] is not None else "(end)"
                counters = ""
                if step.get("counters"):
                    counters = f"  [{step['counters'].get('packets', 0)} pkts]"
                status = s("?", "yellow") if step["matched"] is None else s("→", "cyan")
                lines.append(f"      {status} {label} {step['text']}{counters}")
                if step["matched"] is None and step["reason"]:
                    lines.append(f"        {s(step['reason'], 'yellow')}")
        for reason in hook["uncertain_reasons"]:
            lines.append("    " + s(f"uncertain: {reason}", "yellow"))
        for rule in hook["mss_clamp"]:
            lines.append(f"    MSS clamped by: {rule}")
    return lines


def _nat(nat: list[dict], conntrack: dict | None, s: Style) -> list[str]:
    if not nat and not conntrack:
        return [s("NAT", "bold"), "  none: the packet keeps its addresses"]
    lines = [s("NAT", "bold")]
    if conntrack:
        lines.append(f"  existing conntrack entry (overrides the NAT rules): {conntrack['text']}")
    for rewrite in nat:
        lines.append(f"  {rewrite['type'].upper()} {rewrite['field']} {rewrite['from']} → {rewrite['to']}"
                     f"  ({rewrite['hook']}: {rewrite['rule']})")
    return lines


def _kernel(kernel: dict | None, s: Style) -> list[str]:
    if kernel is None:
        return []
    if kernel["agrees"]:
        return [s("Kernel", "bold") + f": agrees — {kernel['text']}"]
    lines = [s("Kernel: DISAGREES", "red", "bold") + f" — {kernel['text']}"]
    lines.extend("  " + s(diff, "red") for diff in kernel["differences"])
    return lines


def _findings(findings: list[dict], s: Style) -> list[str]:
    if not findings:
        return []
    colours = {"error": "red", "warning": "yellow", "info": "cyan"}
    lines = [s("Findings", "bold")]
    for f in findings:
        lines.append(f"  {s(f['severity'], colours.get(f['severity'], 'bold'))} {f['id']} {f['title']}")
        lines.append(f"    {f['message']}")
        lines.extend(f"    fix: {command}" for command in f.get("fix") or ())
    return lines


def render(doc: dict, *, colour: bool = False) -> str:
    s = Style(colour)
    lines = [s("Flow", "bold") + f"  {_flow_line(doc['flow'])}  [{doc['origin']}]"]
    if doc["iif_inferred"]:
        lines.append(f"  {doc['iif_inferred']}")
    lines.extend(f"  note: {note}" for note in doc["notes"])
    prerouting = [h for h in doc["netfilter"] if h["hook"] == "prerouting"]
    later = [h for h in doc["netfilter"] if h["hook"] != "prerouting"]
    lines.extend(_netfilter(prerouting, s))
    if doc["rules"]:
        lines.extend(_rules(doc, s))
    for earlier in doc["reroutes"]:
        lines.extend(_decision(earlier, s, f"Route ({earlier['stage']})"))
    if doc["decision"]:
        lines.extend(_decision(doc["decision"], s, "Route" if not doc["reroutes"] else f"Route ({doc['decision']['stage']})"))
    lines.extend(_netfilter(later, s))
    lines.extend(_nat(doc["nat"], doc["conntrack"], s))
    if doc["egress"]:
        e = doc["egress"]
        lines.append(s("On the wire", "bold"))
        mtu = f", MTU {e['mtu']}" if e["mtu"] else ""
        lines.append(f"  dev {e['dev']}: {e['src']} → {e['dst']}, next hop {e['nexthop']}{mtu}")
    verdict = doc["verdict"]
    lines.append(s("Verdict", "bold") + ": " + s(verdict, _VERDICT_COLOURS.get(verdict, "red")) + f" — {doc['verdict_reason']}")
    lines.extend(_kernel(doc["kernel"], s))
    lines.extend(_findings(doc["findings"], s))
    return "\n".join(lines) + "\n"
