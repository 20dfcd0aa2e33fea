#!/usr/bin/env bash
# How long a polite client waits while others load the server: kv_server and the two tokio
# echoes side by side, each run on a fresh server pinned to CPU 0 with examples/kv_crowd
# (the polite client and the load) pinned to CPU 1. Scenarios: a crowd of 2,000 hogs from
# 2,000 loopback addresses sending 1 KiB lines without reading ("lines"), the same without
# newlines ("no-newlines"), a connect storm ("storm"), and 16 metrics scrapers pipelining
# requests ("scrapers", kv_server alone: the tokio echoes serve no metrics).
#
# With --against BINARY, another kv_server build also takes its turn in every round as
# "kv_before"; --kv-args and --before-args add options to either one.
#
# Usage: bash benches/crowd.sh [--against BINARY] [--kv-args "ARGS"] [--before-args "ARGS"]
#                              [--only "SCENARIO..."] [seconds per run, default 10] [rounds, default 1]
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=benches/side_by_side.sh
source benches/side_by_side.sh
cargo build --release --quiet --bins --example kv_crowd
parse_options crowd.sh 10 "$@"
crowd=./target/release/examples/kv_crowd
port=7050
metrics_port=7059

results="$(mktemp)"
server=""
cleanup() { [[ -n "$server" ]] && kill "$server" 2>/dev/null; rm -f "$results"; }
trap cleanup EXIT

start() { # name
    case "$1" in
        # shellcheck disable=SC2086 # the extra arguments are meant to split into words
        kv) taskset -c 0 ./target/release/kv_server --bind 127.0.0.1 --port "$port" \
                --log-level error --metrics "127.0.0.1:$metrics_port" $kv_args $server_args & ;;
        # shellcheck disable=SC2086
        kv_before) taskset -c 0 "$against" --bind 127.0.0.1 --port "$port" \
                --log-level error --metrics "127.0.0.1:$metrics_port" $before_args $server_args & ;;
        raw) taskset -c 0 "$baseline" raw "$port" 2>/dev/null & ;;
        line) taskset -c 0 "$baseline" line "$port" 2>/dev/null & ;;
    esac
    server=$!
    for _ in $(seq 100); do
        (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && return
        sleep 0.1
    done
    echo "crowd.sh: $1 did not start" >&2
    exit 1
}
stop() {
    kill "$server" 2>/dev/null || true
    wait "$server" 2>/dev/null || true
    server=""
}

scenario() { # name servers kv_crowd-args...
    local name=$1 servers=$2; shift 2
    wanted "$name" || return 0
    local names=()
    for s in $servers; do
        if [[ "$s" == kv_before && -z "$against" ]]; then
            continue
        fi
        names+=("$s")
    done
    for round in $(seq "$rounds"); do
        for s in $(turn_order "$round" "${names[@]}"); do
            start "$s"
            local metrics=()
            [[ "$s" == kv* ]] && metrics=(--metrics "127.0.0.1:$metrics_port")
            echo "== $name, round $round: $s ($*)" | tee -a "$results"
            taskset -c 1 "$crowd" --addr "127.0.0.1:$port" --server-pid "$server" \
                --seconds "$seconds" "${metrics[@]}" "$@" 2>&1 | tee -a "$results" || true
            stop
        done
    done
}

# Options a scenario needs every kv_server to run with.
server_args=""

# Scenario names (for --only): lines no-newlines storm scrapers telnet
scenario lines "kv kv_before raw line" --scenario crowd
scenario no-newlines "kv kv_before raw line" --scenario crowd --no-newlines
scenario storm "kv kv_before raw line" --scenario storm
scenario scrapers "kv kv_before" --scenario scrapers
server_args="--telnet" scenario telnet "kv kv_before" --scenario telnet

python3 - "$results" <<'SUMMARY'
import re, sys
runs, key = {}, None
for line in open(sys.argv[1]):
    m = re.match(r"== (\S+), round (\d+): (\S+)", line)
    if m:
        key = (m.group(1), m.group(3))
        runs.setdefault(key, []).append({})
        continue
    if key is None:
        continue
    row = runs[key][-1]
    m = re.search(r"p50 (\d+) us, p99 (\d+) us, p99.9 (\d+) us, max (\d+) us", line)
    if m:
        row.update(zip(["p50", "p99", "p99.9", "max"], map(int, m.groups())))
    m = re.search(r"peak RSS (\d+) KiB", line)
    if m:
        row["rss"] = int(m.group(1)) // 1024
    m = re.search(r"intact (\d+), closed (\d+), wrong (\d+)", line)
    if m:
        row["hogs"] = "/".join(m.groups())
    m = re.search(r"storm: (\d+) connections", line)
    if m:
        row["extra"] = f"{m.group(1)} connections"
    m = re.search(r"pressure entered (\d+) times, (\d+) segments dropped for want of "
                  r"receive memory, (\d+) packets dropped for a full backlog, (\d+) segments retransmitted", line)
    if m:
        pressure, rcvq, backlog, retrans = map(int, m.groups())
        if pressure or rcvq or backlog:
            row["kernel"] = (f" KERNEL DROPPED: memory pressure {pressure}x, {rcvq} receive-queue "
                             f"and {backlog} backlog drops, {retrans} retransmissions")
    m = re.search(r"longest (\d+) us, (\d+) over 1 ms, (\d+) over 25 ms", line)
    if m:
        row["turns"] = f" (turns: longest {int(m.group(1)) / 1000:g} ms, {m.group(2)} over 1 ms, {m.group(3)} over 25 ms)"
    m = re.search(r"scrapes: (\d+) answered", line)
    if m:
        row["extra"] = f"{m.group(1)} scrapes"
print("\n== every run (latencies in us; peak RSS in MiB; hogs intact/closed/wrong)")
print(f"{'scenario':12} {'server':10} {'p50':>6} {'p99':>7} {'p99.9':>8} {'max':>9} {'RSS':>5}  other")
for (scenario, server), rows in runs.items():
    for row in rows:
        other = row.get("hogs", row.get("extra", "")) + row.get("turns", "") + row.get("kernel", "")
        print(f"{scenario:12} {server:10} {row.get('p50','-'):>6} {row.get('p99','-'):>7} "
              f"{row.get('p99.9','-'):>8} {row.get('max','-'):>9} {row.get('rss','-'):>5}  {other}")
SUMMARY
