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
