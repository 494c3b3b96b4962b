#!/usr/bin/env bash
# Redis (Debian's package) on 127.0.0.1:$COMMERCE_REDIS_PORT for development
# and tests.
#
#   redis.sh install|up|down|status
#
# Config: $COMMERCE_STATE_DIR/redis/redis.conf (rewritten on every start)
# Data:   $COMMERCE_STATE_DIR/redis/data (append-only file, kept across down/up)
# Log:    $COMMERCE_STATE_DIR/logs/redis.log
COMPONENT=redis
# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

REDIS_STATE="$STATE/redis"
REDIS_CONF="$REDIS_STATE/redis.conf"
# Redis rewrites its process title; the template in redis.conf keeps the
# config file's path in it, which is what identifies ours.
REDIS_MARKER="$REDIS_CONF"

redis_version() {
  if command -v redis-server >/dev/null; then
    redis-server --version | sed -n 's/.*v=\([^ ]*\).*/\1/p'
  else
    echo "-"
  fi
}

redis_answers() {
  [[ "$(redis-cli -h 127.0.0.1 -p "$COMMERCE_REDIS_PORT" ping 2>/dev/null)" == PONG ]]
}

do_install() {
  ensure_state_dirs
  if ! command -v redis-server >/dev/null || ! command -v redis-cli >/dev/null; then
    apt_install redis-server
  fi
  command -v redis-server >/dev/null || die "redis-server is still missing after installing the redis-server package"
}

do_up() {
  do_install
  local pid
  if pid="$(running_pid redis "$REDIS_MARKER")"; then
    if redis_answers; then
      log "already up (pid $pid) on 127.0.0.1:$COMMERCE_REDIS_PORT"
      return 0
    fi
    log "pid $pid is starting; waiting for it"
  else
    require_port_free "$COMMERCE_REDIS_PORT" redis
    mkdir -p "$REDIS_STATE/data"
    cat >"$REDIS_CONF" <<EOF
# Written by e2e/scripts/redis.sh on every start; edit the script, not this.
bind 127.0.0.1
port $COMMERCE_REDIS_PORT
protected-mode yes
daemonize no
logfile ""
dir $REDIS_STATE/data
appendonly yes
save ""
proc-title-template "{title} {listen-addr} {server-mode} {config-file}"
# Tests and the dev shop need little; stay small and never swap the box.
maxmemory 256mb
EOF
    log "starting Redis $(redis_version) on 127.0.0.1:$COMMERCE_REDIS_PORT"
    start_detached redis redis-server "$REDIS_CONF"
  fi
  wait_ready redis "$REDIS_MARKER" 30 "PING on 127.0.0.1:$COMMERCE_REDIS_PORT" redis_answers
  log "up: $COMMERCE_REDIS_URL"
}

do_down() {
  # SIGTERM makes Redis flush the append-only file and exit.
  stop_recorded redis "$REDIS_MARKER" 30
  log "down"
}

do_status() {
  local pid state="down"
  if pid="$(running_pid redis "$REDIS_MARKER")"; then
    if redis_answers; then state="up (pid $pid)"; else state="starting or unresponsive (pid $pid)"; fi
  fi
  status_line redis "$(redis_version)" "127.0.0.1:$COMMERCE_REDIS_PORT" "$state"
}

main_dispatch "$@"
