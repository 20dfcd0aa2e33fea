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
# `serves_one_line LINE COMMAND...` starts COMMAND (a kv_server listening on a port it
# logs), sends LINE, checks the echo, stops it with SIGTERM and checks it exits cleanly
# with its shutdown line. Says what went wrong and fails otherwise.
serves_one_line() {
    local line=$1; shift
    local log port="" server echoed status=0
    log=$(mktemp)
    "$@" 2>"$log" &
    server=$!
    for _ in $(seq 100); do
        port=$(sed -n 's/.*Accepting connections on port \([0-9]*\).*/\1/p' "$log")
        [[ -n $port ]] && break
        sleep 0.1
    done
    if [[ -z $port ]]; then
        echo "not listening: $(cat "$log")" >&2; kill "$server" 2>/dev/null; rm -f "$log"; return 1
    fi
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
