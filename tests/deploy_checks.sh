#!/usr/bin/env bash
# Checks the files an operator copies from deploy/ with the tools that will read them:
# systemd-analyze verify for the units (Debian's systemd package), haproxy -c for the
# HAProxy example (Debian's haproxy package). The units name the
# installed path /usr/local/bin/kv_server; they are verified as copies pointing at the
# binary just built, so nothing is installed on the machine running the check.
set -euo pipefail
cd "$(dirname "$0")/.."

for tool in systemd-analyze haproxy; do
    command -v "$tool" >/dev/null || {
        echo "deploy_checks.sh: missing $tool; install with: apt-get install -y systemd haproxy" >&2
        exit 1
    }
done
cargo build --release --quiet
binary="$PWD/target/release/kv_server"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

# shellcheck source=tests/checks.sh
source tests/checks.sh

units=()
for unit in deploy/*.socket deploy/*.service; do
    sed "s|/usr/local/bin/kv_server|$binary|g" "$unit" >"$work/$(basename "$unit")"
    units+=("$work/$(basename "$unit")")
done
verify_units() {
    local out
    out="$(systemd-analyze verify "${units[@]}" 2>&1)" || { echo "$out"; return 1; }
    # verify exits 0 on some warnings; any line naming our units is a finding.
    if grep -E 'kv_server' <<<"$out"; then return 1; fi
}
check "systemd-analyze verify ${units[*]##*/}" verify_units
check "haproxy -c -f deploy/haproxy.cfg" haproxy -q -c -f deploy/haproxy.cfg

summary deploy_checks
