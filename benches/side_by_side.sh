# What benches/compare.sh and benches/crowd.sh share, sourced by both: their common
# options, the tokio baseline server, and the order in which servers take their turns.
#
# Options: --against BINARY (another kv_server build, "kv_before", takes its turn too),
# --kv-args "ARGS" and --before-args "ARGS" (options for either one), --only "SCENARIO..."
# (run only those). Then: seconds per run, rounds. Sets against, kv_args, before_args,
# only, seconds, rounds and baseline (the tokio baselines' binary).

# parse_options SCRIPT DEFAULT_SECONDS ARGS...
parse_options() {
    local script=$1 default_seconds=$2
    shift 2
    against="" kv_args="" before_args="" only=""
    while [[ "${1:-}" == --* ]]; do
        case "$1" in
            --against) against="$(realpath "$2")"; shift 2 ;;
            --kv-args) kv_args="$2"; shift 2 ;;
            --before-args) before_args="$2"; shift 2 ;;
            --only) only="$2"; shift 2 ;;
            *) echo "$script: unknown option $1" >&2; exit 2 ;;
        esac
    done
    seconds="${1:-$default_seconds}"
    rounds="${2:-1}"
    ulimit -n "$(ulimit -Hn)"
    cargo bench --no-run --quiet --bench baseline_server 2>/dev/null
    baseline="$(ls -t target/release/deps/baseline_server-* | grep -v '\.d$' | head -1)"
}

# wanted SCENARIO: whether --only lets it run.
wanted() {
    [[ -z "$only" || " $only " == *" $1 "* ]]
}

# turn_order ROUND NAME...: the names in the order they take their turns in that round,
# reversed every other round so that going first (a cold cache, a fresh burst) is shared.
turn_order() {
    local round=$1
    shift
    if ((round % 2 == 0)); then
        for ((i = $#; i >= 1; i--)); do echo "${!i}"; done
    else
        printf '%s\n' "$@"
    fi
}

# start_server NAME COMMAND...: runs a server pinned to CPU 0, notes its pid in pid[NAME]
# and pids, and waits until it takes connections on port[NAME] (the three arrays are the
# calling script's).
start_server() {
    local name=$1
    shift
    taskset -c 0 "$@" 2>/dev/null &
    pid[$name]=$!
    pids+=($!)
    for _ in $(seq 100); do
        (exec 3<>"/dev/tcp/127.0.0.1/${port[$name]}") 2>/dev/null && return
        sleep 0.1
    done
    echo "${0##*/}: $name did not start" >&2
    exit 1
}

# load_rounds COUNT SCENARIO KV_LOAD-ARGS...: COUNT rounds of kv_load (pinned to CPU 1)
# against each server in names, taking turns, its reports appended to results (the
# calling script's load, names, port, pid and results; load_args are put before ARGS).
load_rounds() {
    local count=$1 scenario=$2
    shift 2
    wanted "$scenario" || return 0
    for round in $(seq "$count"); do
        for name in $(turn_order "$round" "${names[@]}"); do
            echo "== $scenario, round $round: $name ($*)" | tee -a "$results"
            taskset -c 1 "$load" --addr "127.0.0.1:${port[$name]}" --server-pid "${pid[$name]}" \
                "${load_args[@]}" "$@" | tee -a "$results"
        done
    done
}
