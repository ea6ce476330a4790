"""`why-route capture` shows the kernel's drops live on its progress line, as a terminal shows them:
with a 1 MiB buffer and dumpcap stopped (SIGSTOP) while 30,000 UDP packets cross the lab router,
the line printed while dumpcap is still stopped already counts the drops, and they are exactly
the ones the closing line reports (nothing is dropped once dumpcap reads again); dumpcap's own
queue drops, which have no live source, are said to come at stop."""

import os
import pty
import re
import subprocess
import threading
import time

from tests.postmortem import pmlab
from tests.postmortem.test_capture_drops import INTERFACES, _crossed, _send, lab  # noqa: F401  (the lab fixture)
from tracer.capture import live

PER_INTERFACE = re.compile(r"(?P<name>[\w.-]+) (?P<packets>\d+) \(kernel drops (?P<drops>\d+)\)")
CLOSING = re.compile(r"(?P<name>[\w.-]+) (?P<packets>\d+) \(drops: kernel (?P<kernel>\d+), capture (?P<capture>\d+)\)")


class Terminal:
    """The master side of a pty: everything written to it, as (arrival time, text) chunks."""

    def __init__(self, master: int):
        self.master, self.chunks, self.lock = master, [], threading.Lock()
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self):
        while True:
            try:
                data = os.read(self.master, 4096)
            except OSError:  # EIO: the last writer closed the pty
                return
            if not data:
                return
            with self.lock:
                self.chunks.append((time.monotonic(), data.decode(errors="replace")))

    def lines_after(self, since: float) -> list[str]:
        """Progress lines (the CLI rewrites its line with \\r) that arrived after `since`."""
        with self.lock:
            text = "".join(t for at, t in self.chunks if at > since)
        return [line.strip() for line in re.split(r"[\r\n]", text) if line.strip()]

    def close(self):
        self.thread.join(5)
        os.close(self.master)


def _progress_after(terminal: Terminal, since: float, count: int, timeout: float = 10.0) -> list[str]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = [line for line in terminal.lines_after(since) if line.startswith("capturing")]
        if len(found) >= count:
            return found
        time.sleep(0.1)
    raise AssertionError(f"fewer than {count} progress lines: {terminal.lines_after(since)}")


def test_progress_line_counts_kernel_drops_while_dumpcap_is_stopped(lab, tmp_path):  # noqa: F811
    _crossed(lab)
    master, slave = pty.openpty()
    try:
        proc = pmlab.start_capture(lab, tmp_path / "run", INTERFACES, "udp port 9", ("--buffer", "1"), stderr=slave)
    finally:
        os.close(slave)
    terminal = Terminal(master)
    dumpcap = subprocess.run(["pgrep", "-P", str(proc.pid), "-x", "dumpcap"], capture_output=True, text=True,
                             check=True).stdout.split()[0]
    try:
        subprocess.run(["kill", "-STOP", dumpcap], check=True)  # its 1 MiB rings fill up
        try:
            _send(lab, "macbook", 30000)
            sent = time.monotonic()
            # the second line after the sending ended was read after it (the reads come one by one)
            while_stopped = _progress_after(terminal, sent, 2)[1]
        finally:
            subprocess.run(["kill", "-CONT", dumpcap], check=True)
        time.sleep(0.5)
    finally:
        pmlab.stop_capture(proc)
        terminal.close()
    crossed = _crossed(lab)
    live = {m["name"]: (int(m["packets"]), int(m["drops"])) for m in PER_INTERFACE.finditer(while_stopped)}
    assert set(live) == set(INTERFACES), while_stopped
    assert while_stopped.endswith("; capture drops: at stop"), while_stopped
    assert live["br-lan"][1] > 0 and live["ppp0"][1] > 0 and live["eth0.2"] == (0, 0), while_stopped
    closing = next(line for line in terminal.lines_after(0) if line.startswith("captured "))
    final = {m["name"]: (int(m["packets"]), int(m["kernel"]), int(m["capture"])) for m in CLOSING.finditer(closing)}
    for name in INTERFACES:
        packets, kernel, capture = final[name]
        assert packets + kernel + capture == crossed[name], (closing, crossed)
        assert kernel == live[name][1], (while_stopped, closing)  # no drop once dumpcap reads again


def test_progress_line_at_a_low_rate_counts_every_packet_and_no_drop(lab, tmp_path):  # noqa: F811
    master, slave = pty.openpty()
    try:
        proc = pmlab.start_capture(lab, tmp_path / "run", INTERFACES, "udp port 9", stderr=slave)
    finally:
        os.close(slave)
    terminal = Terminal(master)
    try:
        sending = time.monotonic()
        _send(lab, "macbook", 1000)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:  # until dumpcap has written them all
            done = [line for line in _progress_after(terminal, sending, 1)
                    if "br-lan 1000 " in line and "ppp0 1000 " in line]
            if done:
                break
            time.sleep(0.2)
    finally:
        pmlab.stop_capture(proc)
        terminal.close()
    assert done, terminal.lines_after(sending)
    # read from the kernel's counters: the line would say "drops: at stop" if it could not
    assert done[-1].startswith("capturing") and done[-1].endswith(
        ": br-lan 1000 (kernel drops 0), ppp0 1000 (kernel drops 0), eth0.2 0 (kernel drops 0); capture drops: at stop"
    ), done[-1]


def test_progress_line_without_a_live_source_says_the_drops_come_at_stop():
    # pidfd_getfd refused (an old kernel, no ptrace rights): no number is made up
    line = live.Progress({"br-lan": 5, "ppp0": 3}, 1.25, None).line()
    assert line == "capturing   1.2 s: br-lan 5, ppp0 3 (drops: at stop)"
