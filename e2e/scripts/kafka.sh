#!/usr/bin/env bash
# Apache Kafka (from Maven Central) on 127.0.0.1: one KRaft node that is both
# broker ($COMMERCE_KAFKA_BROKERS) and controller (:$COMMERCE_KAFKA_CONTROLLER_PORT).
#
#   kafka.sh install|up|down|status|smoke|kill
#
# install  copies kafka_2.13 and its runtime class path (see e2e/kafka/pom.xml)
#          to $COMMERCE_CACHE_DIR/kafka-$COMMERCE_KAFKA_VERSION/libs
# up       formats the storage once, starts kafka.Kafka and waits until the
#          broker serves metadata for our cluster id
# smoke    creates a topic, produces and consumes a record, deletes the topic
# kill     SIGKILL to the broker by its recorded PID (a crash: no controlled
#          shutdown; the fault tests' private brokers)
#
# With COMMERCE_KAFKA_SSL_PORT and COMMERCE_KAFKA_SASL_SSL_PORT set (tests of
# a private broker do), two more listeners: SSL (TLS only) and SASL_SSL (TLS
# and SCRAM-SHA-512, user "commerce"). The first start makes a CA and the
# broker's certificate (for 127.0.0.1 and localhost) with openssl, and the
# SCRAM user's password, under $COMMERCE_STATE_DIR/kafka/tls: ca.pem and
# scram-password are what clients need. Such a broker also checks ACLs
# (StandardAuthorizer); ANONYMOUS (plaintext) and "commerce" are super users.
# e2e/infra.env sets both ports for the shared broker; the chaos tests'
# private brokers clear them.
#
# A private test cluster of two nodes (the fault tests' partition-leadership
# case): node 1 as above; node 2 started with COMMERCE_KAFKA_NODE_ID=2 is a
# broker only, joining the controller quorum COMMERCE_KAFKA_QUORUM
# ("1@127.0.0.1:<node 1's controller port>") in cluster COMMERCE_KAFKA_CLUSTER_ID.
# COMMERCE_KAFKA_REPLICAS (default 1) is the replication factor of new topics
# and of Kafka's internal ones.
#
# Config: $COMMERCE_STATE_DIR/kafka/server.properties (rewritten on every start)
# Data:   $COMMERCE_STATE_DIR/kafka/data (kept across down/up)
# Log:    $COMMERCE_STATE_DIR/logs/kafka.log
COMPONENT=kafka
# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

KAFKA_HOME="$CACHE/kafka-$COMMERCE_KAFKA_VERSION"
LIBS="$KAFKA_HOME/libs"
KAFKA_STATE="$STATE/kafka"
KAFKA_DATA="$KAFKA_STATE/data"
KAFKA_PROPS="$KAFKA_STATE/server.properties"
TOOLS_PROPS="$KAFKA_STATE/tools.properties"
KAFKA_LOG="$(log_file kafka)"
# Our broker's JVM is the one started with our server.properties.
KAFKA_MARKER="$KAFKA_PROPS"
SSL_PORT="${COMMERCE_KAFKA_SSL_PORT:-}"
SASL_SSL_PORT="${COMMERCE_KAFKA_SASL_SSL_PORT:-}"
TLS_DIR="$KAFKA_STATE/tls"
SCRAM_USER=commerce
NODE_ID="${COMMERCE_KAFKA_NODE_ID:-1}"
QUORUM="${COMMERCE_KAFKA_QUORUM:-1@127.0.0.1:$COMMERCE_KAFKA_CONTROLLER_PORT}"
REPLICAS="${COMMERCE_KAFKA_REPLICAS:-1}"
# Node 1 is broker and controller; any other node is a broker only.
controller() { [[ "$NODE_ID" == 1 ]]; }
# Small enough to share 24 GB with everything else; plenty for tests.
KAFKA_HEAP="${COMMERCE_KAFKA_HEAP:--Xmx768m -Xms256m}"

