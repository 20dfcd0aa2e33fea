#!/usr/bin/env bash
# The system-call profile in docs/performance.md: strace -c -f over the release server while kv_load
# makes a fixed number of request/responses (50 connections x 2,000 lines of 128 bytes).
# Needs strace (apt-get install -y strace). Usage: bash benches/syscalls.sh [lines per connection]
set -euo pipefail
cd "$(dirname "$0")/.."
lines="${1:-2000}"
cargo build --release --quiet --bins --example kv_load
out="$(mktemp)"
port=7090
strace -c -f -o "$out" ./target/release/kv_server --bind 127.0.0.1 --port "$port" 2>/dev/null &
tracer=$!
for _ in $(seq 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
    sleep 0.1
done
./target/release/examples/kv_load --addr "127.0.0.1:$port" -c 50 -l 128 -d 1 --lines "$lines"
pkill -INT -f "kv_server --bind 127.0.0.1 --port $port"
wait "$tracer" || true
echo "== server system calls for $((50 * lines)) request/responses (strace -c -f)"
cat "$out"
rm -f "$out"
