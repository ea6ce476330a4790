#!/usr/bin/env bash
# Idempotent set-up on Debian 12 as root: the apt packages why-route drives,
# then .venv (Debian's python3 with system site-packages, so BCC's bindings
# from python3-bpfcc are importable) with the project installed editable.
# A second run only checks and returns within seconds.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES="iproute2 nftables iptables ipset conntrack tcpdump tshark ethtool procps iputils-ping
  python3-venv python3-pip python3-matplotlib python3-numpy python3-bpfcc bpfcc-tools linux-headers-amd64 iperf3
  qemu-system-x86 zstd"

missing=()
for pkg in $APT_PACKAGES; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if ((${#missing[@]})); then
  echo "setup: installing ${missing[*]}"
  apt-get update -q
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}"
fi

if [ ! -x .venv/bin/python ]; then
  /usr/bin/python3 -m venv --system-site-packages .venv
fi
stamp=.venv/.setup-stamp
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  .venv/bin/pip install -q --disable-pip-version-check -e '.[test]'
  touch "$stamp"
fi
