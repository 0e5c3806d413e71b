#!/usr/bin/env bash
# The performance benchmark (issue 5; figures in bench/RESULTS.md): builds the release
# binary, then runs `cargo xtask bench`: the simulator, a private Mosquitto and the bridge
# as separate processes at 1x10, 3x300, 10x1000 and 10x5000 (nodes x guests), printing a
# table per size, with the frozen world (the simulator still) and the moving world (the
# simulator on pvestatd's 10 s cadence) side by side. About 6 minutes on 2 cores; `--quick`
# runs only 1x10 and 3x300. Other flags go to `cargo xtask bench` (`--sizes 10x5000`,
# `--poll-interval 5`, `--running 90`, `--moving-polls 10`, `--json out.json`, `--keep-logs`).
# Issue 10's scenario: scripts/bench.sh --sizes 10x5000 --poll-interval 5 --running 90
# Needs the `mosquitto` broker binary.
set -euo pipefail
cd "$(dirname "$0")/.."

export PATH="$PATH:/usr/sbin"
command -v mosquitto >/dev/null 2>&1 || {
    echo "bench: the mosquitto broker is required (apt-get install mosquitto)" >&2
    exit 2
}

cargo build --release --bin pve2mqtt
exec cargo xtask bench --binary target/release/pve2mqtt "$@"
