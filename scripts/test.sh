#!/usr/bin/env bash
# The project's test command (README "Run the tests"; CI runs it through .ci/run).
# Integration tests start their own Mosquitto and NATS cluster on free ports, so the
# `mosquitto` and `nats-server` binaries must exist; on a fresh Debian machine they are
# installed here (with jq).
set -euo pipefail
cd "$(dirname "$0")/.."

# jq: the add-on's option mapping is tested by running it (tests/packaging.rs).
missing=()
command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || missing+=(mosquitto)
command -v nats-server >/dev/null 2>&1 || [ -x /usr/sbin/nats-server ] || missing+=(nats-server)
command -v jq >/dev/null 2>&1 || missing+=(jq)
if [ ${#missing[@]} -gt 0 ]; then
    echo "installing ${missing[*]} (needed by the tests)" >&2
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi
export PATH="$PATH:/usr/sbin"

# The GitHub Actions workflows, with actionlint (scripts/lint-workflows.sh says where it
# comes from; without any, it prints SKIPPED).
scripts/lint-workflows.sh

# --workspace: the simulator's and the test kit's own tests too (crates/). Then the
# integration tests once more against Mosquitto with persistence on, as the Home Assistant
# Mosquitto add-on runs: retained messages survive a broker restart there. The NATS tests
# are left out of that pass: they start no Mosquitto (JetStream always
# persists), so a second run would test nothing new (nextest: `not test(/nats/)`).
if cargo nextest --version >/dev/null 2>&1; then
    cargo nextest run --workspace --all-targets --no-fail-fast "$@"
    TESTKIT_MOSQUITTO_PERSISTENCE=1 cargo nextest run --test it --no-fail-fast \
        -E 'not test(/nats/)' "$@"
else
    cargo test --workspace --all-targets "$@"
    TESTKIT_MOSQUITTO_PERSISTENCE=1 cargo test --test it "$@"
fi

# The Debian package, built by `cargo deb` from the binary the tests just built (no extra
# compile) and installed into a throw-away root (scripts/check-deb.sh).
scripts/check-deb.sh debug

# The quick soak (cargo xtask soak --ci, ~2 min): the real binary, a broker with persistence
# on and its restarts, retained commands, Proxmox faults, one bridge restart.
scripts/soak.sh --ci

# The quick benchmark (cargo xtask bench --ci, ~40 s): the debug binary the tests built, at
# the smallest size (1x10), in the frozen and the moving world, with a few commands; fails
# unless its report is complete and the fast lane makes at most 2 requests per poll. Its
# figures are not published (bench/RESULTS.md has the release build's).
cargo xtask bench --ci
