"""The probes this machine's kernel refuses (fentry, kprobes), tested on a kernel that has them.

tests/trace/guest_rule_probe.py runs inside a qemu guest booted with Debian's 6.12 kernel
(tests/kernel_vm.py): the same project, venv and BCC, another kernel. Every test collected there
must pass there; one that fails, errors or skips fails this test, with the guest's report quoted.
"""

import re
import subprocess
import sys

import pytest

from tests import kernel_vm
from tests.helpers.cli import REPO_ROOT

GUEST_TESTS = "tests/trace/guest_rule_probe.py"
# About 6 min under TCG (each trace compiles its probes in ~25 s there); the rest is slack.
GUEST_TIMEOUT = 1200


def _collected() -> set[str]:
    listing = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider",
                              GUEST_TESTS], cwd=REPO_ROOT, capture_output=True, text=True, check=True).stdout
    return {line for line in listing.splitlines() if line.startswith(GUEST_TESTS + "::")}


def test_the_rule_probe_on_debians_6_12_kernel_fentry_and_kprobe():
    unavailable = kernel_vm.available()  # may ask bookworm-backports which 6.12 is current: not at collection
    if unavailable:
        pytest.skip(f"no qemu guest: {unavailable}")
    wanted = _collected()
    assert len(wanted) >= 10, wanted
    command = (f"uname -r; {sys.executable} -m pytest -p no:cacheprovider -q -rA {GUEST_TESTS} 2>&1")
    result = kernel_vm.run(command, cwd=REPO_ROOT, timeout=GUEST_TIMEOUT)
    report = result.stdout
    kernel = report.splitlines()[0] if report else ""
    assert kernel.startswith(kernel_vm.GUEST_SERIES + "."), f"the guest ran {kernel!r}:\n{report}"
    passed = set(re.findall(r"^PASSED (\S+)$", report, re.MULTILINE))
    assert result.returncode == 0 and passed == wanted, (
        f"on {kernel}: exit {result.returncode}, not passed: {sorted(wanted - passed)}\n{report[-8000:]}")
