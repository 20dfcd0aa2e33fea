# Sourced by the check scripts: `check NAME COMMAND...` runs one check and counts it;
# `summary SCRIPT` prints the closing count and fails if any check failed.
passed=0
failed=0
check() {
    local name=$1; shift
    if "$@"; then
        echo "ok: $name"; passed=$((passed + 1))
    else
        echo "FAILED: $name"; failed=$((failed + 1))
    fi
}
summary() {
    echo "$1: $passed passed, $failed failed"
    ((failed == 0))
}
# `start_logged LOG COMMAND...` starts COMMAND (a kv_server listening on a port it logs),
# its stderr in LOG; sets started (its pid) and port once it accepts, or fails with its
# log.
start_logged() {
    local log=$1; shift
    "$@" >/dev/null 2>"$log" &
    started=$!
    for _ in $(seq 100); do
        port=$(sed -n 's/.*Accepting connections on port \([0-9]*\).*/\1/p' "$log")
        [[ -n $port ]] && return
        sleep 0.1
    done
    cat "$log" >&2
    return 1
}
# `serves_one_line LINE COMMAND...` starts COMMAND (a kv_server listening on a port it
# logs), sends LINE, checks the echo, stops it with SIGTERM and checks it exits cleanly
# with its shutdown line. Says what went wrong and fails otherwise.
serves_one_line() {
    local line=$1; shift
    local log port="" server started echoed status=0
    log=$(mktemp)
    if ! start_logged "$log" "$@"; then
        echo "not listening" >&2; kill "$started" 2>/dev/null; rm -f "$log"; return 1
    fi
    server=$started
    exec 3<>"/dev/tcp/127.0.0.1/$port"
    printf '%s\n' "$line" >&3
    read -r -t 10 echoed <&3 || echoed="(nothing)"
    exec 3>&-
    kill -TERM "$server"
    wait "$server" || status=$?
    if [[ $echoed != "$line" || $status != 0 ]] || ! grep -q "shut down" "$log"; then
        echo "echoed '$echoed', exit status $status: $(cat "$log")" >&2; rm -f "$log"; return 1
    fi
    rm -f "$log"
}
