#!/usr/bin/env bash
# The project's own single-node Apache Kafka (KRaft) for development and tests.
#
#   kafka.sh fetch                         jars -> $CRM_SYNC_CACHE/kafka-$KAFKA_VERSION/libs
#   kafka.sh start --dir D [--port P] [--controller-port Q] [--num-partitions N]
#                  [--timeout S] [--owner-pid PID] [--secure [--user NAME:PASSWORD]...]
#                                          prints 127.0.0.1:P once the broker answers
#     --secure: SASL_SSL (SCRAM-SHA-512) with a fresh CA in D/tls/ca.pem, StandardAuthorizer with
#     User:broker (password in D/tls/broker.password) the only super user; each --user is a SCRAM
#     user created when D is formatted; D/client.env has the broker principal's KAFKA_* settings.
#   kafka.sh stop --dir D                  SIGTERM, up to 20 s, then SIGKILL; idempotent
#   kafka.sh status --dir D                exit 0 running, 3 stopped
#   kafka.sh version                       prints the pinned Kafka version
#
# Environment: KAFKA_VERSION (the one place the version is pinned), CRM_SYNC_CACHE
# (default ~/.cache/crm-sync), CRM_SYNC_M2 (Maven local repo, default under the cache),
# PYTHON (default python3), JAVA (default java), KAFKA_HEAP_OPTS, KAFKA_JVM_OPTS,
# KAFKA_LOG_LEVEL (default WARN).
set -euo pipefail

KAFKA_VERSION="${KAFKA_VERSION:-4.0.2}"

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
SELF="$SCRIPT_DIR/$(basename "${BASH_SOURCE[0]}")"
CACHE_ROOT="${CRM_SYNC_CACHE:-$HOME/.cache/crm-sync}"
KAFKA_HOME="$CACHE_ROOT/kafka-$KAFKA_VERSION"
LIBS="$KAFKA_HOME/libs"
MARKER="$KAFKA_HOME/.fetch-complete"
M2_REPO="${CRM_SYNC_M2:-$CACHE_ROOT/m2}"
PYTHON="${PYTHON:-python3}"
JAVA="${JAVA:-java}"
KAFKA_HEAP_OPTS="${KAFKA_HEAP_OPTS:--Xms128m -Xmx512m}"
KAFKA_JVM_OPTS="${KAFKA_JVM_OPTS:--XX:+UseG1GC -XX:MaxGCPauseMillis=20 -XX:+ExplicitGCInvokesConcurrent -XX:MaxInlineLevel=15 -XX:+ExitOnOutOfMemoryError -Djava.awt.headless=true}"
KAFKA_LOG_LEVEL="${KAFKA_LOG_LEVEL:-WARN}"

log() { printf 'kafka.sh: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }
DAEMON_MATCH='kafka\.Kafka'
DAEMON_LOG=kafka.log
# shellcheck source=../lib/daemon.sh
source "$SCRIPT_DIR/../lib/daemon.sh"
usage() { sed -n '2,15p' "$SELF" | sed 's/^# \{0,1\}//' >&2; exit 2; }

# ---------------------------------------------------------------- fetch
cmd_fetch() {
    [[ -f "$MARKER" ]] && return 0
    command -v mvn >/dev/null || die "mvn not found (Maven is needed once to fetch Kafka $KAFKA_VERSION)"
    mkdir -p "$CACHE_ROOT"
    # Serialise concurrent fetches (parallel test sessions) on one lock file.
    exec 9>"$CACHE_ROOT/kafka-$KAFKA_VERSION.lock"
    if command -v flock >/dev/null; then flock 9; fi
    if [[ -f "$MARKER" ]]; then exec 9>&-; return 0; fi

    log "fetching Apache Kafka $KAFKA_VERSION jars into $LIBS (Maven repo: $M2_REPO)"
    local tmp="$KAFKA_HOME/libs.tmp.$$"
    rm -rf "$tmp"
    mkdir -p "$KAFKA_HOME"
    # Maven runs in the cache dir so nothing (target/ etc.) lands in the repository.
    if ! (cd "$KAFKA_HOME" && mvn -q -B -Dstyle.color=never -f "$SCRIPT_DIR/pom.xml" \
            -Dmaven.repo.local="$M2_REPO" \
            -Dkafka.version="$KAFKA_VERSION" \
            -DincludeScope=runtime \
            -DoutputDirectory="$tmp" \
            dependency:copy-dependencies >&2); then
        rm -rf "$tmp"
        die "mvn dependency:copy-dependencies failed for Kafka $KAFKA_VERSION"
    fi
    [[ -f "$tmp/kafka_2.13-$KAFKA_VERSION.jar" ]] || { rm -rf "$tmp"; die "kafka_2.13-$KAFKA_VERSION.jar missing after fetch"; }
    rm -rf "$LIBS"
    mv "$tmp" "$LIBS"
    printf 'kafka_version=%s\njars=%s\n' "$KAFKA_VERSION" "$(ls "$LIBS" | wc -l)" >"$MARKER"
    exec 9>&-
    log "fetched $(ls "$LIBS" | wc -l) jars"
}

# ---------------------------------------------------------------- helpers
parse_args() {
    DIR="" PORT="" CONTROLLER_PORT="" NUM_PARTITIONS=1 TIMEOUT="${KAFKA_START_TIMEOUT:-60}" OWNER_PID=""
    SECURE="" USERS=()
    while (($#)); do
        case "$1" in
            --dir) DIR="${2:?--dir needs a value}"; shift 2 ;;
            --port) PORT="${2:?--port needs a value}"; shift 2 ;;
            --controller-port) CONTROLLER_PORT="${2:?--controller-port needs a value}"; shift 2 ;;
            --num-partitions) NUM_PARTITIONS="${2:?}"; shift 2 ;;
            --timeout) TIMEOUT="${2:?}"; shift 2 ;;
            --owner-pid) OWNER_PID="${2:?}"; shift 2 ;;
            --secure) SECURE=1; shift ;;
            --user)
                [[ "${2:-}" =~ ^[A-Za-z0-9_.-]+:[A-Za-z0-9_-]+$ ]] || die "--user needs NAME:PASSWORD (password: [A-Za-z0-9_-])"
                USERS+=("$2"); shift 2 ;;
            -h|--help) usage ;;
            *) die "unknown argument: $1" ;;
        esac
    done
    [[ -n "$DIR" ]] || die "--dir is required"
    mkdir -p "$DIR"
    DIR="$(cd "$DIR" && pwd)"
    PIDFILE="$DIR/kafka.pid"
}

