#!/bin/sh
# Container health probe (see the HEALTHCHECK comment in docker/Dockerfile for why it
# runs `pve2mqtt check` and how often). Uses the config file the default command uses
# when it is mounted, else the PVE2MQTT_* environment alone, as `run` would.
# The report goes to stdout, which Docker keeps for `docker inspect` (last 4 KiB).
set -eu

config_file="${PVE2MQTT_HEALTHCHECK_CONFIG:-/config/pve2mqtt.toml}"

if [ -f "$config_file" ]; then
    exec /usr/local/bin/pve2mqtt check --config "$config_file"
fi
exec /usr/local/bin/pve2mqtt check
