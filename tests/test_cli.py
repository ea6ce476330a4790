"""The command line a network engineer expects, and bad input that gives one line (issue 10, sections 3 and 4).

Each case runs the CLI, in a process of its own where the process matters (pipes, the
terminal, completion's environment variable), else in this process.
"""

from __future__ import annotations

import fcntl
import json
import os
import pty
import shutil
import signal
import struct
import subprocess
import termios
import time

import pytest

from tests.helpers.cli import REPO_ROOT, why_route, why_route_argv, why_route_in_process
from tracer import netns
from tracer.errors import ExitStatus

SNAPSHOT = "tests/explain/fixtures/ultimate-route.json"
EXPECTATIONS = "tests/lint/fixtures/seed-ultimate.toml"
ROOT = os.geteuid() == 0


def one_line(result, status, fragment):
    assert result.returncode == status, result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert fragment in result.stderr, result.stderr


# ------------------------------------------------------------ batch input

def test_help_lines_inside_a_batch_are_errors_for_that_line(tmp_path):
    result = why_route("batch", "--snapshot", SNAPSHOT, "-", input="--help\n192.168.1.169 8.8.8.8\n-h\n8.8.8.8\n")
    assert (result.returncode, result.stderr) == (0, "")
    docs = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(docs) == 4 and "Usage" not in result.stdout
    assert docs[0]["line"] == 1 and docs[0]["error"].startswith("--help is not a query option")
    assert docs[2]["line"] == 3 and docs[2]["error"].startswith("-h is not a query option")
    assert docs[0]["exit_status"] == ExitStatus.USAGE
    assert docs[1]["egress"]["dev"] == "ppp0" and docs[3]["flow"]["dst"] == "8.8.8.8"


# Each pair: a line batch parses without click or shlex, and the same query in a spelling only
# they read. Both must give the same answer.
SAME_QUERY_SPELT_TWICE = [
    ("192.168.1.169 8.8.8.8 --proto tcp --dport 443", "'192.168.1.169' 8.8.8.8 --proto=tcp --dport=443"),
    ("--iif br-lan --dsfield 0x10 192.168.1.169 1.1.1.1", "--iif br-lan --tos 0x10 192.168.1.169 1.1.1.1 # a comment"),
    ("8.8.8.8 --mark 0x1 --uid 0", '"8.8.8.8" --mark 0x1 --uid=0'),
    ("192.168.1.169 8.8.8.8 --sport 70000", "192.168.1.169 8.8.8.8 --sport=70000"),
    ("192.168.1.169 8.8.8.8 9.9.9.9", "192.168.1.169 8.8.8.8 '9.9.9.9'"),
]


def test_a_query_gets_the_same_answer_however_it_is_spelt():
    lines = [line for pair in SAME_QUERY_SPELT_TWICE for line in pair]
    result = why_route("batch", "--snapshot", SNAPSHOT, "-", input="\n".join(lines) + "\n")
    docs = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(docs) == len(lines)
    for plain, spelt in zip(docs[::2], docs[1::2], strict=True):
        for doc in (plain, spelt):
            doc.pop("line", None), doc.pop("query", None)
        assert plain == spelt
    assert docs[6]["error"] == "invalid source port '70000': out of range 0-65535"
    assert docs[8]["error"].startswith("expected [SRC] DST, got 3 addresses")


def test_a_file_of_queries_shared_among_the_cpus_gives_the_streams_answers(tmp_path):
    # A regular file of more than PARALLEL_MIN_LINES lines is shared out among forked workers;
    # stdin is answered line by line in one process. Same lines in, same lines out, same order.
    from tracer.app import PARALLEL_MIN_LINES

    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("one CPU: a batch is never shared out here")
    kinds = ["192.168.1.169 8.8.8.8 --proto tcp --dport {n}", "# a comment", "8.8.8.{n}", "10.0.0.{n} 8.8.8.x",
             "", "192.168.1.169 1.1.1.1 --sport {n} --proto udp"]
    lines = [kinds[n % len(kinds)].format(n=n % 250 + 1) for n in range(PARALLEL_MIN_LINES * 3)]
    queries = tmp_path / "queries.txt"
    queries.write_text("\n".join(lines) + "\n")
    from_file = why_route("batch", "--snapshot", SNAPSHOT, str(queries))
    streamed = why_route("batch", "--snapshot", SNAPSHOT, "-", input=queries.read_text())
    assert from_file.returncode == streamed.returncode == 0, from_file.stderr
    assert from_file.stdout == streamed.stdout
    numbers = [json.loads(line)["line"] for line in from_file.stdout.splitlines() if '"line"' in line[:200]]
    assert numbers == sorted(numbers) and len(from_file.stdout.splitlines()) == len(lines) * 4 // 6


