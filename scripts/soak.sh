#!/usr/bin/env bash
# The soak test (issue 4): the real bridge against the simulator and a private Mosquitto
# for ~10 minutes (or --quick, ~2), with random commands, random Proxmox faults, broker
# restarts and one bridge restart; prints a summary and exits non-zero if an invariant
# failed. Not part of scripts/test.sh because it runs for minutes. See soak/RESULTS.md.
#
#   scripts/soak.sh                 # 10 minutes, debug build
#   scripts/soak.sh --quick         # 2 minutes
#   scripts/soak.sh --release --minutes 30 --seed 42
#
# Every other option goes to soak/soak.py (--help lists them).
set -euo pipefail
cd "$(dirname "$0")/.."

profile=debug
args=()
for arg in "$@"; do
    if [ "$arg" = "--release" ]; then
        profile=release
    else
        args+=("$arg")
    fi
done

if ! command -v mosquitto >/dev/null 2>&1 && [ ! -x /usr/sbin/mosquitto ]; then
    echo "the soak needs the mosquitto broker (apt-get install mosquitto)" >&2
    exit 2
fi
export PATH="$PATH:/usr/sbin"

if [ "$profile" = release ]; then
    cargo build --release --bin pve2mqtt
else
    cargo build --bin pve2mqtt
fi
exec python3 soak/soak.py --binary "target/$profile/pve2mqtt" ${args[@]+"${args[@]}"}
