#!/usr/bin/env bash
# The prometheus-operator's CRDs (PodMonitor and its siblings), for the tests
# that run the operator's PodMonitor against a real API server.
#
#   monitoring-crds.sh dir
#
# Prints the directory holding monitoring.coreos.com_*.yaml, generating them
# first when they are not cached: controller-gen (sigs.k8s.io/controller-tools)
# reads the prometheus-operator's API types (pkg/apis/monitoring), both pinned
# in e2e/monitoring/go.mod. The Go module proxy serves those types but not the
# prometheus-operator's own module with its CRD files; the CRDs it publishes
# are made by the same generator from the same types. Cached under
# $COMMERCE_CACHE_DIR/monitoring-crds-<hash of go.mod and go.sum>.

COMPONENT=monitoring-crds
# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

SRC="$E2E_DIR/monitoring"
TYPES=github.com/prometheus-operator/prometheus-operator/pkg/apis/monitoring/v1

crd_dir() {
  local key
  key="$(cat "$SRC/go.mod" "$SRC/go.sum" | sha256sum | cut -c1-16)"
  printf '%s/monitoring-crds-%s\n' "$CACHE" "$key"
}

generate() {
  local dir tmp log
  dir="$(crd_dir)"
  [[ -f "$dir/monitoring.coreos.com_podmonitors.yaml" ]] && return 0
  command -v go >/dev/null || die "Go is needed to generate the prometheus-operator's CRDs"
  ensure_state_dirs
  log="$LOG_DIR/monitoring-crds.log"
  tmp="$dir.tmp.$$"
  rm -rf "$tmp"
  mkdir -p "$tmp/bin" "$tmp/crds"
  log "generating the prometheus-operator's CRDs from e2e/monitoring/go.mod; log: $log"
  if ! (cd "$SRC" && go build -mod=readonly -trimpath -o "$tmp/bin/" tool &&
    "$tmp/bin/controller-gen" crd:crdVersions=v1 "paths=$TYPES" "output:crd:dir=$tmp/crds") >>"$log" 2>&1; then
    rm -rf "$tmp"
    tail -n 30 "$log" >&2
    die "generating the CRDs failed; see $log"
  fi
  [[ -f "$tmp/crds/monitoring.coreos.com_podmonitors.yaml" ]] || die "controller-gen wrote no PodMonitor CRD"
  rm -rf "$dir"
  mkdir -p "$dir"
  mv "$tmp/crds"/* "$dir/"
  rm -rf "$tmp"
}

case "${1:-}" in
  dir)
    with_lock monitoring-crds generate
    crd_dir
    ;;
  *)
    echo "usage: $0 dir" >&2
    exit 2
    ;;
esac
