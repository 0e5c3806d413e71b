#!/usr/bin/env bash
# Builds the Debian package with `cargo deb` from an already-built binary and checks it:
# its contents, the unit it ships (systemd-analyze verify where the tool exists), lintian
# where installed, then installs it into a throw-away root (`dpkg --root`, maintainer
# scripts run chrootless with DPKG_ROOT, systemd helpers stubbed) and runs
# `pve2mqtt --version` from there. Nothing on this machine outside a temp dir changes.
#
#   scripts/check-deb.sh [release|debug]   (default: release if built, else debug)
#
# The test command (scripts/test.sh) runs it after nextest, reusing target/debug's
# binary: no extra compile. cargo-deb is installed from crates.io when missing.
set -euo pipefail
cd "$(dirname "$0")/.."

profile="${1:-}"
if [ -z "${profile}" ]; then
    profile=debug
    [ -x target/release/pve2mqtt ] && profile=release
fi
case "${profile}" in
    release) binary=target/release/pve2mqtt; deb_profile=(--profile release) ;;
    debug) binary=target/debug/pve2mqtt; deb_profile=(--profile dev) ;;
    *) echo "usage: $0 [release|debug]" >&2; exit 2 ;;
esac
if [ ! -x "${binary}" ]; then
    cargo build --bin pve2mqtt $([ "${profile}" = release ] && echo --release)
fi
if ! cargo deb --version >/dev/null 2>&1; then
    echo "installing cargo-deb (needed to build the Debian package)" >&2
    cargo install cargo-deb --locked --quiet
fi

work="$(mktemp -d)"
trap 'rm -rf "${work}"' EXIT
fail() { echo "check-deb: FAILED: $*" >&2; exit 1; }

# --fast: the debug binary is large and this is a check, not the release build.
cargo deb --no-build "${deb_profile[@]}" --fast --output "${work}/" 2>&1 >/dev/null \
    | grep -v -e 'dev profile is not supported' -e 'To enable debug symbols' >&2 || true
deb="$(find "${work}" -maxdepth 1 -name 'pve2mqtt_*.deb' | head -n 1)"
[ -n "${deb}" ] || fail "cargo deb made no package"
echo "check-deb: built $(basename "${deb}") from ${binary}"

# --- contents -----------------------------------------------------------------------------
contents="$(dpkg-deb --contents "${deb}")"
for path in ./usr/bin/pve2mqtt ./usr/lib/systemd/system/pve2mqtt.service \
    ./etc/pve2mqtt/pve2mqtt.toml.example ./usr/share/doc/pve2mqtt/copyright; do
    grep -q " ${path}\$" <<<"${contents}" || fail "${path} is not in the package"
done
grep -q '^-rwxr-xr-x 0/0 .* ./usr/bin/pve2mqtt$' <<<"${contents}" || fail "usr/bin/pve2mqtt: not 0755 root"
mkdir -p "${work}/control" "${work}/files"
dpkg-deb --control "${deb}" "${work}/control"
dpkg-deb --extract "${deb}" "${work}/files"
grep -qx '/etc/pve2mqtt/pve2mqtt.toml.example' "${work}/control/conffiles" || fail "the config example is not a conffile"
grep -q '^Depends:.*adduser' "${work}/control/control" || fail "Depends lacks adduser"
grep -q 'useradd\|adduser --system' "${work}/control/postinst" || fail "postinst makes no system user"

# --- the unit -----------------------------------------------------------------------------
unit="${work}/files/usr/lib/systemd/system/pve2mqtt.service"
for line in 'ExecStart=/usr/bin/pve2mqtt run --config %d/pve2mqtt.toml' 'User=pve2mqtt' \
    'NoNewPrivileges=yes' 'ProtectSystem=strict' 'CapabilityBoundingSet=' \
    'LoadCredential=pve2mqtt.toml:/etc/pve2mqtt/pve2mqtt.toml' 'RestartPreventExitStatus=2'; do
    grep -qxF "${line}" "${unit}" || fail "the unit lacks: ${line}"
done
if command -v systemd-analyze >/dev/null 2>&1; then
    # verify insists ExecStart's binary exists: point it at the packaged one.
    sed "s#^ExecStart=/usr/bin/pve2mqtt#ExecStart=${work}/files/usr/bin/pve2mqtt#" "${unit}" \
        > "${work}/pve2mqtt.service"
    output="$(systemd-analyze verify "${work}/pve2mqtt.service" 2>&1)" || fail "systemd-analyze verify: ${output}"
    ! grep -q 'pve2mqtt.service' <<<"${output}" || fail "systemd-analyze verify: ${output}"
    echo "check-deb: systemd-analyze verify accepts the unit"
else
    echo "check-deb: SKIPPED systemd-analyze verify (not installed)"
fi

# --- lintian ------------------------------------------------------------------------------
if command -v lintian >/dev/null 2>&1; then
    # Errors fail; warnings are printed. Suppressed, with reasons: the README ships as
    # doc (no man page yet); the binary's changelog is CHANGELOG.md, not Debian's format.
    lintian --fail-on error --suppress-tags no-manual-page,no-changelog,debian-changelog-file-missing \
        "${deb}" || fail "lintian"
    echo "check-deb: lintian passed (errors fail, warnings above)"
else
    echo "check-deb: SKIPPED lintian (not installed: apt-get install lintian)"
fi

# --- install into a throw-away root -------------------------------------------------------
root="${work}/root"
mkdir -p "${root}/etc" "${root}/var/lib/dpkg/info" "${root}/var/lib/dpkg/updates" \
    "${root}/var/lib/dpkg/triggers" "${root}/usr/sbin"
touch "${root}/var/lib/dpkg/status" "${root}/var/lib/dpkg/available"
printf 'root:x:0:0:root:/root:/bin/sh\n' > "${root}/etc/passwd"
printf 'root:x:0:\n' > "${root}/etc/group"
printf 'root:*:19000:0:99999:7:::\n' > "${root}/etc/shadow"
printf 'root:*::\n' > "${root}/etc/gshadow"
# The systemd helpers of the maintainer scripts, stubbed: they must not touch this
# machine's systemd, and what they were asked is checked below.
shims="${work}/shims"
mkdir -p "${shims}"
for tool in deb-systemd-helper deb-systemd-invoke systemctl; do
    printf '#!/bin/sh\necho "%s $*" >> "%s/systemd-calls"\nexit 1\n' "${tool}" "${work}" > "${shims}/${tool}"
    chmod +x "${shims}/${tool}"
done
PATH="${shims}:${PATH}" dpkg --root="${root}" --force-script-chrootless --force-depends \
    --force-not-root --log=/dev/null --install "${deb}" >"${work}/dpkg.log" 2>&1 \
    || { cat "${work}/dpkg.log" >&2; fail "dpkg --root --install"; }
grep -q '^pve2mqtt:x:[0-9]*:[0-9]*:' "${root}/etc/passwd" || fail "postinst made no pve2mqtt user in the root"
if grep -q ' enable pve2mqtt' "${work}/systemd-calls" 2>/dev/null; then
    fail "the unit was enabled on install (it needs a config first)"
fi
version="$("${root}/usr/bin/pve2mqtt" --version)" || fail "pve2mqtt --version from the installed root"
expected="pve2mqtt $(sed -n 's/^Version: \([^-]*\).*/\1/p' "${work}/control/control")"
[ "${version}" = "${expected}" ] || fail "installed binary says '${version}', expected '${expected}'"
echo "check-deb: installed into a throw-away root; ${version} runs from there; user pve2mqtt made"
echo "check-deb: OK"
