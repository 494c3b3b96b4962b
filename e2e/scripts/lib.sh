# shellcheck shell=bash
# Shared helpers for the scripts that install and run the local infrastructure
# (postgres.sh, redis.sh, kafka.sh, k8s.sh, infra.sh). Sourced, never run.
#
# Conventions every component follows:
#   - state in $COMMERCE_STATE_DIR/<component>/, its pid in .../<component>/pid,
#     its log in $COMMERCE_STATE_DIR/logs/<component>.log;
#   - a process is only ever stopped through its own pid file, and only when
#     that pid still runs a command line carrying the component's marker (so a
#     recycled pid is never signalled); nothing is killed by name;
#   - `up` is a no-op when the component already answers, `down` when it is
#     already stopped.

set -euo pipefail

E2E_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
REPO_ROOT="$(cd "$E2E_DIR/.." && pwd)"
export E2E_DIR REPO_ROOT

# shellcheck source=../infra.env
source "$E2E_DIR/infra.env"

STATE="$COMMERCE_STATE_DIR"
CACHE="$COMMERCE_CACHE_DIR"
LOG_DIR="$STATE/logs"

# The component a script manages; set by each script before using the helpers.
COMPONENT="${COMPONENT:-infra}"

log() { printf '[%s] %s\n' "$COMPONENT" "$*" >&2; }
die() {
  printf '[%s] error: %s\n' "$COMPONENT" "$*" >&2
  exit 1
}

# The state dir must be traversable by the unprivileged postgres user.
ensure_state_dirs() {
  mkdir -p "$STATE" "$LOG_DIR" "$CACHE"
  chmod 0755 "$STATE" "$LOG_DIR"
}

# Serialise up/down/install of one component across concurrent callers
# (two `make test` at once, a test harness and a human). The lock is held on
# fd 9, which every daemon we start must not inherit (start_detached closes
# it), or the daemon would hold the lock for its whole life.
with_lock() {
  local name="$1"
  shift
  ensure_state_dirs
  mkdir -p "$STATE/locks"
  exec 9>"$STATE/locks/$name.lock"
  flock 9
  "$@"
  exec 9>&-
}

# The cache directory of the tools built from the Go module in e2e/<module>:
# $CACHE/<module>-<16 hex of the sha256 of its go.mod and go.sum>/bin, so a
# changed pin builds afresh.
go_tools_dir() {
  local module="$1" key
  key="$(cat "$E2E_DIR/$module/go.mod" "$E2E_DIR/$module/go.sum" | sha256sum | cut -c1-16)"
  printf '%s/%s-%s/bin
' "$CACHE" "$module" "$key"
}

# Builds the `tool` directives of the Go module in e2e/<module> into
# go_tools_dir, unless every named binary is there already; the build goes
# to a temporary directory first, so an interrupted one leaves nothing half
# made. Call it under with_lock.
#   go_tools_build <module> <binary>...
go_tools_build() {
  local module="$1" bin tmp log start binary
  shift
  bin="$(go_tools_dir "$module")"
  local missing=0
  for binary in "$@"; do
    [[ -x "$bin/$binary" ]] || missing=1
  done
  ((missing)) || return 0
  command -v go >/dev/null || die "Go is needed to build $* (e2e/$module/go.mod)"
  ensure_state_dirs
  log="$LOG_DIR/$module-build.log"
  tmp="$bin.tmp.$$"
  rm -rf "$tmp"
  mkdir -p "$tmp"
  start=$SECONDS
  log "building $* from e2e/$module/go.mod; log: $log"
  if ! (cd "$E2E_DIR/$module" && go build -mod=readonly -trimpath -o "$tmp/" tool) >>"$log" 2>&1; then
    rm -rf "$tmp"
    tail -n 30 "$log" >&2
    die "the build of e2e/$module failed; see $log"
  fi
  for binary in "$@"; do
    [[ -x "$tmp/$binary" ]] || die "the build of e2e/$module produced no $binary"
  done
  rm -rf "$bin"
  mv "$tmp" "$bin"
  log "built $* in $((SECONDS - start))s into $bin"
}

# Installs one PyPI package, pinned, into a virtualenv of its own at VENV
# (cached per version), unless a finished install is there; then runs CHECK
# (a command, in the venv's bin/) to prove it works. Call it under with_lock.
#   pip_venv_install <venv> <package==version> <check command...>
pip_venv_install() {
  local venv="$1" requirement="$2"
  shift 2
  # Written last: a venv without it is a broken earlier attempt.
  [[ -f "$venv/.installed" ]] && return 0
  mkdir -p "$CACHE"
  rm -rf "$venv"
  if ! python3 -m venv "$venv" 2>/dev/null; then
    # Debian ships ensurepip separately.
    apt_install python3-venv
    rm -rf "$venv"
    python3 -m venv "$venv" || die "python3 -m venv failed"
  fi
  log "installing $requirement into $venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check "$requirement" \
    || die "pip could not install $requirement"
  "$venv/bin/$1" "${@:2}" >/dev/null || die "$requirement does not run from $venv"
  touch "$venv/.installed"
}