java_cmd() { # extra JVM args then main class and args
    # shellcheck disable=SC2086  # *_OPTS are intentionally word-split
    "$JAVA" $KAFKA_HEAP_OPTS $KAFKA_JVM_OPTS \
        -Dlog4j2.configurationFile="$DIR/log4j2.properties" \
        -Dkafka.logs.dir="$DIR" \
        -cp "$LIBS/*" "$@"
}

# ---------------------------------------------------------------- secure mode
# The CA, the broker's key and its password are made once per dir, like its data.
secure_setup() {
    local tls="$DIR/tls"
    mkdir -p "$tls"
    if [[ ! -f "$tls/ca.pem" || ! -f "$tls/broker.pem" ]]; then
        "$PYTHON" "$SCRIPT_DIR/tls.py" "$tls" || die "making the TLS certificate failed (trustme is needed in $PYTHON)"
    fi
    if [[ ! -f "$tls/broker.password" ]]; then
        (umask 077; "$PYTHON" -c 'import secrets; print(secrets.token_hex(16))' >"$tls/broker.password")
    fi
    BROKER_PASSWORD="$(<"$tls/broker.password")"
    (umask 077; printf '%s\n' "KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:$PORT" KAFKA_SECURITY_PROTOCOL=SASL_SSL \
        KAFKA_SASL_MECHANISM=SCRAM-SHA-512 KAFKA_SASL_USERNAME=broker "KAFKA_SASL_PASSWORD=$BROKER_PASSWORD" \
        "KAFKA_SSL_CA_LOCATION=$tls/ca.pem" >"$DIR/client.env")
}

# Clients: SASL_SSL with SCRAM-SHA-512. The controller listener has its own mapping, SASL_PLAINTEXT
# with PLAIN on loopback (KRaft controllers cannot authenticate with SCRAM). Both know the broker as
# User:broker, the only super user; every other principal needs ACLs (`crm-sync acls apply`).
secure_properties() {
    local scram="org.apache.kafka.common.security.scram.ScramLoginModule required username=\"broker\" password=\"$BROKER_PASSWORD\";"
    local plain="org.apache.kafka.common.security.plain.PlainLoginModule required username=\"broker\" password=\"$BROKER_PASSWORD\" user_broker=\"$BROKER_PASSWORD\";"
    cat <<EOF

# Secure mode (kafka.sh start --secure).
listeners=SASL_SSL://127.0.0.1:$PORT,CONTROLLER://127.0.0.1:$CONTROLLER_PORT
advertised.listeners=SASL_SSL://127.0.0.1:$PORT
listener.security.protocol.map=SASL_SSL:SASL_SSL,CONTROLLER:SASL_PLAINTEXT
inter.broker.listener.name=SASL_SSL
sasl.enabled.mechanisms=SCRAM-SHA-512
sasl.mechanism.inter.broker.protocol=SCRAM-SHA-512
listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config=$scram
sasl.mechanism.controller.protocol=PLAIN
listener.name.controller.sasl.enabled.mechanisms=PLAIN
listener.name.controller.plain.sasl.jaas.config=$plain
ssl.keystore.type=PEM
ssl.keystore.location=$DIR/tls/broker.pem
ssl.truststore.type=PEM
ssl.truststore.location=$DIR/tls/ca.pem
ssl.endpoint.identification.algorithm=https
authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer
super.users=User:broker
allow.everyone.if.no.acl.found=false
EOF
}

