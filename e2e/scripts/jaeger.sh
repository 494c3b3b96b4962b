#!/usr/bin/env bash
# Jaeger v2, the trace backend of the end-to-end trace test: the services
# export spans over OTLP/gRPC to it, the test reads them back through its
# query HTTP API. The test starts the binary itself as a child process
# (`jaeger --config file:<path>`) and stops it by its pid; this script only
# builds it and writes its configuration.
#
#   jaeger.sh path
#   jaeger.sh config <otlp_grpc_port> <query_http_port>
#
# `path` prints the path of the binary, building it first when it is not
# cached: github.com/jaegertracing/jaeger/cmd/jaeger, pinned in
# e2e/jaeger/go.mod (the module proxy serves Jaeger v2 as v1.7x versions).
# About six minutes on two cores the first time; cached under
# $COMMERCE_CACHE_DIR/jaeger-<hash of go.mod and go.sum>.
#
# `config` prints a configuration (YAML, on stdout) with in-memory storage,
# an OTLP/gRPC receiver on 127.0.0.1:<otlp_grpc_port> and the query service's
# HTTP API on 127.0.0.1:<query_http_port>. Nothing else listens on a fixed
# port: the query service's gRPC API takes an ephemeral loopback port (it
# cannot be turned off), the collector's own metrics and traces are off, and
# no other receiver or extension is enabled.

COMPONENT=jaeger
# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"


usage() {
  echo "usage: $0 path | config <otlp_grpc_port> <query_http_port>" >&2
  exit 2
}

bin_dir() {
  go_tools_dir jaeger
}

build() {
  go_tools_build jaeger jaeger
}

port_arg() {
  if [[ ! "$1" =~ ^[0-9]{1,5}$ ]] || ((10#$1 < 1 || 10#$1 > 65535)); then
    die "not a port: '$1'"
  fi
}

# Every listener is on 127.0.0.1. `enable_tracing: false`: otherwise the
# query service traces itself and exports those spans over OTLP to
# localhost:4317 (or OTEL_EXPORTER_OTLP_ENDPOINT), not to this instance.
print_config() {
  local otlp="$1" query="$2"
  cat <<EOF
service:
  extensions: [jaeger_storage, jaeger_query]
  pipelines:
    traces:
      receivers: [otlp]
      processors: [batch]
      exporters: [jaeger_storage_exporter]
  telemetry:
    metrics:
      level: none
    traces:
      level: none
    logs:
      level: info

extensions:
  jaeger_storage:
    backends:
      memstore:
        memory:
          max_traces: 100000
  jaeger_query:
    storage:
      traces: memstore
    enable_tracing: false
    http:
      endpoint: 127.0.0.1:$query
    grpc:
      endpoint: 127.0.0.1:0

receivers:
  otlp:
    protocols:
      grpc:
        endpoint: 127.0.0.1:$otlp

processors:
  batch:

exporters:
  jaeger_storage_exporter:
    trace_storage: memstore
EOF
}

case "${1:-}" in
  path)
    (($# == 1)) || usage
    with_lock jaeger build
    printf '%s/jaeger\n' "$(bin_dir)"
    ;;
  config)
    (($# == 3)) || usage
    port_arg "$2"
    port_arg "$3"
    [[ "$2" != "$3" ]] || die "the OTLP and query ports must differ"
    print_config "$2" "$3"
    ;;
  *) usage ;;
esac
