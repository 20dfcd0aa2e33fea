#!/usr/bin/env bash
# The scratch image as it would run, where no container runtime does: the binary is
# static; the image holds nothing else, runs as 65534:65534, exposes 4040 TCP and UDP, is
# labelled, and is at most 6.5 MB (the TLS provider, aws-lc, is 2.2 MB of it); mounted, its entrypoint runs as its user in its own root,
# echoes a line and stops on SIGTERM. Needs root and buildah (apt-get install buildah).
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=tests/checks.sh
source tests/checks.sh
b() { buildah --storage-driver vfs "$@"; }
fail() { echo "image_checks: $*" >&2; exit 1; }

tag=$(bash deploy/image.sh kv_server:checks)
binary=target/x86_64-unknown-linux-gnu/dist/kv_server
ldd "$binary" 2>&1 | grep -Eq "statically linked|not a dynamic executable" || fail "the binary is dynamic: $(ldd "$binary")"

inspect() { b inspect --type image --format "$1" "$tag"; }
[[ $(inspect '{{.OCIv1.Config.User}}') == "65534:65534" ]] || fail "user: $(inspect '{{.OCIv1.Config.User}}')"
ports=$(inspect '{{range $p, $_ := .OCIv1.Config.ExposedPorts}}{{$p}} {{end}}')
[[ $ports == *"4040/tcp"* && $ports == *"4040/udp"* ]] || fail "exposed: $ports"
for label in source version licenses; do
    value=$(inspect "{{index .OCIv1.Config.Labels \"org.opencontainers.image.$label\"}}")
    [[ -n $value ]] || fail "no $label label"
done
size=$(b images --format '{{.Size}}' "$tag")
bytes=$(stat -c %s "$binary")
(( bytes <= 6500000 )) || fail "the binary alone is $bytes bytes, over 6.5 MB"
echo "image $tag: $size, binary $bytes bytes, user 65534:65534, exposes $ports"

container=$(b from "$tag")
root=$(b mount "$container")
cleanup() { b umount "$container" >/dev/null; b rm "$container" >/dev/null; b rmi "$tag" >/dev/null; }
trap cleanup EXIT
[[ $(ls -A "$root") == "kv_server" ]] || fail "the image holds more than the binary: $(ls -A "$root")"
serves_one_line "from the image" \
    chroot --userspec=65534:65534 "$root" /kv_server --bind 127.0.0.1 --port 0 --udp \
    || fail "the image's entrypoint, as its user in its root"
echo "image_checks: ok (ran as 65534:65534 in the image's root, echoed, stopped on SIGTERM)"