# ---------------------------------------------------------------- start
cmd_start() {
    parse_args "$@"
    [[ "$PORT" =~ ^[0-9]*$ && "$CONTROLLER_PORT" =~ ^[0-9]*$ ]] || die "ports must be numbers"

    local pid
    if pid="$(running_pid)"; then
        local existing
        existing="$(cat "$DIR/bootstrap" 2>/dev/null || true)"
        if [[ -z "$PORT" || "$PORT" == 0 || "$existing" == "127.0.0.1:$PORT" ]]; then
            log "already running (pid $pid)"
            echo "$existing"
            return 0
        fi
        die "a broker (pid $pid, $existing) already runs in $DIR; stop it first"
    fi

    [[ -f "$MARKER" ]] || cmd_fetch
    command -v "$JAVA" >/dev/null || die "java not found (Kafka $KAFKA_VERSION needs Java 17+)"
    command -v "$PYTHON" >/dev/null || die "python not found: $PYTHON"

    # Free ports: both sockets are held open together so they differ.
    if [[ -z "$PORT" || "$PORT" == 0 || -z "$CONTROLLER_PORT" || "$CONTROLLER_PORT" == 0 ]]; then
        local free
        free="$("$PYTHON" -c '
import socket
socks = []
for _ in range(2):
    s = socket.socket(); s.bind(("127.0.0.1", 0)); socks.append(s)
print(" ".join(str(s.getsockname()[1]) for s in socks))')"
        [[ -z "$PORT" || "$PORT" == 0 ]] && PORT="${free% *}"
        [[ -z "$CONTROLLER_PORT" || "$CONTROLLER_PORT" == 0 ]] && CONTROLLER_PORT="${free#* }"
    fi
    [[ "$PORT" != "$CONTROLLER_PORT" ]] || die "--port and --controller-port must differ"

    local data="$DIR/data"
    local tpl
    tpl="$(<"$SCRIPT_DIR/server.properties.template")"
    tpl="${tpl//@PORT@/$PORT}"
    tpl="${tpl//@CONTROLLER_PORT@/$CONTROLLER_PORT}"
    tpl="${tpl//@LOG_DIR@/$data}"
    tpl="${tpl//@NUM_PARTITIONS@/$NUM_PARTITIONS}"
    if [[ -n "$SECURE" ]]; then
        secure_setup
        # The plaintext listener lines give way to the secured ones (secure_properties).
        tpl="$(printf '%s\n' "$tpl" | grep -Ev '^(listeners|advertised\.listeners|listener\.security\.protocol\.map|inter\.broker\.listener\.name)=')"
        tpl="$tpl"$'\n'"$(secure_properties)"
    fi
    (umask 077; printf '%s\n' "$tpl" >"$DIR/server.properties")

    cat >"$DIR/log4j2.properties" <<EOF
# Quiet broker logging (stdout is redirected to kafka.log by kafka.sh).
status = warn
shutdownHook = disable
appender.out.type = Console
appender.out.name = OUT
appender.out.layout.type = PatternLayout
appender.out.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = $KAFKA_LOG_LEVEL
rootLogger.appenderRef.out.ref = OUT
# Keep the one-line "Kafka Server started" / shutdown messages.
logger.raft.name = kafka.server.KafkaRaftServer
logger.raft.level = INFO
EOF

    : >>"$DIR/kafka.log"
    # Format once; a dir that is already formatted keeps its data and cluster id.
    # A static controller.quorum.voters quorum (not --standalone) lets ports change
    # between restarts of the same dir.
    if [[ ! -f "$data/meta.properties" ]]; then
        local cluster_id
        cluster_id="$("$PYTHON" -c '
import base64, uuid
while True:
    s = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
    if not s.startswith("-"):
        print(s); break')"
        local scram=() user
        if [[ -n "$SECURE" ]]; then
            for user in "broker:$BROKER_PASSWORD" "${USERS[@]}"; do
                scram+=(--add-scram "SCRAM-SHA-512=[name=${user%%:*},password=${user#*:}]")
            done
        fi
        if ! java_cmd kafka.tools.StorageTool format -t "$cluster_id" \
                -c "$DIR/server.properties" --ignore-formatted "${scram[@]}" >>"$DIR/kafka.log" 2>&1; then
            log_tail
            die "formatting $data failed"
        fi
    fi

    echo "127.0.0.1:$PORT" >"$DIR/bootstrap"
    local t0=$SECONDS
    # nohup execs java, so $! is the broker's pid; background jobs of a
    # non-interactive shell ignore SIGINT, so ^C in a caller doesn't kill it.
    nohup "$JAVA" $KAFKA_HEAP_OPTS $KAFKA_JVM_OPTS \
        -Dlog4j2.configurationFile="$DIR/log4j2.properties" \
        -Dkafka.logs.dir="$DIR" \
        -cp "$LIBS/*" kafka.Kafka "$DIR/server.properties" \
        </dev/null >>"$DIR/kafka.log" 2>&1 &
    pid=$!
    echo "$pid" >"$PIDFILE"

    if [[ -n "$OWNER_PID" ]]; then
        # Watchdog: if the owner (e.g. a pytest session) dies without calling
        # stop, take the broker down with it.
        nohup bash -c '
            owner=$1 broker=$2
            while kill -0 "$owner" 2>/dev/null && kill -0 "$broker" 2>/dev/null; do sleep 2; done
            kill -0 "$broker" 2>/dev/null || exit 0
            kill -TERM "$broker" 2>/dev/null || exit 0
            for _ in $(seq 40); do kill -0 "$broker" 2>/dev/null || exit 0; sleep 0.5; done
            kill -KILL "$broker" 2>/dev/null || true' _ "$OWNER_PID" "$pid" </dev/null >/dev/null 2>&1 &
    fi

    local rc=0
    "$PYTHON" - "$PORT" "$pid" "$TIMEOUT" "${SECURE:+$DIR/tls}" <<'PY' || rc=$?
import os, socket, ssl, struct, sys, time

port, pid, timeout = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
tls_dir = sys.argv[4] if len(sys.argv) > 4 and sys.argv[4] else None
deadline = time.monotonic() + timeout

def alive():
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True

def api_versions():
    """Raw ApiVersions v0 request: True once the broker serves requests."""
    client = b"kafka.sh"
    body = struct.pack(">hhih", 18, 0, 1, len(client)) + client
    with socket.create_connection(("127.0.0.1", port), timeout=1) as raw:
        s = ssl.create_default_context(cafile=f"{tls_dir}/ca.pem").wrap_socket(raw, server_hostname="127.0.0.1") if tls_dir else raw
        s.settimeout(2)
        s.sendall(struct.pack(">i", len(body)) + body)
        head = b""
        while len(head) < 10:
            chunk = s.recv(10 - len(head))
            if not chunk:
                return False
            head += chunk
        _size, corr, err = struct.unpack(">iih", head)
        return corr == 1 and err == 0

def metadata():
    """Full client check with librdkafka when the interpreter has it."""
    try:
        from confluent_kafka.admin import AdminClient
    except ImportError:
        return True
    conf = {"bootstrap.servers": f"127.0.0.1:{port}", "log_level": 0}
    if tls_dir:
        with open(f"{tls_dir}/broker.password") as f:
            conf.update({"security.protocol": "SASL_SSL", "sasl.mechanism": "SCRAM-SHA-512", "sasl.username": "broker",
                         "sasl.password": f.read().strip(), "ssl.ca.location": f"{tls_dir}/ca.pem"})
    admin = AdminClient(conf)
    return bool(admin.list_topics(timeout=5).brokers)

while time.monotonic() < deadline:
    if not alive():
        sys.exit(3)
    try:
        if api_versions() and metadata():
            sys.exit(0)
    except Exception:
        pass
    time.sleep(0.2)
sys.exit(4)
PY
    finish_start "$rc" "$pid" broker "127.0.0.1:$PORT" "$t0"
}

# ---------------------------------------------------------------- stop / status (deploy/lib/daemon.sh)
status_details() { echo "bootstrap=$(cat "$DIR/bootstrap" 2>/dev/null || echo '?') version=$KAFKA_VERSION"; }

main() {
    (($#)) || usage
    local sub=$1
    shift
    case "$sub" in
        fetch) cmd_fetch ;;
        start) cmd_start "$@" ;;
        stop) cmd_stop "$@" ;;
        status) cmd_status "$@" ;;
        version) echo "$KAFKA_VERSION" ;;
        -h|--help|help) usage ;;
        *) die "unknown subcommand: $sub" ;;
    esac
}

main "$@"
