#!/usr/bin/env bash
# TLS as a scanner sees it: Debian's testssl.sh against kv_server with an ECDSA and an RSA
# certificate made here by openssl (signed by a CA of the run, given to testssl with
# --add-ca), the two scans side by side. Every finding rated MEDIUM or worse must be one
# that docs/protocols.md lists, with its reason, under "What testssl.sh reports"; any other
# fails the check, and the finding is printed.
#
# Needs testssl.sh and openssl; a missing tool is a failure, not a skip. KV_SERVER names
# the binary (default: the release build).
set -euo pipefail
cd "$(dirname "$0")/.."
for tool in testssl openssl python3; do
    command -v "$tool" >/dev/null || {
        echo "testssl_checks.sh: $tool is missing: apt-get install testssl.sh openssl" >&2
        exit 1
    }
done
if [[ -z "${KV_SERVER:-}" ]]; then
    cargo build --release --quiet
    KV_SERVER=./target/release/kv_server
fi
dir="$(mktemp -d)"
pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; rm -rf "$dir"; }
trap cleanup EXIT

# A CA, and a server certificate for localhost and 127.0.0.1 of each key kind.
(
    cd "$dir"
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 90 \
        -subj "/CN=kv_server testssl CA" -keyout ca.key -out ca.pem 2>/dev/null
    printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\nkeyUsage=critical,digitalSignature,keyEncipherment\n' >server.ext
    openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -subj "/CN=localhost" \
        -keyout ecdsa.key -out ecdsa.csr 2>/dev/null
    openssl req -newkey rsa:2048 -nodes -subj "/CN=localhost" -keyout rsa.key -out rsa.csr 2>/dev/null
    for kind in ecdsa rsa; do
        openssl x509 -req -in "$kind.csr" -CA ca.pem -CAkey ca.key -CAcreateserial -days 90 \
            -extfile server.ext -out "$kind.pem" 2>/dev/null
    done
)

# shellcheck source=tests/checks.sh
source tests/checks.sh

scans=()
for kind in ecdsa rsa; do
    start_logged "$dir/$kind.log" "$KV_SERVER" --bind 127.0.0.1 --port 0 \
        --tls-cert "$dir/$kind.pem" --tls-key "$dir/$kind.key"
    pids+=("$started")
    testssl --quiet --color 0 --warnings batch --add-ca "$dir/ca.pem" \
        --jsonfile "$dir/$kind.json" "127.0.0.1:$port" >"$dir/$kind.txt" 2>&1 &
    scans+=($!)
done
failed=0
for scan in "${scans[@]}"; do
    wait "$scan" || true
done

python3 - "$dir" <<'PYTHON' || failed=1
import json, re, sys
accepted = set()
section = False
for line in open("docs/protocols.md"):
    if line.startswith("### "):
        section = line.strip() == "### What testssl.sh reports"
    m = re.match(r"\| `([\w.-]+)` \|", line)
    if section and m:
        accepted.add(m.group(1))
bad = []
for kind in ("ecdsa", "rsa"):
    findings = json.load(open(f"{sys.argv[1]}/{kind}.json"))
    if not any(f["id"] == "cipher_order" for f in findings):
        bad.append(f"{kind}: the scan did not finish (no cipher_order finding)")
    for f in findings:
        if f["severity"] in ("MEDIUM", "HIGH", "CRITICAL") and f["id"] not in accepted:
            bad.append(f'{kind}: {f["severity"]} {f["id"]}: {f["finding"]}')
    order = [f["finding"] for f in findings if f["id"] == "cipher_order"]
    print(f"{kind}: cipher order: {order[0] if order else 'not reported'}")
for line in bad:
    print("not accepted:", line)
sys.exit(1 if bad else 0)
PYTHON
if ((failed)); then
    echo "testssl_checks.sh: findings not listed in docs/protocols.md (or a scan failed)" >&2
    tail -n 20 "$dir"/*.txt >&2
    exit 1
fi
echo "testssl_checks.sh: no finding of MEDIUM or worse beyond those docs/protocols.md lists"
