#!/usr/bin/env bash
# PostgreSQL (Debian's package) on 127.0.0.1:$COMMERCE_POSTGRES_PORT for
# development and tests.
#
#   postgres.sh install|up|down|status
#
# Data:   $COMMERCE_STATE_DIR/postgres/data (kept across down/up)
# Socket: $COMMERCE_STATE_DIR/postgres/run (mode 0700: only the server's user)
# Log:    $COMMERCE_STATE_DIR/logs/postgres.log
# Superuser `postgres` with password $COMMERCE_POSTGRES_PASSWORD (scram-sha-256
# over TCP). When run as root the server runs as the `postgres` OS user.
COMPONENT=postgres
# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

PG_STATE="$STATE/postgres"
PG_DATA="$PG_STATE/data"
PG_RUN="$PG_STATE/run"
PG_LOG="$(log_file postgres)"
# Our postmaster is the one whose command line names our data directory.
PG_MARKER="-D $PG_DATA"
# Each service keeps a pool of up to 10 connections; a whole shop uses ~70,
# and tests run more than one shop at a time. The default of 100 is too few.
PG_MAX_CONNECTIONS="${COMMERCE_POSTGRES_MAX_CONNECTIONS:-400}"

# The newest installed server major version.
pg_bin_dir() {
  local d
  d="$(find /usr/lib/postgresql -mindepth 2 -maxdepth 2 -type d -name bin 2>/dev/null | sort -V | tail -n 1)"
  [[ -n "$d" && -x "$d/initdb" && -x "$d/postgres" ]] || return 1
  printf '%s\n' "$d"
}

pg_version() {
  local bin
  bin="$(pg_bin_dir)" || {
    echo "-"
    return
  }
  "$bin/postgres" --version | awk '{print $3}'
}

# Runs a command as the OS user that owns the cluster.
as_pg() {
  if [[ $(id -u) -eq 0 ]]; then
    runuser -u postgres -- "$@"
  else
    "$@"
  fi
}

do_install() {
  ensure_state_dirs
  if ! pg_bin_dir >/dev/null; then
    apt_install postgresql
  fi
  pg_bin_dir >/dev/null || die "no PostgreSQL server under /usr/lib/postgresql after installing the postgresql package"
  if [[ $(id -u) -eq 0 ]] && ! id postgres >/dev/null 2>&1; then
    die "the postgres OS user is missing (the postgresql package normally creates it)"
  fi
}

# Creates the cluster once: superuser `postgres` with our password, scram on
# 127.0.0.1, trust on the private socket directory.
init_cluster() {
  local bin="$1" owner pwfile
  owner="$(id -un)"
  [[ $(id -u) -eq 0 ]] && owner=postgres
  mkdir -p "$PG_STATE"
  chmod 0755 "$PG_STATE"
  install -d -m 0700 -o "$owner" "$PG_DATA" "$PG_RUN"
  touch "$PG_LOG"
  chown "$owner" "$PG_LOG"
  if [[ -s "$PG_DATA/PG_VERSION" ]]; then
    return 0
  fi
  log "initialising a new cluster in $PG_DATA"
  pwfile="$PG_STATE/initdb-password"
  (umask 077 && printf '%s\n' "$COMMERCE_POSTGRES_PASSWORD" >"$pwfile")
  chown "$owner" "$pwfile"
  if ! as_pg "$bin/initdb" -D "$PG_DATA" -U postgres --pwfile="$pwfile" \
    --auth-host=scram-sha-256 --auth-local=trust --encoding=UTF8 --locale=C.UTF-8 \
    >>"$PG_LOG" 2>&1; then
    rm -f "$pwfile"
    die "initdb failed; see $PG_LOG"
  fi
  rm -f "$pwfile"
  # Only loopback TCP with a password, and the socket directory that only the
  # server's OS user (and root) can enter.
  cat >"$PG_DATA/pg_hba.conf" <<'EOF'
# Written by e2e/scripts/postgres.sh.
# TYPE  DATABASE  USER  ADDRESS        METHOD
local   all       all                  trust
host    all       all   127.0.0.1/32   scram-sha-256
EOF
  chown "$owner" "$PG_DATA/pg_hba.conf"
}

# Prints the pid in postmaster.pid when it is a live process whose command
# line names our data directory; returns 1 otherwise.
postmaster_pid_from_file() {
  [[ -s "$PG_DATA/postmaster.pid" ]] || return 1
  pid_in_file_runs "$PG_DATA/postmaster.pid" "$PG_MARKER"
}

# A postmaster running on our data directory was started by this script even
# when its pid was not recorded (a start interrupted before it wrote the pid
# file); record it so that status and down see it.
adopt_postmaster() {
  local pid
  running_pid postgres "$PG_MARKER" >/dev/null && return 0
  if pid="$(postmaster_pid_from_file)"; then
    log "found the postmaster for $PG_DATA (pid $pid) unrecorded; recording it"
    mkdir -p "$PG_STATE"
    printf '%s\n' "$pid" >"$(pid_file postgres)"
  fi
}

