#!/usr/bin/env bash
# TLS side by side: kv_server --tls-cert against what a Rust user would write, a tokio +
# tokio-rustls echo with the same crypto provider (aws-lc-rs) and protocol versions
# (benches/baselines, "tokio_rustls"), each pinned to CPU 0 with the client on CPU 1, taking
# turns within each round. Certificates are made here by openssl: an ECDSA P-256 key, or
# RSA-2048 with KEY=rsa.
#
# Scenarios (for --only): idle-memory (10,000 connections held idle after their handshakes),
# request/response, bulk, 10k (10,000 connections each with a line in flight; kv_load
# --tls-ca), handshakes (openssl s_time: a new full
# handshake per connection, one after another, for the run's seconds; the server's CPU
# time per handshake is what one core's handshake rate is the inverse of), handshake-flood
# (a polite client's round trips while FLOODERS, default 4, s_time loops handshake, at
# the lowest priority so that they do not take the polite client's core from it).
#
# Usage: bash benches/tls.sh [--against BINARY] [--kv-args "ARGS"] [--before-args "ARGS"]
#                            [--only "SCENARIO..."] [seconds per run, default 5] [rounds, default 1]
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=benches/side_by_side.sh
source benches/side_by_side.sh
cargo build --release --quiet --bins --example kv_load
parse_options tls.sh 5 "$@"
load=./target/release/examples/kv_load
work="$(mktemp -d)"
results="$work/results"
pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

if [[ "${KEY:-ecdsa}" == rsa ]]; then
    key_options=(-newkey rsa:2048)
else
    key_options=(-newkey ec -pkeyopt ec_paramgen_curve:P-256)
fi
openssl req -x509 "${key_options[@]}" -nodes -keyout "$work/key.pem" -out "$work/cert.pem" \
    -days 2 -subj /CN=localhost -addext subjectAltName=DNS:localhost,IP:127.0.0.1 \
    -addext basicConstraints=critical,CA:FALSE 2>/dev/null
tls=(--tls-cert "$work/cert.pem" --tls-key "$work/key.pem")

declare -A port=([kv]=7340 [tokio_rustls]=7341 [kv_before]=7342)
declare -A pid
load_args=(--tls-ca "$work/cert.pem")
# shellcheck disable=SC2086 # the extra arguments are meant to split into words
start_server kv ./target/release/kv_server --bind 127.0.0.1 --port "${port[kv]}" "${tls[@]}" \
    --log-level error $kv_args
start_server tokio_rustls "$baseline" tls "${port[tokio_rustls]}" "$work/cert.pem" "$work/key.pem"
names=(kv tokio_rustls)
if [[ -n "$against" ]]; then
    # shellcheck disable=SC2086
    start_server kv_before "$against" --bind 127.0.0.1 --port "${port[kv_before]}" "${tls[@]}" \
        --log-level error $before_args
    names+=(kv_before)
fi


cpu_ns() { # pid: user + system time in ns
    awk -v hz="$(getconf CLK_TCK)" '{printf "%.0f", ($14 + $15) * 1e9 / hz}' "/proc/$1/stat"
}

handshakes() {
    wanted handshakes || return 0
    for round in $(seq "$rounds"); do
        for name in $(turn_order "$round" "${names[@]}"); do
            echo "== handshakes, round $round: $name" | tee -a "$results"
            local before after out count
            before=$(cpu_ns "${pid[$name]}")
            out=$(taskset -c 1 openssl s_time -connect "127.0.0.1:${port[$name]}" -new \
                -time "$seconds" 2>&1 </dev/null)
            after=$(cpu_ns "${pid[$name]}")
            count=$(grep -oE '^[0-9]+ connections in [0-9.]+s' <<<"$out" | head -1 | cut -d' ' -f1)
            echo "handshakes $count in $seconds s | server cpu: $(( (after - before) / 1000 / count )) us per handshake" \
                | tee -a "$results"
        done
    done
}

flood() { # a polite client's round trips while FLOODERS openssl s_time loops handshake
    wanted handshake-flood || return 0
    for round in $(seq "$rounds"); do
        for name in $(turn_order "$round" "${names[@]}"); do
            echo "== handshake-flood, round $round: $name" | tee -a "$results"
            local flooders=()
            for _ in $(seq "${FLOODERS:-4}"); do
                nice -n 19 taskset -c 1 openssl s_time -connect "127.0.0.1:${port[$name]}" -new \
                    -time $((seconds + 2)) >/dev/null 2>&1 </dev/null &
                flooders+=($!)
            done
            sleep 1
            taskset -c 1 "$load" --addr "127.0.0.1:${port[$name]}" --tls-ca "$work/cert.pem" \
                -c 1 -l 32 -d 1 -t "$seconds" | tee -a "$results"
            wait "${flooders[@]}" || true
        done
    done
}

# First, on fresh processes: memory a server keeps after a burst would blur the figure.
load_rounds 1 "idle-memory" -c 10000 -d 0 -t 1
load_rounds "$rounds" "request/response" -c 50 -l 128 -d 1 -t "$seconds"
load_rounds "$rounds" "bulk" -c 1 -l 65536 -d 16 -t "$seconds"
load_rounds 1 "10k" -c 10000 -l 128 -d 1 -t "$seconds"
handshakes
flood

# Medians over the rounds, and each server's ratio to kv_server in the same run.
python3 benches/medians.py "$results"
