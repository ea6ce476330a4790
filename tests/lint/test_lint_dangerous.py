"""Issue 10, section 5: lint never calls a dangerous script fine (on the seed lab's Route, real tools).

Destructive lines are warned about before anything else and their effect on every key flow is shown;
bash's syntax errors fail; shell blocks run as one step; a mistyped target is an unknown target; a
renumbered rule's finding is not new.
"""

import functools
import json
import os

from tests.helpers.cli import why_route
from tests.lint.lint_helpers import replay_leftovers
from tracer.checks import engine
from tracer.collect import snapshot
from tracer.lint.run import lint_state

DESTROY = ("ip link del ppp0\n"
           "iptables -t nat -F\n"
           "nft flush ruleset\n"
           "ip rule flush\n"
           "ip route flush table main\n"
           "ip link set eth0.2 down\n"
           "sysctl -w net.ipv4.ip_forward=0\n"
           "ip route flush cache\n")


@functools.cache
def _snapshot_option() -> str:
    """lint's option for a snapshot: `--snapshot` once issue 10's rename is in, `--on` before."""
    return "--snapshot" if "--snapshot" in why_route("lint", "--help").stdout else "--on"


def lint(script, snap, *args):
    return why_route("lint", str(script), _snapshot_option(), snap, *args, no_color=True)


def stale_replays() -> list[str]:
    """Replay namespaces whose process is gone (other test runs may have live ones meanwhile)."""
    stale = []
    for path in replay_leftovers():
        pid = path.rsplit("/", 1)[-1].split("-")[1]
        if pid.isdigit() and not os.path.exists(f"/proc/{pid}"):
            stale.append(path)
    return stale


def fix(line: dict) -> str:
    """A JSON line's `fix` as one command (it is becoming a list of commands: issue 10, section 4)."""
    value = line["fix"]
    return "\n".join(value) if isinstance(value, list) else value


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_destructive_lines_are_warned_first_with_what_they_destroy(seed, tmp_path):
    result = lint(write(tmp_path, "destroy.sh", DESTROY), seed["ultimate"])
    assert result.returncode == 0, result.stderr  # every line runs: the script is valid, and dangerous
    out = result.stdout
    flat = " ".join(out.split())
    assert out.index("WARNING: 7 lines of this script destroy configuration:") < out.index("line 1  ok")
    for expected in (
            "line 1: ip link del ppp0: deletes interface ppp0 (123.150.232.74 peer 123.150.232.1)",
            "line 2: iptables -t nat -F: deletes every rule of every chain of iptables table nat (2 rules)",
            "line 3: nft flush ruleset: deletes every nftables table (ip nat)",
            "line 4: ip rule flush: deletes every ip rule except priority 0 (3 rules)",
            "line 5: ip route flush table main: deletes every route of table main (1 route, default via 10.10.149.1)",
            "line 6: ip link set eth0.2 down: takes interface eth0.2 down (10.10.149.4/24)",
            "line 7: sysctl -w net.ipv4.ip_forward=0: turns forwarding off"):
        assert expected in flat, expected
    assert "line 8:" not in flat  # `ip route flush cache` destroys nothing
    assert "after the script, 6 of 6 key flows no longer work:" in out
    assert "0 failed, 0 not checked, 8 ok, 7 destructive (see WARNING)" in out
    # Every key flow, from the state before the script, with what the script does to it.
    assert "after the script, 192.168.1.169 → 8.8.8.8 is unreachable: routing fails with EHOSTUNREACH" in flat
    assert "before: leaves ppp0 via 123.150.232.1, table sunusroute (rule 32765)" in flat
    assert "not explained" not in out
    assert not stale_replays()


def test_destructive_script_in_json(seed, tmp_path):
    result = lint(write(tmp_path, "destroy.sh", DESTROY), seed["ultimate"], "--json")
    doc = json.loads(result.stdout)
    assert [w["line"] for w in doc["warnings"]] == [1, 2, 3, 4, 5, 6, 7]
    assert doc["warnings"][0] == {"line": 1, "text": "ip link del ppp0", "command": "ip link del ppp0",
                                  "destroys": "deletes interface ppp0 (123.150.232.74 peer 123.150.232.1) "
                                              "and the 1 route through it"}
    assert len(doc["flows"]) == 6 and all(f["broken"] for f in doc["flows"])
    flow = next(f for f in doc["flows"] if (f["src"], f["dst"]) == ("192.168.1.169", "8.8.8.8"))
    assert flow["before"]["leaves_via"] == "ppp0" and flow["after"]["verdict"] == "unreachable"
    assert flow["effect"].startswith("after the script, 192.168.1.169 → 8.8.8.8 is unreachable")


