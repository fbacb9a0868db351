#!/usr/bin/env bash
# The compose broker: one KRaft node (broker + controller). Formats /var/lib/kafka/data on first
# start, then runs the broker in the foreground (tini forwards SIGTERM for a clean shutdown).
set -euo pipefail
DATA=/var/lib/kafka/data
PROPS=/var/lib/kafka/server.properties
# Containers reach the broker as kafka:9092; KAFKA_EXTERNAL_ADVERTISED (e.g. 127.0.0.1:19092) adds a
# listener on 19092 for clients on the host, through a published port.
LISTENERS="PLAINTEXT://0.0.0.0:9092,CONTROLLER://127.0.0.1:9093"
ADVERTISED="PLAINTEXT://${KAFKA_ADVERTISED_HOST:-kafka}:9092"
PROTOCOLS="PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT"
if [[ -n "${KAFKA_EXTERNAL_ADVERTISED:-}" ]]; then
    LISTENERS="$LISTENERS,EXTERNAL://0.0.0.0:19092"
    ADVERTISED="$ADVERTISED,EXTERNAL://$KAFKA_EXTERNAL_ADVERTISED"
    PROTOCOLS="$PROTOCOLS,EXTERNAL:PLAINTEXT"
fi
cat >"$PROPS" <<PROPERTIES
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:9093
listeners=$LISTENERS
advertised.listeners=$ADVERTISED
listener.security.protocol.map=$PROTOCOLS
inter.broker.listener.name=PLAINTEXT
controller.listener.names=CONTROLLER
log.dirs=$DATA
num.partitions=1
auto.create.topics.enable=true
default.replication.factor=1
min.insync.replicas=1
offsets.topic.replication.factor=1
offsets.topic.num.partitions=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
PROPERTIES
cat >/var/lib/kafka/log4j2.properties <<'LOG'
status = warn
appender.out.type = Console
appender.out.name = OUT
appender.out.layout.type = PatternLayout
appender.out.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = WARN
rootLogger.appenderRef.out.ref = OUT
logger.raft.name = kafka.server.KafkaRaftServer
logger.raft.level = INFO
LOG
# shellcheck disable=SC2206  # KAFKA_HEAP_OPTS is word-split on purpose
JAVA=(java $KAFKA_HEAP_OPTS -XX:+UseG1GC -XX:+ExitOnOutOfMemoryError -Djava.awt.headless=true
      -Dlog4j2.configurationFile=/var/lib/kafka/log4j2.properties -Dkafka.logs.dir=/var/lib/kafka -cp '/opt/kafka/libs/*')
if [[ ! -f "$DATA/meta.properties" ]]; then
    # A cluster id: 16 random bytes, URL-safe base64 without padding (what kafka-storage random-uuid prints).
    cluster_id="$(head -c 16 /dev/urandom | base64 | tr '+/' '-_' | tr -d '=')"
    [[ "$cluster_id" != -* ]] || cluster_id="A${cluster_id:1}"  # an id may not start with '-'
    "${JAVA[@]}" kafka.tools.StorageTool format -t "$cluster_id" -c "$PROPS" --ignore-formatted
fi
exec "${JAVA[@]}" kafka.Kafka "$PROPS"
