"""Running `why-route trace` in a process of its own, as a user does, while a test makes traffic."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
from pathlib import Path

from tests.helpers.cli import REPO_ROOT, why_route_argv

STARTED = "Ctrl-C to stop"
STARTED_TRACES: list[RunningTrace] = []  # killed after each test by conftest (a failed test leaves none)


class RunningTrace:
    """`why-route trace --json ARGS` started; `started()` waits for its probes to be attached."""

    def __init__(self, *args: str, env: dict[str, str] | None = None, json_lines: bool = True):
        self.proc = subprocess.Popen([*why_route_argv(), "trace", *(["--json"] if json_lines else []), *args],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO_ROOT,
                                     env={**os.environ, **(env or {})})
        STARTED_TRACES.append(self)
        self.stderr_lines: list[str] = []
        self._ready = threading.Event()
        self._reader = threading.Thread(target=self._read_stderr, daemon=True)
        self._reader.start()

    def _read_stderr(self) -> None:
        for line in self.proc.stderr:
            self.stderr_lines.append(line)
            if STARTED in line:
                self._ready.set()
        self._ready.set()

    @property
    def stderr(self) -> str:
        return "".join(self.stderr_lines)

    def started(self, timeout: float = 20) -> RunningTrace:
        if not self._ready.wait(timeout) or self.proc.poll() is not None and STARTED not in self.stderr:
            self.kill()
            raise AssertionError(f"trace did not start in {timeout} s: {self.stderr}")
        return self

    def finish(self, timeout: float = 20) -> tuple[list[dict], dict | None]:
        """Wait for it to end by itself (--count/--duration); its flow documents and its summary."""
        chunks: list[str] = []
        reader = threading.Thread(target=lambda: chunks.append(self.proc.stdout.read()), daemon=True)
        reader.start()
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"trace did not end in {timeout} s: {self.stderr}") from None
        reader.join(5)
        self._reader.join(5)
        out = "".join(chunks)
        self.out = out
        try:
            docs = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
        except json.JSONDecodeError as error:
            raise AssertionError(f"trace printed what is not JSON ({error}): {out!r}; stderr: {self.stderr}") from None
        summary = next((d for d in docs if d.get("type") == "summary"), None)
        return [d for d in docs if d.get("type") == "flow"], summary

    def signal(self, signum: int) -> None:
        self.proc.send_signal(signum)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)


def netfilter_links() -> list[str]:
    """Every BPF netfilter link open in any process (from /proc/*/fdinfo), as 'pid:fd'."""
    found = []
    for info in Path("/proc").glob("[0-9]*/fdinfo/*"):
        try:
            text = info.read_text()
        except OSError:
            continue  # the process or fd went away meanwhile
        if "link_type:\tnetfilter" in text:
            found.append(f"{info.parts[2]}:{info.name}")
    return found


def tcp_connect(lab, node: str, address: str, port: int) -> None:
    """One TCP connection attempt (a RST or nothing is fine: the SYN is the flow)."""
    lab.run(node, ["timeout", "2", "bash", "-c", f"echo > /dev/tcp/{address}/{port}"], check=False)


def flow_to(docs: list[dict], dst: str, proto: int) -> dict:
    matching = [d for d in docs if d["flow"]["dst"] == dst and d["flow"]["proto"] == proto]
    assert matching, f"no {proto} flow to {dst} in {docs}"
    return matching[0]