def test_a_script_that_deletes_the_lan_still_shows_its_flows(seed, tmp_path):
    result = lint(write(tmp_path, "lan.sh", "ip link del br-lan\n"), seed["ultimate"], "--json")
    doc = json.loads(result.stdout)
    assert doc["warnings"][0]["destroys"].startswith("deletes interface br-lan (192.168.1.1/24)")
    flow = next(f for f in doc["flows"] if (f["src"], f["dst"]) == ("192.168.1.169", "8.8.8.8"))
    # Not "enters by eth0.2 and is forwarded": the LAN's traffic has nowhere to come in.
    assert flow["broken"] and flow["after"]["verdict"] == "unreachable"
    assert flow["effect"] == ("after the script, 192.168.1.169 → 8.8.8.8 is unreachable: "
                              "its input interface br-lan no longer exists")
    text = lint(tmp_path / "lan.sh", seed["ultimate"]).stdout
    assert "after the script, 192.168.1.169 → 8.8.8.8 is unreachable: its input interface br-lan no longer exists" \
        in " ".join(text.split())


def test_an_unclosed_quote_fails_as_bash_refuses_it(seed, tmp_path):
    script = write(tmp_path, "quote.sh", "ip route add default via 10.10.149.1 dev eth0.2 table 100\n"
                                         "echo \"hello\n"
                                         "ip rule add from 192.168.1.0/24 table 100\n")
    result = lint(script, seed["ultimate"], "--json")
    assert result.returncode == 1, result.stdout
    lines = {r["line"]: r for r in json.loads(result.stdout)["lines"]}
    assert lines[1]["status"] == "ok"  # bash runs what comes before the error
    assert lines[2]["status"] == "failed"
    assert lines[2]["message"] == "bash: line 2: unexpected EOF while looking for matching `\"'"
    assert "opened on line 2 is never closed" in lines[2]["why"] and "bash -n" in lines[2]["why"]
    assert fix(lines[2]) == 'echo "hello"'
    assert lines[3]["status"] == "not checked"
    assert lines[3]["message"] == "not run: bash refuses the script at its syntax error on line 2"
    text = lint(script, seed["ultimate"]).stdout
    assert "line 2  FAILED       echo \"hello" in text and "1 failed" in text


def test_an_unclosed_if_fails(seed, tmp_path):
    result = lint(write(tmp_path, "if.sh", "ip rule show\nif true; then\n  ip rule show\n"), seed["ultimate"],
                  "--json")
    assert result.returncode == 1
    failed = [r for r in json.loads(result.stdout)["lines"] if r["status"] == "failed"]
    assert [r["line"] for r in failed] == [2]
    assert "unexpected end of file" in failed[0]["message"]
    assert failed[0]["why"].startswith("`if` on line 2 has no `fi`")


BLOCKS = ("if ! ip rule show | grep -q sunusroute; then\n"
          "  ip rule add from 192.168.1.169 table 7375\n"
          "fi\n"
          "for t in 100 101; do\n"
          "  ip route add default via 10.10.149.1 dev eth0.2 table $t\n"
          "done\n"
          "case \"$1\" in\n"
          "  start) ip route add 10.77.0.0/16 via 10.10.149.1 ;;\n"
          "  *) ip route add 10.78.0.0/16 via 10.10.149.1 ;;\n"
          "esac\n")


def test_if_for_and_case_blocks_run_as_one_step(seed, tmp_path):
    result = lint(write(tmp_path, "blocks.sh", BLOCKS), seed["slow"], "--json")
    assert result.returncode == 0, result.stdout
    doc = json.loads(result.stdout)
    assert [(r["line"], r["last_line"], r["status"]) for r in doc["lines"]] == [(1, 3, "ok"), (4, 6, "ok"),
                                                                               (7, 10, "ok")]
    assert "text pasted" not in result.stdout
    text = lint(tmp_path / "blocks.sh", seed["slow"]).stdout
    assert "line 1  ok           if ! ip rule show | grep -q sunusroute; then … fi  (lines 1–3, one block)" in text
    assert "line 4  ok           for t in 100 101; do … done  (lines 4–6, one block)" in text
    # The blocks really ran: the rule (slow has none from 192.168.1.169), both tables' routes, case's `*)`.
    with lint_report(seed["slow"], tmp_path / "blocks.sh") as report:
        routes = {(r.table, r.prefix) for r in report.after.routes}
        assert [r.table for r in report.after.rules if r.src == "192.168.1.169"] == [7375]
    assert {(100, "default"), (101, "default"), (254, "10.78.0.0/16")} <= routes
    assert (254, "10.77.0.0/16") not in routes