def test_ctrl_c_in_a_batch_shared_among_the_cpus_is_one_line_and_leaves_no_worker(tmp_path):
    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("one CPU: a batch is never shared out here")
    queries = tmp_path / "queries.txt"
    queries.write_text("".join(f"192.168.1.169 8.8.8.{n % 250 + 1} --proto tcp --dport {n % 999 + 1}\n"
                               for n in range(30_000)))
    # A terminal's Ctrl-C reaches the whole process group: the batch and its workers.
    batch = subprocess.Popen([*why_route_argv(), "batch", "--snapshot", SNAPSHOT, str(queries)], cwd=REPO_ROOT,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)
    first_output = time.monotonic() + 1.5
    while time.monotonic() < first_output and batch.poll() is None:
        time.sleep(0.05)
    assert batch.poll() is None, "the batch ended before it could be interrupted"
    os.killpg(batch.pid, signal.SIGINT)
    _, err = batch.communicate(timeout=30)
    assert (batch.returncode, err.strip()) == (130, "why-route: interrupted")
    time.sleep(0.5)
    left = subprocess.run(["pgrep", "-g", str(batch.pid)], capture_output=True, text=True).stdout.split()
    assert left == [], f"workers left: {left}"


def test_the_plain_line_parser_gives_clicks_parameters():
    from tracer.cli import _QUERY_LINE, _plain_query_params

    for argv in (["8.8.8.8"], ["10.0.0.2", "8.8.8.8", "--iif", "eth0", "--oif", "ppp0", "--proto", "17",
                               "--sport", "5", "--dport", "53", "--mark", "0x10/0xff", "--tos", "4", "--uid", "1"],
                 ["--dsfield", "0x10", "8.8.8.8"]):
        with _QUERY_LINE.make_context("query", list(argv)) as ctx:
            assert _plain_query_params(argv) == ctx.params
    for only_click_reads in (["8.8.8.8", "--dport=53"], ["8.8.8.8", "--dport"], ["--", "8.8.8.8"],
                             ["8.8.8.8", "--dport", "1", "--dport", "2"], ["8.8.8.8", "--sport", "-1"],
                             ["8.8.8.8", "--vrf", "x"], []):
        assert _plain_query_params(only_click_reads) is None

def test_non_utf8_bytes_in_a_batch_are_an_error_for_that_line():
    process = subprocess.run([*why_route_argv(), "batch", "--snapshot", SNAPSHOT, "-"], cwd=REPO_ROOT,
                             input=b"192.168.1.169 8.8.8.8\n\xff\xfe 8.8.8.8\n8.8.8.8\n", capture_output=True)
    assert (process.returncode, process.stderr) == (0, b"")
    docs = [json.loads(line) for line in process.stdout.splitlines()]
    assert len(docs) == 3
    assert docs[1]["line"] == 2 and docs[1]["error"] == "not UTF-8 text (byte 1 of the line: b'\\xff')"
    assert "error" not in docs[0] and "error" not in docs[2]


