#!/usr/bin/env bash
# WebSocket side by side: kv_server --websocket against tokio-tungstenite's echo-server
# example on a current-thread runtime (benches/baselines, "tokio_tungstenite"), each pinned
# to CPU 0 with the client on CPU 1, taking turns within each round; the plain kv_server
# echo ("kv_plain") takes its turn in idle-memory, the figure WebSocket adds to.
#
# Scenarios (for --only): idle-memory (10,000 connections held idle after their upgrade),
# request/response (50 connections, a 128-byte binary message in flight on each), bulk (one
# connection, 16 messages of 64 KiB in flight), 10k (10,000 connections, a message in
# flight on each): kv_load --websocket, which checks every byte echoed. crowd: the polite
# client's round trips beside 2,000 WebSocket clients sending 1 KiB messages without
# reading (examples/kv_crowd --scenario websockets), each server started afresh.
#
# Usage: bash benches/websocket.sh [--against BINARY] [--kv-args "ARGS"] [--before-args "ARGS"]
#                                  [--only "SCENARIO..."] [seconds per run, default 5] [rounds, default 1]
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=benches/side_by_side.sh
source benches/side_by_side.sh
cargo build --release --quiet --bins --example kv_load --example kv_crowd
parse_options websocket.sh 5 "$@"
load=./target/release/examples/kv_load
crowd=./target/release/examples/kv_crowd
work="$(mktemp -d)"
results="$work/results"
pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

declare -A port=([kv]=7440 [tokio_tungstenite]=7441 [kv_before]=7442 [kv_plain]=7443)
declare -A pid
# shellcheck disable=SC2086 # the extra arguments are meant to split into words
start_server kv ./target/release/kv_server --bind 127.0.0.1 --port "${port[kv]}" --websocket \
    --log-level error $kv_args
start_server tokio_tungstenite "$baseline" websocket "${port[tokio_tungstenite]}"
names=(kv tokio_tungstenite)
if [[ -n "$against" ]]; then
    # shellcheck disable=SC2086
    start_server kv_before "$against" --bind 127.0.0.1 --port "${port[kv_before]}" --websocket \
        --log-level error $before_args
    names+=(kv_before)
fi

crowd_rounds() { # each server afresh: what a crowd leaves behind would blur the next run
    wanted crowd || return 0
    for round in $(seq "$rounds"); do
        for name in $(turn_order "$round" "${names[@]}"); do
            echo "== crowd, round $round: $name" | tee -a "$results"
            local server
            case "$name" in
                # shellcheck disable=SC2086
                kv) taskset -c 0 ./target/release/kv_server --bind 127.0.0.1 --port 7450 \
                        --websocket --log-level error $kv_args & ;;
                # shellcheck disable=SC2086
                kv_before) taskset -c 0 "$against" --bind 127.0.0.1 --port 7450 \
                        --websocket --log-level error $before_args & ;;
                tokio_tungstenite) taskset -c 0 "$baseline" websocket 7450 2>/dev/null & ;;
            esac
            server=$!
            for _ in $(seq 100); do
                (exec 3<>/dev/tcp/127.0.0.1/7450) 2>/dev/null && break
                sleep 0.1
            done
            taskset -c 1 "$crowd" --scenario websockets --addr 127.0.0.1:7450 \
                --server-pid "$server" -t "$seconds" | tee -a "$results" || true
            kill "$server" 2>/dev/null || true
            wait "$server" 2>/dev/null || true
        done
    done
}

load_args=(--websocket)
# First, on fresh processes: memory a server keeps after a burst would blur the figure.
load_rounds 1 "idle-memory" -c 10000 -d 0 -t 1
if wanted idle-memory; then
    start_server kv_plain ./target/release/kv_server --bind 127.0.0.1 --port "${port[kv_plain]}" \
        --log-level error
    echo "== idle-memory, round 1: kv_plain (-c 10000 -d 0 -t 1, plain lines)" | tee -a "$results"
    taskset -c 1 "$load" --addr "127.0.0.1:${port[kv_plain]}" --server-pid "${pid[kv_plain]}" \
        -c 10000 -d 0 -t 1 | tee -a "$results"
fi
load_rounds "$rounds" "request/response" -c 50 -l 128 -d 1 -t "$seconds"
load_rounds "$rounds" "bulk" -c 1 -l 65536 -d 16 -t "$seconds"
load_rounds 1 "10k" -c 10000 -l 128 -d 1 -t "$seconds"
crowd_rounds

# Medians over the rounds, and each server's ratio to kv_server in the same run.
python3 benches/medians.py "$results"
