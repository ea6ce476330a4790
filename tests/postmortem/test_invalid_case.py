"""The asymmetric return path where the router's conntrack drops the replies as INVALID: ArchLinux
(a LAN host with its own uplink) sends its requests to 9.9.9.9 out its own ppp0, the server's
replies come back through the router's ppp0 (pmlab.requests_by_archlinux), and the router's
forward chain, shaped as OpenWrt's fw4 writes it, drops `ct state invalid`: conntrack never saw
the SYN, so the SYN/ACK is INVALID. The post-mortem must name that drop (PM009), tied to the rule
by its handle, with the fix that makes the routing symmetric — which, run as printed, makes the
download work."""

import json

from tests.postmortem import pmlab
from tests.postmortem.test_lab_cases import lab  # noqa: F401  (the module's lab fixture)

CLIENT = "192.168.1.245"
FW4_FORWARD = """
table inet pmfw4 {
    chain forward {
        type filter hook forward priority filter; policy accept;
        ct state established,related accept comment "!fw4: Allow forwarded established and related flows"
        ct state invalid counter drop comment "!fw4: Drop flows with invalid conntrack state"
    }
}
"""


def _invalid_rule(state) -> dict:
    data = json.loads(state.run("route", ["nft", "-j", "-a", "list", "chain", "inet", "pmfw4", "forward"]).stdout)
    rules = [item["rule"] for item in data["nftables"] if "rule" in item]
    rule = next(r for r in rules if any("counter" in e for e in r["expr"]))
    counter = next(e["counter"] for e in rule["expr"] if "counter" in e)
    return {"handle": rule["handle"], "packets": counter["packets"]}


def _download(state, run_dir) -> dict:
    return pmlab.transfer(state, run_dir, server="send", client="download", size=20_000, timeout=2.5,
                          address="9.9.9.9", client_node="archlinux")


def test_replies_of_requests_sent_by_another_path_are_dropped_as_invalid(lab, tmp_path):  # noqa: F811
    lab.run("route", ["nft", "-f", "-"], input=FW4_FORWARD)
    try:
        with pmlab.requests_by_archlinux(lab):
            client = _download(lab, tmp_path / "run")
            dropped = _invalid_rule(lab)
            doc = pmlab.postmortem(tmp_path / "run")
            conn = pmlab.the_connection(doc, client, address=CLIENT)
            top = conn["suspects"][0] if conn["suspects"] else {}
            # the fix, run as printed on the client, makes the same download work
            fix = top.get("fix", {}).get("commands", [""])[0]
            lab.run("archlinux", fix.split("#")[0].split())
            fixed = _download(lab, tmp_path / "fixed")
            after = _invalid_rule(lab)
    finally:
        lab.run("route", ["nft", "delete", "table", "inet", "pmfw4"])
    assert client["error"] == "TimeoutError"  # the connection never opened
    assert dropped["packets"] > 0, dropped  # the kernel counted the INVALID drops

    assert conn["verdict"] == "failed", conn["reasons"]
    assert conn["interfaces"]["in"] == "ppp0" and conn["packets"] == {"ppp0": conn["packets"]["ppp0"]}
    ids = [s["id"] for s in conn["suspects"]]
    assert ids[0] == "PM009" and "PM008" not in ids and "PM007" not in ids, ids
    assert "INVALID" in top["summary"] and f"handle {dropped['handle']}" in top["summary"]
    # the evidence: SYN/ACKs seen arriving on ppp0, none leaving toward the client, no request anywhere
    arrived = [e for e in top["evidence"] if e["packet"]]
    assert arrived and arrived[0]["interface"] == "ppp0" and arrived[0]["text"].startswith("SYN/ACK from 9.9.9.9")
    never_left = next(e for e in top["evidence"] if not e["packet"])
    assert never_left["interface"] == "br-lan"
    assert f"seen leaving toward {CLIENT}" in never_left["text"] and "on any captured interface" in never_left["text"]
    rule = top["config"][0]
    assert (rule["kind"], rule["family"], rule["table"], rule["chain"], rule["handle"]) == (
        "nft rule", "inet", "pmfw4", "forward", dropped["handle"])
    assert "ct state invalid" in rule["text"]
    assert any(c["kind"] == "route" and "dev br-lan" in c["text"] for c in top["config"])
    assert fix.startswith("ip route replace 9.9.9.9 via 192.168.1.1") and f"on {CLIENT}" in fix
    assert any(c.startswith("# not a fix: accepting INVALID") for c in top["fix"]["commands"])

    assert fixed["error"] is None and fixed["bytes"] == 20_000
    assert after["packets"] == dropped["packets"]  # nothing INVALID once the requests cross the router


def test_replies_by_another_path_that_are_forwarded_raise_no_pm009(lab, tmp_path):  # noqa: F811
    # the same asymmetric path without the INVALID drop: the router forwards the SYN/ACK, it works
    with pmlab.requests_by_archlinux(lab):
        client = _download(lab, tmp_path / "run")
    assert client["error"] is None and client["bytes"] == 20_000
    conn = pmlab.the_connection(pmlab.postmortem(tmp_path / "run"), client, address=CLIENT)
    assert conn["packets"]["br-lan"] > 0 and conn["packets"]["ppp0"] > 0  # the replies left toward the client
    assert "PM009" not in [s["id"] for s in conn["suspects"]]