# Installs Debian packages; refreshes the package lists once if the first
# attempt fails (a new machine has none, an old one may have stale ones).
apt_install() {
  [[ $(id -u) -eq 0 ]] || die "need root to apt-get install $*; install them and run again"
  log "installing Debian packages: $*"
  export DEBIAN_FRONTEND=noninteractive
  if ! apt-get install -y --no-install-recommends "$@" >>"$LOG_DIR/apt.log" 2>&1; then
    log "apt-get install failed; running apt-get update and trying again"
    apt-get update >>"$LOG_DIR/apt.log" 2>&1 || die "apt-get update failed, see $LOG_DIR/apt.log"
    apt-get install -y --no-install-recommends "$@" >>"$LOG_DIR/apt.log" 2>&1 \
      || die "apt-get install $* failed, see $LOG_DIR/apt.log"
  fi
}

pid_file() { printf '%s/%s/pid\n' "$STATE" "$1"; }
log_file() { printf '%s/%s.log\n' "$LOG_DIR" "$1"; }

# Prints the pid recorded for NAME when that process is alive and its command
# line contains MARKER; returns 1 otherwise (no file, dead, or pid recycled).
running_pid() {
  local name="$1" marker="$2" file
  file="$(pid_file "$name")"
  [[ -s "$file" ]] || return 1
  pid_in_file_runs "$file" "$marker"
}

# Prints the pid on the first line of FILE when that process is alive and its
# command line contains MARKER; returns 1 otherwise.
pid_in_file_runs() {
  local file="$1" marker="$2" pid
  pid="$(head -n 1 "$file" 2>/dev/null)" || return 1
  [[ "$pid" =~ ^[0-9]+$ ]] || return 1
  [[ -r "/proc/$pid/cmdline" ]] || return 1
  # A zombie (exited, not yet reaped) is not running.
  [[ "$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null)" != "Z" ]] || return 1
  # No pipe into `grep -q`: under pipefail, grep leaving at the first match
  # can fail the pipeline with the writer's SIGPIPE, a live process then
  # reading as dead.
  local cmdline
  cmdline="$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null)" || return 1
  [[ "$cmdline" == *"$marker"* ]] || return 1
  printf '%s\n' "$pid"
}

# Starts CMD... detached (own session, stdin closed, output appended to the
# component's log) and records its pid. Usage: start_detached NAME CMD...
start_detached() {
  local name="$1"
  shift
  local log
  log="$(log_file "$name")"
  mkdir -p "$STATE/$name"
  printf '\n==== %s starting %s: %s\n' "$(date -u +%FT%TZ)" "$name" "$*" >>"$log"
  setsid "$@" >>"$log" 2>&1 </dev/null 9>&- &
  printf '%s\n' "$!" >"$(pid_file "$name")"
}

# Stops the process recorded for NAME (if it is still ours): SIGNAL (default
# TERM), then SIGKILL after TIMEOUT seconds. Removes the pid file either way.
# Usage: stop_recorded NAME MARKER [TIMEOUT] [SIGNAL]
stop_recorded() {
  local name="$1" marker="$2" timeout="${3:-30}" signal="${4:-TERM}" pid i
  if pid="$(running_pid "$name" "$marker")"; then
    log "stopping $name (pid $pid, SIG$signal)"
    kill "-$signal" "$pid" 2>/dev/null || true
    for ((i = 0; i < timeout * 10; i++)); do
      running_pid "$name" "$marker" >/dev/null || break
      sleep 0.1
    done
    if running_pid "$name" "$marker" >/dev/null; then
      log "$name (pid $pid) did not stop within ${timeout}s; sending SIGKILL"
      kill -KILL "$pid" 2>/dev/null || true
      for ((i = 0; i < 50; i++)); do
        running_pid "$name" "$marker" >/dev/null || break
        sleep 0.1
      done
    fi
  fi
  rm -f "$(pid_file "$name")"
}

# Succeeds when something accepts TCP connections on 127.0.0.1:PORT.
port_open() {
  timeout 2 bash -c ": </dev/tcp/127.0.0.1/$1" 2>/dev/null
}

# Fails (with the log's tail) when a port we are about to bind is taken by a
# process we did not start.
require_port_free() {
  local port="$1" what="$2"
  if port_open "$port"; then
    die "127.0.0.1:$port (for $what) is already in use by another process; stop it or override the port in the environment (see e2e/infra.env)"
  fi
}

# Waits up to TIMEOUT seconds until CHECK... succeeds, while the process
# recorded for NAME stays alive. On failure prints the end of the log and exits.
# Usage: wait_ready NAME MARKER TIMEOUT DESCRIPTION CHECK...
wait_ready() {
  local name="$1" marker="$2" timeout="$3" what="$4"
  shift 4
  local deadline=$((SECONDS + timeout)) log
  log="$(log_file "$name")"
  until "$@" >/dev/null 2>&1; do
    if ! running_pid "$name" "$marker" >/dev/null; then
      tail -n 30 "$log" >&2 || true
      die "$name exited before $what; see $log"
    fi
    if ((SECONDS >= deadline)); then
      tail -n 30 "$log" >&2 || true
      die "$name did not become ready ($what) within ${timeout}s; see $log"
    fi
    sleep 0.5
  done
}

# One status line: component, version, address, state.
status_line() {
  printf '%-24s %-10s %-24s %s\n' "$1" "$2" "$3" "$4"
}

# Dispatches the usual verbs to the script's functions do_install, do_up,
# do_down and do_status.
main_dispatch() {
  local verb="${1:-}"
  case "$verb" in
    install) with_lock "$COMPONENT" do_install ;;
    up) with_lock "$COMPONENT" do_up ;;
    down) with_lock "$COMPONENT" do_down ;;
    status) do_status ;;
    *)
      printf 'usage: %s install|up|down|status\n' "$(basename "$0")" >&2
      exit 2
      ;;
  esac
}
