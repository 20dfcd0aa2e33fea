#!/usr/bin/env bash
# --kv beside Redis, the anchor for a single-threaded in-memory store: kv_server --kv and
# redis-server (Debian's, no persistence), each pinned to CPU 0 with kv_load pinned to
# CPU 1, taking turns in every round. The same client sends each its own spelling of the
# same request, inline as a person would type it, and checks every reply byte:
#
#   get        GET b key            / GET key             50 connections, one in flight
#   put        PUT b key value      / SET key value       50 connections, one in flight
#   pipelined  GET, 32 in flight on each of 50 connections
#
# With --against BINARY, a second kv_server build takes its turn too ("kv_before").
#
# Usage: bash benches/kv.sh [--against BINARY] [seconds per run, default 5] [rounds, default 3]
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=benches/side_by_side.sh
source benches/side_by_side.sh
command -v redis-server >/dev/null || { echo "kv.sh: needs redis-server (apt-get install redis-server)" >&2; exit 1; }
cargo build --release --quiet --bins --example kv_load
parse_options kv.sh 5 "$@"
[[ $# -ge 2 ]] || rounds=3
load=./target/release/examples/kv_load

pids=()
results="$(mktemp)"
cleanup() { kill "${pids[@]}" 2>/dev/null || true; rm -f "$results"; }
trap cleanup EXIT

declare -A port=([kv]=7050 [redis]=7051 [kv_before]=7052)
declare -A pid
names=(kv redis)
start_server kv ./target/release/kv_server --bind 127.0.0.1 --port "${port[kv]}" --kv
start_server redis redis-server --bind 127.0.0.1 --port "${port[redis]}" --save "" \
    --appendonly no --protected-mode no --loglevel warning --logfile /dev/null
if [[ -n "$against" ]]; then
    start_server kv_before "$against" --bind 127.0.0.1 --port "${port[kv_before]}" --kv
    names=(kv kv_before redis)
fi

value="0123456789abcdef0123456789abcdef"
# setup PORT LINES...: sends the lines on one connection and reads a reply to each.
setup() {
    local port=$1 line reply
    shift
    exec 3<>"/dev/tcp/127.0.0.1/$port"
    for line in "$@"; do
        printf '%s\r\n' "$line" >&3
        read -r -t 5 reply <&3
    done
    exec 3>&-
}
setup "${port[kv]}" "CREATE b" "PUT b key $value"
setup "${port[redis]}" "SET key $value"
[[ -z "$against" ]] || setup "${port[kv_before]}" "CREATE b" "PUT b key $value"

# exchange SCENARIO NAME: sets the request and the reply kv_load is given for that server.
exchange() {
    case "$1/$2" in
        get/redis | pipelined/redis) request="GET key\r\n" reply="\$${#value}\r\n$value\r\n" ;;
        get/* | pipelined/*) request="GET b key\r\n" reply="$value\r\nOK\r\n" ;;
        put/redis) request="SET key $value\r\n" reply="+OK\r\n" ;;
        put/*) request="PUT b key $value\r\n" reply="OK\r\n" ;;
    esac
}

run() { # scenario kv_load-args...
    local scenario=$1 request reply
    shift
    wanted "$scenario" || return 0
    for round in $(seq "$rounds"); do
        for name in $(turn_order "$round" "${names[@]}"); do
            exchange "$scenario" "$name"
            echo "== $scenario, round $round: $name ($*)" | tee -a "$results"
            taskset -c 1 "$load" --addr "127.0.0.1:${port[$name]}" --server-pid "${pid[$name]}" \
                --request "$request" --reply "$reply" "$@" | tee -a "$results"
        done
    done
}

run get -c 50 -d 1 -t "$seconds"
run put -c 50 -d 1 -t "$seconds"
run pipelined -c 50 -d 32 -t "$seconds"

python3 benches/medians.py "$results" | sed 's/ratio to kv/ratio to kv_server --kv/'
