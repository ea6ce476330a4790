"""What the rule probe (fentry, else kprobe, on fib4_rule_action) costs a new flow, on a kernel that
lets it attach: this machine's kernel does not, so trace_bench.py's new-flow figure runs inside the
qemu guest of tests/kernel_vm.py (Debian's 6.12), once with fentry and once with the kprobe
(WHYROUTE_TRACE_DISABLE=fentry). For each: the rule probe's kernel time per new flow, against the
other probes' (measured in the same trace) and against the untraced datagram (measured first, in
the same guest).

    .venv/bin/python bench/rule_probe_guest.py [--rate 2000] [--seconds 2]

Under qemu's emulator (TCG, where /dev/kvm cannot run a stock kernel) every figure is slower than
on hardware; the ratios are what to read. Root needed; about 2 minutes.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from tests import kernel_vm  # noqa: E402

RULE_PROBE = re.compile(r"wr_rule4_(?:fentry|kprobe) ([\d,]+) \(([\d.]+) runs\)")
PROBES = re.compile(r"probes' kernel time per new flow ([\d,]+) ns")
DATAGRAM = re.compile(r"no trace .* at most: ([\d,]+) ns a datagram")


def number(text: str) -> float:
    return float(text.replace(",", ""))


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rate", type=int, default=2000, help="new flows a second (the guest is emulated)")
    parser.add_argument("--seconds", type=float, default=2)
    args = parser.parse_args()
    unavailable = kernel_vm.available()
    if unavailable:
        raise SystemExit(f"no qemu guest: {unavailable}")
    bench = (f"{sys.executable} bench/trace_bench.py --rounds 1 --skip tcp,udp,start "
             f"--flow-rates {args.rate} --flow-seconds {args.seconds}")
    for kind, env in (("fentry", ""), ("kprobe", "WHYROUTE_TRACE_DISABLE=fentry ")):
        result = kernel_vm.run(f"uname -r; {env}{bench} 2>&1", cwd=ROOT, timeout=900)
        out = result.stdout
        rule, probes, datagram = RULE_PROBE.search(out), PROBES.search(out), DATAGRAM.search(out)
        if result.returncode or not (rule and probes and datagram):
            print(f"{kind}: no figure (exit {result.returncode}):\n{out[-3000:]}")
            return 1
        rule_ns, probes_ns, datagram_ns = number(rule[1]), number(probes[1]), number(datagram[1])
        print(f"rule probe as {kind:<6} on {out.splitlines()[0]}: {rule_ns:,.0f} ns a new flow ({rule[2]} runs), "
              f"ratio {rule_ns / (probes_ns - rule_ns):.3f} of the other probes' {probes_ns - rule_ns:,.0f} ns, "
              f"{rule_ns / datagram_ns:.3f} of the untraced datagram's {datagram_ns:,.0f} ns")
    return 0


if __name__ == "__main__":
    sys.exit(main())