remove_stale_postmaster_pid() {
  [[ -e "$PG_DATA/postmaster.pid" ]] || return 0
  if postmaster_pid_from_file >/dev/null; then
    die "a postmaster ($(head -n 1 "$PG_DATA/postmaster.pid")) runs on $PG_DATA but does not listen on 127.0.0.1:$COMMERCE_POSTGRES_PORT; stop it first"
  fi
  log "removing a stale postmaster.pid (pid $(head -n 1 "$PG_DATA/postmaster.pid") is not running); the server will recover from its WAL"
  rm -f "$PG_DATA/postmaster.pid"
  # The socket's lock file names the same dead pid; postgres refuses to start
  # while that pid exists at all (a zombie not yet reaped, or a recycled pid).
  # The socket directory is private to this server.
  rm -f "$PG_RUN/.s.PGSQL.$COMMERCE_POSTGRES_PORT" "$PG_RUN/.s.PGSQL.$COMMERCE_POSTGRES_PORT.lock"
}

pg_answers() {
  local bin="$1"
  "$bin/pg_isready" -q -h 127.0.0.1 -p "$COMMERCE_POSTGRES_PORT" -U postgres -d postgres -t 2
}

do_up() {
  do_install
  local bin pid
  bin="$(pg_bin_dir)"
  adopt_postmaster
  if pid="$(running_pid postgres "$PG_MARKER")" && pg_answers "$bin"; then
    log "already up (pid $pid) on 127.0.0.1:$COMMERCE_POSTGRES_PORT"
    return 0
  fi
  if [[ -n "${pid:-}" ]]; then
    # Ours but not answering: let the readiness wait below decide.
    log "pid $pid is starting; waiting for it"
  else
    require_port_free "$COMMERCE_POSTGRES_PORT" postgres
    init_cluster "$bin"
    # A crash (or a machine that stopped with the server running) leaves a
    # stale postmaster.pid behind. Postgres would replace it, but the loop
    # below reads that file right after pg_ctl returns, and would record the
    # dead pid. Nothing of ours runs and the port is free, so remove it when
    # its pid is not a live postmaster for this data directory.
    remove_stale_postmaster_pid
    log "starting PostgreSQL $(pg_version) on 127.0.0.1:$COMMERCE_POSTGRES_PORT"
    printf '\n==== %s starting postgres\n' "$(date -u +%FT%TZ)" >>"$PG_LOG"
    # -l sends the server's output to the log; pg_ctl's own words are kept
    # for the error message. The postmaster must not inherit the lock (fd 9).
    local out
    out="$(as_pg "$bin/pg_ctl" start -W -D "$PG_DATA" -l "$PG_LOG" \
      -o "-c listen_addresses=127.0.0.1 -c port=$COMMERCE_POSTGRES_PORT -c unix_socket_directories=$PG_RUN -c max_connections=$PG_MAX_CONNECTIONS" \
      2>&1 9>&-)" || die "pg_ctl start failed: $out; see $PG_LOG"
    # pg_ctl daemonises the postmaster; its pid appears in postmaster.pid.
    # Record it only once that pid is a live process for our data directory.
    local i
    for ((i = 0; i < 100; i++)); do
      if pid="$(postmaster_pid_from_file)"; then
        break
      fi
      sleep 0.1
    done
    pid="$(postmaster_pid_from_file)" || die "postgres wrote no postmaster.pid naming a live postmaster; see $PG_LOG"
    printf '%s\n' "$pid" >"$(pid_file postgres)"
  fi
  wait_ready postgres "$PG_MARKER" 60 "pg_isready on 127.0.0.1:$COMMERCE_POSTGRES_PORT" pg_answers "$bin"
  # The password and scram over TCP are what every client uses; prove them.
  if ! PGPASSWORD="$COMMERCE_POSTGRES_PASSWORD" PGCONNECT_TIMEOUT=5 "$bin/psql" -X -q -At \
    "host=127.0.0.1 port=$COMMERCE_POSTGRES_PORT user=postgres dbname=postgres" \
    -c 'select 1' >/dev/null 2>>"$PG_LOG"; then
    die "postgres answers but password login as postgres failed (was $PG_DATA created with another password?); see $PG_LOG"
  fi
  log "up: $COMMERCE_POSTGRES_ADMIN_URL"
}

do_down() {
  adopt_postmaster
  # SIGINT is PostgreSQL's "fast" shutdown: roll back open transactions and
  # disconnect clients instead of waiting for them.
  stop_recorded postgres "$PG_MARKER" 60 INT
  log "down"
}

do_status() {
  local pid bin state="down"
  if pid="$(running_pid postgres "$PG_MARKER")"; then
    if bin="$(pg_bin_dir)" && pg_answers "$bin"; then
      state="up (pid $pid)"
    else
      state="starting or unresponsive (pid $pid)"
    fi
  fi
  status_line postgres "$(pg_version)" "127.0.0.1:$COMMERCE_POSTGRES_PORT" "$state"
}

main_dispatch "$@"
