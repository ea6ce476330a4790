#!/usr/bin/env bash
# The main job on the embedded default: the seed lab (variant `ultimate`) and
# why-route's explanation of the MacBook's flow, asked inside the Route node.
set -euo pipefail
cd "$(dirname "$0")/.."
wr=.venv/bin/why-route
$wr lab up --variant ultimate
$wr lab status
$wr 192.168.1.169 8.8.8.8 --netns wr-route
