#!/usr/bin/env bash
# --websocket as the Autobahn|Testsuite fuzzing client sees it: every case of the suite (its
# 9.* limits cases included) against ws:// and against wss:// (a certificate made at
# start-up), side by side. Each case's result must be the one tests/autobahn/expected.json
# records, as tokio-tungstenite checks its own: OK, NON-STRICT or INFORMATIONAL, and the
# compression cases (12.*, 13.*) UNIMPLEMENTED, since permessage-deflate is not offered.
# A case that changes, better or worse, fails the check and is printed; a run whose
# results differ for the better is recorded by copying its index into expected.json.
#
# Needs wstest (autobahntestsuite 25.10.1, which runs on Python 2.7): from WSTEST, or on
# the PATH. .ci/run installs it into a virtualenv of pyenv's 2.7.18. A missing tool is a
# failure, not a skip. KV_SERVER names the binary (default: the release build).
set -euo pipefail
cd "$(dirname "$0")/.."
wstest=${WSTEST:-$(command -v wstest || true)}
if [[ -z $wstest ]]; then
    echo "autobahn_checks.sh: wstest is missing: pip install autobahntestsuite==25.10.1 into a Python 2.7 virtualenv, and name it in WSTEST" >&2
    exit 1
fi
if [[ -z "${KV_SERVER:-}" ]]; then
    cargo build --release --quiet
    KV_SERVER=./target/release/kv_server
fi
dir="$(mktemp -d)"
pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; rm -rf "$dir"; }
trap cleanup EXIT

# shellcheck source=tests/checks.sh
source tests/checks.sh

runs=()
for scheme in ws wss; do
    tls=()
    [[ $scheme == wss ]] && tls=(--tls-self-signed)
    start_logged "$dir/$scheme.log" "$KV_SERVER" --bind 127.0.0.1 --port 0 --websocket "${tls[@]}"
    pids+=("$started")
    cat >"$dir/$scheme.json" <<JSON
{
  "outdir": "$dir/$scheme-reports",
  "servers": [{"agent": "kv_server", "url": "$scheme://127.0.0.1:$port"}],
  "cases": ["*"],
  "exclude-cases": [],
  "exclude-agent-cases": {}
}
JSON
    (cd "$dir" && "$wstest" -m fuzzingclient -s "$scheme.json" >"$scheme-wstest.log" 2>&1) &
    runs+=($!)
done
failed=0
for run in "${runs[@]}"; do
    wait "$run" || failed=1
done
for scheme in ws wss; do
    if [[ ! -f $dir/$scheme-reports/index.json ]]; then
        echo "autobahn_checks.sh: $scheme: wstest wrote no results" >&2
        tail -20 "$dir/$scheme-wstest.log" >&2
        failed=1
    fi
done
[[ $failed == 0 ]] || exit 1

python3 - "$dir" tests/autobahn/expected.json <<'PYTHON'
import json, sys
folder, expected_path = sys.argv[1], sys.argv[2]
expected = json.load(open(expected_path))
failed = False
for scheme in ("ws", "wss"):
    got = json.load(open(f"{folder}/{scheme}-reports/index.json"))["kv_server"]
    counts = {}
    for case in sorted(set(got) | set(expected)):
        seen = got.get(case)
        want = expected.get(case)
        result = seen and (seen["behavior"], seen["behaviorClose"])
        counts[result] = counts.get(result, 0) + 1
        if want is None or seen is None or result != (want["behavior"], want["behaviorClose"]):
            failed = True
            print(f"{scheme} case {case}: got {result}, expected {want and (want['behavior'], want['behaviorClose'])}")
    summary = ", ".join(f"{n} {r[0]}/{r[1]}" for r, n in sorted(counts.items(), key=str))
    print(f"{scheme}: {len(got)} cases: {summary}")
sys.exit(1 if failed else 0)
PYTHON
