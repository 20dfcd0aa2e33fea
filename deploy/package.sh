#!/usr/bin/env bash
# Builds the Debian package, kv-server_<version>_amd64.deb, with cargo-deb
# (cargo install cargo-deb): the static binary, the systemd units of deploy/ made for
# the package (/usr/bin, the options of /etc/default/kv-server, named kv-server.*), the
# man page and shell completions from the binary itself (--generate), and the docs.
#
# Usage: bash deploy/package.sh        # prints the package's path
set -euo pipefail
cd "$(dirname "$0")/.."
# The same static binary as the image's (deploy/image.sh): one build for both, and no
# dependency on the system's C library version.
RUSTFLAGS="-C target-feature=+crt-static" \
    cargo build --profile dist --quiet --target x86_64-unknown-linux-gnu --bin kv_server
binary=target/x86_64-unknown-linux-gnu/dist/kv_server
assets=target/package
rm -rf "$assets"
mkdir -p "$assets"
# The units of deploy/, as the package installs them: the binary in /usr/bin, the
# operator's options from /etc/default/kv-server, and the package's name.
for unit in kv_server.service kv_server.socket kv_server@.service; do
    sed -e 's|/usr/local/bin/kv_server\(.*\)|/usr/bin/kv_server\1 $KV_SERVER_OPTS|' \
        -e 's|kv_server\.socket|kv-server.socket|g; s|kv_server\.service|kv-server.service|g' \
        -e 's|^\[Service\]$|[Service]\nEnvironmentFile=-/etc/default/kv-server|' \
        "deploy/$unit" >"$assets/${unit/kv_server/kv-server}"
done
"$binary" --generate man | gzip -9n >"$assets/kv_server.1.gz"
"$binary" --generate bash >"$assets/kv_server.bash"
"$binary" --generate zsh >"$assets/_kv_server"
"$binary" --generate fish >"$assets/kv_server.fish"
gzip -9n <CHANGELOG.md >"$assets/changelog.gz"
cargo deb --no-build --quiet
