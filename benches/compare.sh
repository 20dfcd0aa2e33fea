#!/usr/bin/env bash
# Side-by-side load-generator runs behind the README's results table: kv_server, a raw tokio
# echo and a line-at-a-time tokio echo, each pinned to CPU 0 with kv_load pinned to CPU 1,
# in one run, the servers taking turns within each round. benches/scale.sh goes on to
# 19,900 connections with kv_server alone.
#
# Usage: bash benches/compare.sh [seconds per run, default 5] [rounds, default 1]
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-5}"
rounds="${2:-1}"
ulimit -n "$(ulimit -Hn)"

cargo build --release --quiet --bins
cargo bench --no-run --quiet --bench baseline_server 2>/dev/null
baseline="$(ls -t target/release/deps/baseline_server-* | grep -v '\.d$' | head -1)"
load=./target/release/kv_load

pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; }
trap cleanup EXIT

declare -A port=([kv]=7040 [raw]=7041 [line]=7042)
declare -A pid
start() { # name command...
    local name=$1; shift
    taskset -c 0 "$@" 2>/dev/null &
    pid[$name]=$!
    pids+=($!)
    for _ in $(seq 100); do
        (exec 3<>"/dev/tcp/127.0.0.1/${port[$name]}") 2>/dev/null && return
        sleep 0.1
    done
    echo "compare.sh: $name did not start" >&2
    exit 1
}
start kv ./target/release/kv_server --bind 127.0.0.1 --port "${port[kv]}"
start raw "$baseline" raw "${port[raw]}"
start line "$baseline" line "${port[line]}"

run() { # scenario kv_load-args...
    local scenario=$1; shift
    rounds_of "$rounds" "$scenario" "$@"
}

rounds_of() { # count scenario kv_load-args...
    local count=$1 scenario=$2; shift 2
    for round in $(seq "$count"); do
        for name in kv raw line; do
            echo "== $scenario, round $round: $name ($*)"
            taskset -c 1 "$load" --addr "127.0.0.1:${port[$name]}" --server-pid "${pid[$name]}" "$@"
        done
    done
}

# First, on fresh processes: memory a server keeps after a burst would blur the figure.
rounds_of 1 "idle memory" -c 10000 -d 0 -t 1
run "request/response" -c 50 -l 128 -d 1 -t "$seconds"
run "pipelined" -c 50 -l 16 -d 32 -t "$seconds"
run "bulk" -c 1 -l 65536 -d 16 -t "$seconds"
run "10k connections" -c 10000 -l 128 -d 1 -t "$seconds"