# Identifies the library set: the pom and the version it is resolved for.
libs_key() {
  { cat "$E2E_DIR/kafka/pom.xml"; echo "$COMMERCE_KAFKA_VERSION"; } | sha256sum | cut -c1-16
}

do_install() {
  ensure_state_dirs
  command -v java >/dev/null || apt_install openjdk-17-jre-headless
  command -v mvn >/dev/null || apt_install maven
  local key
  key="$(libs_key)"
  if [[ -f "$LIBS/kafka_2.13-$COMMERCE_KAFKA_VERSION.jar" && "$(cat "$KAFKA_HOME/.libs-key" 2>/dev/null)" == "$key" ]]; then
    return 0
  fi
  local tmp log start
  tmp="$KAFKA_HOME/libs.tmp.$$"
  log="$(log_file kafka-install)"
  start=$SECONDS
  log "resolving Apache Kafka $COMMERCE_KAFKA_VERSION from Maven Central into $LIBS (log: $log)"
  rm -rf "$tmp"
  mkdir -p "$KAFKA_HOME"
  if ! mvn -B -q -f "$E2E_DIR/kafka/pom.xml" -Dkafka.version="$COMMERCE_KAFKA_VERSION" \
    dependency:copy-dependencies -DincludeScope=runtime -DoutputDirectory="$tmp" >>"$log" 2>&1; then
    rm -rf "$tmp"
    tail -n 20 "$log" >&2
    die "mvn dependency:copy-dependencies failed; see $log"
  fi
  [[ -f "$tmp/kafka_2.13-$COMMERCE_KAFKA_VERSION.jar" ]] || die "Maven produced no kafka_2.13-$COMMERCE_KAFKA_VERSION.jar in $tmp"
  rm -rf "$LIBS"
  mv "$tmp" "$LIBS"
  printf '%s\n' "$key" >"$KAFKA_HOME/.libs-key"
  log "installed $(find "$LIBS" -name '*.jar' | wc -l) jars in $((SECONDS - start))s"
}

# Runs a class from the Kafka class path with a small, fast-starting JVM
# (the command-line tools, the storage formatter).
kafka_tool() {
  java -Xmx256m -XX:+UseSerialGC -XX:TieredStopAtLevel=1 -Djava.awt.headless=true \
    -Dlog4j2.configurationFile="$E2E_DIR/kafka/tools-log4j2.properties" \
    -cp "$LIBS/*" "$@"
}

secure() { [[ -n "$SSL_PORT" && -n "$SASL_SSL_PORT" ]]; }