@pytest.mark.parametrize("args, stdin", [
    (["batch", "--snapshot", SNAPSHOT, "-"], "192.168.1.169 8.8.8.8\n" * 300),
    (["192.168.1.169", "8.8.8.8", "--snapshot", SNAPSHOT], None),
    (["check", "--snapshot", SNAPSHOT], None),
    (["--json", "192.168.1.169", "8.8.8.8", "--snapshot", SNAPSHOT], None),
], ids=["batch", "explain", "check", "explain-json"])
def test_a_closed_pipe_is_not_an_error(args, stdin):
    """`why-route … | head -1`: the reader goes away before why-route writes; exit 0, silently."""
    process = subprocess.Popen([*why_route_argv(), *args], cwd=REPO_ROOT, stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    process.stdout.close()
    _out, err = process.communicate(stdin, timeout=120)
    assert (process.returncode, err) == (0, "")


def test_head_of_a_batch_in_a_shell_pipeline():
    batch = " ".join([*why_route_argv(), "batch", "--snapshot", SNAPSHOT, "-"])
    command = f"yes '192.168.1.169 8.8.8.8' | head -500 | {batch} | head -1; echo \"status ${{PIPESTATUS[2]}}\""
    result = subprocess.run(["bash", "-c", command], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    first, status = result.stdout.splitlines()
    assert json.loads(first)["egress"]["dev"] == "ppp0"
    assert status == "status 0" and result.stderr == ""


# ------------------------------------------------------------ verify

@pytest.mark.parametrize("toml, fragment", [
    ('[[expect]]\nfrom = "192.168.1.169"\nto = "8.8.8.8"\nproto = "tcp"\ndport = 99999\nleaves_via = "ppp0"\n',
     "expect #1: invalid destination port '99999': out of range 0-65535"),
    ('[[expect]]\nto = "8.8.8.8"\nuid = -1\nverdict = "sent"\n', "expect #1: invalid uid '-1'"),
    ('[[expect]]\nname = "mac via ppp"\nfrom = "192.168.1.169"\nto = "8.8.8.8"\nleaves_via = "ppp9"\n',
     "expect #1 (mac via ppp): leaves_via 'ppp9' is not an interface of snapshot "
     "tests/explain/fixtures/ultimate-route.json (did you mean 'ppp0'?)"),
    ('[[expect]]\nto = "8.8.8.8"\nverdict = "sent"\n[[expect]]\nfrom = "192.168.1.169"\nto = "8.8.8.8"\n'
     'iif = "wlan0"\nverdict = "forwarded"\n', "expect #2 (192.168.1.169 → 8.8.8.8): iif 'wlan0' is not an interface"),
])
def test_verify_refuses_impossible_expectations(tmp_path, toml, fragment):
    path = tmp_path / "router.toml"
    path.write_text(toml)
    one_line(why_route("verify", str(path), "--snapshot", SNAPSHOT), ExitStatus.USAGE, f"{path}: {fragment}")


# ------------------------------------------------------------ options before the addresses

@pytest.mark.parametrize("args", [
    ["--json", "192.168.1.169", "8.8.8.8", "--snapshot", SNAPSHOT],
    ["--snapshot", SNAPSHOT, "--json", "192.168.1.169", "8.8.8.8"],
    ["--traceback", "--json", "192.168.1.169", "8.8.8.8", "--snapshot", SNAPSHOT],
    ["--color", "never", "--json", "--snapshot", SNAPSHOT, "192.168.1.169", "8.8.8.8"],
    ["explain", "--json", "--snapshot", SNAPSHOT, "192.168.1.169", "8.8.8.8"],
])
def test_options_may_come_before_the_addresses(capsys, args):
    status, out, err = why_route_in_process(capsys, *args)
    assert (status, err) == (0, "")
    assert json.loads(out)["egress"]["dev"] == "ppp0"


def test_netns_before_the_address_is_explains_option(capsys):
    status, _out, err = why_route_in_process(capsys, "--netns", "wr-no-such-ns", "8.8.8.8")
    assert status == ExitStatus.USAGE and err.count("\n") == 1, err
    assert err.startswith("why-route: error: network namespace 'wr-no-such-ns' does not exist")


def test_version_and_help_still_work():
    assert why_route("--version").stdout.startswith("why-route, version ")
    for flag in ("--help", "-h"):
        result = why_route(flag)
        assert result.returncode == 0 and "Commands:" in result.stdout and "--color" in result.stdout
    assert "--snapshot FILE" in why_route("--json", "--help").stdout  # explain's help


# ------------------------------------------------------------ lint --snapshot

def test_lint_takes_snapshot_like_every_command():
    for command in ("explain", "batch", "check", "lint", "verify"):
        assert "--snapshot FILE" in why_route(command, "--help").stdout, command
    assert "--on" not in why_route("lint", "--help").stdout
    refused = why_route("lint", "x.sh", "--on", SNAPSHOT)
    assert refused.returncode == ExitStatus.USAGE and "No such option '--on'" in refused.stderr


# ------------------------------------------------------------ errors under --json

@pytest.mark.parametrize("args, status, message", [
    (["--json", "8.8.8.x", "--snapshot", SNAPSHOT], 2, "invalid destination address '8.8.8.x'"),
    (["check", "--snapshot", "/nonexistent.json", "--json"], 2,
     "cannot read snapshot /nonexistent.json: No such file or directory"),
    (["check", "--json", "--select", "WR999", "--snapshot", SNAPSHOT], 2, "unknown rule ID 'WR999'"),
    (["verify", "/nonexistent.toml", "--json"], 2, "cannot read expectations /nonexistent.toml: No such file"),
    (["check", "--json", "--bogus"], 2, "No such option"),
    (["batch", "--snapshot", "/nonexistent.json", "-"], 2, "cannot read snapshot /nonexistent.json"),
])
def test_errors_under_json_are_a_json_object_and_one_line(args, status, message):
    result = why_route(*args, input="")
    doc = json.loads(result.stdout)
    assert result.returncode == status == doc["exit_status"]
    assert list(doc) == ["schema", "error", "exit_status"] and doc["schema"] == 2
    assert message in doc["error"]
    assert result.stderr == f"why-route: error: {doc['error']}\n"


def test_errors_without_json_stay_off_stdout():
    result = why_route("8.8.8.x", "--snapshot", SNAPSHOT)
    assert (result.returncode, result.stdout) == (2, "")


# ------------------------------------------------------------ one shape in every document

SOURCE = {"kind": "snapshot", "name": SNAPSHOT, "after": None}


def test_every_document_names_its_source_the_same_way():
    explain = json.loads(why_route("--json", "192.168.1.169", "8.8.8.8", "--snapshot", SNAPSHOT).stdout)
    batch = why_route("batch", "--snapshot", SNAPSHOT, "-", input="192.168.1.169 8.8.8.8\n8.8.8.x\n").stdout
    check = json.loads(why_route("check", "--snapshot", SNAPSHOT, "--json").stdout)
    verify = json.loads(why_route("verify", EXPECTATIONS, "--snapshot", SNAPSHOT, "--json").stdout)
    for doc in (explain, check, verify, *map(json.loads, batch.splitlines())):
        assert doc["source"] == SOURCE


def test_summary_is_an_object_of_counts_and_fix_a_list_everywhere():
    check = json.loads(why_route("check", "--snapshot", SNAPSHOT, "--json").stdout)
    verify = json.loads(why_route("verify", EXPECTATIONS, "--snapshot", SNAPSHOT, "--json").stdout)
    assert check["summary"] == {"error": 0, "warning": 3, "info": 0}
    assert verify["summary"] == {"ok": 3, "failed": 0}
    # A finding's FIX (docs/json.md) holds its commands as a list, as lint's lines do.
    assert all(isinstance(f["fix"]["commands"] if isinstance(f["fix"], dict) else f["fix"], list)
               for f in check["findings"])


@pytest.mark.skipif(not ROOT or shutil.which("ip") is None, reason="lint replays into a namespace: needs root")
def test_lint_names_its_source_and_gives_fix_as_a_list(tmp_path):
    script = tmp_path / "fix.sh"
    script.write_text("ip route add default via 123.150.232.1 dev ppp0\n")
    doc = json.loads(why_route("lint", str(script), "--snapshot", SNAPSHOT, "--json").stdout)
    assert doc["source"] == SOURCE
    assert isinstance(doc["summary"], dict) and all(isinstance(line["fix"], list) for line in doc["lines"])
    assert all(isinstance(f["after"]["text"], str) for f in doc["flows"])


# ------------------------------------------------------------ shell completion

def complete(*words: str, env: dict | None = None) -> list[str]:
    """What bash completion offers for the command line `why-route WORDS…` (click's protocol)."""
    line = ["why-route", *words]
    environment = {**os.environ, "_WHY_ROUTE_COMPLETE": "bash_complete", "COMP_WORDS": " ".join(line),
                   "COMP_CWORD": str(len(line) - 1), **(env or {})}
    result = subprocess.run(why_route_argv(), env=environment, capture_output=True, text=True, cwd=REPO_ROOT,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    return [item.split(",", 1)[1] for item in result.stdout.splitlines()]


def test_completion_script_is_documented_and_served():
    result = subprocess.run(why_route_argv(), env={**os.environ, "_WHY_ROUTE_COMPLETE": "bash_source"},
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and "_why_route_completion" in result.stdout
    assert "_WHY_ROUTE_COMPLETE=bash_source why-route" in (REPO_ROOT / "docs" / "completion.md").read_text()


def test_completion_of_commands_options_and_values():
    assert {"explain", "batch", "snapshot", "check", "rules", "lint", "verify", "lab"} <= set(complete(""))
    assert complete("li") == ["lint"]
    assert {"--color", "--colour"} == set(complete("--co"))
    assert complete("--color", "") == ["auto", "always", "never"]
    assert "--snapshot" in complete("check", "--")
    variants = set(complete("lab", "up", "--variant", ""))
    assert variants == {"slow", "faster", "ultimate", "ultimate-nosnat", "blog-as-written"}
    assert "macbook" in complete("lab", "exec", "") and "route" in complete("lab", "exec", "")
    assert complete("rules", "wr01") == [f"WR01{i}" for i in range(10)]
    assert complete("check", "--select", "WR001,WR02") == [f"WR001,WR02{i}" for i in range(10)]


@pytest.mark.skipif(not ROOT or shutil.which("ip") is None, reason="makes a network namespace: needs root")
def test_completion_of_namespace_names():
    name = netns.owned_name("wrcomp-")
    with netns.Teardown() as undo:
        undo.namespace(name)
        for words in (("--netns", "wrcomp-"), ("check", "--netns", "wrcomp-"), ("batch", "--netns", "wrcomp-"),
                      ("snapshot", "--netns", "wrcomp-"), ("lint", "x.sh", "--netns", "wrcomp-")):
            assert name in complete(*words), words


# ------------------------------------------------------------ colour and width

ESC = "\033["


@pytest.mark.parametrize("args, env, coloured", [
    ([], {}, False),
    ([], {"FORCE_COLOR": "1"}, True),
    ([], {"FORCE_COLOR": "0"}, False),
    ([], {"FORCE_COLOR": "1", "NO_COLOR": "1"}, False),
    (["--color", "always"], {}, True),
    (["--color", "always"], {"NO_COLOR": "1"}, True),
    (["--color", "never"], {"FORCE_COLOR": "1"}, False),
    (["--colour=always"], {}, True),
])
def test_colour(args, env, coloured):
    environment = {k: v for k, v in os.environ.items() if k not in ("NO_COLOR", "FORCE_COLOR")}
    for command in (["192.168.1.169", "8.8.8.8"], ["check"]):
        result = subprocess.run([*why_route_argv(), *args, *command, "--snapshot", SNAPSHOT], cwd=REPO_ROOT,
                                env={**environment, **env}, capture_output=True, text=True, timeout=60)
        assert (ESC in result.stdout) is coloured, (command, result.stderr)


def on_a_terminal(columns: int, *args: str) -> str:
    """The CLI's output on a pseudo-terminal `columns` wide."""
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 50, columns, 0, 0))
    environment = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
    process = subprocess.Popen([*why_route_argv(), "--color", "never", *args], cwd=REPO_ROOT, stdout=follower,
                               stderr=subprocess.PIPE, env=environment)
    os.close(follower)
    chunks = []
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # EIO: the follower side closed
            break
        if not chunk:
            break
        chunks.append(chunk)
    process.wait(timeout=60)
    os.close(leader)
    return b"".join(chunks).decode().replace("\r\n", "\n")


def test_text_wraps_to_the_terminal_width():
    narrow = on_a_terminal(70, "check", "--snapshot", SNAPSHOT)
    wide = on_a_terminal(160, "check", "--snapshot", SNAPSHOT)
    message_lines = [line for line in narrow.splitlines() if line.startswith("      ") and "fix:" not in line]
    assert message_lines and max(len(line) for line in message_lines) <= 70
    assert len(wide.splitlines()) < len(narrow.splitlines())
    piped = why_route("check", "--snapshot", SNAPSHOT).stdout
    assert max(len(line) for line in piped.splitlines() if "fix:" not in line and "check:" not in line) <= 100


def test_a_bug_under_json_is_a_json_object_too():
    from tests.test_exit_status import BUG, why_route_after

    result = why_route_after(BUG.replace('"snapshot"', '"check"'), "check", "--json", "--snapshot", SNAPSHOT)
    doc = json.loads(result.stdout)
    assert result.returncode == doc["exit_status"] == ExitStatus.BUG
    assert doc["error"].startswith("why-route: bug: RuntimeError: boom; please report it")
    assert result.stderr == doc["error"] + "\n"
