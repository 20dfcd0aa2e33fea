#!/usr/bin/env bash
# Instructions the server executes for a fixed amount of work, counted by callgrind: steadier
# than CPU time on a shared machine, so that a change's cost to the echo path shows as a
# ratio that does not drift. kv_load makes LINES request/responses on each of 50
# connections; the server runs under callgrind and is stopped with SIGTERM once they are
# done.
#
# Usage: bash benches/instructions.sh [BINARY...] [-- SERVER ARGS]
#   BINARY defaults to this tree's release build; give two (say, the commit before a change
#   and this one) to compare them. LINES (default 400) and ROUNDS (default 2) come from the
#   environment.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --quiet --bins --example kv_load
binaries=()
while [[ $# -gt 0 && $1 != -- ]]; do binaries+=("$1"); shift; done
[[ ${1:-} == -- ]] && shift
server_args=("$@")
[[ ${#binaries[@]} -gt 0 ]] || binaries=(./target/release/kv_server)
lines=${LINES:-400}
rounds=${ROUNDS:-2}
port=7090
out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT

for round in $(seq "$rounds"); do
    for binary in "${binaries[@]}"; do
        valgrind --tool=callgrind --callgrind-out-file="$out/cg" \
            "$binary" --port "$port" --bind 127.0.0.1 "${server_args[@]}" 2>"$out/log" &
        server=$!
        for _ in $(seq 200); do
            (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
            sleep 0.1
        done
        ./target/release/examples/kv_load --addr "127.0.0.1:$port" -c 50 --lines "$lines" \
            >/dev/null
        kill -TERM "$server"
        wait "$server" || true
        total=$(grep -m1 '^summary:' "$out/cg" | awk '{print $2}')
        printf '%-40s round %d: %s instructions (%d request/responses)\n' \
            "$binary" "$round" "$total" $((50 * lines))
    done
done
