#!/usr/bin/env bash
# The Debian package as an operator meets it: lintian reports no error; it installs the
# binary, the units (not enabled, not started), the man page, the completions and the
# docs; the installed binary serves; an edited conffile survives a reinstall over itself;
# remove keeps the conffile and purge removes it. Needs root, cargo-deb
# (cargo install cargo-deb), lintian and man-db.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=tests/checks.sh
source tests/checks.sh
fail() { echo "package_checks: $*" >&2; exit 1; }

deb=$(bash deploy/package.sh)
echo "== lintian $deb"
# Errors and warnings fail; the overrides the package carries (deploy/debian/lintian-overrides)
# are shown with the reason for each.
lintian --tag-display-limit 0 --fail-on error,warning "$deb" || fail "lintian reports errors or warnings"
lintian --tag-display-limit 0 --show-overrides "$deb" | grep '^O:' || true

dpkg -i "$deb" >/dev/null
units=/usr/lib/systemd/system
for file in /usr/bin/kv_server /etc/default/kv-server "$units/kv-server.service" \
    "$units/kv-server.socket" "$units/kv-server@.service" \
    /usr/share/man/man1/kv_server.1.gz /usr/share/bash-completion/completions/kv_server \
    /usr/share/zsh/vendor-completions/_kv_server \
    /usr/share/fish/vendor_completions.d/kv_server.fish \
    /usr/share/doc/kv-server/copyright /usr/share/doc/kv-server/README.md \
    /usr/share/doc/kv-server/examples/haproxy.cfg; do
    [[ -e $file ]] || fail "not installed: $file"
done
grep -q '^ExecStart=/usr/bin/kv_server $KV_SERVER_OPTS$' "$units/kv-server.service" \
    || fail "the service does not take the options of /etc/default/kv-server"
systemd-analyze verify "$units/kv-server.socket" "$units/kv-server.service" \
    "$units/kv-server@.service" || fail "systemd-analyze verify"
state=$(systemctl is-enabled kv-server.socket 2>/dev/null || true)
[[ $state == disabled ]] || fail "kv-server.socket is '$state' after install, not disabled"
man -l /usr/share/man/man1/kv_server.1.gz | grep -q -- "--tls-client-ca" || fail "man page"

# The installed binary serves.
serves_one_line "installed" /usr/bin/kv_server --bind 127.0.0.1 --port 0 \
    || fail "the installed binary"

# An operator's edit survives a reinstall over itself.
echo 'KV_SERVER_OPTS="--max-connections 7"' >>/etc/default/kv-server
dpkg -i "$deb" >/dev/null
grep -q -- '--max-connections 7' /etc/default/kv-server || fail "the edited conffile was replaced"
dpkg -r kv-server >/dev/null
[[ ! -e /usr/bin/kv_server ]] || fail "remove left the binary"
[[ -e /etc/default/kv-server ]] || fail "remove took the conffile"
dpkg -P kv-server >/dev/null
[[ ! -e /etc/default/kv-server ]] || fail "purge left the conffile"
echo "package_checks: ok ($deb: lintian, install, serve, reinstall keeping an edited conffile, remove, purge)"
