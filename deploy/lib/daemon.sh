# The process bookkeeping the local services' scripts share (deploy/kafka/kafka.sh,
# deploy/registry/registry.sh): one pid file per data dir, a stop that escalates to SIGKILL, a
# status line. Sourced, not run. The script sets DIR and PIDFILE (parse_args), DAEMON_MATCH (a
# grep pattern its process's command line matches, so a reused pid is not taken for it),
# DAEMON_LOG (its log file in DIR) and defines `status_details` (what `status` prints after the pid).

running_pid() {
    [[ -f "$PIDFILE" ]] || return 1
    local pid
    pid="$(tr -dc '0-9' <"$PIDFILE")"
    [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null || return 1
    if [[ -r "/proc/$pid/cmdline" ]] && ! tr '\0' ' ' <"/proc/$pid/cmdline" | grep -q "$DAEMON_MATCH"; then
        return 1 # pid reused by something else
    fi
    echo "$pid"
}

log_tail() {
    if [[ -f "$DIR/$DAEMON_LOG" ]]; then
        log "---- last 40 lines of $DIR/$DAEMON_LOG ----"
        tail -n 40 "$DIR/$DAEMON_LOG" >&2 || true
    fi
}

cmd_stop_pid() {
    local pid=$1 i
    kill -TERM "$pid" 2>/dev/null || { rm -f "$PIDFILE"; return 0; }
    for ((i = 0; i < 100; i++)); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.2
    done
    if kill -0 "$pid" 2>/dev/null; then
        log "pid $pid still alive after 20 s; SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
        for ((i = 0; i < 25; i++)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    fi
    rm -f "$PIDFILE"
}

cmd_stop() {
    parse_args "$@"
    local pid
    if pid="$(running_pid)"; then
        cmd_stop_pid "$pid"
        log "stopped pid $pid"
    else
        rm -f "$PIDFILE"
        log "not running ($DIR)"
    fi
}

cmd_status() {
    parse_args "$@"
    local pid
    if pid="$(running_pid)"; then
        echo "running pid=$pid $(status_details)"
    else
        echo "stopped"
        return 3
    fi
}

# The readiness probe's verdict for `start`: 0 ready (prints ADDRESS), 3 exited, 4 not ready in time.
finish_start() {
    local rc=$1 pid=$2 what=$3 address=$4 t0=$5
    case $rc in
        0)
            log "$what pid $pid ready on $address after $((SECONDS - t0)) s (dir $DIR)"
            echo "$address"
            ;;
        3) log_tail; rm -f "$PIDFILE"; die "$what exited during startup" ;;
        4) log_tail; cmd_stop_pid "$pid"; die "$what not ready within ${TIMEOUT}s" ;;
        *) log_tail; cmd_stop_pid "$pid"; die "readiness probe failed (exit $rc)" ;;
    esac
}
