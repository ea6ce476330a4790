"""The asymmetric return path where the router's strict reverse-path filter drops the replies:
requests leave ppp0, the server's replies come back on eth0.2 (pmlab.replies_by_eth0_2), and
`rp_filter=1` on eth0.2 drops them because the route back to the server leaves by ppp0. The
connection never opens; the post-mortem must name the rp_filter drop, tied to the sysctl and the
route back, with the exact fix — which, run as printed, makes the download work."""

from tests.postmortem import pmlab
from tests.postmortem.test_lab_cases import lab  # noqa: F401  (the module's lab fixture)

RP_FILTER = "net.ipv4.conf.eth0/2.rp_filter"  # sysctl(8) spells the dot in eth0.2 as /


def test_strict_rp_filter_dropping_replies_from_another_uplink(lab, tmp_path):  # noqa: F811
    lab.run("route", ["sysctl", "-qw", f"{RP_FILTER}=1"])
    try:
        with pmlab.replies_by_eth0_2(lab):
            client = pmlab.transfer(lab, tmp_path / "run", server="send", client="download", size=20_000,
                                    timeout=2.5, address="9.9.9.9")
        dropped = lab.run("route", ["nstat", "-az", "TcpExtIPReversePathFilter"]).stdout
    finally:
        lab.run("route", ["sysctl", "-qw", f"{RP_FILTER}=0"])
    assert client["error"] == "TimeoutError"  # the connection never opened
    assert int(dropped.split()[-2]) > 0, dropped  # the kernel counted the drops

    conn = pmlab.the_connection(pmlab.postmortem(tmp_path / "run"), client)
    assert conn["verdict"] == "failed"
    assert conn["reply_path"] == {"requests_leave": "ppp0", "replies_arrive": "eth0.2", "asymmetric": True}
    top = conn["suspects"][0]
    assert top["id"] == "PM008", [s["id"] for s in conn["suspects"]]
    # the evidence: SYN/ACKs seen arriving on eth0.2, none leaving toward the LAN
    arrived = [e for e in top["evidence"] if e["packet"] and e["interface"] == "eth0.2"]
    assert arrived and all("SYN/ACK" in e["text"] for e in arrived)
    never_left = [e for e in top["evidence"] if e["interface"] == "br-lan"]
    assert never_left and "no SYN/ACK left toward 192.168.1.169" in never_left[0]["text"]
    sysctl = next(c for c in top["config"] if c["kind"] == "sysctl")
    assert (sysctl["key"], sysctl["value"], sysctl["effective"]) == ("net.ipv4.conf.eth0.2.rp_filter", 1, 1)
    back = next(c for c in top["config"] if c["kind"] == "route back")
    assert back["dev"] == "ppp0" and back["table"] == "sunusroute" and "9.9.9.9" in back["text"]
    assert any(c["kind"] == "ip rule" and c["priority"] == 32765 for c in top["config"])
    assert top["fix"]["commands"][0] == f"sysctl -w {RP_FILTER}=2"
    assert "PM007" in [s["id"] for s in conn["suspects"]]  # the asymmetry behind it, ranked below

    # the fix, run as printed, makes the same download work
    lab.run("route", ["sysctl", "-qw", f"{RP_FILTER}=1"])
    try:
        lab.run("route", top["fix"]["commands"][0].split())
        with pmlab.replies_by_eth0_2(lab):
            fixed = pmlab.transfer(lab, tmp_path / "fixed", server="send", client="download", size=20_000,
                                   timeout=2.5, address="9.9.9.9")
    finally:
        lab.run("route", ["sysctl", "-qw", f"{RP_FILTER}=0"])
    assert fixed["error"] is None and fixed["bytes"] == 20_000


def test_replies_dropped_by_a_rule_not_rp_filter_stay_pm007(lab, tmp_path):  # noqa: F811
    # rp_filter off; a forward rule drops the replies instead: the simulation clears rp_filter
    lab.run("route", ["nft", "-f", "-"], input="table inet pmrp {\n chain pmfwd { type filter hook forward priority 0; "
                                                "ip saddr 9.9.9.9 drop; }\n}\n")
    try:
        with pmlab.replies_by_eth0_2(lab):
            client = pmlab.transfer(lab, tmp_path / "run", server="send", client="download", size=20_000,
                                    timeout=2.0, address="9.9.9.9")
    finally:
        lab.run("route", ["nft", "delete", "table", "inet", "pmrp"])
    assert client["error"] == "TimeoutError"
    conn = pmlab.the_connection(pmlab.postmortem(tmp_path / "run"), client)
    assert conn["verdict"] == "failed"
    ids = [s["id"] for s in conn["suspects"]]
    assert ids[0] == "PM007" and "PM008" not in ids, ids
    assert conn["suspects"][0]["score"] == 92 and "never reach the client" in conn["suspects"][0]["summary"]
