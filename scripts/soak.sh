#!/usr/bin/env bash
# The soak test (issues 4 and 9; results in soak/RESULTS.md): builds the bridge, then runs
# `cargo xtask soak`, the real bridge against the simulator and a private Mosquitto for
# ~10 minutes (or --quick, ~2), with random commands, random Proxmox faults, broker
# restarts and one bridge restart; prints a summary and exits non-zero if an invariant
# failed.
#
#   scripts/soak.sh                         # 10 minutes, debug build, broker persistence on
#   scripts/soak.sh --quick                 # 2 minutes
#   scripts/soak.sh --persistence both      # once without, once with Mosquitto persistence
#   scripts/soak.sh --release --minutes 30 --seed 42
#   scripts/soak.sh --ci                    # what scripts/test.sh runs (90 s, persistence off)
#
# Every other option goes to `cargo xtask soak` (--help lists them).
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
exec cargo xtask soak --binary "target/$profile/pve2mqtt" ${args[@]+"${args[@]}"}
