#!/usr/bin/env bash
# What a person sees: each real telnet client people use runs in a terminal (tmux), a
# person's keys are typed into it, and the screen is compared line by line with what that
# person should see: each typed line, then its echo, both at column 0; UTF-8 shown as
# typed both times; after Ctrl-C, the half line is not echoed and the next line is.
#
# Clients: PuTTY's engine (plink, putty-tools), Debian's and Ubuntu's telnet (inetutils)
# and BusyBox's telnet, against `--telnet`; BusyBox also without it, where echo is
# byte-exact and it must still look right; plink without it gets the server's hint in the
# log. With --kv, each client types the guide's commands and shows the replies and a push
# made from another connection. (inetutils without --telnet is not shown UTF-8: outside BINARY mode it takes any
# byte whose low 7 bits are a control key as that key, so the 0x9C in the UTF-8 of ✓ sends
# a BREAK, as ^\ would. tests/real_clients.sh drives it without --telnet in ASCII.) Ctrl-C is typed where it reaches the server: plink keeps its terminal in
# line mode, where Ctrl-C ends plink itself (PuTTY's window sends Interrupt Process
# instead), and BusyBox takes it as its own console escape.
#
# Needs tmux, plink (putty-tools), telnet (inetutils-telnet) and busybox; a missing tool is
# a failure, not a skip. KV_SERVER names the binary to try (default: the release build).
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
for tool in tmux plink telnet busybox; do
    command -v "$tool" >/dev/null || missing+=("$tool")
done
if ((${#missing[@]})); then
    echo "telnet_screens.sh: missing ${missing[*]}; install with: apt-get install -y tmux putty-tools telnet busybox" >&2
    exit 1
fi

if [[ -z "${KV_SERVER:-}" ]]; then
    cargo build --release --quiet
    KV_SERVER=./target/release/kv_server
fi
export LANG=C.UTF-8 LC_ALL=C.UTF-8
# A tmux server of our own, so that nothing of the person's running tmux is touched.
tmux_socket="kv_server_screens_$$"
screen_tmux() { tmux -L "$tmux_socket" -u "$@"; }
server=""
log="$(mktemp)"
cleanup() {
    screen_tmux kill-server 2>/dev/null || true
    [[ -n "$server" ]] && kill "$server" 2>/dev/null
    rm -f "$log"
}
trap cleanup EXIT

# shellcheck source=tests/checks.sh
source tests/checks.sh

# Starts the server with the given options on a free port; sets $port.
start_server() {
    : >"$log"
    start_logged "$log" "$KV_SERVER" --bind 127.0.0.1 --port 0 "$@"
    server=$started
}

stop_server() {
    kill -TERM "$server" 2>/dev/null
    wait "$server" || true
    server=""
}

# The screen's lines from the first one equal to $1, trailing blanks cut.
screen_from() {
    screen_tmux capture-pane -t client -p | sed 's/[[:space:]]*$//' |
        awk -v first="$1" '$0 == first { on = 1 } on && $0 != ""'
}

# Waits (10 s at most) until the screen holds at least $2 lines equal to $1.
wait_for_screen_line() {
    for _ in $(seq 100); do
        (($(screen_tmux capture-pane -t client -p | sed 's/[[:space:]]*$//' |
            grep -cxF -- "$1") >= $2)) && return
        sleep 0.1
    done
    echo "timed out waiting for $2 screen lines '$1'; the screen:"
    screen_tmux capture-pane -t client -p | sed 's/$/|/'
    return 1
}

# Types $1 and Enter into the client, then waits for its echo: $2 (default 2) lines equal
# to it on screen.
type_line() {
    screen_tmux send-keys -t client -l "$1"
    screen_tmux send-keys -t client Enter
    wait_for_screen_line "$1" "${2:-2}"
}

# Waits (10 s at most) until the server holds an established connection and, when $1 is
# not empty, the client has shown it on screen: keys typed before then would be lost.
wait_until_connected() {
    for _ in $(seq 100); do
        if [[ -n "$(ss -Htn state established "( sport = :$port )")" ]] &&
            { [[ -z "$1" ]] || screen_tmux capture-pane -t client -p | grep -qF -- "$1"; }; then
            return
        fi
        sleep 0.1
    done
    echo "the client did not connect; the screen:"
    screen_tmux capture-pane -t client -p | sed 's/$/|/'
    return 1
}

# Runs one client in a fresh terminal of 100x30 against the running server, waits for
# the screen line $2 that says it is connected, types the person's lines (with Ctrl-C when
# $3 is yes), then compares the screen with the expected lines given after those.
session() {
    local command=$1 connected=$2 ctrl_c=$3
    shift 3
    screen_tmux kill-server 2>/dev/null || true
    screen_tmux new-session -d -s client -x 100 -y 30 "$command; sleep 30"
    local ok=0
    wait_until_connected "$connected" || return 1
    type_line "hello plain" || ok=1
    type_line "héllo wörld ✓" || ok=1
    if [[ "$ctrl_c" == yes ]]; then
        screen_tmux send-keys -t client -l "half a line"
        screen_tmux send-keys -t client C-c
        # The typed line shares its screen line with the half line before it.
        type_line "after interrupt" 1 || ok=1
    else
        type_line "after interrupt" || ok=1
    fi
    screen_shows "$command" "hello plain" "$@" || ok=1
    screen_tmux kill-server 2>/dev/null || true
    return "$ok"
}

# screen_shows COMMAND FIRST LINES...: whether the client's screen, from the line FIRST on,
# shows exactly LINES; if not, says what it shows.
screen_shows() {
    local command=$1 first=$2 expected got
    shift 2
    expected="$(printf '%s\n' "$@")"
    got="$(screen_from "$first")"
    [[ "$got" == "$expected" ]] && return
    echo "the screen of '$command':"
    printf '%s\n' "$got" | sed 's/$/|/'
    echo "but a person should see:"
    printf '%s\n' "$expected" | sed 's/$/|/'
    return 1
}

both_lines=("hello plain" "hello plain" "héllo wörld ✓" "héllo wörld ✓")

# client_against CLIENT [SERVER OPTIONS...]: one client's session against a server started
# with the options given; CLIENT is plink, inetutils or busybox.
client_against() {
    local client=$1 ok=0
    shift
    start_server "$@"
    case "$client" in
        plink) session "plink -telnet -P $port 127.0.0.1" "" no \
            "${both_lines[@]}" "after interrupt" "after interrupt" || ok=1 ;;
        inetutils) session "telnet 127.0.0.1 $port" "Escape character is" yes \
            "${both_lines[@]}" "half a line^Cafter interrupt" "after interrupt" || ok=1 ;;
        busybox) session "busybox telnet 127.0.0.1 $port" "Connected to" no \
            "${both_lines[@]}" "after interrupt" "after interrupt" || ok=1 ;;
    esac
    stop_server
    return "$ok"
}

