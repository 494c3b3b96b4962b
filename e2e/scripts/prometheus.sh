#!/usr/bin/env bash
# Prometheus and promtool, for the tests of the chart's alerts and dashboards
# (e2e/tests/monitoring.rs): promtool checks and unit-tests the rules, a
# Prometheus server scrapes a local shop and fires them.
#
#   prometheus.sh path promtool|prometheus
#
# Prints the path of the binary, building both first when they are not
# cached: github.com/prometheus/prometheus/cmd/{promtool,prometheus}, pinned
# in e2e/prometheus/go.mod (the module proxy serves Prometheus as v0.3xx
# versions). A few minutes on two cores the first time; cached under
# $COMMERCE_CACHE_DIR/prometheus-<hash of go.mod and go.sum>. The server is
# built without its web UI's assets: the tests use its HTTP API only.

COMPONENT=prometheus
# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

SRC="$E2E_DIR/prometheus"

bin_dir() {
  local key
  key="$(cat "$SRC/go.mod" "$SRC/go.sum" | sha256sum | cut -c1-16)"
  printf '%s/prometheus-%s/bin\n' "$CACHE" "$key"
}

build() {
  local bin tmp log start
  bin="$(bin_dir)"
  [[ -x "$bin/promtool" && -x "$bin/prometheus" ]] && return 0
  command -v go >/dev/null || die "Go is needed to build Prometheus"
  ensure_state_dirs
  log="$LOG_DIR/prometheus-build.log"
  tmp="$bin.tmp.$$"
  rm -rf "$tmp"
  mkdir -p "$tmp"
  start=$SECONDS
  log "building promtool and prometheus from e2e/prometheus/go.mod; log: $log"
  if ! (cd "$SRC" && go build -mod=readonly -trimpath -o "$tmp/" tool) >>"$log" 2>&1; then
    rm -rf "$tmp"
    tail -n 30 "$log" >&2
    die "the build of e2e/prometheus failed; see $log"
  fi
  [[ -x "$tmp/promtool" && -x "$tmp/prometheus" ]] || die "the build produced no promtool or prometheus"
  rm -rf "$bin"
  mv "$tmp" "$bin"
  log "built promtool and prometheus in $((SECONDS - start))s into $bin"
}

case "${1:-}" in
  path)
    case "${2:-}" in
      promtool | prometheus) ;;
      *)
        echo "usage: $0 path promtool|prometheus" >&2
        exit 2
        ;;
    esac
    with_lock prometheus build
    printf '%s/%s\n' "$(bin_dir)" "$2"
    ;;
  *)
    echo "usage: $0 path promtool|prometheus" >&2
    exit 2
    ;;
esac
