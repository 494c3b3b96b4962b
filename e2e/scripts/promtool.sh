#!/usr/bin/env bash
# promtool, Prometheus' rule checker, for the tests of the chart's alerts
# (e2e/tests/monitoring.rs).
#
#   promtool.sh path
#
# Prints the path of the promtool binary, building it first when it is not
# cached: github.com/prometheus/prometheus/cmd/promtool, pinned in
# e2e/prometheus/go.mod (the module proxy serves Prometheus as v0.3xx
# versions). About 3 minutes on two cores the first time; cached under
# $COMMERCE_CACHE_DIR/promtool-<hash of go.mod and go.sum>.

COMPONENT=promtool
# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

SRC="$E2E_DIR/prometheus"

bin_dir() {
  local key
  key="$(cat "$SRC/go.mod" "$SRC/go.sum" | sha256sum | cut -c1-16)"
  printf '%s/promtool-%s/bin\n' "$CACHE" "$key"
}

build() {
  local bin tmp log start
  bin="$(bin_dir)"
  [[ -x "$bin/promtool" ]] && return 0
  command -v go >/dev/null || die "Go is needed to build promtool"
  ensure_state_dirs
  log="$LOG_DIR/promtool-build.log"
  tmp="$bin.tmp.$$"
  rm -rf "$tmp"
  mkdir -p "$tmp"
  start=$SECONDS
  log "building promtool from e2e/prometheus/go.mod; log: $log"
  if ! (cd "$SRC" && go build -mod=readonly -trimpath -o "$tmp/" tool) >>"$log" 2>&1; then
    rm -rf "$tmp"
    tail -n 30 "$log" >&2
    die "the build of promtool failed; see $log"
  fi
  [[ -x "$tmp/promtool" ]] || die "the build produced no promtool"
  rm -rf "$bin"
  mv "$tmp" "$bin"
  log "built promtool in $((SECONDS - start))s into $bin"
}

case "${1:-}" in
  path)
    with_lock promtool build
    printf '%s/promtool\n' "$(bin_dir)"
    ;;
  *)
    echo "usage: $0 path" >&2
    exit 2
    ;;
esac