def test_a_failing_command_in_a_block_is_explained(seed, tmp_path):
    script = write(tmp_path, "loop.sh", "for t in 100 sunusroute; do\n"
                                        "  ip route add default via 10.10.149.1 dev eth0.2 table $t\n"
                                        "done\n")
    result = lint(script, seed["ultimate"], "--json")
    assert result.returncode == 1
    line = json.loads(result.stdout)["lines"][0]
    assert (line["line"], line["status"], line["message"]) == (1, "failed", "RTNETLINK answers: File exists")
    assert line["command"] == "ip route add default via 10.10.149.1 dev eth0.2 table sunusroute"
    assert line["why"].startswith("in the block, `ip route add default via 10.10.149.1 dev eth0.2 table "
                                  "sunusroute` failed: a route for default already exists in table sunusroute")


def test_a_block_with_a_host_command_does_not_run(seed, tmp_path):
    marker = tmp_path / "touched"
    script = write(tmp_path, "host.sh", f"for f in a; do\n  touch {marker}\n  ip rule flush\ndone\n"
                                        "while true; do\n  ip route add $NET via 10.10.149.1\ndone\n")
    doc = json.loads(lint(script, seed["ultimate"], "--json").stdout)
    assert [(r["line"], r["status"]) for r in doc["lines"]] == [(1, "not checked"), (5, "not checked")]
    assert doc["lines"][0]["message"] == "`touch` edits files of the host"
    assert doc["lines"][1]["message"] == "$NET is a shell variable whose value only a shell knows"
    assert not marker.exists()
    assert all(not f["changed"] for f in doc["flows"])  # the ip rule flush inside did not run either


def test_a_mistyped_target_is_an_unknown_target(seed, tmp_path):
    script = write(tmp_path, "dropp.sh", "iptables -A FORWARD -i ppp0 -j DROPP\n"
                                         "iptables -t nat -A POSTROUTING -o ppp0 -j MASQUERAD\n"
                                         "iptables -A FORWRD -j DROP\n")
    result = lint(script, seed["ultimate"], "--json")
    assert result.returncode == 1
    lines = {r["line"]: r for r in json.loads(result.stdout)["lines"]}
    assert "Chain 'DROPP' does not exist" in lines[1]["message"]
    assert lines[1]["why"].startswith("there is no target DROPP (not a built-in target, nor a chain of table filter")
    assert lines[1]["why"].endswith("did you mean DROP?")
    assert "no iptables table" not in lines[1]["why"]
    assert fix(lines[1]) == "iptables -A FORWARD -i ppp0 -j DROP"
    assert fix(lines[2]) == "iptables -t nat -A POSTROUTING -o ppp0 -j MASQUERADE"
    assert lines[3]["why"].startswith("there is no chain FORWRD") and fix(lines[3]) == "iptables -A FORWARD -j DROP"


def test_a_renumbered_rule_is_not_a_new_finding(seed, tmp_path):
    script = write(tmp_path, "renumber.sh", "ip rule del priority 32765\n"
                                            "ip rule add from 192.168.1.169 table sunusroute priority 100\n")
    doc = json.loads(lint(script, seed["ultimate"], "--json").stdout)
    assert doc["summary"]["failed"] == 0
    assert doc["new_findings"] == []
    # The same WR007 exists before and after, only its rule's priority differs (the old comparison said "new").
    with lint_report(seed["ultimate"], script) as report:
        before = {f.message for f in engine.run(report.before) if f.id == "WR007"}
        after = {f.message for f in engine.run(report.after) if f.id == "WR007"}
    assert before and after and not before & after
    assert any("rule 100:" in m for m in after)
    # A genuinely new finding still is one: a second rule shadowed by the first.
    shadow = write(tmp_path, "shadow.sh", "ip rule add from 192.168.1.169 table sunusroute priority 100\n")
    assert "WR008" in [f["id"] for f in json.loads(lint(shadow, seed["ultimate"], "--json").stdout)["new_findings"]]


class lint_report:
    """The LintReport of `script` on snapshot `snap`, in this process (root: the replay needs it)."""

    def __init__(self, snap, script):
        self.report = lint_state(snapshot.load(snap), str(script))

    def __enter__(self):
        return self.report

    def __exit__(self, *exc):
        assert not replay_leftovers(os.getpid())


def test_a_destructive_command_inside_a_block_is_warned_about(seed, tmp_path):
    script = write(tmp_path, "block.sh", "if true; then\n  sudo ip rule flush\nfi\n")
    result = lint(script, seed["ultimate"])
    assert result.returncode == 0, result.stdout
    flat = " ".join(result.stdout.split())
    assert "WARNING: 1 line of this script destroys configuration:" in flat
    assert "line 1: if true; then … fi: `ip rule flush` deletes every ip rule except priority 0 (3 rules)" in flat
    assert "after the script, 192.168.1.169 → 8.8.8.8 is unreachable" in flat  # sudo dropped: it really ran
