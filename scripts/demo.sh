#!/usr/bin/env bash
# The main job on the embedded default: the seed lab (variant `ultimate`) and
# why-route's explanation of the MacBook's flow, asked inside the Route node.
# PREFIX (default wr) names the lab: its namespaces are PREFIX-route, …
# An existing demo lab (seed, ultimate) with that prefix is reused; any other
# lab with that prefix is left alone, and the demo stops with lab up's reason.
set -euo pipefail
cd "$(dirname "$0")/.."
wr=.venv/bin/why-route
prefix=${PREFIX:-wr}
if $wr lab status --prefix "$prefix" --json 2>/dev/null \
        | .venv/bin/python -c 'import json, sys; d = json.load(sys.stdin); sys.exit(not (d["topology"], d["variant"], d["status"]) == ("seed", "ultimate", "up") or not all(n["present"] for n in d["nodes"].values()))' 2>/dev/null; then
    echo "lab $prefix (seed, ultimate) is already up: using it"
else
    status=0
    $wr lab up --variant ultimate --prefix "$prefix" || status=$?
    if [ "$status" != 0 ]; then
        if $wr lab status --prefix "$prefix" >/dev/null 2>&1; then
            echo "make demo: lab $prefix is someone else's; \`make demo PREFIX=other\` builds the demo beside it" >&2
        fi
        exit "$status"
    fi
fi
$wr lab status --prefix "$prefix"
$wr 192.168.1.169 8.8.8.8 --netns "$prefix-route"
# The same flow as the kernel handles it: a short trace while the MacBook pings.
echo
echo "why-route trace: the MacBook's ping as the kernel handles it"
( sleep 2; $wr lab exec --prefix "$prefix" macbook -- ping -n -c 2 -W 1 8.8.8.8 >/dev/null ) &
pinger=$!
$wr trace --netns "$prefix-route" 192.168.1.169 8.8.8.8 --count 1 --duration 15 || true
wait "$pinger" || true
