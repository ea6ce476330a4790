"""`why-route capture`: the run directory, interfaces named with the netns, Ctrl-C and SIGKILL."""

import json
import os
import signal
import subprocess
import time

from tests.helpers.cli import why_route
from tests.postmortem import pmlab
from tests.postmortem.test_lab_cases import lab  # noqa: F401  (the module's lab fixture)
from tracer.capture import pcapio


def _children(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                found.append(int(entry))
    return found


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_run_directory_holds_named_interfaces_events_and_snapshot(lab, tmp_path):  # noqa: F811
    client = pmlab.transfer(lab, tmp_path / "run", server="send", client="download", size=100_000)
    assert client["error"] is None
    run = tmp_path / "run"
    assert sorted(p.name for p in run.iterdir()) == ["capture.json", "capture.pcapng", "conntrack.events",
                                                      "snapshot.json"]
    capture = pcapio.read(str(run / "capture.pcapng"))
    packets = sum(1 for _ in capture.packets())
    assert [i.name for i in capture.interfaces] == ["br-lan", "ppp0", "eth0.2"]
    assert all(i.description == f"{i.name} in netns {lab.ns('route')}" for i in capture.interfaces)
    meta = json.loads((run / "capture.json").read_text())
    assert meta["interrupted"] is True and meta["netns"] == lab.ns("route")
    assert sum(s["packets"] for s in meta["statistics"]) == packets > 100
    # the drop counters are recorded (not asserted 0: on a busy 2-core host dumpcap can fall behind)
    assert all(isinstance(s["kernel_drops"], int) for s in meta["statistics"])
    assert "123.150.232.74" in (run / "conntrack.events").read_text()
    # tshark reads the interface names too
    out = subprocess.run(["tshark", "-r", str(run / "capture.pcapng"), "-T", "fields", "-e", "frame.interface_name",
                          "-e", "frame.interface_description"], capture_output=True, text=True, check=True).stdout
    assert {line for line in out.splitlines()} >= {f"br-lan\tbr-lan in netns {lab.ns('route')}",
                                                   f"ppp0\tppp0 in netns {lab.ns('route')}"}


def test_duration_stops_by_itself(lab, tmp_path):  # noqa: F811
    result = why_route("capture", "--netns", lab.ns("route"), "-i", "ppp0", "--duration", "1", "-o",
                       str(tmp_path / "run"), timeout=30)
    assert result.returncode == 0, result.stderr
    assert "captured ppp0 0" in result.stderr
    assert json.loads((tmp_path / "run" / "capture.json").read_text())["interrupted"] is False


def test_nothing_keeps_running_after_sigkill_of_why_route(lab, tmp_path):  # noqa: F811
    proc = pmlab.start_capture(lab, tmp_path / "run")
    children = _children(proc.pid)
    names = set()
    for pid in children:
        with open(f"/proc/{pid}/comm") as f:
            names.add(f.read().strip())
    assert {"dumpcap", "conntrack"} <= names, names
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    deadline = time.time() + 5
    while time.time() < deadline and any(_alive(pid) for pid in children):
        time.sleep(0.05)
    assert not [pid for pid in children if _alive(pid)]


def test_unknown_interface_is_a_usage_error(lab, tmp_path):  # noqa: F811
    result = why_route("capture", "--netns", lab.ns("route"), "-i", "nosuch0", "--duration", "1", "-o",
                       str(tmp_path / "run"))
    assert result.returncode == 2
    assert "no interface nosuch0" in result.stderr


def test_sigterm_stops_cleanly_with_a_complete_run_directory(lab, tmp_path):  # noqa: F811
    proc = pmlab.start_capture(lab, tmp_path / "run")
    children = _children(proc.pid)
    lab.run("macbook", ["ping", "-c", "3", "-i", "0.2", "-W", "1", "8.8.8.8"], check=False)
    time.sleep(0.3)
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=20)
    assert proc.returncode == 128 + signal.SIGTERM
    run = tmp_path / "run"
    assert sorted(p.name for p in run.iterdir()) == ["capture.json", "capture.pcapng", "conntrack.events",
                                                      "snapshot.json"]
    assert json.loads((run / "capture.json").read_text())["interrupted"] is True
    assert sum(1 for _ in pcapio.read(str(run / "capture.pcapng")).packets()) >= 4  # the pings, both sides
    assert not [pid for pid in children if _alive(pid)]
