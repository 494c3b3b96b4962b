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


bin_dir() {
  go_tools_dir prometheus
}

build() {
  go_tools_build prometheus promtool prometheus
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
