#!/usr/bin/env bash
# Server CPU per request as connections grow, kv_server alone: 50, 10,000 and 19,900
# connections (two load processes of 9,950: the per-process limit is 20,000 open files),
# 128-byte lines, one in flight each. Server pinned to CPU 0, kv_load to CPU 1.
# Usage: bash benches/scale.sh [seconds per run, default 5] [rounds, default 3]
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-5}"
rounds="${2:-3}"
ulimit -n "$(ulimit -Hn)"
cargo build --release --quiet --bins --example kv_load
load=./target/release/examples/kv_load
port=7100
taskset -c 0 ./target/release/kv_server --bind 127.0.0.1 --port "$port" 2>/dev/null &
server=$!
trap 'kill "$server" 2>/dev/null || true' EXIT
for _ in $(seq 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
    sleep 0.1
done
for round in $(seq "$rounds"); do
    for connections in 50 10000; do
        printf 'round %s, %5s connections: ' "$round" "$connections"
        taskset -c 1 "$load" --addr "127.0.0.1:$port" --server-pid "$server" \
            -c "$connections" -l 128 -d 1 -t "$seconds" | grep 'server cpu'
    done
    a="$(mktemp)"; b="$(mktemp)"
    taskset -c 1 "$load" --addr "127.0.0.1:$port" --server-pid "$server" \
        -c 9950 -l 128 -d 1 -t "$seconds" >"$a" &
    first=$!
    taskset -c 1 "$load" --addr "127.0.0.1:$port" -c 9950 -l 128 -d 1 -t "$seconds" >"$b"
    wait "$first"
    grep -h '^errors [1-9]' "$a" "$b" || true
    awk -v round="$round" '/^lines /{lines += $2}
        /server cpu/{for (i = 1; i <= NF; i++) if ($i == "ms") ms = $(i - 1)}
        END {printf "round %s, 19900 connections: server cpu: %.2f us per line (%d lines)\n",
             round, ms * 1000 / lines, lines}' "$a" "$b"
    rm -f "$a" "$b"
done
