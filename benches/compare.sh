#!/usr/bin/env bash
# Side-by-side load-generator runs behind docs/performance.md's results table: kv_server, the
# floor (a raw epoll echo in C, benches/baselines/tcp_echo.c, "c_raw"), a raw tokio echo and
# a line-at-a-time tokio echo, each pinned to CPU 0 with kv_load pinned to CPU 1,
# in one run, the servers taking turns within each round. benches/scale.sh goes on to
# 19,900 connections with kv_server alone.
#
# With --against BINARY, a second kv_server build (say, the release binary of the commit
# before a change) takes its turn in every round as "kv_before", so that a change's cost is
# a ratio measured side by side; --kv-args and --before-args add options to either one.
#
# Usage: bash benches/compare.sh [--against BINARY] [--kv-args "ARGS"] [--before-args "ARGS"]
#                                [--only "SCENARIO..."] [seconds per run, default 5] [rounds, default 1]
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=benches/side_by_side.sh
source benches/side_by_side.sh
cargo build --release --quiet --bins --example kv_load
parse_options compare.sh 5 "$@"
load=./target/release/examples/kv_load

pids=()
results="$(mktemp)"
c_echo=""
cleanup() { kill "${pids[@]}" 2>/dev/null || true; rm -f "$results" "$c_echo"; }
trap cleanup EXIT

declare -A port=([kv]=7040 [raw]=7041 [line]=7042 [kv_before]=7043 [c_raw]=7044)
names=(kv c_raw raw line)
declare -A pid
load_args=()
# shellcheck disable=SC2086 # the extra arguments are meant to split into words
start_server kv ./target/release/kv_server --bind 127.0.0.1 --port "${port[kv]}" $kv_args
if [[ -n "$against" ]]; then
    # shellcheck disable=SC2086
    start_server kv_before "$against" --bind 127.0.0.1 --port "${port[kv_before]}" $before_args
    names=(kv kv_before)
else
    c_echo="$(mktemp)"
    cc -O2 -o "$c_echo" benches/baselines/tcp_echo.c
    start_server c_raw "$c_echo" "${port[c_raw]}"
    start_server raw "$baseline" raw "${port[raw]}"
    start_server line "$baseline" line "${port[line]}"
fi

run() { # scenario kv_load-args...
    local scenario=$1; shift
    load_rounds "$rounds" "$scenario" "$@"
}


# First, on fresh processes: memory a server keeps after a burst would blur the figure.
# Scenario names (for --only): idle-memory request/response pipelined bulk 10k
load_rounds 1 "idle-memory" -c 10000 -d 0 -t 1
run "request/response" -c 50 -l 128 -d 1 -t "$seconds"
run "pipelined" -c 50 -l 16 -d 32 -t "$seconds"
run "bulk" -c 1 -l 65536 -d 16 -t "$seconds"
run "10k" -c 10000 -l 128 -d 1 -t "$seconds"

# Medians over the rounds, and each server's ratio to kv_server in the same run.
python3 benches/medians.py "$results"