# Without --telnet, plink's negotiation is echoed back to it and the session cannot work;
# the log says why and what to do, once.
plink_plain_hint() {
    start_server
    screen_tmux kill-server 2>/dev/null || true
    screen_tmux new-session -d -s client -x 100 -y 30 "plink -telnet -P $port 127.0.0.1; sleep 30"
    local ok=1
    for _ in $(seq 100); do
        grep -q "looks like a telnet client" "$log" && { ok=0; break; }
        sleep 0.1
    done
    screen_tmux kill-server 2>/dev/null || true
    stop_server
    if ((ok == 0)) && (($(grep -c "looks like a telnet client" "$log") != 1)); then
        echo "the hint was logged more than once:"; cat "$log"; ok=1
    fi
    ((ok == 0)) || { echo "no telnet hint in the log:"; cat "$log"; }
    return "$ok"
}

# Waits (10 s at most) until the screen holds at least $2 lines equal to $1, after typing
# $3 and Enter.
type_command() {
    screen_tmux send-keys -t client -l "$3"
    screen_tmux send-keys -t client Enter
    wait_for_screen_line "$1" "$2"
}

# With --kv --telnet, a person types the guide's commands and reads the replies, each at
# column 0; a change made from another connection appears on the subscriber's screen.
kv_session() {
    local client=$1 command connected ok=0
    start_server --telnet --kv
    case "$client" in
        plink) command="plink -telnet -P $port 127.0.0.1" connected="" ;;
        inetutils) command="telnet 127.0.0.1 $port" connected="Escape character is" ;;
        busybox) command="busybox telnet 127.0.0.1 $port" connected="Connected to" ;;
    esac
    screen_tmux kill-server 2>/dev/null || true
    screen_tmux new-session -d -s client -x 100 -y 30 "$command; sleep 30"
    wait_until_connected "$connected" || ok=1
    type_command "OK" 1 "CREATE shopping" || ok=1
    type_command "OK" 2 "PUT shopping eggs 3" || ok=1
    type_command "OK" 3 "GET shopping eggs" || ok=1
    type_command "SUBSCRIBE shopping" 1 "SUBSCRIBE shopping" || ok=1
    # Another client changes the bucket; its OK means the change was made.
    exec 3<>"/dev/tcp/127.0.0.1/$port"
    printf 'PUT shopping milk 1\r\n' >&3
    local reply
    read -r -t 10 reply <&3 || ok=1
    exec 3>&-
    wait_for_screen_line "milk SET TO 1" 1 || ok=1
    type_command "UNKNOWN COMMAND" 1 "HELLO" || ok=1
    screen_shows "$command" "CREATE shopping" "CREATE shopping" OK "PUT shopping eggs 3" OK \
        "GET shopping eggs" 3 OK "SUBSCRIBE shopping" "milk SET TO 1" HELLO "UNKNOWN COMMAND" ||
        ok=1
    screen_tmux kill-server 2>/dev/null || true
    stop_server
    return "$ok"
}

check "plink -telnet, --telnet: lines at column 0, UTF-8 intact" client_against plink --telnet
check "inetutils telnet, --telnet: no staircase, Ctrl-C drops the half line" client_against inetutils --telnet
check "busybox telnet, --telnet: lines at column 0, UTF-8 intact" client_against busybox --telnet
check "busybox telnet, plain echo" client_against busybox
check "plink, plain echo: the log says --telnet would serve it" plink_plain_hint
check "plink -telnet, --kv: the guide's commands and a push on screen" kv_session plink
check "inetutils telnet, --kv: the guide's commands and a push on screen" kv_session inetutils
check "busybox telnet, --kv: the guide's commands and a push on screen" kv_session busybox

summary telnet_screens
