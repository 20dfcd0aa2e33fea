#!/usr/bin/env bash
# Builds the static binary (no dynamic dependencies: glibc linked in with crt-static, for
# an explicit target) and the image of Containerfile from it, with buildah.
#
# Usage: bash deploy/image.sh [TAG]     # default tag kv_server:<version>
set -euo pipefail
cd "$(dirname "$0")/.."
version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
tag=${1:-kv_server:$version}
RUSTFLAGS="-C target-feature=+crt-static" \
    cargo build --profile dist --quiet --target x86_64-unknown-linux-gnu --bin kv_server
buildah --storage-driver vfs bud --quiet -f Containerfile \
    --build-arg VERSION="$version" -t "$tag" . >/dev/null
echo "$tag"
