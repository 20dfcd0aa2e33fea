#!/usr/bin/env bash
# A soak: kv_server under a mixed crowd for ten minutes (or the seconds given), sampled
# every 10 s for RSS, open descriptors, connections and CPU, every echoed byte verified:
#   - 1,900 idle connections (kv_load -d 0), held for the whole run;
#   - 50 busy ones making back-to-back round trips of 128-byte lines;
#   - 4 pipelining 64 lines of 512 bytes at a time;
#   - 4 slow readers, each sending 2 MB of lines and reading 4 KiB every 50 ms;
#   - churn: 300 new connections a second, each echoing one line, half of
#     them then closed by a reset (SO_LINGER 0), half by a FIN.
# A benchmark, not a CI test: it takes the whole machine for the run. Its table is in
# docs/performance.md.
#
# Usage: bash benches/soak.sh [seconds, default 600]
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-600}"
cargo build --release --quiet --bins --example kv_load
ulimit -n "$(ulimit -Hn)"
port=7060
metrics_port=7069
log="$(mktemp)"; samples="$(mktemp)"; work="$(mktemp -d)"
pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; rm -rf "$log" "$samples" "$work"; }
trap cleanup EXIT

./target/release/kv_server --bind 127.0.0.1 --port "$port" --metrics "127.0.0.1:$metrics_port" \
    --log-level warn 2>"$log" &
server=$!
pids+=("$server")
for _ in $(seq 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
    sleep 0.1
done
idle_rss=$(awk '/VmRSS/ {print $2}' "/proc/$server/status")
idle_fds=$(ls "/proc/$server/fd" | wc -l)

load=./target/release/examples/kv_load
"$load" --addr "127.0.0.1:$port" -c 1900 -d 0 -t "$seconds" >"$work/idle" 2>&1 &
pids+=($!)
"$load" --addr "127.0.0.1:$port" -c 50 -d 1 -t "$seconds" >"$work/busy" 2>&1 &
pids+=($!)
"$load" --addr "127.0.0.1:$port" -c 4 -d 64 -l 512 -t "$seconds" >"$work/pipelined" 2>&1 &
pids+=($!)

python3 - "$port" "$seconds" >"$work/slow" 2>&1 <<'SLOW' &
import socket, sys, threading, time
port, seconds = int(sys.argv[1]), float(sys.argv[2])
errors, rounds = [], [0]
def slow_reader(n):
    end = time.time() + seconds
    while time.time() < end:
        s = socket.create_connection(("127.0.0.1", port))
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        line = bytes((n * 7 + i) % 200 + 32 for i in range(1023)) + b"\n"
        sent = line * 2048
        def send():
            s.sendall(sent)
        t = threading.Thread(target=send)
        t.start()
        got = bytearray()
        while len(got) < len(sent):
            chunk = s.recv(4096)
            if not chunk:
                break
            got += chunk
            time.sleep(0.05)
        t.join()
        if bytes(got) != sent:
            errors.append(f"slow reader {n}: {len(got)} of {len(sent)} bytes, or changed")
        rounds[0] += 1
        s.close()
threads = [threading.Thread(target=slow_reader, args=(n,)) for n in range(4)]
for t in threads: t.start()
for t in threads: t.join()
print(f"slow readers: {rounds[0]} rounds of 2 MB, errors {len(errors)}")
for e in errors[:5]: print(e)
SLOW
pids+=($!)

python3 - "$port" "$seconds" >"$work/churn" 2>&1 <<'CHURN' &
import socket, struct, sys, time
port, seconds = int(sys.argv[1]), float(sys.argv[2])
start = time.time()
end, n, errors, resets = start + seconds, 0, 0, 0
while time.time() < end:
    # Paced at 300 new connections a second.
    ahead = start + n / 300 - time.time()
    if ahead > 0:
        time.sleep(ahead)
    try:
        s = socket.create_connection(("127.0.0.1", port), timeout=10)
        line = f"churn {n} ".encode() * 3 + b"\n"
        s.sendall(line)
        got = b""
        while len(got) < len(line):
            chunk = s.recv(4096)
            if not chunk:
                break
            got += chunk
        if got != line:
            errors += 1
        if n % 2:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            resets += 1
        s.close()
    except OSError:
        errors += 1
    n += 1
print(f"churn: {n} connections ({n / seconds:.0f}/s), {resets} closed by a reset, errors {errors}")
CHURN
pids+=($!)

ticks=$(getconf CLK_TCK)
cpu() { awk '{print $14 + $15}' "/proc/$server/stat"; }
printf '%6s %9s %6s %11s %6s\n' "t (s)" "RSS KiB" "fds" "connections" "CPU %" | tee "$samples"
last_cpu=$(cpu)
for ((t = 10; t <= seconds; t += 10)); do
    sleep 10
    now_cpu=$(cpu)
    open=$(curl -s "127.0.0.1:$metrics_port/metrics" |
        awk '/^kv_server_connections_open\{transport="tcp"\}/ {print $2}')
    printf '%6d %9d %6d %11s %6.0f\n' "$t" \
        "$(awk '/VmRSS/ {print $2}' "/proc/$server/status")" \
        "$(ls "/proc/$server/fd" | wc -l)" "$open" \
        "$(awk -v d="$((now_cpu - last_cpu))" -v t="$ticks" 'BEGIN {print d * 100 / t / 10}')" |
        tee -a "$samples"
    last_cpu=$now_cpu
done
# Let every client finish and go, then see where the server settles.
for pid in "${pids[@]:1}"; do wait "$pid" || true; done
for _ in $(seq 100); do
    open=$(curl -s "127.0.0.1:$metrics_port/metrics" |
        awk '/^kv_server_connections_open\{transport="tcp"\}/ {print $2}')
    [[ "$open" == 0 ]] && break
    sleep 0.2
done
echo
echo "before: RSS $idle_rss KiB, $idle_fds descriptors"
# (VmHWM lags: the kernel updates the peak only now and then, so the samples' highest is
# the figure to read.)
echo "after:  RSS $(awk '/VmRSS/ {print $2}' "/proc/$server/status") KiB, $(ls "/proc/$server/fd" | wc -l) descriptors; highest sampled RSS $(awk 'NR > 1 && $2 > max {max = $2} END {print max}' "$samples") KiB"
for part in idle busy pipelined; do
    echo "$part: $(grep -E '^lines|errors' "$work/$part" | tr '\n' ' ')"
done
cat "$work/slow" "$work/churn"
grep -E "WARN|ERROR" "$log" | head -5 || true
