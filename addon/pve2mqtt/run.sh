#!/usr/bin/with-contenv bashio
# shellcheck shell=bash
# Starts pve2mqtt in the Home Assistant add-on: the add-on options (/data/options.json)
# and the Supervisor's MQTT service become PVE2MQTT_* environment variables through
# options_to_env.jq (the only place that mapping is written), then the bridge replaces
# this shell, so it receives the Supervisor's SIGTERM itself and stops cleanly.
set -euo pipefail

readonly OPTIONS_FILE=/data/options.json
readonly MAPPING=/usr/share/pve2mqtt/options_to_env.jq

# The Supervisor's broker as JSON ({"host", "port", "ssl", "username", "password"}), or
# {} when there is none; the mapping uses it unless the mqtt > url option is set, and
# stops with a reason when neither gives a broker. A broker that is not up yet is no
# reason to stop: the bridge retries, and the watchdog sees /healthz meanwhile.
mqtt_service='{}'
if bashio::services.available mqtt; then
    mqtt_service=$(bashio::services mqtt)
fi

if ! env_json=$(jq --argjson mqtt "${mqtt_service}" -f "${MAPPING}" "${OPTIONS_FILE}"); then
    bashio::exit.nok "The add-on options could not be turned into pve2mqtt settings (reason above)."
fi

# NUL-separated NAME=value pairs, so no value (a password, say) is ever word-split,
# glob-expanded or cut at a newline on its way into the environment.
while IFS= read -r -d '' assignment; do
    export "${assignment?}"
done < <(jq -j 'to_entries[] | "\(.key)=\(.value)\u0000"' <<<"${env_json}")

# Names only: the values include the API token and the MQTT password.
bashio::log.info "Settings from the add-on options: $(jq -r 'keys_unsorted | join(" ")' <<<"${env_json}")"
bashio::log.info "pve2mqtt names a bad setting by its variable: PVE2MQTT_POLL__INTERVAL is the option poll > interval."

exec /usr/local/bin/pve2mqtt run
