#!/usr/bin/env bash
# End-to-end check with real outside clients: two telnet sessions at once (driven by
# expect) and netcat, against the release binary started the way the README starts it, and
# both again against the binary started by systemd-socket-activate on the first connection.
# Needs telnet, expect, nc (netcat-openbsd) and systemd-socket-activate (systemd); a
# missing tool is a failure, not a skip.
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
for tool in telnet expect nc socat systemd-socket-activate; do
    command -v "$tool" >/dev/null || missing+=("$tool")
done
if ((${#missing[@]})); then
    echo "real_clients.sh: missing ${missing[*]}; install with: apt-get install -y telnet expect netcat-openbsd socat systemd" >&2
    exit 1
fi

cargo build --release --quiet
port="${PORT:-4040}"
log="$(mktemp)"
PORT="$port" ./target/release/kv_server --bind 127.0.0.1 2>"$log" &
server=$!
trap 'kill "$server" 2>/dev/null || true; rm -f "$log"' EXIT
for _ in $(seq 100); do
    grep -q "Accepting connections on port $port" "$log" && break
    kill -0 "$server" 2>/dev/null || { cat "$log" >&2; echo "server exited" >&2; exit 1; }
    sleep 0.1
done
grep -q "Accepting connections on port $port" "$log" || { cat "$log" >&2; exit 1; }

# shellcheck source=tests/checks.sh
source tests/checks.sh

# Waits (10 s at most) for a line containing $2 in the log file $1.
wait_for_line() {
    for _ in $(seq 100); do
        grep -q "$2" "$1" && return
        sleep 0.1
    done
}

# Two telnet sessions open at once; the second types while the first sits idle, then the
# first types too. Each must see its own line echoed (telnet sends CRLF).
two_telnets() {
    expect -f - "$port" <<'EXPECT'
set timeout 10
set port [lindex $argv 0]
spawn telnet 127.0.0.1 $port
set first $spawn_id
expect -i $first "Escape character is" {} timeout { puts "first telnet did not connect"; exit 1 }
spawn telnet 127.0.0.1 $port
set second $spawn_id
expect -i $second "Escape character is" {} timeout { puts "second telnet did not connect"; exit 1 }
send -i $second "hello from the second session\r"
expect -i $second -re "hello from the second session\r\n.*hello from the second session\r\n" {} timeout { puts "second session got no echo"; exit 1 }
send -i $first "and the first one\r"
expect -i $first -re "and the first one\r\n.*and the first one\r\n" {} timeout { puts "first session got no echo"; exit 1 }
send -i $first "\035"
expect -i $first "telnet>"
send -i $first "quit\r"
expect -i $first eof
send -i $second "still here\r"
expect -i $second -re "still here\r\n.*still here\r\n" {} timeout { puts "second session broke when the first left"; exit 1 }
send -i $second "\035"
expect -i $second "telnet>"
send -i $second "quit\r"
expect -i $second eof
EXPECT
}

netcat_lines() {
    local got
    got="$(printf 'one\ntwo\r\nunfinished' | nc -N -w 5 127.0.0.1 "$port" | od -An -c | tr -s ' ')"
    [[ "$got" == "$(printf 'one\ntwo\r\nunfinished' | od -An -c | tr -s ' ')" ]] || {
        echo "nc got: $got"; return 1; }
}

# Megabytes through nc: the server pushes back while nc is still sending, and nc's
# half-close arrives behind the data; every byte must come back, then the end of stream.
netcat_bulk() {
    local sent received
    sent="$(mktemp)"; received="$(mktemp)"
    head -c 15000000 /dev/urandom | base64 -w 100 >"$sent"
    printf 'and a tail without newline' >>"$sent"
    nc -N -w 20 127.0.0.1 "$port" <"$sent" >"$received"
    if cmp -s "$sent" "$received"; then
        rm -f "$sent" "$received"
    else
        echo "nc bulk: sent $(wc -c <"$sent") bytes, got back $(wc -c <"$received")"
        rm -f "$sent" "$received"
        return 1
    fi
}

# systemd-socket-activate holds the socket and execs the server on the first connection,
# passing the socket as descriptor 3 (LISTEN_FDS): that first client must be served too.
socket_activation() {
    local activated_port=$((port + 1)) activation_log got
    activation_log="$(mktemp)"
    systemd-socket-activate -l "127.0.0.1:$activated_port" ./target/release/kv_server \
        2>"$activation_log" &
    local activated=$!
    wait_for_line "$activation_log" "Listening on"
    got="$(printf 'first client, via nc\r\n' | nc -N -w 5 127.0.0.1 "$activated_port" | od -An -c | tr -s ' ')"
    local ok=0
    [[ "$got" == "$(printf 'first client, via nc\r\n' | od -An -c | tr -s ' ')" ]] || { echo "nc got: $got"; ok=1; }
    expect -f - "$activated_port" <<'EXPECT' || ok=1
set timeout 10
spawn telnet 127.0.0.1 [lindex $argv 0]
expect "Escape character is" {} timeout { puts "telnet did not connect"; exit 1 }
send "then telnet\r"
expect -re "then telnet\r\n.*then telnet\r\n" {} timeout { puts "telnet got no echo"; exit 1 }
send "\035"
expect "telnet>"
send "quit\r"
expect eof
EXPECT
    grep -q "Accepting connections on port $activated_port" "$activation_log" || {
        echo "no start-up line naming port $activated_port:"; cat "$activation_log"; ok=1; }
    # The activator exec'd the server in its own place: same pid.
    kill -TERM "$activated" 2>/dev/null
    wait "$activated" || { echo "the socket-activated server did not exit cleanly"; ok=1; }
    rm -f "$activation_log"
    return "$ok"
}

# --telnet: a stock client in its default mode. The server asks the client for BINARY, so
# 8-bit text such as UTF-8 comes back as typed; Ctrl-C (IAC IP, IAC DO TIMING-MARK) is
# answered, so the next line is echoed; Are You There gets an answer. Every echo ends in CR
# LF. (tests/telnet_screens.sh checks what the screen shows.)
telnet_mode() {
    local telnet_port=$((port + 2)) telnet_log
    telnet_log="$(mktemp)"
    ./target/release/kv_server --bind 127.0.0.1 --port "$telnet_port" --telnet 2>"$telnet_log" &
    local server_pid=$!
    wait_for_line "$telnet_log" "Accepting connections"
    local ok=0
    expect -f - "$telnet_port" <<'EXPECT' || ok=1
set timeout 10
spawn telnet 127.0.0.1 [lindex $argv 0]
expect "Escape character is" {} timeout { puts "telnet did not connect"; exit 1 }
send "plain first\r"
expect -re "plain first\r\n.*plain first\r\n" {} timeout { puts "no echo of a plain line"; exit 1 }
send "héllo wörld ✓\r"
expect -re "héllo wörld ✓\r\n.*héllo wörld ✓\r\n" {} timeout { puts "UTF-8 not echoed as typed"; exit 1 }
send "half a line then Ctrl-C"
send "\003"
send "after ctrl-c\r"
expect -re "after ctrl-c\r\n.*after ctrl-c\r\n" {} timeout { puts "no echo after Ctrl-C"; exit 1 }
send "\035"
expect "telnet>"
send "send ayt\r"
expect "kv_server: yes" {} timeout { puts "no answer to Are You There"; exit 1 }
send "back again\r"
expect -re "back again\r\n.*back again\r\n" {} timeout { puts "no echo after AYT"; exit 1 }
send "\035"
expect "telnet>"
send "quit\r"
expect eof
EXPECT
    kill -TERM "$server_pid" 2>/dev/null
    wait "$server_pid" || { echo "the --telnet server did not exit cleanly"; ok=1; }
    rm -f "$telnet_log"
    return "$ok"
}

# --udp and --unix, through nc and socat: a datagram back whole to each, lines and a
# half-closed tail over the Unix socket.
udp_and_unix() {
    local other_port=$((port + 3)) other_log dir ok=0 got
    other_log="$(mktemp)"; dir="$(mktemp -d)"
    ./target/release/kv_server --bind 127.0.0.1 --port "$other_port" --udp \
        --unix "$dir/kv.sock" 2>"$other_log" &
    local server_pid=$!
    wait_for_line "$other_log" "Echoing datagrams"
    got="$(printf 'a datagram through nc' | nc -u -w1 127.0.0.1 "$other_port")"
    [[ "$got" == "a datagram through nc" ]] || { echo "nc -u got: '$got'"; ok=1; }
    got="$(printf 'and through socat' | socat -t1 - "UDP:127.0.0.1:$other_port")"
    [[ "$got" == "and through socat" ]] || { echo "socat UDP got: '$got'"; ok=1; }
    got="$(printf 'over unix\r\ntail' | socat -t5 - "UNIX-CONNECT:$dir/kv.sock" | od -An -c | tr -s ' ')"
    [[ "$got" == "$(printf 'over unix\r\ntail' | od -An -c | tr -s ' ')" ]] || { echo "socat UNIX got: $got"; ok=1; }
    kill -TERM "$server_pid"
    wait "$server_pid" || { echo "the server did not exit cleanly"; ok=1; }
    [[ ! -e "$dir/kv.sock" ]] || { echo "the socket file outlived the server"; ok=1; }
    rm -rf "$other_log" "$dir"
    return "$ok"
}

# The three kinds at once from a service manager, as one .socket unit with ListenStream,
# ListenDatagram and a ListenStream path passes them: systemd-socket-activate makes
# datagram sockets only with -d, for all it listens on, so one activator holds the UDP
# socket and passes it through a second, which holds the TCP and Unix listeners and execs
# the server on the first connection.
three_kinds_activated() {
    local activated_port=$((port + 4)) activation_log dir ok=0 got
    activation_log="$(mktemp)"; dir="$(mktemp -d)"
    systemd-socket-activate -d -l "127.0.0.1:$activated_port" --fdname=udp -- \
        systemd-socket-activate -l "127.0.0.1:$activated_port" -l "$dir/kv.sock" \
        --fdname=tcp:unix -- ./target/release/kv_server 2>"$activation_log" &
    local activated=$!
    wait_for_line "$activation_log" "Listening on"
    # The first datagram starts the outer activator; it waits in the socket meanwhile.
    printf 'queued datagram' | socat -u - "UDP:127.0.0.1:$activated_port"
    wait_for_line "$activation_log" "Listening on $dir/kv.sock"
    got="$(printf 'first client\n' | nc -N -w 5 127.0.0.1 "$activated_port")"
    [[ "$got" == "first client" ]] || { echo "nc got: '$got'"; ok=1; }
    got="$(printf 'over unix\n' | socat -t5 - "UNIX-CONNECT:$dir/kv.sock")"
    [[ "$got" == "over unix" ]] || { echo "socat UNIX got: '$got'"; ok=1; }
    got="$(printf 'a datagram' | nc -u -w1 127.0.0.1 "$activated_port")"
    [[ "$got" == "a datagram" ]] || { echo "nc -u got: '$got'"; ok=1; }
    grep -q "with a UDP socket and a Unix listener" "$activation_log" || {
        echo "no start-up line naming the three sockets:"; cat "$activation_log"; ok=1; }
    kill -TERM "$activated" 2>/dev/null
    wait "$activated" || { echo "the socket-activated server did not exit cleanly"; ok=1; }
    rm -rf "$activation_log" "$dir"
    return "$ok"
}

check "two telnet sessions at once, each echoed" two_telnets
check "nc: lines, CRLF and a half-closed tail" netcat_lines
check "nc: 20 MB of lines, then half-close, all back" netcat_bulk
check "systemd-socket-activate: started by nc's connection, then telnet" socket_activation
check "--telnet: UTF-8 as typed, Ctrl-C then a line, Are You There, quit" telnet_mode
check "--udp through nc -u and socat, --unix through socat, the file removed" udp_and_unix
check "socket activation of a TCP, a UDP and a Unix socket at once" three_kinds_activated

summary real_clients
