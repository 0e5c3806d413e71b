#!/usr/bin/env bash
# Writes link/hot-functions.txt: the functions the bridge runs, which build.rs has the
# linker put next to each other at the start of the code (issue 10; README "Code the
# bridge runs, packed"). Runs the release bridge under valgrind's callgrind (every function
# executed, not a sample) against the simulator (10 nodes, 1,000 guests, moving) and a private
# Mosquitto for ~2 minutes: start-up, discovery, polls, the slow and agent lanes, a few
# commands and their tasks. Re-run it after a change that adds or renames much of what
# runs in the steady state, or after a toolchain or Cargo.lock update (symbol names change
# with them; names the linker does not find are skipped, and that code is laid out as
# without the list). Needs valgrind, mosquitto and mosquitto_pub (apt-get install valgrind
# mosquitto mosquitto-clients).
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PATH:/usr/sbin"
for tool in valgrind mosquitto mosquitto_pub; do
    command -v "$tool" >/dev/null 2>&1 || {
        echo "hot-functions: $tool is required (apt-get install valgrind mosquitto mosquitto-clients)" >&2
        exit 2
    }
done
SECONDS_RUN=${HOT_FUNCTIONS_SECONDS:-120}
cargo build --release --bin pve2mqtt
bin=target/release/pve2mqtt
work=$(mktemp -d)
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
mqtt_port=$(free_port)
sim_port=$(free_port)
printf 'listener %s 127.0.0.1\nallow_anonymous true\npersistence false\n' "$mqtt_port" >"$work/mosquitto.conf"
mosquitto -c "$work/mosquitto.conf" >"$work/mosquitto.log" 2>&1 &
pids+=($!)
token='root@pam!pve2mqtt=5ec12e7a-0000-4000-8000-000000000001'
"$bin" sim --listen "127.0.0.1:$sim_port" --tls --token "$token" --nodes 10 --guests 1000 \
    --task-duration 200ms >"$work/sim.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do grep -q fingerprint: "$work/sim.log" && break; sleep 0.2; done
fingerprint=$(sed -n 's/.*fingerprint:[ ]*//p' "$work/sim.log" | head -n 1)
cat >"$work/pve2mqtt.toml" <<TOML
[proxmox]
url = "https://127.0.0.1:$sim_port"
token = "$token"
fingerprint = "$fingerprint"
[poll]
interval = "5s"
slow_interval = "30s"
[mqtt]
url = "mqtt://127.0.0.1:$mqtt_port"
client_id = "pve2mqtt-hot-functions"
TOML
# The client's debug line per request on, as `cargo xtask bench` runs the bridge: that
# logging is then packed too.
RUST_LOG="${RUST_LOG:-info,pve2mqtt::pve::client=debug}" valgrind --tool=callgrind --demangle=no --dump-instr=no \
    --callgrind-out-file="$work/callgrind.out" \
    "$bin" run --config "$work/pve2mqtt.toml" >"$work/bridge.log" 2>&1 &
bridge=$!
pids+=("$bridge")
sleep $((SECONDS_RUN / 2))
# A few commands, so that the command path and task following run too.
for vmid in 100 101 102; do
    for kind in qemu lxc; do
        mosquitto_pub -p "$mqtt_port" -t "pve2mqtt/simcluster/$kind/$vmid/set" -m restart || true
    done
done
mosquitto_pub -p "$mqtt_port" -t "pve2mqtt/simcluster/qemu/999999/set" -m start || true
# … and a burst of JSON commands with ids on 40 guests, one every 50 ms, as `cargo xtask
# bench` sends them: without it the burst's code (busy guards, reports with ids, rebuilds
# per gap) was laid out cold, and a burst of 200 commands grew the bridge's resident code
# by ~1.5 MiB.
timeout 10 mosquitto_sub -p "$mqtt_port" -t 'pve2mqtt/simcluster/+/+' -W 5 -F '%t' 2>/dev/null |
    grep -E '/(qemu|lxc)/[0-9]+$' | head -n 40 >"$work/guests" || true
n=0
for action in reboot shutdown start stop; do
    while read -r topic; do
        n=$((n + 1))
        mosquitto_pub -p "$mqtt_port" -t "$topic/set" -m "{\"action\":\"$action\",\"id\":\"hot-$n\"}" || true &
        sleep 0.05
    done <"$work/guests"
    sleep 5
done
mosquitto_pub -p "$mqtt_port" -t "pve2mqtt/bridge/request/refresh" -m "" || true
sleep $((SECONDS_RUN / 2))
kill -INT "$bridge"
wait "$bridge" || true
# Every function callgrind saw (`fn=(id) name` / `cfn=(id) name` define names), in the
# order it first met them, kept if the binary defines it.
nm --defined-only "$bin" | awk '$2 ~ /^[tTwW]$/ {print $3}' | sort -u >"$work/defined"
grep -oE '^c?fn=\([0-9]+\) [^ ]+' "$work/callgrind.out" | sed -E 's/^c?fn=\([0-9]+\) //' |
    awk '!seen[$0]++' >"$work/seen"
mkdir -p link
awk 'NR == FNR { defined[$0] = 1; next } defined[$0]' "$work/defined" "$work/seen" >link/hot-functions.txt
echo "hot-functions: $(wc -l <link/hot-functions.txt) functions -> link/hot-functions.txt"
