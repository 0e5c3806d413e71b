# The one place that maps the add-on's options onto pve2mqtt's configuration.
#
# Input:  /data/options.json, as the Supervisor wrote it from config.yaml's schema.
# $mqtt:  the Supervisor's MQTT service ({"host", "port", "ssl", "username", "password"}),
#         as `bashio::services mqtt` prints it, or {} when there is none; passed with
#         --argjson. Used only when the mqtt.url option is not set: a broker URL in the
#         options replaces the Supervisor's broker, with the options' user and password.
# Output: one JSON object {"ENV_NAME": "value", ...}. run.sh exports every entry and
#         execs `pve2mqtt run` with no config file: the environment is the config
#         (PVE2MQTT_<SECTION>__<KEY>). tests/packaging.rs runs this same file
#         and loads the result with pve2mqtt's own config loader.
#
# The add-on's options mirror the config's sections and keys (`poll.interval` is
# PVE2MQTT_POLL__INTERVAL), so the bridge's own validation and error messages apply.
# Works with jq 1.6 (Debian 12, the add-on's base image).

# Every option path of config.yaml's schema, and the variable it becomes. An option in
# options.json that is not listed here stops the add-on with an error: an option that
# silently did nothing would be worse.
def option_env: {
  "proxmox.urls": "PVE2MQTT_PROXMOX__URLS",
  "proxmox.token": "PVE2MQTT_PROXMOX__TOKEN",
  "proxmox.tls_verify": "PVE2MQTT_PROXMOX__TLS_VERIFY",
  "proxmox.fingerprint": "PVE2MQTT_PROXMOX__FINGERPRINT",
  "proxmox.ca_file": "PVE2MQTT_PROXMOX__CA_FILE",
  "proxmox.name": "PVE2MQTT_PROXMOX__NAME",
  "proxmox.timeout": "PVE2MQTT_PROXMOX__TIMEOUT",
  "poll.interval": "PVE2MQTT_POLL__INTERVAL",
  "poll.slow_interval": "PVE2MQTT_POLL__SLOW_INTERVAL",
  "poll.updates": "PVE2MQTT_POLL__UPDATES",
  "mqtt.base_topic": "PVE2MQTT_MQTT__BASE_TOPIC",
  "mqtt.url": "PVE2MQTT_MQTT__URL",
  "mqtt.username": "PVE2MQTT_MQTT__USERNAME",
  "mqtt.password": "PVE2MQTT_MQTT__PASSWORD",
  "homeassistant.discovery_prefix": "PVE2MQTT_HOMEASSISTANT__DISCOVERY_PREFIX",
  "commands.enabled": "PVE2MQTT_COMMANDS__ENABLED",
  "commands.read_only": "PVE2MQTT_COMMANDS__READ_ONLY",
  "commands.allow": "PVE2MQTT_COMMANDS__ALLOW",
  "commands.rollback": "PVE2MQTT_COMMANDS__ROLLBACK",
  "backup.storage": "PVE2MQTT_BACKUP__STORAGE",
  "backup.mode": "PVE2MQTT_BACKUP__MODE",
  "backup.compress": "PVE2MQTT_BACKUP__COMPRESS",
  "log_level": "RUST_LOG"
};

# `log_level` as RUST_LOG: debug and trace for the bridge only, because the HTTP, TLS and
# MQTT libraries at debug level drown the bridge's own lines.
def rust_log: {
  "trace": "info,pve2mqtt=trace",
  "debug": "info,pve2mqtt=debug",
  "info": "info",
  "warn": "warn",
  "error": "error"
};

# Options as [{path, value}]: one level of sections, as in config.yaml.
def option_entries:
  to_entries[]
  | if (.value | type) == "object" then
      .key as $section | .value | to_entries[] | {path: "\($section).\(.key)", value: .value}
    else
      {path: .key, value: .value}
    end;

# The value as environment text; "" means "not set". Lists are comma-separated (the
# config loader splits them), so an item holding a comma cannot be passed through.
def env_text($path):
  if type == "array" then
    map(tostring | sub("^\\s+"; "") | sub("\\s+$"; "") | select(. != ""))
    | if any(.[]; contains(",")) then
        error("option \($path): an entry contains a comma, which pve2mqtt cannot take in a list")
      else join(",") end
  elif type == "string" then sub("^\\s+"; "") | sub("\\s+$"; "")
  elif type == "boolean" or type == "number" then tostring
  elif type == "null" then ""
  else error("option \($path): unexpected \(type) value")
  end;

# A field of the MQTT service, as text; absent, null and "null" are all "not given".
def service_text($field):
  (.[$field] // "") | tostring | if . == "null" then "" else . end;

def mqtt_env($service):
  ($service | service_text("host")) as $host
  | ($service | service_text("port")) as $port
  | if $host == "" then
      error("no MQTT broker: install the Mosquitto broker add-on, or set the add-on option mqtt > url to your broker")
    else . end
  | (if ($service | service_text("ssl")) == "true" then "mqtts" else "mqtt" end) as $scheme
  # An IPv6 address needs brackets in a URL.
  | (if ($host | contains(":")) then "[\($host)]" else $host end) as $url_host
  | {"PVE2MQTT_MQTT__URL": ("\($scheme)://\($url_host)" + (if $port == "" then "" else ":\($port)" end))}
  + (($service | service_text("username")) as $user
     | if $user == "" then {} else {"PVE2MQTT_MQTT__USERNAME": $user} end)
  + (($service | service_text("password")) as $password
     | if $password == "" then {} else {"PVE2MQTT_MQTT__PASSWORD": $password} end);

[option_entries] as $options
| ([$options[].path | select(. as $path | option_env | has($path) | not)]) as $unmapped
| if ($unmapped | length) > 0 then
    error("add-on options that pve2mqtt does not know: \($unmapped | join(", "))")
  else . end
| reduce $options[] as $option ({};
    ($option.value | env_text($option.path)) as $text
    | if $text == "" then .
      elif $option.path == "log_level" then
        (rust_log[$text] // error("option log_level: unknown level \($text)")) as $filter
        | . + {"RUST_LOG": $filter}
      else . + {(option_env[$option.path]): $text}
      end)
# The options' broker when a URL is given (its user and password with it); the
# Supervisor's otherwise, and then a user or password option alone is a mistake.
| if has("PVE2MQTT_MQTT__URL") then .
  elif has("PVE2MQTT_MQTT__USERNAME") or has("PVE2MQTT_MQTT__PASSWORD") then
    error("options mqtt > username and mqtt > password are for the broker of mqtt > url, which is not set")
  else . + mqtt_env($mqtt)
  end
