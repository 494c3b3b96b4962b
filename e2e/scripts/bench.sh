#!/usr/bin/env bash
# `make bench`: the speed and memory figures of the shop, each next to its
# target, over several runs (min / median / max).
#
# A release build of `commerce` runs the benchmarks of e2e/tests/throughput.rs
# and e2e/tests/read_path.rs (`#[ignore]`d tests that print `BENCH` lines; see
# e2e/tests/support/bench.rs). Every ratio is measured against its reference
# in the same run, on the same machine: pgbench's single-INSERT commits for
# the orders, a bare axum hello world for the gateway. The saga latency is
# taken at half the orders/s the closed loop of the same run sustained.
#
# Figures only: nothing here fails because a target is missed.
#
#   bash e2e/scripts/bench.sh            # 3 runs
#   COMMERCE_BENCH_RUNS=1 bash e2e/scripts/bench.sh
#
# Needs the local Postgres, Redis and Kafka (started here if absent), wrk
# and pgbench (Debian packages, installed here if missing).

COMPONENT=bench
# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

RUNS="${COMMERCE_BENCH_RUNS:-3}"
# Customers of the closed loop that measures the sustained orders/s.
CUSTOMERS="${COMMERCE_BENCH_CUSTOMERS:-16}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$CACHE/target}"

command -v wrk >/dev/null || apt_install wrk
command -v pgbench >/dev/null || apt_install postgresql-client
bash "$E2E_DIR/scripts/infra.sh" up postgres redis kafka

log "building the release binary and the benchmarks"
(cd "$REPO_ROOT" && cargo build --locked --release -p commerce)
# Built on its own: with commerce in the same command, features would unify
# differently and everything would be built again.
(cd "$REPO_ROOT" && cargo build --locked --release -p commerce-e2e --bin bench-hello-world)
(cd "$REPO_ROOT" && cargo test --locked -p commerce-e2e --test throughput --test read_path --no-run)
export COMMERCE_BIN="$CARGO_TARGET_DIR/release/commerce"

results="$(mktemp -d)"
trap 'rm -rf "$results"' EXIT

# Runs one benchmark test, showing its figures, keeping its BENCH lines.
bench() {
  local test_file="$1" name="$2" out="$3"
  shift 3
  # No backtrace: the last lines of a failure's log are then its error.
  (cd "$REPO_ROOT" && env RUST_BACKTRACE=0 "$@" cargo test --locked -q -p commerce-e2e --test "$test_file" -- \
    --ignored --nocapture --exact "$name") >"$out.log" 2>&1 || {
    tail -40 "$out.log" >&2
    die "benchmark $name failed (log above)"
  }
  grep '^FIGURE' "$out.log" | sed 's/^/  /' >&2
  grep -P '^BENCH\t' "$out.log" >>"$out" || true
}

for run in $(seq 1 "$RUNS"); do
  log "run $run of $RUNS"
  out="$results/run$run"
  bench throughput closed_loop_checkouts_per_second_and_memory_of_serve_all "$out" \
    COMMERCE_BENCH_CUSTOMERS="$CUSTOMERS"
  orders_per_second="$(grep -P '^BENCH_ORDERS_PER_SECOND\t' "$out.log" | cut -f2)"
  half_rate="$(python3 -c "print(max(1, round(float('$orders_per_second') / 2)))")"
  bench throughput saga_latency_from_order_created_to_order_confirmed_is_printed "$out" \
    COMMERCE_BENCH_ORDER_RATE="$half_rate"
  bench throughput the_shop_rss_after_many_registrations_is_printed "$out"
  bench read_path product_reads_through_the_gateway_as_a_ratio_of_a_bare_axum_hello_world "$out"
  bench read_path tracing_overhead_on_gateway_reads_is_printed "$out"
done

# One row per figure: min / median / max over the runs, and the target.
python3 - "$results"/run[0-9]* <<'EOF'
import statistics, sys
rows = {}
for path in sys.argv[1:]:
    if path.endswith(".log"):
        continue
    for line in open(path):
        _, key, value, op, target, how = line.rstrip("\n").split("\t")
        row = rows.setdefault(key, {"values": [], "op": op, "target": float(target), "how": how})
        row["values"].append(float(value))
        row["how"] = how
print()
print(f"{'figure':40} {'min':>9} {'median':>9} {'max':>9}  target     met (median)")
for key, row in rows.items():
    values = sorted(row["values"])
    median = statistics.median(values)
    met = median >= row["target"] if row["op"] == ">=" else median <= row["target"]
    print(f"{key:40} {values[0]:9.3f} {median:9.3f} {values[-1]:9.3f}  {row['op']} {row['target']:<7g} {'yes' if met else 'NO'}")
print()
for key, row in rows.items():
    print(f"{key}: {row['how']} (last run)")
EOF
