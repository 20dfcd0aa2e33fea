#!/usr/bin/env bash
# Datagram echo side by side: kv_server --udp, a tokio UdpSocket echo (what a Rust user
# would write) and a plain C recvfrom/sendto loop (benches/baselines/udp_echo.c, built here
# with the system's cc), each pinned to CPU 0 with kv_udp_load pinned to CPU 1, taking
# turns within each round. kv_server runs with --udp-rate-per-source 0 and --udp-rate 0:
# the load comes from two addresses, far over the default rates. (kv_udp_load numbers its
# datagrams, so the loop protection's memory of repeats never takes it for a loop.) A
# build from before --udp-rate existed takes --before-args "" as it is.
#
# Usage: bash benches/udp.sh [--against BINARY] [--kv-args "ARGS"] [--before-args "ARGS"]
#                            [seconds per run, default 5] [rounds, default 1]
# Environment: BYTES (per datagram, default 64), SENDERS (default 2), DEPTH (in flight per
# sender, default 256).
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=benches/side_by_side.sh
source benches/side_by_side.sh
cargo build --release --quiet --bins --example kv_udp_load
parse_options udp.sh 5 "$@"
load=./target/release/examples/kv_udp_load
c_echo="$(mktemp)"
cc -O2 -o "$c_echo" benches/baselines/udp_echo.c
port=7240
results="$(mktemp)"
server=""
cleanup() { [[ -n "$server" ]] && kill "$server" 2>/dev/null; rm -f "$results" "$c_echo"; }
trap cleanup EXIT

start() { # name
    case "$1" in
        # shellcheck disable=SC2086 # the extra arguments are meant to split into words
        kv) taskset -c 0 ./target/release/kv_server --bind 127.0.0.1 --port "$port" --udp \
                --udp-rate-per-source 0 --udp-rate 0 --log-level error $kv_args & ;;
        # shellcheck disable=SC2086
        kv_before) taskset -c 0 "$against" --bind 127.0.0.1 --port "$port" --udp \
                --udp-rate-per-source 0 --log-level error $before_args & ;;
        tokio_udp) taskset -c 0 "$baseline" udp "$port" 2>/dev/null & ;;
        c_loop) taskset -c 0 "$c_echo" "$port" & ;;
    esac
    server=$!
    # Ready once it echoes a datagram.
    for _ in $(seq 100); do
        [[ "$(printf ping | timeout 0.2 nc -u -w1 127.0.0.1 "$port" 2>/dev/null)" == ping ]] && return
    done
    echo "udp.sh: $1 did not start" >&2
    exit 1
}
stop() {
    kill "$server" 2>/dev/null || true
    wait "$server" 2>/dev/null || true
    server=""
}

names=(kv tokio_udp c_loop)
[[ -n "$against" ]] && names+=(kv_before)
for round in $(seq "$rounds"); do
    for s in $(turn_order "$round" "${names[@]}"); do
        start "$s"
        echo "== round $round: $s" | tee -a "$results"
        taskset -c 1 "$load" --addr "127.0.0.1:$port" --server-pid "$server" \
            --seconds "$seconds" --bytes "${BYTES:-64}" --senders "${SENDERS:-2}" \
            --depth "${DEPTH:-256}" 2>&1 | tee -a "$results" || true
        stop
    done
done

python3 - "$results" <<'SUMMARY'
import re, statistics, sys
runs, name = {}, None
for line in open(sys.argv[1]):
    if m := re.match(r"== round \d+: (\S+)", line):
        name = m.group(1)
        runs.setdefault(name, {"rate": [], "cpu": []})
    elif m := re.search(r"datagrams/s (\d+)", line):
        runs[name]["rate"].append(float(m.group(1)))
    elif m := re.search(r"server CPU ([\d.]+) us/datagram", line):
        runs[name]["cpu"].append(float(m.group(1)))
kv = {k: statistics.median(v) for k, v in runs["kv"].items() if v}
print("\n== medians (ratio: kv's datagrams/s to theirs; their CPU per datagram to kv's)")
for name, series in runs.items():
    rate, cpu = statistics.median(series["rate"]), statistics.median(series["cpu"])
    print(f"{name:10} datagrams/s {rate:9.0f} ({kv['rate'] / rate:.2f}x)   "
          f"server CPU {cpu:.2f} us/datagram ({cpu / kv['cpu']:.2f}x)")
SUMMARY
