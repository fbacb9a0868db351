#!/usr/bin/env bash
# The project's own Schema Registry (Apicurio Registry, in-memory H2 storage) for development and
# tests; it serves the Confluent-compatible API under /apis/ccompat/v7.
#
#   registry.sh fetch              Maven fetches Apicurio and Quarkus builds it once, into
#                                  $CRM_SYNC_CACHE/apicurio-$APICURIO_VERSION (outside git)
#   registry.sh start --dir D [--port P] [--timeout S] [--owner-pid PID] [--user NAME:PASSWORD]
#                                  prints the registry's URL (http://127.0.0.1:P) once it answers;
#                                  with --user, /apis/* needs HTTP basic auth as that user
#   registry.sh stop --dir D       SIGTERM, up to 20 s, then SIGKILL; idempotent
#   registry.sh status --dir D     exit 0 running, 3 stopped
#   registry.sh version            prints the pinned Apicurio version
#
# Environment: APICURIO_VERSION (with QUARKUS_VERSION, the Quarkus of that Apicurio's BOM: the one
# place they are pinned), CRM_SYNC_CACHE (default ~/.cache/crm-sync), CRM_SYNC_M2 (Maven local repo,
# default under the cache, shared with kafka.sh), JAVA (default java, 17+), REGISTRY_HEAP_OPTS.
set -euo pipefail

# Apicurio 2.4.2.Final: the newest release whose whole dependency tree Maven Central serves here
# (3.x's app jar is there, its own modules are not; docs/schema-registry.md).
APICURIO_VERSION="${APICURIO_VERSION:-2.4.2.Final}"
QUARKUS_VERSION="${QUARKUS_VERSION:-2.16.4.Final}"
# Apicurio's own pins that Maven Central lacks, replaced by ones it has.
EVERIT_VERSION=1.14.2
CONFIG_INDEX_VERSION=0.1.10.Final

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
SELF="$SCRIPT_DIR/$(basename "${BASH_SOURCE[0]}")"
CACHE_ROOT="${CRM_SYNC_CACHE:-$HOME/.cache/crm-sync}"
HOME_DIR="$CACHE_ROOT/apicurio-$APICURIO_VERSION"
APP="$HOME_DIR/app"
MARKER="$HOME_DIR/.build-complete"
M2_REPO="${CRM_SYNC_M2:-$CACHE_ROOT/m2}"
JAVA="${JAVA:-java}"
REGISTRY_HEAP_OPTS="${REGISTRY_HEAP_OPTS:--Xms64m -Xmx384m}"
OPEN_JAR=crm-sync-dev-registry-0-runner.jar
AUTH_JAR=crm-sync-dev-registry-0-basic-auth.jar

log() { printf 'registry.sh: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }
DAEMON_MATCH='crm-sync-dev-registry'
DAEMON_LOG=registry.log
# shellcheck source=../lib/daemon.sh
source "$SCRIPT_DIR/../lib/daemon.sh"
usage() { sed -n '2,17p' "$SELF" | sed 's/^# \{0,1\}//' >&2; exit 2; }

# ---------------------------------------------------------------- fetch
cmd_fetch() {
    [[ -f "$MARKER" ]] && return 0
    command -v mvn >/dev/null || die "mvn not found (Maven is needed once to build Apicurio $APICURIO_VERSION)"
    mkdir -p "$CACHE_ROOT"
    exec 9>"$CACHE_ROOT/apicurio-$APICURIO_VERSION.lock"
    if command -v flock >/dev/null; then flock 9; fi
    if [[ -f "$MARKER" ]]; then exec 9>&-; return 0; fi

    log "building Apicurio Registry $APICURIO_VERSION (Quarkus $QUARKUS_VERSION) into $APP (Maven repo: $M2_REPO)"
    local work="$HOME_DIR/build.tmp.$$"
    rm -rf "$work"
    mkdir -p "$work"
    # The pom is copied so target/ lands in the cache, not in the repository.
    cp "$SCRIPT_DIR/pom.xml" "$work/pom.xml"
    if ! (cd "$work" && mvn -q -B -Dstyle.color=never -s "$SCRIPT_DIR/settings.xml" \
            -Dmaven.repo.local="$M2_REPO" \
            -Dapicurio.version="$APICURIO_VERSION" -Dquarkus.version="$QUARKUS_VERSION" \
            -Deverit.version="$EVERIT_VERSION" -Dconfig-index.version="$CONFIG_INDEX_VERSION" \
            -DskipTests package >&2); then
        rm -rf "$work"
        die "the Maven/Quarkus build of Apicurio $APICURIO_VERSION failed"
    fi
    [[ -f "$work/target/$OPEN_JAR" && -f "$work/target/$AUTH_JAR" ]] || { rm -rf "$work"; die "runner jars missing after the build"; }
    rm -rf "$APP"
    mkdir -p "$APP"
    mv "$work/target/lib" "$work/target/$OPEN_JAR" "$work/target/$AUTH_JAR" "$APP/"
    rm -rf "$work"
    printf 'apicurio_version=%s\nquarkus_version=%s\n' "$APICURIO_VERSION" "$QUARKUS_VERSION" >"$MARKER"
    exec 9>&-
    log "built $APP"
}

# ---------------------------------------------------------------- helpers
parse_args() {
    DIR="" PORT="" TIMEOUT="${REGISTRY_START_TIMEOUT:-90}" OWNER_PID="" USER_PASS=""
    while (($#)); do
        case "$1" in
            --dir) DIR="${2:?--dir needs a value}"; shift 2 ;;
            --port) PORT="${2:?--port needs a value}"; shift 2 ;;
            --timeout) TIMEOUT="${2:?}"; shift 2 ;;
            --owner-pid) OWNER_PID="${2:?}"; shift 2 ;;
            --user)
                [[ "${2:-}" =~ ^[A-Za-z0-9_.-]+:[A-Za-z0-9_-]+$ ]] || die "--user needs NAME:PASSWORD (password: [A-Za-z0-9_-])"
                USER_PASS="$2"; shift 2 ;;
            -h|--help) usage ;;
            *) die "unknown argument: $1" ;;
        esac
    done
    [[ -n "$DIR" ]] || die "--dir is required"
    mkdir -p "$DIR"
    DIR="$(cd "$DIR" && pwd)"
    PIDFILE="$DIR/registry.pid"
}

