#!/usr/bin/env bash
# How many state changes Home Assistant records per minute for the demo world: starts a
# real HA (shared/tools/ha-harness), runs `pve2mqtt demo` against its broker, waits until
# HA has the entities and a settle time has passed, then counts `state_changed` events
# (one recorder row each) over a window with scripts/ha-state-changes.py.
#
# Usage: scripts/ha-state-changes.sh [BINARY] [SECONDS]   (default: a fresh debug build, 180 s)
# Env: HA_HARNESS (default ../shared/tools/ha-harness), HA_CHECK_PORT (18830), SETTLE (30 s).
set -euo pipefail
cd "$(dirname "$0")/.."
HARNESS="${HA_HARNESS:-../shared/tools/ha-harness}"
PORT="${HA_CHECK_PORT:-18830}"
BIN="${1:-}"
SECONDS_WINDOW="${2:-180}"
OUT="$(mktemp -d)"
if [ -z "$BIN" ]; then
    cargo build --quiet
    BIN=./target/debug/pve2mqtt
fi
trap 'kill "$DEMO_PID" 2>/dev/null || true; "$HARNESS/stop.sh" >/dev/null 2>&1 || true' EXIT
"$HARNESS/setup.sh" >/dev/null
"$HARNESS/start.sh" "$PORT" >/dev/null
"$BIN" demo --mqtt "mqtt://127.0.0.1:$PORT" > "$OUT/demo.out" 2> "$OUT/demo.err" &
DEMO_PID=$!
"$HARNESS/entities.py" --wait-count 60 --settle 5 --summary > "$OUT/entities.json"
sleep "${SETTLE:-30}"
scripts/ha-state-changes.py --harness "$HARNESS" --seconds "$SECONDS_WINDOW"