# The CA, the broker's key and certificate (P-256, 30 days) and the SCRAM
# password, made once per state directory. Kafka reads PEM directly: the
# keystore file holds the PKCS#8 key followed by the certificate chain.
ensure_tls() {
  [[ -s "$TLS_DIR/keystore.pem" && -s "$TLS_DIR/scram-password" ]] && return 0
  command -v openssl >/dev/null || apt_install openssl
  rm -rf "$TLS_DIR"
  mkdir -p "$TLS_DIR"
  chmod 700 "$TLS_DIR"
  local ssl_log
  ssl_log="$(log_file kafka-tls)"
  (
    cd "$TLS_DIR"
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 30 \
      -subj "/CN=commerce-stack test Kafka CA" -keyout ca.key -out ca.pem \
      -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign"
    openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
      -subj "/CN=127.0.0.1" -keyout broker.key -out broker.csr
    printf '%s\n' "subjectAltName=IP:127.0.0.1,DNS:localhost" "extendedKeyUsage=serverAuth" \
      "keyUsage=critical,digitalSignature" >broker.ext
    openssl x509 -req -in broker.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 30 \
      -extfile broker.ext -out broker.pem
    openssl pkcs8 -topk8 -nocrypt -in broker.key -out broker.p8
    cat broker.p8 broker.pem ca.pem >keystore.pem
    openssl rand -hex 24 >scram-password
    chmod 600 ./*.key broker.p8 keystore.pem scram-password
  ) >>"$ssl_log" 2>&1 || die "making the test broker's TLS material failed; see $ssl_log"
}

write_config() {
  mkdir -p "$KAFKA_DATA"
  local listeners advertised protocols
  local roles=broker
  listeners="PLAINTEXT://127.0.0.1:$COMMERCE_KAFKA_PORT,PODS://127.0.0.1:$COMMERCE_KAFKA_POD_PORT"
  if controller; then
    roles=broker,controller
    listeners+=",CONTROLLER://127.0.0.1:$COMMERCE_KAFKA_CONTROLLER_PORT"
  fi
  advertised="PLAINTEXT://127.0.0.1:$COMMERCE_KAFKA_PORT,PODS://$COMMERCE_KAFKA_POD_ADVERTISED"
  protocols="PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT,PODS:PLAINTEXT"
  if secure; then
    listeners+=",SSL://127.0.0.1:$SSL_PORT,SASL_SSL://127.0.0.1:$SASL_SSL_PORT"
    advertised+=",SSL://127.0.0.1:$SSL_PORT,SASL_SSL://127.0.0.1:$SASL_SSL_PORT"
    protocols+=",SSL:SSL,SASL_SSL:SASL_SSL"
  fi
  cat >"$KAFKA_PROPS" <<EOF
# Written by e2e/scripts/kafka.sh on every start; edit the script, not this.
# KRaft on loopback: node 1 is broker and controller in one JVM; a second
# node of a private test cluster is a broker only.
process.roles=$roles
node.id=$NODE_ID
controller.quorum.voters=$QUORUM
# PODS is for the real node's pods: it binds loopback too, and advertises the
# in-cluster Service that e2e/scripts/node.sh points (through a forwarder on
# the node's bridge address) at this port. Host clients never see it: a
# client is told the address of the listener it connected to.
listeners=$listeners
advertised.listeners=$advertised
listener.security.protocol.map=$protocols
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
log.dirs=$KAFKA_DATA

# $REPLICAS replica(s) of everything, including the internal topics; one
# in sync is enough to write, so a cluster of two loses nothing to a broker's
# death and keeps taking writes.
default.replication.factor=$REPLICAS
min.insync.replicas=1
offsets.topic.replication.factor=$REPLICAS
transaction.state.log.replication.factor=$REPLICAS
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=$REPLICAS
share.coordinator.state.topic.min.isr=1
# Fewer internal partitions: created on first use, and 50 cost seconds.
offsets.topic.num.partitions=5
transaction.state.log.num.partitions=5

# Tests join consumer groups constantly; do not wait for more members.
group.initial.rebalance.delay.ms=0
# Services create their topics explicitly; a typo must fail, not create one.
auto.create.topics.enable=false
num.partitions=1
log.retention.hours=24
EOF
  if secure; then
    cat >>"$KAFKA_PROPS" <<EOF

# TLS on the SSL and SASL_SSL listeners; no client certificates asked for.
ssl.keystore.type=PEM
ssl.keystore.location=$TLS_DIR/keystore.pem
ssl.enabled.protocols=TLSv1.3,TLSv1.2
# SCRAM-SHA-512 on SASL_SSL; kafka.sh up sets the user's credential.
sasl.enabled.mechanisms=SCRAM-SHA-512
listener.name.sasl_ssl.sasl.enabled.mechanisms=SCRAM-SHA-512
listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;

# ACLs, as on a shared production cluster: a principal may do only what an
# ACL allows. The operator's per-stack users (kafka.external.sasl.serviceUser:
# PerStack) are held to their stack's prefix that way. Super users may do
# anything: ANONYMOUS (the plaintext listeners, so inter-broker and controller
# traffic and every test that does not test ACLs) and the SCRAM user, which
# tests use as the cluster's admin.
authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer
super.users=User:ANONYMOUS;User:$SCRAM_USER
allow.everyone.if.no.acl.found=false
EOF
  fi
  cat >"$TOOLS_PROPS" <<EOF
# Client settings for the tools kafka.sh runs: fail fast, the script retries.
request.timeout.ms=5000
default.api.timeout.ms=10000
EOF
}

# Formats the log directory once, with the cluster id kept in the state dir.
format_storage() {
  [[ -s "$KAFKA_DATA/meta.properties" ]] && return 0
  local id
  if [[ -n "${COMMERCE_KAFKA_CLUSTER_ID:-}" ]]; then
    printf '%s\n' "$COMMERCE_KAFKA_CLUSTER_ID" >"$KAFKA_STATE/cluster-id"
  elif [[ ! -s "$KAFKA_STATE/cluster-id" ]]; then
    kafka_tool kafka.tools.StorageTool random-uuid >"$KAFKA_STATE/cluster-id" 2>>"$KAFKA_LOG" \
      || die "could not generate a cluster id; see $KAFKA_LOG"
  fi
  id="$(<"$KAFKA_STATE/cluster-id")"
  log "formatting $KAFKA_DATA for cluster $id"
  kafka_tool kafka.tools.StorageTool format --ignore-formatted -t "$id" -c "$KAFKA_PROPS" >>"$KAFKA_LOG" 2>&1 \
    || die "formatting the Kafka storage failed; see $KAFKA_LOG"
}

# A real round trip to the broker: it answers a metadata request with our
# cluster id (not just an open port, and not another Kafka on the port).
kafka_answers() {
  port_open "$COMMERCE_KAFKA_PORT" || return 1
  local id
  id="$(kafka_tool org.apache.kafka.tools.ClusterTool cluster-id \
    --bootstrap-server "$COMMERCE_KAFKA_BROKERS" --command-config "$TOOLS_PROPS" 2>/dev/null)" || return 1
  [[ "$id" == "Cluster ID: $(cat "$KAFKA_STATE/cluster-id" 2>/dev/null)" ]]
}

# Sets the SCRAM user's credential (again: idempotent) through the plaintext
# listener. The password is on the tool's command line for a moment; it is a
# test broker's, and the file holding it is readable by its owner only.
ensure_scram_user() {
  kafka_tool kafka.admin.ConfigCommand --bootstrap-server "$COMMERCE_KAFKA_BROKERS" \
    --command-config "$TOOLS_PROPS" --alter --entity-type users --entity-name "$SCRAM_USER" \
    --add-config "SCRAM-SHA-512=[iterations=4096,password=$(<"$TLS_DIR/scram-password")]" >>"$KAFKA_LOG" 2>&1 \
    || die "setting the SCRAM credential of $SCRAM_USER failed; see $KAFKA_LOG"
}

do_up() {
  do_install
  local pid
  # A broker started before the secure listeners were configured is
  # restarted with them.
  if secure && pid="$(running_pid kafka "$KAFKA_MARKER")" && ! port_open "$SSL_PORT"; then
    log "restarting pid $pid to add the SSL and SASL_SSL listeners"
    do_down
  fi
  # Nor one started before ACLs were on (the file is what it was started with).
  if secure && pid="$(running_pid kafka "$KAFKA_MARKER")" && ! grep -q '^authorizer.class.name=' "$KAFKA_PROPS"; then
    log "restarting pid $pid to turn on ACLs"
    do_down
  fi
  if pid="$(running_pid kafka "$KAFKA_MARKER")"; then
    if kafka_answers; then
      log "already up (pid $pid) on $COMMERCE_KAFKA_BROKERS"
      return 0
    fi
    log "pid $pid is starting; waiting for it"
  else
    require_port_free "$COMMERCE_KAFKA_PORT" "kafka broker"
    if controller; then require_port_free "$COMMERCE_KAFKA_CONTROLLER_PORT" "kafka controller"; fi
    require_port_free "$COMMERCE_KAFKA_POD_PORT" "kafka listener for pods"
    if secure; then
      require_port_free "$SSL_PORT" "kafka TLS listener"
      require_port_free "$SASL_SSL_PORT" "kafka SASL_SSL listener"
    fi
    mkdir -p "$KAFKA_STATE"
    if secure; then ensure_tls; fi
    write_config
    format_storage
    log "starting Apache Kafka $COMMERCE_KAFKA_VERSION on $COMMERCE_KAFKA_BROKERS"
    # Every partition keeps a few files open (log, indexes), and Kafka asks
    # for 100,000 descriptors or more. Raise the soft limit as far as the
    # hard one allows (where the hard limit itself may be raised, to 262,144).
    # On machines whose hard limit is 20,000, about 5,000 topics of 1-3
    # partitions stop the broker ("all log dirs have failed").
    ulimit -n 262144 2>/dev/null || ulimit -n "$(ulimit -Hn)"
    # shellcheck disable=SC2086 # KAFKA_HEAP is a list of JVM flags
    start_detached kafka java $KAFKA_HEAP -server \
      -XX:+UseG1GC -XX:MaxGCPauseMillis=20 -XX:InitiatingHeapOccupancyPercent=35 \
      -XX:+ExplicitGCInvokesConcurrent -Djava.awt.headless=true \
      -Dlog4j2.configurationFile="$E2E_DIR/kafka/log4j2.properties" \
      -Dcommerce.kafka.log="$KAFKA_LOG" \
      -cp "$LIBS/*" kafka.Kafka "$KAFKA_PROPS"
  fi
  wait_ready kafka "$KAFKA_MARKER" 120 "metadata from $COMMERCE_KAFKA_BROKERS" kafka_answers
  if secure; then
    ensure_scram_user
    log "TLS on 127.0.0.1:$SSL_PORT, TLS and SCRAM-SHA-512 (user $SCRAM_USER) on 127.0.0.1:$SASL_SSL_PORT; CA $TLS_DIR/ca.pem"
  fi
  log "up: $COMMERCE_KAFKA_BROKERS (cluster $(<"$KAFKA_STATE/cluster-id"))"
}

do_down() {
  # SIGTERM runs Kafka's controlled shutdown, which closes the logs cleanly.
  stop_recorded kafka "$KAFKA_MARKER" 60
  log "down"
}

do_status() {
  local pid state="down"
  if pid="$(running_pid kafka "$KAFKA_MARKER")"; then
    if kafka_answers; then state="up (pid $pid)"; else state="starting or unresponsive (pid $pid)"; fi
  fi
  status_line kafka "$COMMERCE_KAFKA_VERSION" "$COMMERCE_KAFKA_BROKERS" "$state"
}

# Creates a topic, produces a record, consumes it back and deletes the topic,
# all with Kafka's own command-line tools.
do_smoke() {
  running_pid kafka "$KAFKA_MARKER" >/dev/null || die "kafka is not running; run: $0 up"
  local topic="commerce-smoke-$$-$RANDOM" sent got
  sent="hello from kafka.sh $(date -u +%FT%TZ)"
  kafka_tool org.apache.kafka.tools.TopicCommand --bootstrap-server "$COMMERCE_KAFKA_BROKERS" \
    --command-config "$TOOLS_PROPS" --create --topic "$topic" --partitions 1 --replication-factor 1 >&2
  printf '%s\n' "$sent" | kafka_tool org.apache.kafka.tools.ConsoleProducer \
    --bootstrap-server "$COMMERCE_KAFKA_BROKERS" --topic "$topic" --command-property acks=all >&2
  got="$(kafka_tool org.apache.kafka.tools.consumer.ConsoleConsumer \
    --bootstrap-server "$COMMERCE_KAFKA_BROKERS" --topic "$topic" --from-beginning \
    --max-messages 1 --timeout-ms 30000 --group "$topic")"
  kafka_tool org.apache.kafka.tools.TopicCommand --bootstrap-server "$COMMERCE_KAFKA_BROKERS" \
    --command-config "$TOOLS_PROPS" --delete --topic "$topic" >&2
  [[ "$got" == "$sent" ]] || die "consumed '$got', expected '$sent'"
  log "smoke ok: produced and consumed '$sent' on $topic"
}

if [[ "${1:-}" == smoke ]]; then
  do_smoke
elif [[ "${1:-}" == kill ]]; then
  with_lock "$COMPONENT" stop_recorded kafka "$KAFKA_MARKER" 10 KILL
  log "killed"
else
  main_dispatch "$@"
fi