# ---------------------------------------------------------------- start
cmd_start() {
    parse_args "$@"
    [[ "$PORT" =~ ^[0-9]*$ ]] || die "--port must be a number"
    local pid
    if pid="$(running_pid)"; then
        log "already running (pid $pid)"
        cat "$DIR/url"
        return 0
    fi
    [[ -f "$MARKER" ]] || cmd_fetch
    command -v "$JAVA" >/dev/null || die "java not found (Apicurio $APICURIO_VERSION needs Java 17+)"
    if [[ -z "$PORT" || "$PORT" == 0 ]]; then
        PORT="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
    fi

    # Runtime settings go in a properties file only the owner can read (it may hold a password).
    local jar=$OPEN_JAR
    (umask 077; {
        echo "quarkus.http.host=127.0.0.1"
        echo "quarkus.http.port=$PORT"
        echo "quarkus.log.level=WARN"
        echo "quarkus.log.category.\"io.apicurio\".level=WARN"
        if [[ -n "$USER_PASS" ]]; then
            echo "quarkus.security.users.embedded.plain-text=true"
            echo "quarkus.security.users.embedded.users.${USER_PASS%%:*}=${USER_PASS#*:}"
        fi
    } >"$DIR/application.properties")
    [[ -n "$USER_PASS" ]] && jar=$AUTH_JAR
    echo "http://127.0.0.1:$PORT" >"$DIR/url"
    : >>"$DIR/registry.log"

    local t0=$SECONDS
    # Quarkus reads config/application.properties in its working directory.
    mkdir -p "$DIR/config"
    mv "$DIR/application.properties" "$DIR/config/application.properties"
    # shellcheck disable=SC2086  # REGISTRY_HEAP_OPTS is intentionally word-split
    (cd "$DIR" && exec nohup "$JAVA" $REGISTRY_HEAP_OPTS -XX:+ExitOnOutOfMemoryError -jar "$APP/$jar" \
        </dev/null >>"$DIR/registry.log" 2>&1) &
    pid=$!
    echo "$pid" >"$PIDFILE"

    if [[ -n "$OWNER_PID" ]]; then
        nohup bash -c '
            owner=$1 reg=$2
            while kill -0 "$owner" 2>/dev/null && kill -0 "$reg" 2>/dev/null; do sleep 2; done
            kill -0 "$reg" 2>/dev/null || exit 0
            kill -TERM "$reg" 2>/dev/null || exit 0
            for _ in $(seq 40); do kill -0 "$reg" 2>/dev/null || exit 0; sleep 0.5; done
            kill -KILL "$reg" 2>/dev/null || true' _ "$OWNER_PID" "$pid" </dev/null >/dev/null 2>&1 &
    fi

    local rc=0
    python3 - "$PORT" "$pid" "$TIMEOUT" "$USER_PASS" <<'PY' || rc=$?
import base64, os, sys, time, urllib.error, urllib.request

port, pid, timeout, user = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
deadline = time.monotonic() + timeout
request = urllib.request.Request(f"http://127.0.0.1:{port}/apis/ccompat/v7/subjects")
if user:
    request.add_header("Authorization", "Basic " + base64.b64encode(user.encode()).decode())
while time.monotonic() < deadline:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        sys.exit(3)
    try:
        with urllib.request.urlopen(request, timeout=2) as response:
            if response.status == 200:
                sys.exit(0)
    except (OSError, urllib.error.URLError):
        pass
    time.sleep(0.2)
sys.exit(4)
PY
    finish_start "$rc" "$pid" registry "http://127.0.0.1:$PORT" "$t0"
}

# ---------------------------------------------------------------- stop / status (deploy/lib/daemon.sh)
status_details() { echo "url=$(cat "$DIR/url" 2>/dev/null || echo '?') version=$APICURIO_VERSION"; }

main() {
    (($#)) || usage
    local sub=$1
    shift
    case "$sub" in
        fetch) cmd_fetch ;;
        start) cmd_start "$@" ;;
        stop) cmd_stop "$@" ;;
        status) cmd_status "$@" ;;
        version) echo "$APICURIO_VERSION" ;;
        -h|--help|help) usage ;;
        *) die "unknown subcommand: $sub" ;;
    esac
}

main "$@"
